"""What the audit log and the session recordings hold after a user's work on a real cluster.

One ``trioport run`` serves the module. erin is invited, logs in with ``tsh
login``, runs commands with ``tsh ssh`` (one that fails), prints random bytes on
a terminal, moves files with OpenSSH's ``sftp`` and forwards a port with ``ssh
-L`` (through the proxy, with ``tsh config``'s files). Then the administrator
reads the audit log through the auth API with the identity ``tctl`` uses
(``DATA_DIR/admin``; tctl has no events command), and the recording of the
terminal session through ``GET /v1/recordings/{sid}``.
"""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from trioport.roles.node.recorder import parse_recording

from .cluster import CLUSTER, NODENAME, run
from .test_full_path import (
    TSH,
    RunningCluster,
    cluster_running,
    events,
    invite_over_http,
    os_account,
    tsh,
    tsh_env,
    tsh_login_on_a_terminal,
    wait_for,
)
from .test_full_path import recording as fetch_recording
from .test_openssh_via_proxy import SFTP, EchoServer, forwarded

LOGIN = f"tpaudit{os.getpid()}"
TARGET = f"{LOGIN}@{NODENAME}.{CLUSTER}"
# --- erin's work ------------------------------------------------------------------------------


@dataclass
class Work:
    cluster: RunningCluster
    home: Path
    config: Path
    #: What the terminal session that printed random bytes sent to tsh, and its id.
    random_output: bytes
    random_sid: str
    forwarded_to: str
    #: The node's host UUID, as tctl lists it.
    node_id: str


def _terminal_session(home: Path) -> tuple[bytes, str]:
    done = subprocess.run(
        [
            *(TSH, "ssh", "-t", f"{LOGIN}@{NODENAME}"),
            "echo SID=$SSH_SESSION_ID; head -c 200000 /dev/urandom | base64",
        ],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        env=tsh_env(home, TERM="xterm"),
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    match = re.search(rb"SID=([0-9a-f-]{36})", done.stdout)
    assert match, done.stdout[:200]
    return done.stdout, match.group(1).decode()


def _forward(config: Path) -> str:
    echo = EchoServer()
    target = f"127.0.0.1:{echo.port}"
    try:
        with forwarded(config, target, TARGET) as conn:
            conn.sendall(b"ping\n")
            got = b""
            while len(got) < 5:
                chunk = conn.recv(100)
                assert chunk, got
                got += chunk
            assert got == b"PING\n"
    finally:
        echo.close()
    return target


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Work]:
    tmp = tmp_path_factory.mktemp("audit")
    with cluster_running(tmp) as cluster, os_account(LOGIN) as login:
        totp = invite_over_http(cluster, "erin", login)
        home = tmp / "erin-tsh"
        tsh_login_on_a_terminal(cluster, home, "erin", totp)
        config = tmp / "ssh_config"
        config.write_text(tsh(home, "config").stdout)

        assert tsh(home, "ssh", f"{LOGIN}@{NODENAME}", "echo fine").returncode == 0
        assert tsh(home, "ssh", f"{LOGIN}@{NODENAME}", "exit 3").returncode == 3
        output, sid = _terminal_session(home)

        (tmp / "up.txt").write_text("audited\n")
        batch = tmp / "batch"
        batch.write_text(
            f"mkdir d\nput {tmp / 'up.txt'} d/up.txt\nrename d/up.txt d/moved.txt\n"
            f"-get /etc/shadow {tmp / 'shadow'}\n"
        )
        done = run([SFTP, "-F", str(config), "-o", "BatchMode=yes", "-b", str(batch), TARGET])
        assert done.returncode == 0, done.stderr
        forwarded = _forward(config)
        nodes = cluster.tctl("nodes", "ls", "--format=json")
        assert nodes.returncode == 0, nodes.stderr
        node_id = _node_id(nodes.stdout)
        yield Work(cluster, home, config, output, sid, forwarded, node_id)


def _node_id(listing: str) -> str:
    data = json.loads(listing)
    items = data if isinstance(data, list) else data.get("nodes", [])
    (node,) = [n for n in items if NODENAME in json.dumps(n)]
    return str(node.get("host_id") or node["metadata"]["name"])


def _one(found: list[dict[str, Any]], what: str) -> dict[str, Any]:
    assert len(found) == 1, (what, found)
    return found[0]


def _on_the_node(event: dict[str, Any], work: Work) -> None:
    """The fields every node event has: who, as which login, where, from where."""
    assert event["user"] == "erin"
    assert event["login"] == LOGIN
    assert event["server_hostname"] == NODENAME
    assert event["server_id"] == work.node_id
    assert event["addr.local"] == f"127.0.0.1:{work.cluster.ports.node}"
    assert re.fullmatch(r"127\.0\.0\.1:\d+", event["addr.remote"])


