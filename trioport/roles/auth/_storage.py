"""How the auth service keeps resources in a :class:`~trioport.store.backend.Backend`.

Every resource is stored as its JSON form *with* secrets (``to_json(secrets=True)``)
under a key the owning module names. Only the auth service reads these keys; what
leaves it goes through ``resource.public()``.

Read-modify-write goes through :func:`mutate`, a compare-and-swap loop: the change
function runs again on the fresh value when another writer got there first, so a
check inside it (a TOTP step not yet used, a lock not yet set) is re-made against
the value that is actually replaced. That is what makes these rules hold on every
backend and with several auth servers.

Wall time is the backend's ``clock`` (seconds since the epoch); resources hold
timezone-aware UTC datetimes, converted by :func:`utc` and :func:`epoch`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any, TypeVar

import attrs

from trioport.errors import CompareFailed, StoreError
from trioport.resources import from_json, to_json
from trioport.store.backend import Backend, Item

T = TypeVar("T")

#: Compare-and-swap attempts before giving up (each one lost to a concurrent writer).
MAX_CAS_ATTEMPTS = 32


def utc(seconds: float) -> dt.datetime:
    """Epoch seconds to an aware UTC datetime."""
    return dt.datetime.fromtimestamp(seconds, tz=dt.UTC)


def epoch(moment: dt.datetime) -> float:
    """An aware (or naive-as-UTC) datetime to epoch seconds."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return moment.timestamp()


def encode(resource: Any) -> bytes:
    """A resource as stored: JSON with its secrets, without the read-time revision."""
    meta = getattr(resource, "metadata", None)
    if meta is not None and meta.revision is not None:
        resource = attrs.evolve(resource, metadata=attrs.evolve(meta, revision=None))
    return to_json(resource, secrets=True).encode("utf-8")


def decode(item: Item, cls: type[T]) -> T:
    """Read a stored resource back; ``metadata.revision`` is set from the item.

    Raises:
        StoreError: the stored value is not a valid ``cls`` (a corrupt store).
    """
    try:
        resource = from_json(item.value, cls)
    except Exception as exc:  # ConfigError from the converter, or bad UTF-8
        raise StoreError(f"corrupt {cls.__name__} at {item.key}: {exc}") from None
    meta = getattr(resource, "metadata", None)
    if meta is not None:
        resource = attrs.evolve(resource, metadata=attrs.evolve(meta, revision=str(item.revision)))
    return resource


async def get_resource(backend: Backend, key: str, cls: type[T]) -> T:
    """Read the resource at ``key``.

    Raises:
        NotFound: nothing (live) is stored there.
        StoreError: what is stored there is not a ``cls``.
    """
    return decode(await backend.get(key), cls)


async def mutate(
    backend: Backend,
    key: str,
    cls: type[T],
    change: Callable[[T], T],
    *,
    set_expires: bool = False,
    expires: float | None = None,
) -> T:
    """Replace the resource at ``key`` with ``change(current)``, atomically.

    ``change`` must be a pure function of its argument (it may raise to abort, and
    runs again if a concurrent writer changed the value first). The item keeps its
    expiry unless ``set_expires`` is true, when it gets ``expires``.

    Returns:
        The stored new value.

    Raises:
        NotFound: nothing is stored at ``key``.
        StoreError: still losing the race after :data:`MAX_CAS_ATTEMPTS` tries.
        Whatever ``change`` raises.
    """
    for _attempt in range(MAX_CAS_ATTEMPTS):
        item = await backend.get(key)
        new = change(decode(item, cls))
        replacement = Item(key, encode(new), expires=expires if set_expires else item.expires)
        try:
            stored = await backend.compare_and_swap(item, replacement)
        except CompareFailed:
            continue
        return decode(stored, cls)
    raise StoreError(f"too many concurrent updates of {key}; try again")
