"""The ``storage:`` section: what is accepted, and errors that name the bad key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

from trioport.config import StorageConfig
from trioport.errors import ConfigError
from trioport.store import EtcdConfig, SQLiteConfig, open_backend, parse_storage_config


def test_a_sqlite_section() -> None:
    assert parse_storage_config({"type": "sqlite", "path": "/var/lib/trioport"}) == SQLiteConfig(
        "/var/lib/trioport"
    )


def test_a_relative_or_missing_sqlite_path_is_under_the_data_dir() -> None:
    assert parse_storage_config({"type": "sqlite"}, data_dir="/d") == SQLiteConfig(
        "/d/backend/sqlite.db"
    )
    assert parse_storage_config({"type": "sqlite", "path": "x.db"}, data_dir="/d") == (
        SQLiteConfig("/d/x.db")
    )
    assert parse_storage_config({"type": "sqlite", "path": "/abs.db"}, data_dir="/d") == (
        SQLiteConfig("/abs.db")
    )


def test_the_config_loaders_storage_object_is_accepted() -> None:
    # trioport.config keeps every key on one class; only those of the type count.
    sqlite = StorageConfig(type="sqlite", path="b.db")
    assert parse_storage_config(sqlite, data_dir="/d") == SQLiteConfig("/d/b.db")
    etcd = StorageConfig(type="etcd", peers=["http://e:2379"], prefix="/c")
    assert parse_storage_config(etcd) == EtcdConfig(peers=("http://e:2379",), prefix="/c")
    with pytest.raises(ConfigError) as info:
        parse_storage_config(StorageConfig(type="etcd"))
    assert info.value.key == "storage.peers"


def test_an_etcd_section_with_defaults() -> None:
    config = parse_storage_config({"type": "etcd", "peers": ["https://10.0.0.1:2379"]})
    assert config == EtcdConfig(peers=("https://10.0.0.1:2379",), prefix="/trioport")


def test_an_etcd_section_with_tls(tmp_path: Path) -> None:
    # Real PEM files are exercised against a TLS etcd in test_etcd.py; here a CA file
    # that is not PEM must fail at config time, naming the key.
    (tmp_path / "ca.pem").write_text("not a certificate")
    with pytest.raises(ConfigError) as info:
        parse_storage_config(
            {"type": "etcd", "peers": ["https://e:2379"], "tls_ca_file": str(tmp_path / "ca.pem")}
        )
    assert info.value.key == "storage.tls_ca_file"


@pytest.mark.parametrize(
    ("spec", "key", "words"),
    [
        ({}, "storage.type", "required"),
        ({"type": "dynamodb"}, "storage.type", "unknown storage type 'dynamodb'"),
        ({"type": "memory"}, "storage.type", "expected 'sqlite' or 'etcd'"),
        ({"type": "sqlite"}, "storage.path", "required"),
        ({"type": "sqlite", "path": ""}, "storage.path", "non-empty string"),
        ({"type": "sqlite", "path": 7}, "storage.path", "non-empty string"),
        ({"type": "sqlite", "path": "/d", "peers": ["http://e"]}, "storage.peers", "unknown key"),
        ({"type": "sqlite", "path": "/d", "pth": 1}, "storage.pth", "unknown key"),
        ({"type": "etcd"}, "storage.peers", "non-empty list"),
        ({"type": "etcd", "peers": []}, "storage.peers", "non-empty list"),
        ({"type": "etcd", "peers": "http://e:2379"}, "storage.peers", "non-empty list"),
        ({"type": "etcd", "peers": ["e:2379"]}, "storage.peers[0]", "http:// or https://"),
        ({"type": "etcd", "peers": ["http://e"], "prefix": "x"}, "storage.prefix", "start with"),
        ({"type": "etcd", "peers": ["http://e"], "path": "/d"}, "storage.path", "unknown key"),
        (
            {"type": "etcd", "peers": ["http://e"], "tls_cert_file": "/c.pem"},
            "storage.tls_key_file",
            "go together",
        ),
        (
            {"type": "etcd", "peers": ["http://e"], "tls_ca_file": "/no/such/ca.pem"},
            "storage.tls_ca_file",
            "no such file",
        ),
    ],
)
def test_a_bad_section_names_the_key(spec: dict[str, Any], key: str, words: str) -> None:
    with pytest.raises(ConfigError, match=words) as info:
        parse_storage_config(spec)
    assert info.value.key == key
    assert key in str(info.value)


def test_a_section_that_is_not_a_mapping() -> None:
    with pytest.raises(ConfigError) as info:
        parse_storage_config(["sqlite"])  # type: ignore[arg-type]
    assert info.value.key == "storage"


async def test_open_backend_checks_the_section_before_opening(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        async with open_backend({"type": "sqlite", "path": str(tmp_path), "sync": "off"}):
            pass
    assert info.value.key == "storage.sync"
    assert list(await trio.Path(tmp_path).iterdir()) == []
