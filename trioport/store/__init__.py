"""Storage: the :class:`Backend` protocol, its three implementations, and the ``storage:`` config.

Open the backend a ``storage:`` section names with :func:`open_backend`::

    async with open_backend({"type": "sqlite"}, data_dir="/var/lib/trioport") as backend:
        await backend.create(Item("/tokens/abc", b"...", expires=time.time() + 900))

:func:`parse_storage_config` checks a section without opening anything (the
config loader calls it so that a typo fails at load time, naming the key).
Semantics are in :mod:`trioport.store.backend`; the user documentation is
``docs/storage.md``.
"""

from __future__ import annotations

import os
import ssl
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import attrs

from trioport.errors import ConfigError
from trioport.store.backend import (
    DEFAULT_MAX_PENDING,
    Backend,
    Clock,
    Event,
    EventType,
    Item,
    WatchChannel,
)
from trioport.store.etcd import DEFAULT_PREFIX, EtcdBackend, open_etcd_backend, tls_context
from trioport.store.memory import MemoryBackend, open_memory_backend
from trioport.store.sqlite import SQLiteBackend, open_sqlite_backend

__all__ = [
    "DEFAULT_MAX_PENDING",
    "DEFAULT_SQLITE_PATH",
    "Backend",
    "Clock",
    "EtcdBackend",
    "EtcdConfig",
    "Event",
    "EventType",
    "Item",
    "MemoryBackend",
    "SQLiteBackend",
    "SQLiteConfig",
    "WatchChannel",
    "open_backend",
    "open_etcd_backend",
    "open_memory_backend",
    "open_sqlite_backend",
    "parse_storage_config",
]

#: The config section's name, used in error messages ("storage.peers").
SECTION = "storage"


#: The SQLite file when ``storage.path`` is not given, relative to ``data_dir``.
DEFAULT_SQLITE_PATH = os.path.join("backend", "sqlite.db")


@attrs.frozen
class SQLiteConfig:
    """``storage: {type: sqlite, path: FILE}``: the SQLite database file."""

    path: str


@attrs.frozen
class EtcdConfig:
    """``storage: {type: etcd, peers: [...], prefix: ..., tls_*_file: ...}``."""

    peers: tuple[str, ...]
    prefix: str = DEFAULT_PREFIX
    tls_ca_file: str | None = None
    tls_cert_file: str | None = None
    tls_key_file: str | None = None


_KEYS = {
    "sqlite": {"type", "path"},
    "etcd": {"type", "peers", "prefix", "tls_ca_file", "tls_cert_file", "tls_key_file"},
}


def _fail(message: str, key: str) -> ConfigError:
    return ConfigError(message, key=f"{SECTION}.{key}" if key else SECTION)


def _string(spec: Mapping[str, Any], key: str, *, required: bool = False) -> str | None:
    value = spec.get(key)
    if value is None:
        if required:
            raise _fail("is required", key)
        return None
    if not isinstance(value, str) or not value:
        raise _fail(f"must be a non-empty string, got {value!r}", key)
    return value


