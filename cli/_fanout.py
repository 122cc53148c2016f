"""``tsh ssh LOGIN@LABEL=VALUE COMMAND``: one command on every node a label selector matches.

As Teleport's tsh does, the command runs on all the nodes at once (at most
:data:`CONCURRENCY` at a time), with no input, and every line a node prints is
written as it completes, prefixed with the node's name: ``[web1] line`` on
standard output for its output, on standard error for its errors. A last line
without a newline is still written, as a line of its own. The exit status is 0
when the command succeeded everywhere; otherwise a summary line names the nodes
where it failed, and the status is the first failing node's (in name order):
its exit status, or 255 when it could not run there at all.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager

import trio

from trioport.errors import TrioportError
from trioport.roles.proxy.router import NodeInfo
from trioport.ssh import SSHConnection, SSHHandler
from trioport.ssh.agent import AgentForwardingHandler
from trioport.sshproto import events as ev

__all__ = ["CONCURRENCY", "SSH_FAILURE", "run_everywhere"]

#: Nodes the command runs on at once.
CONCURRENCY = 16
#: The status of a node where the command could not run (as OpenSSH's ssh).
SSH_FAILURE = 255
_READ_SIZE = 32 * 1024

#: Opens the end-to-end connection to a node, with the handler for channels it opens.
Connect = Callable[[NodeInfo, SSHHandler | None], AbstractAsyncContextManager[SSHConnection]]


def _write_fd(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class _LinePrefixer:
    """Writes complete lines to ``fd``, each after ``prefix``."""

    def __init__(self, fd: int, prefix: bytes) -> None:
        self.fd = fd
        self.prefix = prefix
        self.partial = b""

    def feed(self, data: bytes) -> None:
        *lines, self.partial = (self.partial + data).split(b"\n")
        if lines:
            _write_fd(self.fd, b"".join(self.prefix + line + b"\n" for line in lines))

    def flush(self) -> None:
        if self.partial:
            _write_fd(self.fd, self.prefix + self.partial + b"\n")
            self.partial = b""


async def _run_prefixed(
    conn: SSHConnection,
    command: str,
    prefix: bytes,
    agent: AgentForwardingHandler | None,
    agent_refusal: str,
) -> int:
    """Run ``command`` with no input; its output and errors line by line after ``prefix``."""
    chan = await conn.open_session()
    async with chan:
        if agent is not None and not await agent.request(chan):
            _write_fd(2, prefix + agent_refusal.encode() + b"\n")
        if not await chan.request(ev.Exec(command=command.encode())):
            raise TrioportError("the node refused to run the command")
        await chan.send_eof()

        async def copy(source: trio.abc.ReceiveStream, target: _LinePrefixer) -> None:
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                while data := await source.receive_some(_READ_SIZE):
                    target.feed(data)
            target.flush()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(copy, chan, _LinePrefixer(1, prefix))
            nursery.start_soon(copy, chan.stderr, _LinePrefixer(2, prefix))
        with trio.move_on_after(5):
            await chan.wait_closed()
    if chan.exit_status is not None:
        return chan.exit_status
    if chan.exit_signal is not None:
        _write_fd(2, prefix + f"killed by signal {chan.exit_signal.name}\n".encode())
    return SSH_FAILURE


async def run_everywhere(
    nodes: Sequence[NodeInfo],
    command: str,
    connect: Connect,
    *,
    warn: Callable[[str], None],
    agent: Callable[[], AgentForwardingHandler | None] = lambda: None,
    agent_refusal: str = "warning: the node refused agent forwarding (-A)",
) -> int:
    """Run ``command`` on every one of ``nodes``; the exit status (see the module docstring).

    Args:
        nodes: the matching nodes, in the order failures are reported.
        command: the command line, for the node's shell.
        connect: opens the end-to-end connection to one node (through the proxy).
        warn: prints the summary line about failures.
        agent: makes the agent forwarding handler for one node's connection (``-A``),
            or None.
        agent_refusal: what to say when a node refuses to forward the agent.
    """
    limiter = trio.CapacityLimiter(CONCURRENCY)
    statuses: dict[str, int] = {}

    async def one(node: NodeInfo) -> None:
        prefix = f"[{node.hostname}] ".encode()
        async with limiter:
            try:
                handler = agent()
                async with connect(node, handler) as conn:
                    statuses[node.host_id] = await _run_prefixed(
                        conn, command, prefix, handler, agent_refusal
                    )
            except (TrioportError, trio.BrokenResourceError) as exc:
                _write_fd(2, prefix + f"error: {exc}\n".encode())
                statuses[node.host_id] = SSH_FAILURE

    async with trio.open_nursery() as nursery:
        for node in nodes:
            nursery.start_soon(one, node)
    failed = [(n, statuses[n.host_id]) for n in nodes if statuses[n.host_id] != 0]
    if not failed:
        return 0
    which = ", ".join(f"{n.hostname} (exit status {code})" for n, code in failed)
    warn(f"error: the command failed on {len(failed)} of {len(nodes)} nodes: {which}")
    return failed[0][1]
