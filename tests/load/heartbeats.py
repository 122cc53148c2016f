"""Many simulated nodes heartbeating to one auth service (SQLite or etcd).

A simulated node is what a real node is to the auth service: it joins with its own
single-use token and key (and so gets its own host certificate and UUID), keeps one
SSH connection to the auth API open, and reports itself with ``POST
/v1/nodes/heartbeat``. It runs no SSH server. :func:`heartbeating_nodes` joins
``nodes`` of them, connects each, has every one send ``rounds`` heartbeats (one in
flight per node, all nodes at once), then asks the auth service, as the
administrator, which nodes it lists.

Every simulated node joins from 127.0.0.1, and the join endpoint is rate-limited
per source address (40 at once, then 20 a minute, as Teleport). A cluster of
thousands of nodes has thousands of addresses; :func:`unlimited_joins` lifts that
limit in the process that runs the auth service, for the duration of a run only.
"""

from __future__ import annotations

import contextlib
import random
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import trio

from trioport.authclient import ClientIdentity, connect_auth, join_cluster
from trioport.config import Address, AuthService, Config, Global, StorageConfig
from trioport.resources import Metadata, Node, NodeSpec
from trioport.roles.auth import api as auth_api
from trioport.sshproto.keys import PrivateKey

from .harness import _error, _summary_ms, rss_bytes

