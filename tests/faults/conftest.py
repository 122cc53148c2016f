"""Fault tests: the node tests' in-process cluster, a proxy process, a disk that fills up.

The ``cluster`` and ``os_users`` fixtures are the node tests' own
(:mod:`tests.roles.node.conftest`): the auth service and nodes in the test's trio
loop, the auth service restartable on its port. ``proxy`` runs the proxy as
``trioport run`` in a subprocess (:mod:`tests.e2e.cluster`), so that it can be
frozen (SIGSTOP) on its own; :func:`proxied_ssh_argv` is OpenSSH through it.
:func:`tiny_disk` mounts a small tmpfs (we run as root, as the node tests do:
sessions run as other OS accounts) that a test fills to make every further write
fail with ENOSPC, a real disk error.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import os
import pathlib
import shlex
import signal
import subprocess
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import pytest
import trio

from tests.e2e import cluster as e2e
from tests.roles.node.conftest import (
    Cluster,
    NodeHandle,
    UserFiles,
    cluster,
    os_users,
    ssh_options,
)
from trioport.config import (
    Address,
    AuthService,
    Config,
    ConnectionLimits,
    Global,
    ProxyService,
    SSHService,
)
from trioport.roles.node import service as node_service

__all__ = [
    "ProxyProcess",
    "TinyDisk",
    "cluster",
    "os_users",
    "proxied_ssh_argv",
    "proxy",
    "start_node_with_keepalive",
    "start_proxy",
    "stop_proxy",
    "tiny_disk",
]


class TinyDisk:
    """A mounted tmpfs of a few pages; :meth:`fill` uses up every byte of it."""

    def __init__(self, path: pathlib.Path) -> None:
        self.path = path
        self.filler = path / "filler"

    def fill(self) -> None:
        """Write a file until the disk is full (ENOSPC): no further write can succeed."""
        fd = os.open(self.filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            for _ in range(100_000):
                try:
                    os.write(fd, b"\0" * 4096)
                except OSError as exc:
                    if exc.errno == errno.ENOSPC:
                        break
                    raise
            for _ in range(4096):  # the last partial page, byte by byte
                try:
                    os.write(fd, b"\0")
                except OSError as exc:
                    if exc.errno == errno.ENOSPC:
                        return
                    raise
        finally:
            os.close(fd)
        raise AssertionError(f"{self.path} never filled up")

    def free(self) -> None:
        self.filler.unlink(missing_ok=True)


@contextlib.contextmanager
def tiny_disk(path: pathlib.Path, size: str = "256k") -> Iterator[TinyDisk]:
    """Mount a ``size`` tmpfs on ``path`` (created) for the duration of the block."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)],
        check=True,
        capture_output=True,
    )
    try:
        yield TinyDisk(path)
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False, capture_output=True)


# --- a proxy in its own process (``trioport run``), to restart auth or freeze it alone ---


@dataclass
class ProxyProcess:
    """A proxy run by ``trioport run`` in a subprocess, joined to the test's cluster."""

    process: e2e.Process
    ssh_port: int
    web_port: int

    @property
    def pid(self) -> int:
        return self.process.popen.pid

    @property
    def web(self) -> str:
        return f"127.0.0.1:{self.web_port}"


async def start_proxy(cluster: Cluster) -> ProxyProcess:
    """Start ``trioport run`` with only the proxy service, joined with a fresh token."""
    token = (await cluster.admin_call(lambda c: c.add_token(["proxy"])))["token"]
    ssh_port, web_port = e2e.free_ports(2)
    config = cluster.tmp / "proxy.yaml"
    config.write_text(
        f"""version: v1
teleport:
  nodename: fault-proxy
  data_dir: {cluster.tmp / "proxy"}
  auth_token: {token}
  auth_servers: ["127.0.0.1:{cluster.auth_port}"]
auth_service:
  enabled: false
ssh_service:
  enabled: false
proxy_service:
  listen_addr: 127.0.0.1:{ssh_port}
  web_listen_addr: 127.0.0.1:{web_port}
"""
    )
    # start() blocks until the announcement: in a thread, so that the auth service
    # (in this trio loop) can answer the proxy's join meanwhile.
    process = await trio.to_thread.run_sync(e2e.start, config, cluster.tmp / "proxy.log")
    return ProxyProcess(process, ssh_port, web_port)


async def stop_proxy(proxy: ProxyProcess) -> None:
    if proxy.process.popen.poll() is None:
        os.kill(proxy.pid, signal.SIGCONT)
    await trio.to_thread.run_sync(proxy.process.stop)


@pytest.fixture
async def proxy(cluster: Cluster) -> AsyncIterator[ProxyProcess]:
    started = await start_proxy(cluster)
    try:
        yield started
    finally:
        await stop_proxy(started)


def proxied_ssh_argv(
    user: UserFiles,
    proxy: ProxyProcess,
    node: NodeHandle,
    login: str,
    *args: str,
    options: Mapping[str, str] | None = None,
) -> list[str]:
    """OpenSSH's ``ssh`` to ``login`` on ``node`` through the proxy, as ``tsh config`` sets
    it up: ``ProxyCommand ssh -p PROXY login@proxy -s proxy:%h:%p``."""
    jump = [
        e2e.SSH,
        "-p",
        str(proxy.ssh_port),
        *ssh_options(user),
        f"{login}@127.0.0.1",
        "-s",
        "proxy:%h:%p",
    ]
    opts = {"ProxyCommand": " ".join(shlex.quote(a) for a in jump), **(options or {})}
    return [
        e2e.SSH,
        "-p",
        str(node.port),
        *ssh_options(user, options=opts),
        f"{login}@{node.name}",
        *args,
    ]


async def start_node_with_keepalive(
    cluster: Cluster, *, interval: float, count: int, name: str = "node1"
) -> NodeHandle:
    """A node (as :meth:`Cluster.start_node` starts one) whose SSH server sends a
    keepalive after ``interval`` s of silence and drops a connection after ``count``
    unanswered ones (``teleport.connection_limits.keep_alive_*``)."""
    token = (await cluster.admin_call(lambda c: c.add_token(["node"])))["token"]
    config = Config(
        teleport=Global(
            nodename=name,  # type: ignore[arg-type]
            data_dir=str(cluster.tmp / name),
            auth_token=token,
            auth_servers=[Address("127.0.0.1", cluster.auth_port)],
            connection_limits=ConnectionLimits(
                keep_alive_interval=dt.timedelta(seconds=interval),
                keep_alive_count_max=count,
            ),
        ),
        auth_service=AuthService(enabled=False),
        proxy_service=ProxyService(enabled=False),
        ssh_service=SSHService(listen_addr=Address("127.0.0.1", 0), labels={"env": "test"}),  # type: ignore[arg-type]
    )
    scope = trio.CancelScope()
    handle = NodeHandle(name=name, config=config, port=0, scope=scope)

    async def run(task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            with scope:
                await node_service.serve(
                    config,
                    task_status=task_status,
                    heartbeat_interval=0.5,
                    access_cache_seconds=0.5,
                    recording_flush_seconds=0.2,
                    reconnect_max_delay=0.5,
                )
        finally:
            handle.finished.set()

    addresses = await cluster.nursery.start(run)
    handle.port = addresses[0][1]
    cluster.nodes.append(handle)
    return handle
