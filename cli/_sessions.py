"""``tsh sessions``, ``tsh join`` and ``tsh play``: live and recorded sessions.

All three reach the auth service's API through the proxy, as the logged-in user
(:mod:`trioport.roles.proxy.sessions_client`); what she sees there is what her
roles allow. ``tsh join`` then connects through the proxy to the session's node,
end to end as ``tsh ssh`` does, and wires the joined channel to this terminal
with tsh's own pump. ``tsh play`` replays a recording with
:mod:`trioport.roles.proxy.playback`. ``docs/cli-tsh.md`` is the manual.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from typing import Any

import trio

from trioport.errors import TrioportError
from trioport.roles.proxy import client as proxy_client
from trioport.roles.proxy import playback
from trioport.roles.proxy import sessions_client as sc
from trioport.roles.proxy.profile import Profile

#: The byte that leaves a joined session (Ctrl-], as telnet has it).
LEAVE_BYTE = b"\x1d"
#: The node's SSH port (the proxy dials the port the node reports whatever this is).
NODE_PORT = 3022

_PLAY_EPILOG = f"""\
Formats:
  pty        replay the output on this terminal with its recorded timing (the default)
  text       write the output without timing
  asciicast  write an asciicast v2 document (asciinema play FILE replays it)

With --format=pty, pauses longer than --max-pause seconds ({playback.DEFAULT_MAX_PAUSE:g}
by default; 0 keeps every pause as recorded) are cut to that length, and then
--speed applies. An asciicast keeps the recorded times and carries --max-pause as
its idle_time_limit, which asciinema's player honours.
"""


def add_parsers(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register this module's subcommands on tsh's parser."""
    p = sub.add_parser("sessions", help="list the active sessions you can see (to join them)")
    p.add_argument("--format", choices=("text", "json"), default="text")
    p.set_defaults(run=_sessions)

    p = sub.add_parser(
        "join",
        help="join another user's interactive session",
        description="Join a running interactive session: see its output and type into it."
        " Ctrl-] leaves the session (it goes on without you).",
    )
    p.add_argument("sid", metavar="SESSION_ID", help="the session's id (see tsh sessions)")
    p.set_defaults(run=_join)

    p = sub.add_parser(
        "play",
        help="replay a recorded session",
        description="Replay the recording of a session that has ended.",
        epilog=_PLAY_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("sid", metavar="SESSION_ID", help="the session's id")
    p.add_argument(
        "--speed",
        type=float,
        default=1.0,
        metavar="X",
        help="replay X times as fast as recorded (default 1; --format=pty only)",
    )
    p.add_argument(
        "--max-pause",
        type=float,
        default=playback.DEFAULT_MAX_PAUSE,
        metavar="SECONDS",
        help=f"cut longer pauses to this (default {playback.DEFAULT_MAX_PAUSE:g}; 0: keep them)",
    )
    p.add_argument("--format", choices=("pty", "text", "asciicast"), default="pty")
    p.add_argument(
        "-o", "--output", metavar="FILE", help="write to FILE, not stdout (text, asciicast)"
    )
    p.set_defaults(run=_play)


# --- shared ------------------------------------------------------------------------------


def _profile() -> Profile:
    profile = Profile.load()
    profile.check()
    return profile


def _proxy(profile: Profile) -> Any:
    """The connection to the proxy's SSH port, as the user."""
    return proxy_client.connect_proxy(
        profile.ssh_addr,
        login=profile.user,
        signers=proxy_client.signers_for(profile),
        host_cas=profile.host_cas,
        cluster=profile.cluster,
    )


def _api(proxy: Any, profile: Profile) -> Any:
    """The auth API through ``proxy``, as the user."""
    return sc.open_auth_api(
        proxy,
        user=profile.user,
        signers=proxy_client.signers_for(profile),
        host_cas=profile.host_cas,
        cluster=profile.cluster,
    )


@asynccontextmanager
async def _connected(profile: Profile) -> AsyncIterator[Any]:
    """The auth API, through the proxy, as the user."""
    async with _proxy(profile) as proxy, _api(proxy, profile) as api:
        yield api


def _err(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# --- sessions ----------------------------------------------------------------------------


async def _list(profile: Profile) -> list[dict[str, Any]]:
    async with _connected(profile) as api:
        return [sc.session_summary(s) for s in await sc.active_sessions(api)]


def _started(iso: str) -> str:
    when = dt.datetime.fromisoformat(iso).astimezone(dt.UTC)
    return when.strftime("%Y-%m-%d %H:%M:%S UTC")


def _table(rows: list[list[str]], headers: list[str]) -> Iterable[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    yield "  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip()
    yield "  ".join("-" * w for w in widths)
    for row in rows:
        yield "  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip()


def _sessions(args: argparse.Namespace) -> int:
    found = trio.run(_list, _profile())
    if args.format == "json":
        print(json.dumps(found, indent=2), flush=True)
        return 0
    if not found:
        print("No active sessions.", flush=True)
        return 0
    rows = [
        [
            s["id"],
            s["kind"],
            s["user"],
            s["login"],
            s["node"],
            ", ".join(dict.fromkeys(s["parties"])),
            _started(s["started"]),
        ]
        for s in found
    ]
    headers = ["Session ID", "Kind", "User", "Login", "Node", "Parties", "Started"]
    for line in _table(rows, headers):
        print(line, flush=True)
    return 0


# --- join ----------------------------------------------------------------------------------


class _LeaveOnEscape:
    """Standard input for a joined session: Ctrl-] ends it (EOF), leaving the session."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.left = False

    async def read(self) -> bytes:
        if self.left:
            return b""
        data = await self.inner.read()
        if LEAVE_BYTE in data:
            self.left = True
            data = data[: data.index(LEAVE_BYTE)]
            return data
        return data

    async def close(self) -> None:
        await self.inner.close()


async def _join_async(args: argparse.Namespace, profile: Profile) -> int:
    from . import tsh  # here, not at the top: tsh imports this module

    sid = sc.check_sid(args.sid)
    cert = profile.certificate
    assert cert is not None
    async with _proxy(profile) as proxy:
        async with _api(proxy, profile) as api:
            session = await sc.find_session(api, sid)
        spec = session.spec
        if spec.state != "active":
            raise TrioportError(f"session {sid} has ended; replay it with: tsh play {sid}")
        if spec.kind != "interactive":
            raise TrioportError(
                f"session {sid} runs a command without a terminal ({spec.kind});"
                " only interactive sessions can be joined"
            )
        login = sc.join_login(session, cert.principals)
        if login is None:
            raise TrioportError(
                f"you may not join session {sid}: it runs as {spec.login!r}, and your"
                " certificate allows no login (see tsh status)"
            )
        where = spec.node_hostname or spec.node
        async with proxy_client.connect_node(
            proxy,
            spec.node,
            NODE_PORT,
            login=login,
            signers=proxy_client.signers_for(profile),
            host_cas=profile.host_cas,
            cluster=profile.cluster,
            principal=spec.node,
        ) as conn:
            cols, rows = tsh._window_size()
            chan = await sc.open_join_channel(
                conn, sid, term=os.environ.get("TERM", "xterm"), width=cols, height=rows
            )
            owner = f"{spec.user} ({spec.login}@{where})"
            _err(f"Joining session {sid} of {owner}. Ctrl-] leaves it.\r")
            out, err = tsh._Fd(1), tsh._Fd(2)
            inp = _LeaveOnEscape(tsh._Fd(0))
            try:
                with tsh._raw_terminal(0):
                    await tsh._pump(chan, inp, out, err, False)  # type: ignore[arg-type]
            finally:
                for fd in (inp, out, err):
                    await fd.close()
        if inp.left:
            _err(f"\r\nLeft session {sid}; it goes on without you.\r")
            return 0
        if chan.exit_status is not None:
            return int(chan.exit_status)
        if chan.exit_signal is not None:
            _err(f"\r\nsession {sid} ended: killed by signal {chan.exit_signal.name}\r")
        return tsh.SSH_FAILURE


def _join(args: argparse.Namespace) -> int:
    profile = _profile()
    try:
        return trio.run(_join_async, args, profile)
    except TrioportError as exc:
        _err(f"error: {exc}")
        return 1


# --- play ----------------------------------------------------------------------------------


class _Sink:
    """Where replayed output goes: stdout (without blocking the loop) or a file."""

    def __init__(self, path: str | None) -> None:
        self.path = path
        self.file: Any = None
        self.fd: Any = None
        self.err: Any = None

    async def open(self) -> None:
        from . import tsh

        if self.path is not None:
            self.file = await trio.open_file(self.path, "wb")
        else:
            self.fd = tsh._Fd(1)
        self.err = tsh._Fd(2)

    async def write(self, data: bytes, stream: str = "o") -> None:
        if not data:
            return
        if stream == "e" and self.file is None:
            await self.err.write(data)
        elif self.file is not None:
            await self.file.write(data)
        else:
            await self.fd.write(data)

    async def close(self) -> None:
        for fd in (self.fd, self.err):
            if fd is not None:
                await fd.close()
        if self.file is not None:
            await self.file.aclose()


def _decoded(step: Any, data: bytes, sid: str) -> list[playback.PlaybackEvent]:
    try:
        return step(data)
    except ValueError as exc:
        raise TrioportError(f"the recording of session {sid} is damaged: {exc}") from None


async def _play_async(args: argparse.Namespace, profile: Profile) -> int:
    sid = sc.check_sid(args.sid)
    pacer = playback.Pacer(speed=args.speed, max_pause=args.max_pause)
    decoder = playback.RecordingDecoder()
    writer: playback.AsciicastWriter | None = None
    start: float | None = None
    sink = _Sink(args.output)
    await sink.open()

    async def handle(events: list[playback.PlaybackEvent]) -> None:
        nonlocal writer, start
        if args.format == "asciicast":
            if writer is None:
                assert decoder.header is not None
                writer = playback.AsciicastWriter(
                    decoder.header, idle_time_limit=args.max_pause or None
                )
                await sink.write(writer.header_line().encode("utf-8"))
            text = "".join(writer.event_lines(events))
            await sink.write(text.encode("utf-8"))
        elif args.format == "text":
            for event in events:
                if event.type in ("o", "e"):
                    await sink.write(event.data, event.type)
        else:
            for frame in pacer.frames(events):
                if start is None:
                    start = trio.current_time()
                await trio.sleep_until(start + frame.at)
                await sink.write(frame.data, frame.stream)

    try:
        async with _connected(profile) as api:
            async for piece in sc.recording_pieces(api, sid):
                try:
                    events = decoder.feed(piece)
                except ValueError as exc:
                    raise TrioportError(
                        f"the recording of session {sid} is damaged: {exc}"
                    ) from None
                await handle(events)
        try:
            await handle(decoder.close())
        except ValueError as exc:
            raise TrioportError(f"the recording of session {sid} is damaged: {exc}") from None
        if writer is not None:
            await sink.write("".join(writer.finish()).encode("utf-8"))
    finally:
        await sink.close()
    if not decoder.ended:
        _err(f"warning: the recording of session {sid} was cut short")
    return 0


def _play(args: argparse.Namespace) -> int:
    if args.output is not None and args.format == "pty":
        _err("error: -o goes with --format=text or --format=asciicast")
        return 2
    try:
        playback.Pacer(speed=args.speed, max_pause=args.max_pause)
    except ValueError as exc:
        _err(f"error: {exc}")
        return 2
    profile = _profile()
    try:
        return trio.run(_play_async, args, profile)
    except (TrioportError, OSError) as exc:
        _err(f"error: {exc}")
        return 1