CLUSTER = "heartbeat.test"
ETCD = shutil.which("etcd") or "/usr/bin/etcd"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def etcd(work: Path) -> Iterator[tuple[str, int]]:
    """Debian's etcd on free loopback ports, its data under ``work``: (client URL, pid)."""
    work.mkdir(parents=True, exist_ok=True)
    client, peer = _free_port(), _free_port()
    url, peer_url = f"http://127.0.0.1:{client}", f"http://127.0.0.1:{peer}"
    with (work / "etcd.log").open("wb") as log:
        process = subprocess.Popen(
            [
                ETCD,
                "--name=load",
                f"--data-dir={work / 'etcd-data'}",
                f"--listen-client-urls={url}",
                f"--advertise-client-urls={url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=load={peer_url}",
                "--log-level=warn",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"etcd did not start: {(work / 'etcd.log').read_text()[-1000:]}")
            try:
                if (
                    httpx.get(url + "/health", timeout=1, trust_env=False).json().get("health")
                    == "true"
                ):
                    break
            except (httpx.HTTPError, ValueError):
                pass
            time.sleep(0.05)
        yield url, process.pid
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@contextlib.contextmanager
def unlimited_joins() -> Iterator[None]:
    """Lift the per-source join rate limit of auth services started inside this block."""
    saved = auth_api.JOIN_RATE_PER_MINUTE, auth_api.JOIN_BURST
    auth_api.JOIN_RATE_PER_MINUTE, auth_api.JOIN_BURST = 10**9, 10**9
    try:
        yield
    finally:
        auth_api.JOIN_RATE_PER_MINUTE, auth_api.JOIN_BURST = saved


def auth_config(data_dir: Path, backend: str, etcd_url: str | None = None) -> Config:
    """The auth service alone on a free loopback port, on SQLite or on etcd."""
    storage = (
        StorageConfig(type="etcd", peers=[etcd_url or ""], prefix=f"/load{time.time_ns()}")
        if backend == "etcd"
        else StorageConfig()
    )
    config = Config(
        teleport=Global(nodename="auth1", data_dir=str(data_dir), storage=storage),
        auth_service=AuthService(listen_addr=Address("127.0.0.1", 0), cluster_name=CLUSTER),
    )
    config.teleport.connection_limits.max_unauthenticated = 200
    config.teleport.connection_limits.max_unauthenticated_per_source = 200
    return config


@dataclass
class _Phase:
    rounds: int
    interval: float | None
    go: trio.Event = field(default_factory=trio.Event)
    done: trio.Event = field(default_factory=trio.Event)
    finished: int = 0
    latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    started: float = 0.0
    ended: float = 0.0

    def result(self, nodes: int) -> dict[str, Any]:
        seconds = self.ended - self.started
        return {
            "rounds": self.rounds,
            "interval": self.interval,
            "offered_per_second": nodes / self.interval if self.interval else None,
            "heartbeats": len(self.latencies),
            "failed": len(self.errors),
            "errors": self.errors,
            "heartbeat_seconds": seconds,
            "heartbeats_per_second": len(self.latencies) / seconds if seconds else 0.0,
            "latency_ms": _summary_ms(self.latencies),
        }


async def heartbeating_nodes(
    auth: Address,
    data_dir: Path,
    nodes: int,
    *,
    rounds: int = 3,
    interval: float | None = None,
    then: Sequence[tuple[int, float | None]] = (),
    parallel: int = 8,
    auth_pid: int | None = None,
) -> dict[str, Any]:
    """Join ``nodes`` simulated nodes, connect each, send ``rounds`` heartbeats from each.

    Args:
        auth: the auth service.
        data_dir: its data directory (the administrator's identity is there).
        rounds: heartbeats each node sends.
        interval: None: every node sends its next heartbeat as soon as the last is
            answered, all nodes at once (a burst: the most the service absorbs).
            A number: a node's first heartbeat comes at a random moment within
            ``interval`` and the next ones ``interval`` after the one before, as
            nodes do (``trioport.roles.node.heartbeat.HEARTBEAT_INTERVAL``): the
            offered rate is ``nodes / interval``.
        then: more phases, ``(rounds, interval)`` each, by the same nodes over the
            same connections, reported under ``"then"``.
        parallel: joins and connection handshakes at a time.
        auth_pid: the auth service's process, to sample its memory (None: skip).

    Returns:
        The join and connection figures, the first phase's figures at the top
        level, and the others' in a list under ``"then"``. ``errors`` holds the
        failed joins and connections and the first phase's failed heartbeats.
    """
    admin = ClientIdentity.load(data_dir / "admin")
    errors: list[str] = []
    async with connect_auth(auth, admin) as client:
        tokens = [(await client.add_token(["node"]))["token"] for _ in range(nodes)]
    rss0 = rss_bytes(auth_pid) if auth_pid else None

    joined: list[tuple[str, str, ClientIdentity]] = []
    gate = trio.Semaphore(parallel)
    t0 = time.perf_counter()

    async def join(i: int) -> None:
        async with gate:
            key = PrivateKey.generate()
            name = f"sim{i:05d}"
            try:
                result = await join_cluster(
                    auth, token=tokens[i], key=key, node_name=name, addresses=["127.0.0.1"]
                )
                joined.append((result.host_id, name, result.identity(key)))
            except Exception as exc:
                errors.append("join: " + _error(exc))

    async with trio.open_nursery() as nursery:
        for i in range(nodes):
            nursery.start_soon(join, i)
    join_seconds = time.perf_counter() - t0

    phases = [_Phase(rounds, interval), *(_Phase(r, i) for r, i in then)]
    connected = 0
    failed_connections = 0
    all_connected = trio.Event()
    rng = random.Random(5)

    def finish(phase: _Phase) -> None:
        phase.finished += 1
        if phase.finished == len(joined):
            phase.done.set()

    async def node_loop(i: int, host_id: str, name: str, identity: ClientIdentity) -> None:
        nonlocal connected, failed_connections
        report = Node(
            metadata=Metadata(name=host_id, labels={"env": "load", "i": str(i)}),  # type: ignore[arg-type]
            spec=NodeSpec(hostname=name, addr=f"127.0.0.1:{3022 + i % 1000}"),
        )
        try:
            async with gate:
                cm = connect_auth(auth, identity, max_channels=1)
                node = await cm.__aenter__()
        except Exception as exc:
            errors.append("connect: " + _error(exc))
            failed_connections += 1
            if connected + failed_connections == len(joined):
                all_connected.set()
            for phase in phases:
                finish(phase)
            return
        try:
            connected += 1
            if connected + failed_connections == len(joined):
                all_connected.set()
            for phase in phases:
                await phase.go.wait()
                try:
                    if phase.interval is not None:
                        await trio.sleep(rng.uniform(0, phase.interval))
                    for r in range(phase.rounds):
                        t = time.perf_counter()
                        try:
                            await node.heartbeat(report)
                            phase.latencies.append(time.perf_counter() - t)
                        except Exception as exc:  # a failed heartbeat: the node tries again
                            phase.errors.append("heartbeat: " + _error(exc))
                        if phase.interval is not None and r < phase.rounds - 1:
                            await trio.sleep(max(0.0, phase.interval - (time.perf_counter() - t)))
                finally:
                    finish(phase)
        finally:
            await cm.__aexit__(None, None, None)

    rss_held = None
    async with trio.open_nursery() as nursery:
        for i, (host_id, name, identity) in enumerate(joined):
            nursery.start_soon(node_loop, i, host_id, name, identity)
        if joined:
            await all_connected.wait()
        rss_held = rss_bytes(auth_pid) if auth_pid else None
        for phase in phases:
            phase.started = time.perf_counter()
            phase.go.set()
            if joined:
                await phase.done.wait()
            phase.ended = time.perf_counter()

    async with connect_auth(auth, admin) as client:
        listed = {
            n["hostname"]
            for n in await client.list_nodes()
            if str(n.get("hostname", "")).startswith("sim") and n.get("online")
        }
    first = phases[0].result(nodes)
    return {
        "nodes": nodes,
        "joined": len(joined),
        "connected": connected,
        **first,
        "errors": errors + first["errors"],
        "then": [p.result(nodes) for p in phases[1:]],
        "listed": len(listed),
        "join_seconds": join_seconds,
        "joins_per_second": len(joined) / join_seconds if join_seconds else 0.0,
        "auth_rss_before": rss0,
        "auth_rss_connected": rss_held,
        "auth_rss_per_node": (rss_held - rss0) / max(1, connected) if rss0 and rss_held else None,
    }
