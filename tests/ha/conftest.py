"""Fixtures for the HA tests: a three-member etcd cluster of real processes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .cluster import EtcdCluster


@pytest.fixture
def etcd(tmp_path: Path) -> Iterator[EtcdCluster]:
    """Three etcd members on loopback, healthy; stopped after the test."""
    cluster = EtcdCluster.create(tmp_path / "etcd")
    try:
        cluster.start_all()
        yield cluster
    finally:
        cluster.stop_all(graceful=False)  # their data is thrown away
