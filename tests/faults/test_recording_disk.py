"""The recordings' disk fails before and during a session: the role's policy holds.

The auth service keeps recordings in ``data_dir/auth/records``; here that is a tiny
tmpfs (:func:`.conftest.tiny_disk`) that the test fills up, so the auth service's
writes really fail with ENOSPC. What a user and an auditor see:

- best effort (the default, ``record_session: {ssh: best_effort}``): the session
  goes on to its end, a ``session.upload`` audit event with ``success: false``
  names the disk error, and the recording is never listed as complete;
- strict (``record_session: {ssh: strict}``): the session ends with a message on
  the user's terminal naming the disk error, and exit status 1; a session whose
  recording cannot be stored from the start never runs its command;
- the auth API answers the failed write with ``507 storage_failed`` and the
  reason, goes on serving, and stores recordings again once the disk has room,
  without a restart.
"""

from __future__ import annotations

import json
import os
from typing import Any

import pytest
import trio

from tests.roles.node.conftest import (
    ALICE_LOGIN,
    Cluster,
    NodeHandle,
    UserFiles,
    run_ssh,
    ssh_argv,
    wait_for,
)
from tests.roles.node.test_node_recording import Terminal
from trioport.authclient import APIError, ClientIdentity, connect_auth
from trioport.resources import (
    LabelSelector,
    Metadata,
    RecordSession,
    Role,
    RoleConditions,
    RoleOptions,
    RoleSpec,
)
from trioport.roles.node.recorder import parse_recording

from .conftest import TinyDisk, tiny_disk

NO_SPACE = os.strerror(28)  # "No space left on device"


@pytest.fixture
def disk(cluster: Cluster) -> Any:
    with tiny_disk(cluster.tmp / "auth" / "records") as mounted:
        yield mounted


async def _setup(cluster: Cluster) -> tuple[NodeHandle, UserFiles, UserFiles]:
    """A node; alice (best effort, the default) and carol (a strict role), logged in."""
    strict = Role(
        metadata=Metadata(name="recorded"),  # type: ignore[arg-type]
        spec=RoleSpec(
            options=RoleOptions(record_session=RecordSession(ssh="strict")),
            allow=RoleConditions(logins=[ALICE_LOGIN], node_labels=LabelSelector({"*": ["*"]})),  # type: ignore[list-item]
        ),
    )
    await cluster.admin_call(lambda c: c.upsert_role(strict))
    node = await cluster.start_node()
    await cluster.add_user("alice", [ALICE_LOGIN])
    await cluster.add_user("carol", [], roles=["recorded"])
    alice = await cluster.login("alice")
    carol = await cluster.login("carol")
    await cluster.wait_online(node)
    return node, alice, carol


async def _event(cluster: Cluster, name: str, **match: Any) -> dict[str, Any]:
    async def found() -> list[dict[str, Any]]:
        events = await cluster.admin_call(lambda c: c.search_events(events=[name]))
        return [e for e in events if all(e.get(k) == v for k, v in match.items())]

    return (await wait_for(found))[-1]


async def _listing(cluster: Cluster) -> dict[str, Any]:
    return await cluster.admin_call(lambda c: c.list_recordings())


async def _complete_sids(cluster: Cluster) -> set[str]:
    return {r["sid"] for r in (await _listing(cluster))["recordings"]}


async def _started(cluster: Cluster, user: str) -> str:
    """The sid of ``user``'s running session, once its first chunk is stored."""
    start = await _event(cluster, "session.start", user=user)
    sid = start["sid"]

    async def stored() -> bool:
        return sid in (await _listing(cluster)).get("incomplete", [])

    await wait_for(stored)
    return sid


async def _lost(cluster: Cluster, sid: str) -> dict[str, Any]:
    """The audit event saying ``sid``'s recording could not be stored."""
    event = await _event(cluster, "session.upload", sid=sid, success=False)
    assert event["code"] == "T2005E"
    assert NO_SPACE in event["error"]
    return event


async def test_best_effort_session_runs_unrecorded_when_the_disk_is_full(
    cluster: Cluster, disk: TinyDisk
) -> None:
    node, alice, _ = await _setup(cluster)
    disk.fill()
    result = await run_ssh(ssh_argv(alice, node, ALICE_LOGIN, "echo one; sleep 0.5; echo two"))
    assert (result.returncode, result.stdout) == (0, b"one\ntwo\n")
    start = await _event(cluster, "session.start", user="alice")
    event = await _lost(cluster, start["sid"])
    assert event["record_session"] == "best_effort"
    await _event(cluster, "session.end", sid=start["sid"])
    assert start["sid"] not in await _complete_sids(cluster)
    # Room again: the next session is recorded whole, without restarting anything.
    disk.free()
    again = await run_ssh(ssh_argv(alice, node, ALICE_LOGIN, "echo again"))
    assert again.stdout == b"again\n"

    async def recorded_again() -> bool:
        for sid in await _complete_sids(cluster):
            data = await cluster.admin_call(lambda c, sid=sid: c.fetch_recording(sid))
            _, events = parse_recording(data)
            if b"".join(e.data for e in events if e.type == "o") == b"again\n":
                return events[-1].type == "end"
        return False

    assert await wait_for(recorded_again)


