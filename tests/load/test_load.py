"""Load, reduced for CI: what a user would notice under many sessions, connections and nodes.

One ``trioport run`` (auth, proxy and a node in one process, in a subprocess on
loopback ports) serves the module; the clients are this process, with the library
``tsh`` uses (see :mod:`tests.load.harness`). Each test asserts outcomes, never
speed: no errors, every session echoed and exited 0, every cycle audited, and the
server's descriptors, processes, open connections and temporary files back where
they were once the clients are gone. ``bench/load.py`` runs the same scenarios at
full size and records the timings and memory.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from trioport.config import Address
from trioport.roles.auth.service import serve as serve_auth

from . import harness as h
from . import heartbeats as hb

#: Sizes CI runs (bench/load.py: 500, 1000, 5000, 10000).
SESSIONS = 30
IDLE = 100
NODES = 200
CYCLES = 200
MiB = 1024 * 1024


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[h.Server]:
    with h.start_server(tmp_path_factory.mktemp("load")) as running:
        yield running


def _no_leaks(result: dict[str, object], keys: tuple[str, ...]) -> dict[str, tuple[int, int]]:
    """The resources among ``keys`` that did not come back to the baseline: (before, after)."""
    before, after = result["baseline"], result["after"]
    assert isinstance(before, dict) and isinstance(after, dict)
    return {k: (before[k], after[k]) for k in keys if after[k] > before[k]}


async def test_30_concurrent_pty_sessions_through_one_proxy_all_echo(server: h.Server) -> None:
    user = await h.login(server, "typist")
    result = await h.interactive_sessions(server, user, SESSIONS, keystrokes=10)
    assert result["errors"] == []
    assert result["opened"] == SESSIONS
    assert result["keystrokes"] == SESSIONS * 10  # every key came back
    assert result["exit_statuses_zero"] == SESSIONS  # every cat ended on ^D with status 0
    # While they were all open, the node ran one cat per session.
    assert result["held"]["children"] >= SESSIONS
    assert _no_leaks(result, ("fds", "children", "open_connections")) == {}


async def test_100_idle_connections_leave_nothing_behind(server: h.Server) -> None:
    user = await h.login(server, "idler")
    result = await h.idle_connections(server, user, IDLE)
    assert result["errors"] == []
    assert result["opened"] == IDLE
    # Each tsh connection is two on the server: the proxy's, and the node's inside it.
    held = result["held"]["open_connections"] - result["baseline"]["open_connections"]
    assert held >= 2 * IDLE
    assert _no_leaks(result, ("fds", "children", "open_connections", "threads")) == {}


async def test_a_stalled_reader_neither_grows_the_server_nor_stalls_another_session(
    server: h.Server,
) -> None:
    user = await h.login(server, "staller")
    result = await h.stalled_reader(server, user, keys=20, interval=0.3)
    assert result["errors"] == []
    assert result["echoes"] == 20  # the other session answered every key throughout
    assert result["typing_exit_status"] == 0
    # `yes` writes hundreds of MB/s; with flow control the server holds a window's
    # worth, not the stream: bounded growth, flat once the windows are full.
    assert result["rss_growth"] < 64 * MiB, result["rss_growth"]
    assert result["rss_growth_last_two_thirds"] < 8 * MiB, result["samples"]
    # Closing the stalled channel ended `yes` on the node.
    assert _no_leaks(result, ("fds", "children", "open_connections")) == {}


async def test_200_connect_exec_exit_cycles_leak_nothing_and_are_all_audited(
    server: h.Server,
) -> None:
    user = await h.login(server, "cycler")
    result = await h.connect_cycles(server, user, CYCLES)
    assert result["errors"] == []
    assert result["exit_statuses_zero"] == CYCLES
    assert result["exec_events"] == CYCLES
    assert _no_leaks(result, ("fds", "children", "open_connections", "tmp_files")) == {}


@pytest.fixture
def backend_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str | None]:
    if request.param == "sqlite":
        yield None
        return
    with hb.etcd(tmp_path / "etcd") as (url, _pid):
        yield url


@pytest.mark.parametrize("backend_url", ["sqlite", "etcd"], indirect=True)
async def test_200_simulated_nodes_heartbeat_to_one_auth_service(
    backend_url: str | None, tmp_path: Path
) -> None:
    backend = "sqlite" if backend_url is None else "etcd"
    config = hb.auth_config(tmp_path / "data", backend, backend_url)
    with hb.unlimited_joins():
        async with trio.open_nursery() as nursery:
            addrs = await nursery.start(lambda **kw: serve_auth(config, bcrypt_cost=4, **kw))
            auth = Address("127.0.0.1", int(addrs[0][1]))
            result = await hb.heartbeating_nodes(
                auth, tmp_path / "data", NODES, rounds=3, auth_pid=os.getpid()
            )
            nursery.cancel_scope.cancel()
    assert result["errors"] == []
    assert result["joined"] == result["connected"] == NODES
    assert result["heartbeats"] == 3 * NODES
    # Every one of them is listed online, each under its own name.
    assert result["listed"] == NODES
