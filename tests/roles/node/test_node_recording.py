"""Every session recorded and streamed to auth, audited, tracked with its parties, joinable."""

from __future__ import annotations

import fcntl
import hashlib
import os
import signal
import struct
import termios
from typing import Any

import trio

from trioport.roles.node.recorder import parse_recording

from .conftest import (
    ALICE_LOGIN,
    BOB_LOGIN,
    Cluster,
    NodeHandle,
    UserFiles,
    run_ssh,
    ssh_argv,
    wait_for,
)


async def _events(cluster: Cluster, name: str, **match: Any) -> list[dict[str, Any]]:
    found = await cluster.admin_call(lambda c: c.search_events(events=[name]))
    return [e for e in found if all(e.get(k) == v for k, v in match.items())]


async def _one_event(cluster: Cluster, name: str, **match: Any) -> dict[str, Any]:
    async def found() -> list[dict[str, Any]]:
        return await _events(cluster, name, **match)

    return (await wait_for(found))[0]


async def _recording(cluster: Cluster, sid: str) -> bytes:
    async def complete() -> bool:
        listing = await cluster.admin_call(lambda c: c.list_recordings())
        return any(r["sid"] == sid for r in listing["recordings"])

    await wait_for(complete)
    return await cluster.admin_call(lambda c: c.fetch_recording(sid))


async def _setup(cluster: Cluster) -> tuple[NodeHandle, UserFiles, str]:
    node = await cluster.start_node()
    await cluster.add_user("alice", [ALICE_LOGIN])
    alice = await cluster.login("alice")
    host_id = (await cluster.wait_online(node))["host_id"]
    return node, alice, host_id


async def test_recording_of_random_bytes_is_what_the_client_received(cluster: Cluster) -> None:
    node, alice, host_id = await _setup(cluster)
    result = await run_ssh(ssh_argv(alice, node, ALICE_LOGIN, "head -c 300000 /dev/urandom"))
    assert result.returncode == 0 and len(result.stdout) == 300_000
    start = await _one_event(cluster, "session.start", user="alice")
    header, events = parse_recording(await _recording(cluster, start["sid"]))
    assert header["sid"] == start["sid"]
    assert header["kind"] == "exec"
    assert (header["user"], header["login"]) == ("alice", ALICE_LOGIN)
    assert (header["server_id"], header["server_hostname"]) == (host_id, "node1")
    assert header["command"] == "head -c 300000 /dev/urandom"
    output = b"".join(e.data for e in events if e.type == "o")
    assert hashlib.sha256(output).hexdigest() == hashlib.sha256(result.stdout).hexdigest()
    times = [e.t for e in events]
    assert times == sorted(times)
    assert [e.type for e in events[-2:]] == ["exit", "end"]
    assert events[-2].fields == {"status": 0}
    # The upload was acknowledged by the auth service as complete.
    upload = await _one_event(cluster, "session.upload", sid=start["sid"])
    assert upload["server_id"] == host_id


async def test_exec_is_audited_with_who_where_and_how_it_ended(cluster: Cluster) -> None:
    node, alice, host_id = await _setup(cluster)
    result = await run_ssh(ssh_argv(alice, node, ALICE_LOGIN, "echo out; echo err >&2; exit 3"))
    assert result.returncode == 3
    start = await _one_event(cluster, "session.start", user="alice")
    sid = start["sid"]
    end = await _one_event(cluster, "session.end", sid=sid)
    exec_event = await _one_event(cluster, "exec", sid=sid)
    for event in (start, end, exec_event):
        assert event["user"] == "alice"
        assert event["login"] == ALICE_LOGIN
        assert event["server_id"] == host_id
        assert event["server_hostname"] == "node1"
        assert event["addr.remote"].startswith("127.0.0.1:")
        assert event["addr.local"] == f"127.0.0.1:{node.port}"
    assert exec_event["code"] == "T3002E"  # a non-zero exit
    assert exec_event["command"] == "echo out; echo err >&2; exit 3"
    assert exec_event["exit_code"] == 3
    assert end["exit_code"] == 3
    assert end["participants"] == ["alice"]
    # stderr is recorded too, apart from stdout.
    _, events = parse_recording(await _recording(cluster, sid))
    assert b"".join(e.data for e in events if e.type == "o") == b"out\n"
    assert b"".join(e.data for e in events if e.type == "e") == b"err\n"
    session = await cluster.admin_call(lambda c: c.get_session(sid))
    assert session.spec.state == "ended"
    assert session.spec.kind == "exec"
    assert (session.spec.user, session.spec.login, session.spec.node) == (
        "alice",
        ALICE_LOGIN,
        host_id,
    )


