"""Roles in the store: the presets on first start, and create / update / delete with audit.

A role is stored at ``/roles/<name>``. On every start :meth:`RoleStore.ensure_presets`
creates the preset roles (``access``, ``editor``, ``auditor``;
:func:`trioport.resources.preset_roles`) that are missing, and leaves alone those an
administrator has changed.

:meth:`RoleStore.get_many` is what certificate signing and access checks use. A
user may still name a role that was deleted since: that role is skipped, so a
deletion can only ever take permissions away.
"""

from __future__ import annotations

from collections.abc import Iterable

from trioport.errors import AlreadyExists, NotFound
from trioport.resources import Role, check_name, preset_roles
from trioport.store.backend import Backend, Item

from . import audit_log
from ._storage import decode, encode, get_resource
from .audit_log import AuditLog

__all__ = ["ROLES_PREFIX", "RoleStore"]

ROLES_PREFIX = "/roles/"


def _key(name: str) -> str:
    check_name(name, "role name")
    return ROLES_PREFIX + name


class RoleStore:
    """The cluster's roles.

    Args:
        backend: the cluster's store.
        audit: where ``role.created`` / ``role.updated`` / ``role.deleted`` go.
    """

    def __init__(self, backend: Backend, audit: AuditLog) -> None:
        self.backend = backend
        self.audit = audit

    async def ensure_presets(self) -> list[str]:
        """Create the preset roles that do not exist; return the names created."""
        created = []
        for name, role in preset_roles().items():
            try:
                await self.backend.create(Item(_key(name), encode(role)))
            except AlreadyExists:
                continue
            created.append(name)
        return created

    async def get(self, name: str) -> Role:
        """The role ``name``.

        Raises:
            NotFound: no such role.
            ValueError: ``name`` is not a valid role name.
        """
        return await get_resource(self.backend, _key(name), Role)

    async def get_many(self, names: Iterable[str]) -> list[Role]:
        """The roles that exist among ``names``, in order; missing ones are skipped."""
        out = []
        for name in dict.fromkeys(names):
            try:
                out.append(await self.get(name))
            except (NotFound, ValueError):
                continue
        return out

    async def list(self) -> list[Role]:
        """Every role, by name."""
        return [decode(item, Role) for item in await self.backend.get_range(ROLES_PREFIX)]

    async def upsert(self, role: Role, *, by: str | None = None) -> bool:
        """Create or replace a role; return True if it was created.

        Args:
            role: the role (validated by its constructor or the converter).
            by: who did it, for the audit log.
        """
        key = _key(role.metadata.name)
        try:
            await self.backend.create(Item(key, encode(role)))
            created = True
        except AlreadyExists:
            await self.backend.put(Item(key, encode(role)))
            created = False
        code = audit_log.ROLE_CREATED if created else audit_log.ROLE_UPDATED
        await self.audit.emit(code, user=by, fields={"name": role.metadata.name})
        return created

    async def delete(self, name: str, *, by: str | None = None) -> None:
        """Delete a role.

        Raises:
            NotFound: no such role.
        """
        await self.backend.delete(_key(name))
        await self.audit.emit(audit_log.ROLE_DELETED, user=by, fields={"name": name})