def test_the_login_is_a_user_login_event(work: Work) -> None:
    login = _one(events(work.cluster, "user.login"), "user.login")
    assert login["code"] == "T1000I"
    assert login["user"] == "erin"
    assert login["success"] is True
    assert login["method"] == "local" and login["mfa"] == "totp"
    assert re.fullmatch(r"127\.0\.0\.1:\d+", login["addr.remote"])


def test_a_command_is_a_session_with_its_start_end_and_exec_events(work: Work) -> None:
    failed = _one(
        wait_for(work.cluster, "exec", lambda e: e.get("command") == "exit 3"), "exec exit 3"
    )
    assert failed["code"] == "T3002E"
    assert failed["success"] is False
    assert failed["exit_code"] == 3
    _on_the_node(failed, work)
    sid = failed["sid"]
    start = _one([e for e in events(work.cluster, "session.start") if e["sid"] == sid], "start")
    end = _one([e for e in events(work.cluster, "session.end") if e["sid"] == sid], "end")
    for event in (start, end):
        _on_the_node(event, work)
        assert event["session_kind"] == "exec"
        assert event["addr.remote"] == failed["addr.remote"]
    assert start["code"] == "T2000I" and end["code"] == "T2004I"
    assert start["command"] == "exit 3"
    assert end["exit_code"] == 3
    assert end["participants"] == ["erin"]
    assert start["time"] <= end["time"] <= failed["time"]

    fine = _one(
        wait_for(work.cluster, "exec", lambda e: e.get("command") == "echo fine"), "echo fine"
    )
    assert fine["code"] == "T3002I" and fine["success"] is True and fine["exit_code"] == 0
    assert fine["sid"] != sid


def test_a_terminal_session_records_its_size_and_term(work: Work) -> None:
    start = _one(
        wait_for(work.cluster, "session.start", lambda e: e["sid"] == work.random_sid),
        "the random session's start",
    )
    _on_the_node(start, work)
    assert start["term"] == "xterm"
    assert re.fullmatch(r"\d+:\d+", start["size"])


def test_sftp_operations_are_each_an_event_with_the_path(work: Work) -> None:
    home = pwd.getpwnam(LOGIN).pw_dir
    found = wait_for(work.cluster, "sftp", lambda e: e.get("action") == "rename")
    assert found, events(work.cluster, "sftp")
    done = [e for e in events(work.cluster, "sftp") if e["code"].endswith("I")]
    by_action = {e["action"]: e for e in done}
    assert sorted(by_action) == ["mkdir", "open", "rename"]
    for event in done:
        _on_the_node(event, work)
        assert event["success"] is True
        assert event["working_directory"] == home
    assert by_action["mkdir"]["code"] == "TS012I"
    assert by_action["mkdir"]["path"] == f"{home}/d"
    opened = by_action["open"]
    assert opened["code"] == "TS001I"
    assert opened["path"] == f"{home}/d/up.txt"
    assert {"write", "create", "truncate"} <= set(opened["flags"])
    renamed = by_action["rename"]
    assert renamed["code"] == "TS016I"
    assert (renamed["path"], renamed["target_path"]) == (f"{home}/d/up.txt", f"{home}/d/moved.txt")
    # The refused download is a failed open, with the reason.
    refused = _one(
        [e for e in events(work.cluster, "TS001E") if e["path"] == "/etc/shadow"], "refused"
    )
    assert refused["success"] is False
    assert refused["error"] == "Permission denied"
    assert refused["flags"] == ["read"]

    summaries = wait_for(work.cluster, "sftp_summary", lambda e: True)
    summary = _one(summaries, "sftp_summary")
    _on_the_node(summary, work)
    assert summary["code"] == "TS021I"
    assert summary["file_transfer_stats"] == [
        {"path": f"{home}/d/up.txt", "bytes_read": 0, "bytes_written": len("audited\n")}
    ]


def test_a_forwarded_port_is_a_port_event_with_the_address(work: Work) -> None:
    port = _one(wait_for(work.cluster, "port", lambda e: True), "port")
    assert port["code"] == "T3003I"
    assert port["success"] is True
    assert port["addr"] == work.forwarded_to
    _on_the_node(port, work)


def test_the_recording_of_random_output_is_what_the_client_received(work: Work) -> None:
    header, recorded = parse_recording(fetch_recording(work.cluster, work.random_sid))
    assert header["sid"] == work.random_sid
    assert (header["user"], header["login"]) == ("erin", LOGIN)
    assert header["server_hostname"] == NODENAME
    assert header["term"] == "xterm"
    assert [e.type for e in recorded][-2:] == ["exit", "end"]
    assert recorded[-2].fields == {"status": 0}
    output = b"".join(e.data for e in recorded if e.type == "o")
    assert len(work.random_output) > 200_000 * 4 // 3  # base64 of 200,000 bytes, on a pty
    assert hashlib.sha256(output).hexdigest() == hashlib.sha256(work.random_output).hexdigest()