class Terminal:
    """``ssh -tt`` on a pty of its own, as a person would run it."""

    def __init__(self, argv: list[str], rows: int = 24, cols: int = 80) -> None:
        self.argv = argv
        self.rows, self.cols = rows, cols
        self.output = bytearray()

    async def __aenter__(self) -> Terminal:
        master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", self.rows, self.cols, 0, 0))
        self.proc = await trio.lowlevel.open_process(
            self.argv, stdin=slave, stdout=slave, stderr=slave, start_new_session=True
        )
        os.close(slave)
        self.master = master
        self.stream = trio.lowlevel.FdStream(master)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
        await self.stream.aclose()

    async def expect(self, marker: bytes) -> None:
        with trio.fail_after(30):
            while marker not in self.output:
                try:
                    data = await self.stream.receive_some()
                except OSError:
                    data = b""
                if not data:
                    raise AssertionError(f"no {marker!r} in {bytes(self.output)!r}")
                self.output += data

    async def type(self, text: bytes) -> None:
        await self.stream.send_all(text)

    def resize(self, rows: int, cols: int) -> None:
        fcntl.ioctl(self.master, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        self.proc.send_signal(signal.SIGWINCH)


async def test_pty_session_is_recorded_with_timing_and_resizes(cluster: Cluster) -> None:
    node, alice, _ = await _setup(cluster)
    script = "stty size; read line; stty size; echo bye"
    async with Terminal(ssh_argv(alice, node, ALICE_LOGIN, "-tt", script), 30, 100) as term:
        await term.expect(b"30 100")
        term.resize(40, 120)
        await trio.sleep(0.5)
        await term.type(b"typed\n")
        await term.expect(b"bye")
        with trio.fail_after(30):
            assert await term.proc.wait() == 0
        received = bytes(term.output)
    start = await _one_event(cluster, "session.start", user="alice")
    assert start["size"] == "100:30"
    header, events = parse_recording(await _recording(cluster, start["sid"]))
    assert (header["width"], header["height"]) == (100, 30)
    resizes = [e.fields for e in events if e.type == "r"]
    assert resizes == [{"width": 120, "height": 40}]
    output = b"".join(e.data for e in events if e.type == "o")
    assert b"30 100" in output and b"40 120" in output and b"bye" in output
    # Every byte the recording holds reached the terminal (ssh adds nothing here).
    assert output.replace(b"\r\n", b"\n") in received.replace(b"\r\n", b"\n")


async def test_a_running_session_is_tracked_with_its_parties(cluster: Cluster) -> None:
    node, alice, host_id = await _setup(cluster)
    async with Terminal(ssh_argv(alice, node, ALICE_LOGIN, "-tt", "echo ready; read x")) as term:
        await term.expect(b"ready")

        async def active() -> list[Any]:
            return await cluster.admin_call(lambda c: c.list_sessions(state="active"))

        (session,) = await wait_for(active)
        assert session.spec.kind == "exec"
        assert (session.spec.user, session.spec.login) == ("alice", ALICE_LOGIN)
        assert (session.spec.node, session.spec.node_hostname) == (host_id, "node1")
        assert [p.user for p in session.spec.parties] == ["alice"]
        assert session.spec.parties[0].remote_addr.startswith("127.0.0.1:")
        await term.type(b"\n")
        with trio.fail_after(30):
            await term.proc.wait()
    sid = session.metadata.name

    async def ended() -> bool:
        found = await cluster.admin_call(lambda c: c.get_session(sid))
        return found.spec.state == "ended" and found.spec.ended is not None

    await wait_for(ended)


async def test_another_user_joins_a_session_and_shares_its_terminal(cluster: Cluster) -> None:
    node, alice, _ = await _setup(cluster)
    await cluster.add_user("bob", [ALICE_LOGIN])
    bob = await cluster.login("bob")
    script = 'echo ready; while read line; do echo "said:$line"; done; echo over'
    async with Terminal(ssh_argv(alice, node, ALICE_LOGIN, "-tt", script)) as first:
        await first.expect(b"ready")
        start = await _one_event(cluster, "session.start", user="alice")
        sid = start["sid"]
        join_argv = ssh_argv(
            bob, node, ALICE_LOGIN, "-tt", options={"SetEnv": f"TRIOPORT_SESSION={sid}"}
        )
        async with Terminal(join_argv) as second:
            await _one_event(cluster, "session.join", sid=sid, user="bob")
            await first.type(b"from-alice\n")
            await second.expect(b"said:from-alice")
            await second.type(b"from-bob\n")
            await first.expect(b"said:from-bob")
            session = await cluster.admin_call(lambda c: c.get_session(sid))
            assert sorted(p.user for p in session.spec.parties) == ["alice", "bob"]
            await first.type(b"\x04")  # ^D: the loop ends, the session ends
            await first.expect(b"over")
            with trio.fail_after(30):
                assert await first.proc.wait() == 0
                assert await second.proc.wait() == 0
            await second.expect(b"over")
    end = await _one_event(cluster, "session.end", sid=sid)
    assert end["participants"] == ["alice", "bob"]
    _, events = parse_recording(await _recording(cluster, sid))
    assert [e.fields["user"] for e in events if e.type == "join"] == ["bob"]


async def test_joining_needs_the_session_login(cluster: Cluster) -> None:
    node, alice, _ = await _setup(cluster)
    await cluster.add_user("mallory", [BOB_LOGIN])
    mallory = await cluster.login("mallory")
    async with Terminal(ssh_argv(alice, node, ALICE_LOGIN, "-tt", "echo ready; read x")) as term:
        await term.expect(b"ready")
        start = await _one_event(cluster, "session.start", user="alice")
        argv = ssh_argv(
            mallory,
            node,
            BOB_LOGIN,
            "-tt",
            options={"SetEnv": f"TRIOPORT_SESSION={start['sid']}"},
        )
        result = await run_ssh(argv)
        assert result.returncode == 1
        assert b"you may not join session" in result.stdout + result.stderr
        await term.type(b"\n")
    rejected = await _one_event(cluster, "session.rejected", user="mallory")
    assert rejected["sid"] == start["sid"]