async def test_best_effort_session_goes_on_when_the_disk_fills_during_it(
    cluster: Cluster, disk: TinyDisk
) -> None:
    node, alice, _ = await _setup(cluster)
    script = "echo ready; read x; echo after-$x"
    async with Terminal(ssh_argv(alice, node, ALICE_LOGIN, "-tt", script)) as term:
        await term.expect(b"ready")
        sid = await _started(cluster, "alice")
        disk.fill()
        await term.type(b"full\n")
        await term.expect(b"after-full")
        with trio.fail_after(30):
            assert await term.proc.wait() == 0
    await _lost(cluster, sid)
    await _event(cluster, "session.end", sid=sid)
    # What was stored before the disk filled stays an incomplete upload, never complete.
    listing = await _listing(cluster)
    assert sid not in {r["sid"] for r in listing["recordings"]}
    assert sid in listing["incomplete"]
    # The upload's state counts only the chunks stored before the disk filled.
    records = cluster.tmp / "auth" / "records"
    state = json.loads((records / f"{sid}.part.state").read_bytes())
    counted = (records / f"{sid}.part").read_bytes()[: state["size"]]
    assert counted.startswith(b'{"format":"trioport-recording"')
    assert b'"type":"end"' not in counted


async def test_strict_session_never_starts_when_the_disk_is_full(
    cluster: Cluster, disk: TinyDisk
) -> None:
    node, _, carol = await _setup(cluster)
    disk.fill()
    result = await run_ssh(ssh_argv(carol, node, ALICE_LOGIN, "echo ran"))
    assert result.returncode == 1
    assert result.stdout == b""  # the command never ran
    message = result.stderr.decode()
    assert "recording cannot be stored" in message and NO_SPACE in message
    assert "record_session: strict" in message
    start = await _event(cluster, "session.start", user="carol")
    assert (await _lost(cluster, start["sid"]))["record_session"] == "strict"
    await _event(cluster, "session.end", sid=start["sid"])
    assert start["sid"] not in await _complete_sids(cluster)


async def test_strict_session_ends_with_a_message_when_the_disk_fills_during_it(
    cluster: Cluster, disk: TinyDisk
) -> None:
    node, _, carol = await _setup(cluster)
    script = "echo ready; read x; echo after-$x; sleep 60"
    async with Terminal(ssh_argv(carol, node, ALICE_LOGIN, "-tt", script)) as term:
        await term.expect(b"ready")
        sid = await _started(cluster, "carol")
        disk.fill()
        await term.type(b"full\n")
        await term.expect(b"after-full")
        # The next chunk cannot be stored: the session ends (not after the sleep).
        await term.expect(b"record_session: strict")
        with trio.fail_after(30):
            assert await term.proc.wait() == 1
        assert NO_SPACE.encode() in term.output
    await _lost(cluster, sid)
    end = await _event(cluster, "session.end", sid=sid)
    assert end["user"] == "carol"
    listing = await _listing(cluster)
    assert sid not in {r["sid"] for r in listing["recordings"]}
    assert sid in listing["incomplete"]


async def test_auth_api_answers_a_failed_write_with_507_and_keeps_serving(
    cluster: Cluster, disk: TinyDisk
) -> None:
    node, alice, _ = await _setup(cluster)
    identity = ClientIdentity.load(node.data_dir / "node")
    disk.fill()
    async with connect_auth(("127.0.0.1", cluster.auth_port), identity) as client:
        with pytest.raises(APIError) as refused:
            await client.upload_chunk("fault-test-0001", 0, b"x" * 10_000)
        assert (refused.value.status, refused.value.kind) == (507, "storage_failed")
        assert "chunk 0 of recording fault-test-0001" in str(refused.value)
        assert NO_SPACE in str(refused.value)
        # Nothing was counted: the same chunk is still the one expected, and stores
        # once the disk has room.
        assert await client.next_chunk("fault-test-0001") == 0
        disk.free()
        assert await client.upload_chunk("fault-test-0001", 0, b"x" * 10_000) == 1
        await client.complete_recording("fault-test-0001", chunks=1)
    assert "fault-test-0001" in await _complete_sids(cluster)
    assert (await run_ssh(ssh_argv(alice, node, ALICE_LOGIN, "true"))).returncode == 0
