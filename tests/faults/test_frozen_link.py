"""A frozen proxy-to-node link: keepalives find it, both ends release the session.

The proxy runs in its own process (``trioport run``) between an OpenSSH client
(``ServerAliveInterval=1``, ``ServerAliveCountMax=3``) and a node whose SSH server
sends keepalives after 1 s of silence and gives up after 2 unanswered ones
(``teleport.connection_limits.keep_alive_interval`` / ``keep_alive_count_max``).
The proxy is frozen with SIGSTOP in the middle of a shell: no byte crosses it,
but every socket stays open. What happens:

- the client gives up with OpenSSH's own message (``Timeout, server node1 not
  responding.``) and exit status 255;
- the node ends the session on its own (its keepalives go unanswered): the
  shell and everything it started are killed, ``session.end`` is emitted, the
  session is no longer listed as active, and its recording is complete;
- after SIGCONT nothing is left behind: the proxy holds no connection to the
  node or from the client, and serves a new shell at once.
"""

from __future__ import annotations

import os
import signal
import subprocess
from typing import Any

import trio

from tests.roles.node.conftest import ALICE_LOGIN, Cluster, run_ssh, wait_for
from tests.roles.node.test_node_recording import Terminal
from trioport.roles.node.recorder import parse_recording

from .conftest import ProxyProcess, proxied_ssh_argv, start_node_with_keepalive

#: LogLevel INFO: OpenSSH prints its timeout message at that level.
CLIENT_KEEPALIVE = {"ServerAliveInterval": "1", "ServerAliveCountMax": "3", "LogLevel": "INFO"}


def _proxy_connections(proxy: ProxyProcess, node_port: int) -> list[str]:
    """The proxy's established TCP connections to the node and from SSH clients."""
    listing = subprocess.run(
        ["ss", "-tnpH", "state", "established"], capture_output=True, text=True, check=True
    ).stdout
    mine = [line for line in listing.splitlines() if f"pid={proxy.pid}," in line]
    return [
        line
        for line in mine
        if f"127.0.0.1:{node_port} " in line or f"127.0.0.1:{proxy.ssh_port} " in line
    ]


def _processes_of(login: str) -> list[str]:
    found = subprocess.run(["pgrep", "-a", "-u", login], capture_output=True, text=True)
    return found.stdout.splitlines()


async def test_a_frozen_proxy_is_detected_and_both_ends_release_the_session(
    cluster: Cluster, proxy: ProxyProcess
) -> None:
    node = await start_node_with_keepalive(cluster, interval=1.0, count=2)
    await cluster.add_user("alice", [ALICE_LOGIN])
    alice = await cluster.login("alice")
    await cluster.wait_online(node)
    script = 'echo "ready-$SSH_SESSION_ID"; sleep 600 & wait'
    argv = proxied_ssh_argv(
        alice, proxy, node, ALICE_LOGIN, "-tt", script, options=CLIENT_KEEPALIVE
    )
    async with Terminal(argv) as term:
        await term.expect(b"ready-")
        sid = bytes(term.output).split(b"ready-")[1][:36].decode()
        assert _processes_of(ALICE_LOGIN)
        assert _proxy_connections(proxy, node.port)

        os.kill(proxy.pid, signal.SIGSTOP)
        try:
            # The client notices by itself ...
            with trio.fail_after(60):
                status = await term.proc.wait()
            assert status == 255
            assert b"Timeout, server node1 not responding." in await _rest(
                term, until=b"Timeout, server node1 not responding."
            )

            # ... and so does the node: the session ends there, with nothing running.
            async def ended() -> Any:
                events = await cluster.admin_call(lambda c: c.search_events(events=["session.end"]))
                return [e for e in events if e["sid"] == sid]

            await wait_for(ended, seconds=60)

            async def inactive() -> bool:
                active = await cluster.admin_call(lambda c: c.list_sessions(state="active"))
                return all(s.metadata.name != sid for s in active)

            await wait_for(inactive)
            assert await wait_for(lambda: _none(_processes_of(ALICE_LOGIN)))
        finally:
            os.kill(proxy.pid, signal.SIGCONT)

    # The recording is whole: the node closed it when it ended the session.
    async def recorded() -> bytes | None:
        listing = await cluster.admin_call(lambda c: c.list_recordings())
        if sid not in {r["sid"] for r in listing["recordings"]}:
            return None
        return await cluster.admin_call(lambda c: c.fetch_recording(sid))

    _, events = parse_recording(await wait_for(recorded))
    assert events[-1].type == "end"

    # Thawed, the proxy finds both of its connections gone and keeps nothing ...
    assert await wait_for(lambda: _none(_proxy_connections(proxy, node.port)))
    # ... and serves the next shell at once.
    again = await run_ssh(
        proxied_ssh_argv(alice, proxy, node, ALICE_LOGIN, "echo again", options=CLIENT_KEEPALIVE)
    )
    assert again.stdout == b"again\n", again.stderr


async def _rest(term: Terminal, *, until: bytes) -> bytes:
    """What the terminal showed, up to ``until`` or the end (the client has exited).

    Not only the end: the ProxyCommand (another ``ssh``, to the frozen proxy) shares
    the pty and may outlive the client by a while on a loaded machine.
    """
    with trio.move_on_after(10):
        while until not in term.output:
            try:
                data = await term.stream.receive_some()
            except trio.BrokenResourceError:  # EIO: the pty's other side is closed
                data = b""
            if not data:
                break
            term.output += data
    return bytes(term.output)


async def _none(items: list[str]) -> bool:
    await trio.lowlevel.checkpoint()
    return not items
