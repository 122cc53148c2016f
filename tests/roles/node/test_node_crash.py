"""A node killed mid-session (``kill -9``) closes that session's books when it comes back.

The node runs as a real ``trioport run --roles=node`` process against the test's
auth service; a user is in a shell on it through OpenSSH's ``ssh`` when the node
is killed. The client is told its connection ended; once the node starts again
from the same data directory, the auth service has a ``session.end`` marked
``interrupted``, the session is reported ended, and the recording holds what was
uploaded before the crash, flagged interrupted and never complete.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import trio

from trioport.roles.node.recorder import parse_recording

from .conftest import ALICE_LOGIN, Cluster, NodeHandle, ssh_argv, wait_for
from .test_node_recording import Terminal


def _trioport() -> str:
    beside = Path(sys.executable).parent / "trioport"
    return str(beside) if beside.exists() else "trioport"


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _start_node_process(config: Path, log: Path) -> trio.Process:
    with log.open("ab") as err:
        return await trio.lowlevel.open_process(
            [_trioport(), "run", "--roles=node", "--config", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )


async def test_a_node_killed_mid_session_ends_it_as_interrupted_on_restart(
    cluster: Cluster,
) -> None:
    token = (await cluster.admin_call(lambda c: c.add_token(["node"])))["token"]
    port = _free_port()
    data_dir = cluster.tmp / "crashing-node"
    config = cluster.tmp / "crashing-node.yaml"
    config.write_text(
        f"""version: v1
teleport:
  nodename: crashy
  data_dir: {data_dir}
  auth_token: {token}
  auth_servers: ["127.0.0.1:{cluster.auth_port}"]
ssh_service:
  listen_addr: 127.0.0.1:{port}
  labels: {{env: test}}
"""
    )
    log = cluster.tmp / "crashing-node.log"
    handle = NodeHandle(name="crashy", config=None, port=port, scope=trio.CancelScope())  # type: ignore[arg-type]
    await cluster.add_user("alice", [ALICE_LOGIN])
    alice = await cluster.login("alice")

    node = await _start_node_process(config, log)
    try:

        async def online() -> Any:
            return (await cluster.online_nodes()).get("crashy")

        await wait_for(online, seconds=40)
        async with Terminal(ssh_argv(alice, handle, ALICE_LOGIN, "-tt")) as term:
            await term.type(b"echo before-the-crash-$((6*7))\n")
            await term.expect(b"before-the-crash-42")

            async def uploading() -> list[str]:
                listing = await cluster.admin_call(lambda c: c.list_recordings())
                return listing.get("incomplete", [])

            [sid] = await wait_for(uploading, seconds=20)
            # The recorder uploads every second: wait for the marker to be there.
            await trio.sleep(2.5)
            os.kill(node.pid, signal.SIGKILL)
            await node.wait()
            # The client is told: ssh ends with its "connection closed" error.
            with trio.fail_after(30):
                status = await term.proc.wait()
            assert status == 255
            await term.expect(b"closed")
        # Until the node is back, the recording is an unfinished upload ...
        listing = await cluster.admin_call(lambda c: c.list_recordings())
        assert sid in listing["incomplete"]
        assert not await _journal_is_empty(data_dir)

        node = await _start_node_process(config, log)

        # ... then the node closes the books.
        async def ended() -> list[Any]:
            found = await cluster.admin_call(lambda c: c.search_events(events=["session.end"]))
            return [e for e in found if e.get("sid") == sid]

        [end] = await wait_for(ended, seconds=40)
        assert end["interrupted"] is True
        assert (end["user"], end["login"]) == ("alice", ALICE_LOGIN)
        session = await cluster.admin_call(lambda c: c.get_session(sid))
        assert session.spec.state == "ended"
        listing = await cluster.admin_call(lambda c: c.list_recordings())
        assert sid not in listing["incomplete"]
        [info] = [r for r in listing["recordings"] if r["sid"] == sid]
        assert info["interrupted"] is True
        data = await cluster.admin_call(lambda c: c.fetch_recording(sid))
        _header, events = parse_recording(data)
        output = b"".join(e.data for e in events if e.type == "o")
        assert b"before-the-crash-42" in output
        assert all(e.type != "end" for e in events)  # never marked whole
        assert await _journal_is_empty(data_dir)
    finally:
        if node.returncode is None:
            node.send_signal(signal.SIGTERM)
            with trio.move_on_after(20):
                await node.wait()
            if node.returncode is None:
                node.kill()
                await node.wait()
    assert "Traceback" not in log.read_text(errors="replace")


async def _journal_is_empty(data_dir: Path) -> bool:
    folder = data_dir / "sessions"
    return not folder.exists() or not any(folder.glob("*.json"))