def parse_storage_config(
    spec: Mapping[str, Any] | object, *, data_dir: str | None = None
) -> SQLiteConfig | EtcdConfig:
    """Check a ``storage:`` section and return a :class:`SQLiteConfig` or :class:`EtcdConfig`.

    Args:
        spec: the section as a mapping, strictly checked (an unknown key is an
            error, a key set to ``None`` counts as absent); or an object with
            the same attributes (``trioport.config.StorageConfig``), of which only
            those its ``type`` uses are read; or an already parsed config.
        data_dir: the process's data directory. A relative SQLite ``path`` is
            relative to it, and a missing one is :data:`DEFAULT_SQLITE_PATH` in it.

    Raises:
        ConfigError: naming the bad key (``storage.type``, ``storage.peers`` ...):
            a missing or unknown type, an unknown key, a wrong value, or a TLS file
            that is missing or unreadable.
    """
    if isinstance(spec, SQLiteConfig | EtcdConfig):
        return spec
    if not isinstance(spec, Mapping):
        if not hasattr(spec, "type"):
            raise _fail(f"must be a mapping, got {type(spec).__name__}", "")
        kind = getattr(spec, "type", None)
        if kind not in _KEYS:
            raise _fail(f"unknown storage type {kind!r}; expected 'sqlite' or 'etcd'", "type")
        spec = {key: getattr(spec, key, None) for key in _KEYS[kind]}
    kind = spec.get("type")
    if kind is None:
        raise _fail("is required: 'sqlite' or 'etcd'", "type")
    if kind not in _KEYS:
        raise _fail(f"unknown storage type {kind!r}; expected 'sqlite' or 'etcd'", "type")
    for key in spec:
        if key not in _KEYS[kind]:
            raise _fail(f"unknown key for storage type {kind!r}", str(key))
    if kind == "sqlite":
        path = _string(spec, "path", required=data_dir is None)
        path = os.path.expanduser(path or DEFAULT_SQLITE_PATH)
        if data_dir is not None:
            path = os.path.join(os.path.expanduser(data_dir), path)
        return SQLiteConfig(path=path)

    peers = spec.get("peers")
    if isinstance(peers, str) or not isinstance(peers, list | tuple) or not peers:
        raise _fail("must be a non-empty list of URLs", "peers")
    for i, peer in enumerate(peers):
        if not isinstance(peer, str) or not peer.startswith(("http://", "https://")):
            raise _fail(f"must be an http:// or https:// URL, got {peer!r}", f"peers[{i}]")
    prefix = _string(spec, "prefix")
    if prefix is not None and not prefix.startswith("/"):
        raise _fail(f"must start with '/', got {prefix!r}", "prefix")
    config = EtcdConfig(
        peers=tuple(peers),
        prefix=DEFAULT_PREFIX if prefix is None else prefix,
        tls_ca_file=_string(spec, "tls_ca_file"),
        tls_cert_file=_string(spec, "tls_cert_file"),
        tls_key_file=_string(spec, "tls_key_file"),
    )
    if (config.tls_cert_file is None) != (config.tls_key_file is None):
        missing = "tls_key_file" if config.tls_key_file is None else "tls_cert_file"
        raise _fail("is required with tls_cert_file/tls_key_file (they go together)", missing)
    _check_tls(config)
    return config


def _check_tls(config: EtcdConfig) -> None:
    """Load the TLS files once now, so a bad path fails at config time, naming the key."""
    for key in ("tls_ca_file", "tls_cert_file", "tls_key_file"):
        path = getattr(config, key)
        if path is not None and not os.path.isfile(path):
            raise _fail(f"no such file: {path}", key)
    try:
        if config.tls_ca_file or config.tls_cert_file:
            tls_context(config.tls_ca_file, config.tls_cert_file, config.tls_key_file)
    except (OSError, ssl.SSLError) as exc:
        key = "tls_ca_file" if config.tls_cert_file is None else "tls_cert_file"
        raise _fail(f"cannot load the TLS files: {exc}", key) from exc


@asynccontextmanager
async def open_backend(
    spec: Mapping[str, Any] | object,
    *,
    data_dir: str | None = None,
    clock: Clock = time.time,
) -> AsyncIterator[Backend]:
    """Open the backend a ``storage:`` section describes; close it when the block exits.

    Args:
        spec: the section as a mapping (``{"type": "sqlite", "path": ...}`` or
            ``{"type": "etcd", "peers": [...], ...}``), a ``StorageConfig``-like
            object or a parsed config; see :func:`parse_storage_config`.
        data_dir: what a relative or missing SQLite ``path`` is relative to.
        clock: the wall clock that decides expiry.

    Raises:
        ConfigError: the section is wrong (see :func:`parse_storage_config`).
        BackendUnavailable: the store cannot be opened or reached.
    """
    config = parse_storage_config(spec, data_dir=data_dir)
    if isinstance(config, SQLiteConfig):
        async with open_sqlite_backend(config.path, clock=clock) as sqlite_backend:
            yield sqlite_backend
    else:
        async with open_etcd_backend(
            config.peers,
            prefix=config.prefix,
            tls_ca_file=config.tls_ca_file,
            tls_cert_file=config.tls_cert_file,
            tls_key_file=config.tls_key_file,
            clock=clock,
        ) as etcd_backend:
            yield etcd_backend
