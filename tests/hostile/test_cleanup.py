"""What a hostile connection leaves behind on the server once it is dropped.

A dropped connection must not leave its commands' pipelines running, and dropping
it is routine: it must not be logged as a crash of the server.
"""

from __future__ import annotations

import gc
import logging
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager

import trio

from trioport.sshproto import events as ev

from .conftest import TIMEOUT
from .test_limits import KEEPALIVE, _exited

#: The receive window our peer's core gives each channel (ConnectionConfig default).
WINDOW = 2 * 1024 * 1024


@contextmanager
def _no_gc() -> Iterator[None]:
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _kill(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass


async def test_dropped_connection_ends_its_pipelines(hostile_server, keys) -> None:
    # The left side reports its pid and becomes head; $! is cat, the right side.
    command = b"sh -c 'echo $$ >&2; exec head -c 100000123 /dev/zero' | cat & echo $! >&2; wait"
    # Whether a leak shows depends on how the dropped channel's task unwinds, so
    # several channels try at once.
    sessions = 4
    pids: dict[int, list[int]] = {}
    with trio.fail_after(TIMEOUT):
        bed = await hostile_server()
        peer = await bed.peer()
        await peer.authenticate("mallory", keys.mallory)
        (server_side,) = bed.handler.connections["mallory"]
        for _ in range(sessions):
            cid = await peer.open_session()
            await peer.send_event(
                ev.ChannelRequest(channel=cid, request=ev.Exec(command=command), want_reply=False)
            )

        def pids_and_full_windows() -> bool:
            # Both pids on stderr, and each whole window used (stdout and stderr
            # share it): the server's output pumps now wait for a WINDOW_ADJUST
            # that will never come.
            full = 0
            for cid in range(sessions):
                data = [e for e in peer.seen(ev.ChannelData) if e.channel == cid]
                err = b"".join(e.data for e in data if e.stream == 1)
                pids[cid] = [int(n) for n in re.findall(rb"\d+", err)]
                full += len(pids[cid]) == 2 and sum(len(e.data) for e in data) == WINDOW
            return full == sessions

        await peer.until(pids_and_full_windows)
        everyone = [pid for found in pids.values() for pid in found]
        try:
            # Cleanup must not wait for the garbage collector: keep it out of the way.
            with _no_gc():
                await peer.aclose()
                await server_side.wait_closed()
                with trio.move_on_after(3):
                    for pid in everyone:
                        await _exited(pid)
                alive = [pid for pid in everyone if _alive(pid)]
            assert alive == [], "pipelines outlived their connection"
        finally:
            _kill(everyone)
        await bed.witness_works()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except (FileNotFoundError, ProcessLookupError):  # gone (or going) while we looked
        return False


async def test_keepalive_drop_is_not_logged_as_a_crash(hostile_server, keys, caplog) -> None:
    caplog.set_level(logging.INFO, logger="trioport")
    with trio.fail_after(TIMEOUT):
        bed = await hostile_server(limits=KEEPALIVE)
        peer = await bed.peer()
        await peer.authenticate("mallory", keys.mallory)
        (server_side,) = bed.handler.connections["mallory"]
        command = b"exec head -c 100000000 /dev/zero"
        for _ in range(16):
            cid = await peer.open_session()
            peer.conn.send(
                ev.ChannelRequest(channel=cid, request=ev.Exec(command=command), want_reply=False)
            )
        await peer.flush()
        # Mallory reads nothing; the server's writes block; keepalive drops her.
        await server_side.wait_closed()
        await bed.witness_works()  # by now the dropped connection's tasks are done
    errors = [f"{r.name}: {r.getMessage()}" for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == []
