"""Sessions on this node: tracked with their parties, recorded, joinable, reported to auth.

Every shell or command the node runs is a session with its own id (a UUID, also
``SSH_SESSION_ID`` in its environment). While it runs the node keeps an
:class:`ActiveSession` in its :class:`SessionRegistry` and reports it to the auth
service as a :class:`~trioport.resources.Session` (``PUT /v1/sessions/<sid>``):
kind (``interactive`` for a shell, ``exec`` for a command), user, login, this
node, its parties, created/ended and state. The report is refreshed when a party
joins or leaves, every :data:`REFRESH_SECONDS` while it runs, and once more, as
``ended``, at the end.

**Joining.** A second user joins a running interactive session by opening a
session channel with the environment variable ``TRIOPORT_SESSION=<sid>`` and
asking for a shell (``tsh join`` does this; so does
``ssh -t -o SetEnv=TRIOPORT_SESSION=<sid> login@node``). She must be allowed the
session's OS login on this node, as if she logged in as it herself. From then
on she sees the session's output and her keystrokes go to its terminal; when
the session ends her channel gets its exit status. A party whose connection
cannot keep up is dropped rather than slowing the session.

**Reporting.** Audit events and session reports go to the auth service through
a :class:`Reporter`: an ordered queue worked by one task that retries while the
auth service is away, so no session ever waits for the auth service. The queue is
bounded (:data:`MAX_QUEUED_REPORTS`); if it overflows during a long outage, the
newest reports are dropped and the loss is logged.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
import trio

from trioport.authclient import AuthClient, AuthServiceUnavailable
from trioport.errors import TrioportError
from trioport.resources import Metadata, Party, Session, SessionSpec
from trioport.roles.auth.audit_log import EventCode
from trioport.ssh import ChannelStream
from trioport.sshproto import events as ev

from .authlink import AuthLink, backoff_delay
from .recorder import Recording

__all__ = [
    "JOIN_ENV",
    "MAX_QUEUED_REPORTS",
    "REFRESH_SECONDS",
    "ActiveSession",
    "Reporter",
    "SessionChannel",
    "SessionRegistry",
]

log = logging.getLogger("trioport.node.sessions")

#: The environment variable naming the session to join.
JOIN_ENV = "TRIOPORT_SESSION"
#: Seconds between refreshes of a running session's report (the auth service
#: forgets an active session 30 minutes after its last report).
REFRESH_SECONDS = 300.0
#: Reports waiting for the auth service at most.
MAX_QUEUED_REPORTS = 10_000
#: Output chunks queued for a joined party before it is dropped as too slow.
PARTY_QUEUE = 256


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Reporter:
    """Delivers audit events and session reports to the auth service, in order."""

    def __init__(self, link: AuthLink, *, max_queued: int = MAX_QUEUED_REPORTS) -> None:
        self.link = link
        self._send, self._receive = trio.open_memory_channel[
            tuple[str, Callable[[AuthClient], Awaitable[Any]]]
        ](max_queued)
        self.dropped = 0
        #: Reports delivered so far (tests wait on it).
        self.delivered = 0
        self._progress = trio.Event()

    def submit(self, what: str, fn: Callable[[AuthClient], Awaitable[Any]]) -> None:
        """Queue one request; never blocks."""
        try:
            self._send.send_nowait((what, fn))
        except trio.WouldBlock:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.error("report queue full: %d reports dropped (latest: %s)", self.dropped, what)

    def emit(self, code: EventCode, **fields: Any) -> None:
        """Queue an audit event (see :meth:`~trioport.authclient.AuthClient.emit_event`)."""
        clean = {k: v for k, v in fields.items() if v is not None}
        self.submit(code.event, lambda c: c.emit_event(code.code, **clean))

    def put_session(self, session: Session) -> None:
        """Queue a session report."""
        self.submit(f"session {session.metadata.name}", lambda c: c.put_session(session))

    async def wait_idle(self) -> None:
        """Wait until every queued report has been handled (tests)."""
        while self._receive.statistics().current_buffer_used:
            await self._progress.wait()

    async def run(self) -> None:
        """Deliver reports until cancelled."""
        async for what, fn in self._receive:
            attempt = 0
            while True:
                try:
                    await self.link.call(fn, within=30)
                    self.delivered += 1
                    break
                except AuthServiceUnavailable:
                    await trio.sleep(backoff_delay(attempt, max_delay=10.0))
                    attempt += 1
                except TrioportError as exc:
                    log.warning("the auth service refused %s: %s", what, exc)
                    break
            self._progress.set()
            self._progress = trio.Event()


@attrs.define(eq=False)
class ActiveSession:
    """A session running on this node."""

    sid: str
    kind: str
    user: str
    login: str
    remote_addr: str
    node_id: str
    node_hostname: str
    recording: Recording | None = None
    created: dt.datetime = attrs.Factory(_now)
    parties: dict[str, Party] = attrs.Factory(dict)
    #: Joined parties' output queues, by party id.
    viewers: dict[str, trio.MemorySendChannel[bytes]] = attrs.Factory(dict)
    #: Keystrokes of joined parties, to the session's terminal.
    input_send: trio.MemorySendChannel[bytes] | None = None
    input_receive: trio.MemoryReceiveChannel[bytes] | None = None
    ended: trio.Event = attrs.Factory(trio.Event)
    exit_status: int | None = None
    exit_signal: str | None = None

    def resource(self, *, state: str = "active") -> Session:
        """The session as the auth service tracks it."""
        return Session(
            metadata=Metadata(name=self.sid),  # type: ignore[arg-type]
            spec=SessionSpec(
                kind=self.kind,  # type: ignore[arg-type]
                user=self.user,
                login=self.login,
                node=self.node_id,
                node_hostname=self.node_hostname,
                parties=list(self.parties.values()),
                created=self.created,
                ended=_now() if state == "ended" else None,
                state=state,  # type: ignore[arg-type]
            ),
        )

    def add_party(self, user: str, remote_addr: str) -> str:
        party_id = str(uuid.uuid4())
        self.parties[party_id] = Party(
            id=party_id, user=user, remote_addr=remote_addr, joined=_now()
        )
        return party_id

    def broadcast(self, data: bytes) -> None:
        """Copy output to every joined party; drop those that fell behind."""
        for party_id, queue in list(self.viewers.items()):
            try:
                queue.send_nowait(data)
            except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
                log.info("session %s: party %s is too slow; dropping it", self.sid, party_id)
                queue.close()
                self.viewers.pop(party_id, None)


class SessionRegistry:
    """The sessions running on this node, by id."""

    def __init__(self) -> None:
        self.sessions: dict[str, ActiveSession] = {}
        self._changed = trio.Event()

    def add(self, session: ActiveSession) -> None:
        self.sessions[session.sid] = session
        self._notify()

    def remove(self, session: ActiveSession) -> None:
        self.sessions.pop(session.sid, None)
        self._notify()

    def get(self, sid: str) -> ActiveSession | None:
        return self.sessions.get(sid)

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def wait_empty(self) -> None:
        """Wait until no session is running."""
        while self.sessions:
            await self._changed.wait()


class SessionChannel:
    """A session channel as the process sees it: output recorded and shared.

    :func:`trioport.ssh.session.run_process_on_channel` runs the process on this
    instead of the raw channel: what it sends is recorded (and copied to joined
    parties) before it goes to the client, window changes are recorded, the exit
    report is recorded, and for an interactive session the input it reads is the
    client's keystrokes merged with those of joined parties. Everything else is
    the channel's own.
    """

    def __init__(self, chan: ChannelStream, session: ActiveSession, *, merge_input: bool) -> None:
        self._chan = chan
        self.session = session
        self.recording = session.recording
        self._merge = merge_input

    def __getattr__(self, name: str) -> Any:
        return getattr(self._chan, name)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        data = bytes(data)
        if self.recording is not None:
            await self.recording.output(data, "o")
        self.session.broadcast(data)
        await self._chan.send_all(data)

    async def send_extended(self, data: bytes | bytearray | memoryview, stream: int = 1) -> None:
        data = bytes(data)
        if self.recording is not None:
            await self.recording.output(data, "e")
        await self._chan.send_extended(data, stream)

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if not self._merge or self.session.input_receive is None:
            return await self._chan.receive_some(max_bytes)
        try:
            return await self.session.input_receive.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            return b""

    async def receive_chunks(self) -> list[bytes]:
        if not self._merge or self.session.input_receive is None:
            return await self._chan.receive_chunks()
        data = await self.receive_some()
        return [data] if data else []

    async def pump_client_input(self) -> None:
        """Interactive sessions: move the client's keystrokes into the merged input."""
        queue = self.session.input_send
        assert queue is not None
        try:
            while data := await self._chan.receive_some():
                await queue.send(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        await queue.send(b"")  # the client's EOF ends the terminal's input

    async def next_request(self) -> ev.ChannelRequest | None:
        req = await self._chan.next_request()
        if req is not None and isinstance(req.request, ev.WindowChange):
            if self.recording is not None:
                self.recording.resize(req.request.width_chars, req.request.height_rows)
        return req

    async def request(self, request: ev.ChannelRequestType, want_reply: bool = True) -> bool:
        if isinstance(request, ev.ExitStatus):
            self.session.exit_status = request.status
            if self.recording is not None:
                self.recording.exit(status=request.status)
        elif isinstance(request, ev.ExitSignal):
            self.session.exit_signal = request.name
            if self.recording is not None:
                self.recording.exit(signal=request.name)
        return await self._chan.request(request, want_reply)
