"""Roles in the store: presets on first start, changes audited, deleted roles skipped."""

from __future__ import annotations

import pytest

from trioport.errors import NotFound
from trioport.resources import Metadata, Role, RoleConditions, RoleSpec
from trioport.roles.auth.server import AuthServer

from .conftest import START


async def test_presets_exist_and_are_not_overwritten(auth: AuthServer) -> None:
    assert [r.metadata.name for r in await auth.roles.list()] == ["access", "auditor", "editor"]
    custom = Role(
        metadata=Metadata(name="access", description="changed by the admin"),
        spec=RoleSpec(allow=RoleConditions(logins=["ubuntu"], node_labels={"env": ["dev"]})),
    )
    assert await auth.roles.upsert(custom, by="admin") is False
    assert await auth.roles.ensure_presets() == []
    assert (await auth.roles.get("access")).metadata.description == "changed by the admin"


async def test_changes_are_audited(auth: AuthServer) -> None:
    role = Role(metadata=Metadata(name="dba"), spec=RoleSpec())
    assert await auth.roles.upsert(role, by="admin") is True
    await auth.roles.upsert(role, by="admin")
    await auth.roles.delete("dba", by="admin")
    found = await auth.audit.search(since=START - 1, until=START + 1)
    assert [(e.spec.event, e.spec.code, e.spec.fields["name"]) for e in found] == [
        ("role.created", "T9000I", "dba"),
        ("role.updated", "T9002I", "dba"),
        ("role.deleted", "T9001I", "dba"),
    ]
    with pytest.raises(NotFound):
        await auth.roles.delete("dba")


async def test_missing_roles_are_skipped(auth: AuthServer) -> None:
    roles = await auth.roles.get_many(["access", "deleted-long-ago", "access", "bad/name"])
    assert [r.metadata.name for r in roles] == ["access"]
