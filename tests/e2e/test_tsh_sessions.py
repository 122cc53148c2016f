"""``tsh sessions``, ``tsh join`` and ``tsh play`` on a real cluster, driven through tsh.

The cluster runs in the test's trio loop (auth, proxy and a node with the real
node service: :mod:`tests.roles.proxy.cluster`); every ``tsh`` is the real program
in a subprocess with its own ``TSH_HOME``, and the interactive ones run on
pseudo-terminals (pexpect, in a worker thread while the loop serves the cluster).

alice opens a shell with ``tsh ssh``; bob, whose roles allow the same login,
finds it with ``tsh sessions`` and joins it with ``tsh join``: each sees what
the other types and its output. carol, whose only login is another one, is
refused with the reason. bob leaves with Ctrl-] (the session goes on) and joins
again until alice's shell exits, when he gets its exit status. After that,
``tsh play`` replays it, as text, on a terminal, and as an asciicast document
that asciinema reads.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pexpect
import trio

from tests.roles.proxy.cluster import LOGIN, Cluster, ClusterUser, open_cluster, tsh_env

TSH = [sys.executable, "-m", "trioport_cli.tsh"]
#: How long any one step may take (generous: the machine is shared).
STEP = 30


def _env(cluster: Cluster, home: Path) -> dict[str, str]:
    return tsh_env(home, SSL_CERT_FILE=str(cluster.https_cert), TERM="xterm", PS1="$ ")


def _tsh(cluster: Cluster, home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run tsh to completion (blocking: call it from a worker thread)."""
    return subprocess.run(
        [*TSH, *args],
        env=_env(cluster, home),
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=STEP * 2,
        check=False,
    )


