"""Fixtures for the storage tests: a fake wall clock, a real etcd, one harness per backend.

The etcd server is Debian's ``/usr/bin/etcd`` (3.4), started once per session on
free loopback ports with a short heartbeat/election so that it elects itself at
once and grants 1-second leases. Each test gets its own key prefix in it.
"""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import attrs
import httpx
import pytest

from trioport.store import open_etcd_backend, open_memory_backend, open_sqlite_backend
from trioport.store.backend import Backend

ETCD = shutil.which("etcd") or "/usr/bin/etcd"

#: Seconds between sweeps (memory, sqlite) and polls (sqlite) in tests.
FAST = 0.02


class FakeClock:
    """A wall clock that only moves when told to (Teleport's clockwork.FakeClock)."""

    def __init__(self, start: float | None = None) -> None:
        self.now = time.time() if start is None else start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@attrs.define
class EtcdServer:
    """A running etcd: its client URL, process and data directory."""

    url: str
    process: subprocess.Popen[bytes]
    data_dir: Path
    log_path: Path

    def http(self, path: str, body: dict[str, object]) -> dict[str, object]:
        """POST to the JSON gateway synchronously (for test setup and inspection)."""
        reply = httpx.post(self.url + path, json=body, timeout=10)
        reply.raise_for_status()
        result: dict[str, object] = reply.json()
        return result


def start_etcd(
    data_dir: Path, *, extra: tuple[str, ...] = (), tls: ssl.SSLContext | None = None
) -> EtcdServer:
    """Start etcd on free loopback ports and wait until it answers.

    With ``tls`` the client URL is https (``extra`` must name the certificate
    files) and ``tls`` is the client context used to probe it.
    """
    scheme = "https" if tls is not None else "http"
    data_dir.mkdir(parents=True, exist_ok=True)
    for _attempt in range(3):
        client, peer = free_port(), free_port()
        url = f"{scheme}://127.0.0.1:{client}"
        peer_url = f"http://127.0.0.1:{peer}"
        log_path = data_dir.parent / f"{data_dir.name}.log"
        log = log_path.open("ab")
        process = subprocess.Popen(
            [
                ETCD,
                "--name=test",
                f"--data-dir={data_dir}",
                f"--listen-client-urls={url}",
                f"--advertise-client-urls={url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=test={peer_url}",
                "--heartbeat-interval=20",
                "--election-timeout=200",
                "--log-level=warn",
                *extra,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        server = EtcdServer(url, process, data_dir, log_path)
        if _wait_ready(server, tls):
            return server
        stop_etcd(server)
    raise RuntimeError(f"etcd did not start; see {log_path}:\n{log_path.read_text()[-2000:]}")


def _wait_ready(server: EtcdServer, tls: ssl.SSLContext | None) -> bool:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            return False
        try:
            reply = httpx.get(server.url + "/health", timeout=1, verify=tls or True)
            if reply.json().get("health") == "true":
                return True
        except (httpx.HTTPError, ValueError):
            pass
        time.sleep(0.05)
    return False


def stop_etcd(server: EtcdServer) -> None:
    if server.process.poll() is None:
        server.process.terminate()
        try:
            server.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait()


@pytest.fixture(scope="session")
def etcd_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdServer]:
    """One real etcd for the whole session."""
    if not os.access(ETCD, os.X_OK):
        raise RuntimeError(f"{ETCD} is missing: install Debian's etcd-server")
    server = start_etcd(tmp_path_factory.mktemp("etcd") / "data")
    try:
        yield server
    finally:
        stop_etcd(server)


@pytest.fixture
def etcd_prefix() -> str:
    """A key prefix no other test uses."""
    return f"/test-{uuid.uuid4().hex[:12]}"


@attrs.define
class Harness:
    """A backend under test, the fake clock it reads, and its name."""

    name: str
    backend: Backend
    clock: FakeClock


BACKENDS = ["memory", "sqlite", "etcd"]


@pytest.fixture(params=BACKENDS)
def backend_kind(request: pytest.FixtureRequest) -> tuple[str, EtcdServer | None]:
    """Which backend to test, and the etcd server if it is etcd (started only then)."""
    if request.param == "etcd":
        return "etcd", request.getfixturevalue("etcd_server")
    return request.param, None


@pytest.fixture
async def harness(
    backend_kind: tuple[str, EtcdServer | None], tmp_path: Path, etcd_prefix: str
) -> AsyncIterator[Harness]:
    """Each backend in turn, on a fresh store, with a fake clock."""
    name, server = backend_kind
    clock = FakeClock()
    if name == "memory":
        async with open_memory_backend(clock=clock, sweep_interval=FAST) as memory:
            yield Harness(name, memory, clock)
    elif name == "sqlite":
        async with open_sqlite_backend(
            tmp_path / "store.db", clock=clock, poll_interval=FAST, sweep_interval=FAST
        ) as sqlite:
            yield Harness(name, sqlite, clock)
    else:
        assert server is not None
        async with open_etcd_backend([server.url], prefix=etcd_prefix, clock=clock) as etcd:
            yield Harness(name, etcd, clock)