async def _login(cluster: Cluster, user: ClusterUser) -> Path:
    home = cluster.tmp_path / f"tsh-{user.name}"
    code = await user.totp.code()
    done = await trio.run_process(
        [*TSH, "login", f"--proxy={cluster.web_addr}", f"--user={user.name}"],
        stdin=f"{user.password}\n{code}\n".encode(),
        capture_stdout=True,
        capture_stderr=True,
        env=_env(cluster, home),
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()
    return home


def _spawn(cluster: Cluster, home: Path, *args: str) -> pexpect.spawn:
    return pexpect.spawn(
        TSH[0], [*TSH[1:], *args], env=_env(cluster, home), dimensions=(24, 80), timeout=STEP
    )


def _wait_for(what: str, check: Any, timeout: float = STEP) -> Any:
    """Poll ``check()`` until it returns something true (blocking)."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


async def test_join_a_live_session_then_replay_it(tmp_path: Path) -> None:
    async with open_cluster(tmp_path) as cluster:
        await cluster.add_node("web1")
        alice = await _login(cluster, await cluster.add_user("alice"))
        bob = await _login(cluster, await cluster.add_user("bob"))
        carol = await _login(cluster, await cluster.add_user("carol", logins=["nobody"]))

        def drive() -> dict[str, Any]:
            seen: dict[str, Any] = {}
            owner = _spawn(cluster, alice, "ssh", "web1")
            try:
                owner.expect(r"[#$] ")
                owner.sendline("echo SID=$SSH_SESSION_ID; echo MARK$((6*7))")
                owner.expect(r"SID=([0-9a-f-]{36})")
                sid = owner.match.group(1).decode()
                owner.expect("MARK42")
                seen["sid"] = sid

                def listed() -> list[dict[str, Any]]:
                    done = _tsh(cluster, bob, "sessions", "--format=json")
                    assert done.returncode == 0, done.stderr
                    return [s for s in json.loads(done.stdout) if s["id"] == sid]

                seen["listed"] = _wait_for("the session to be listed", listed)[0]
                seen["table"] = _tsh(cluster, bob, "sessions").stdout

                joiner = _spawn(cluster, bob, "join", sid)
                try:
                    joiner.expect(f"Joining session {sid}")
                    # Once the auth service lists bob as a party, the node sends him output.
                    _wait_for("bob to be a party", lambda: "bob" in listed()[0]["parties"])
                    seen["parties"] = listed()[0]["parties"]

                    owner.sendline("echo FROM-A-$((1+1))")
                    joiner.expect("FROM-A-2")  # alice's output, on bob's terminal
                    joiner.send("echo FROM-B-$((2+2))\r")  # bob types into alice's shell
                    owner.expect_exact("echo FROM-B-$((2+2))")  # alice sees what he typed
                    owner.expect("FROM-B-4")
                    joiner.expect("FROM-B-4")

                    joiner.sendcontrol("]")  # bob leaves; the session goes on
                    joiner.expect(f"Left session {sid}")
                    joiner.expect(pexpect.EOF)
                finally:
                    joiner.close()
                    seen["left_status"] = joiner.exitstatus
                owner.sendline("echo STILL-$((3+3))")
                owner.expect("STILL-6")
                _wait_for("bob to leave", lambda: listed()[0]["parties"] == ["alice"])

                refused = _tsh(cluster, carol, "join", sid)
                seen["refused"] = (refused.returncode, refused.stdout + refused.stderr)
                unknown = _tsh(cluster, bob, "join", "0" * 8 + "-0000-0000-0000-" + "0" * 12)
                seen["unknown"] = (unknown.returncode, unknown.stderr)

                joiner = _spawn(cluster, bob, "join", sid)  # again, until the end
                try:
                    joiner.expect(f"Joining session {sid}")
                    _wait_for("bob to be back", lambda: "bob" in listed()[0]["parties"])
                    owner.sendline("exit 3")
                    owner.expect(pexpect.EOF)
                    joiner.expect(pexpect.EOF)
                finally:
                    joiner.close()
                    seen["joiner_status"] = joiner.exitstatus
            finally:
                owner.close()
                seen["owner_status"] = owner.exitstatus
            _wait_for(
                "the session to end",
                lambda: _tsh(cluster, bob, "sessions").stdout.strip() == "No active sessions.",
            )
            ended = _tsh(cluster, bob, "join", sid)
            seen["ended"] = (ended.returncode, ended.stderr)

            def replayed() -> subprocess.CompletedProcess[str] | None:
                done = _tsh(cluster, alice, "play", sid, "--format=text")
                return done if done.returncode == 0 else None

            seen["text"] = _wait_for("the recording to be complete", replayed).stdout
            seen["pty"] = _tsh(cluster, bob, "play", sid, "--speed=20")
            cast = cluster.tmp_path / "session.cast"
            seen["asciicast"] = _tsh(
                cluster, alice, "play", sid, "--format=asciicast", "-o", str(cast)
            )
            seen["cast"] = cast.read_text(encoding="utf-8")
            seen["cat"] = subprocess.run(
                [shutil.which("asciinema") or "asciinema", "cat", str(cast)],
                capture_output=True,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                timeout=STEP,
                check=False,
            )
            return seen

        seen = await trio.to_thread.run_sync(drive)
        names = ("session.join", "session.leave", "session.rejected", "session.recording.access")
        audit = {name: await cluster.events(name) for name in names}

    sid = seen["sid"]
    listed = seen["listed"]
    assert (listed["kind"], listed["user"], listed["login"], listed["node"]) == (
        "interactive",
        "alice",
        LOGIN,
        "web1",
    )
    assert listed["state"] == "active" and listed["parties"] == ["alice"]
    assert re.match(r"\d{4}-\d\d-\d\dT", listed["started"])
    table = seen["table"].splitlines()
    assert table[0].split() == [
        "Session",
        "ID",
        "Kind",
        "User",
        "Login",
        "Node",
        "Parties",
        "Started",
    ]
    assert any(line.startswith(sid) and "alice" in line and "web1" in line for line in table)
    assert sorted(seen["parties"]) == ["alice", "bob"]

    status, message = seen["refused"]
    assert status == 1
    assert f"you may not join session {sid}" in message
    assert f"no role allows login {LOGIN!r}" in message
    status, message = seen["unknown"]
    assert status == 1 and "no session" in message and "tsh sessions" in message

    # The node and the auth service recorded who joined, who was refused, who replayed.
    assert [e["user"] for e in audit["session.join"] if e.get("sid") == sid] == ["bob", "bob"]
    assert any(e["user"] == "bob" and e.get("sid") == sid for e in audit["session.leave"])
    refusals = [e for e in audit["session.rejected"] if e.get("sid") == sid]
    assert [e["user"] for e in refusals] == ["carol"]
    assert "may not join" in refusals[0]["error"]
    replayed_by = {e["user"] for e in audit["session.recording.access"] if e.get("sid") == sid}
    assert replayed_by == {"alice", "bob"}

    assert seen["left_status"] == 0  # Ctrl-] left without ending anything
    assert seen["owner_status"] == 3
    assert seen["joiner_status"] == 3  # the joined party gets the session's exit status
    status, message = seen["ended"]
    assert status == 1 and f"session {sid} has ended; replay it with: tsh play {sid}" in message

    for replay in (seen["text"], seen["pty"].stdout):
        for marker in ("MARK42", "FROM-A-2", "FROM-B-4", "STILL-6"):
            assert marker in replay
    assert seen["pty"].returncode == 0, seen["pty"].stderr

    assert seen["asciicast"].returncode == 0, seen["asciicast"].stderr
    lines = seen["cast"].splitlines()
    header = json.loads(lines[0])
    assert header["version"] == 2 and header["width"] == 80 and header["height"] == 24
    assert isinstance(header["timestamp"], int) and sid in header["title"]
    events = [json.loads(line) for line in lines[1:]]
    assert all(len(e) == 3 and e[1] in ("o", "r", "m") for e in events)
    assert [e[2] for e in events if e[1] == "m"] == ["bob joined", "bob left", "bob joined"]
    output = "".join(e[2] for e in events if e[1] == "o")
    assert "MARK42" in output
    assert seen["cat"].returncode == 0, seen["cat"].stderr
    assert b"MARK42" in seen["cat"].stdout and b"FROM-B-4" in seen["cat"].stdout


async def test_play_and_join_of_an_unknown_session_say_how_to_find_one(tmp_path: Path) -> None:
    async with open_cluster(tmp_path) as cluster:
        dana = await _login(cluster, await cluster.add_user("dana"))
        sid = "0" * 8 + "-0000-0000-0000-" + "0" * 12

        def drive() -> list[subprocess.CompletedProcess[str]]:
            return [
                _tsh(cluster, dana, "play", sid),
                _tsh(cluster, dana, "join", "../../etc/passwd"),
                _tsh(cluster, dana, "sessions"),
                _tsh(cluster, dana, "sessions", "--format=json"),
            ]

        play, bad, listing, listing_json = await trio.to_thread.run_sync(drive)
    assert play.returncode == 1
    assert f"no complete recording of session {sid!r}" in play.stderr
    assert "tsh sessions" in play.stderr
    assert bad.returncode == 1 and "is not a session id" in bad.stderr
    assert listing.stdout.strip() == "No active sessions."
    assert json.loads(listing_json.stdout) == []


def test_the_tsh_help_says_long_pauses_are_cut() -> None:
    done = subprocess.run(
        [*TSH, "play", "--help"], capture_output=True, text=True, check=False, env=dict(os.environ)
    )
    assert done.returncode == 0
    assert "--max-pause" in done.stdout and "cut" in done.stdout
    assert "asciicast" in done.stdout
