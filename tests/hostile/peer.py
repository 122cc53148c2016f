"""A scriptable hostile SSH client for network tests against a real trioport server.

:class:`HostilePeer` drives a real client-role :class:`~trioport.sshproto.Connection`
over a trio TCP stream, but nothing it says reaches the wire unless the test asks:

- the core's own output collects in :attr:`HostilePeer.outbox`; :meth:`flush`
  sends it, :meth:`discard` throws it away;
- :meth:`send_raw` writes any bytes to the socket (a junk version line, a packet
  with a bad length, a cleartext message before NEWKEYS); :func:`plain_packet`
  frames a cleartext packet, well-formed or not;
- :meth:`inject` seals any payload with the core's *current* outgoing keys and
  sequence number, so after NEWKEYS the server sees a correctly encrypted and MACed
  packet carrying whatever the test wants, in any state;
- :meth:`send_message` picks for it: cleartext before our NEWKEYS, sealed after;
- :meth:`sealed_with_length` makes a sealed packet whose length field lies, in
  every cipher mode; :meth:`send_greeting` sends any identification line and keeps
  the key exchange consistent with it;
- :attr:`HostilePeer.drop` lists message numbers the core may not send at all (a
  peer that never sends SERVICE_REQUEST, or never answers a keepalive);
  :meth:`open_session_as` uses it to open a channel with any window and max packet.

:meth:`goto` brings a connection to any of :data:`POSITIONS`, from before KEXINIT
to after login, using the core for the legitimate parts (:meth:`handshake`,
:meth:`to_kex_window`, :meth:`userauth_state`, :meth:`authenticate`); then
:meth:`open_session`, :meth:`exec` and :meth:`wait_for` drive channels.

Everything the server sends is read by the same core, so its DISCONNECT is decoded
whether it comes in cleartext (before NEWKEYS) or encrypted (after): see
:meth:`expect_disconnect`.

Private attributes of the core are used here, and only here:
``Connection._transport`` (the :class:`~trioport.sshproto.transport.Transport`) and
its ``_write`` method, which seals one payload with ``_send_prot`` (the outgoing
:class:`~trioport.sshproto.ciphers.PacketProtection`) at ``_send_seq`` and advances
the sequence number. :meth:`HostilePeer.inject` calls the original ``_write``; the
instance's ``_write`` is wrapped to apply :attr:`HostilePeer.drop` and to record
what the core wrote. ``PacketProtection.mac_size`` of ``_send_prot`` sizes a sealed
packet (:meth:`HostilePeer.sealed_with_length`); ``Transport.local_version`` is
rewritten by :meth:`HostilePeer.send_greeting`. ``Connection._channels._channels[id]
.peer_id`` gives the server's number for one of our channels
(:meth:`HostilePeer.remote_channel`).
"""

from __future__ import annotations

import os
from collections.abc import Callable

import trio

from trioport.sshproto import Connection, ConnectionConfig, Role, TransportState
from trioport.sshproto import events as ev
from trioport.sshproto import messages as m
from trioport.sshproto.ciphers import none_protection
from trioport.sshproto.keys import PrivateKey, signature_algorithm_for

__all__ = [
    "POSITIONS",
    "HostilePeer",
    "kexinit",
    "plain_packet",
]

_NONE = none_protection()

#: Where :meth:`HostilePeer.goto` can stop, in protocol order:
#:
#: - ``before-kexinit``: our version line sent, nothing else (cleartext);
#: - ``kex``: our strict-KEX KEXINIT sent (cleartext);
#: - ``kex-not-strict``: a KEXINIT without the strict-KEX marker sent (cleartext);
#: - ``kex-window``: the server sent NEWKEYS, we did not (we still send cleartext);
#: - ``service``: keys in place both ways, no SERVICE_REQUEST sent (encrypted);
#: - ``userauth``: ssh-userauth accepted, not logged in (encrypted);
#: - ``connected``: logged in as mallory (encrypted).
POSITIONS = (
    "before-kexinit",
    "kex",
    "kex-not-strict",
    "kex-window",
    "service",
    "userauth",
    "connected",
)


def plain_packet(
    payload: bytes,
    *,
    padding_length: int | None = None,
    packet_length: int | None = None,
) -> bytes:
    """A cleartext binary packet (RFC 4253 §6), before any NEWKEYS.

    By default it is well-formed. ``padding_length`` overrides the padding byte
    (the padding actually appended is still what makes the packet aligned), and
    ``packet_length`` overrides the length field: both make malformed packets.
    """
    if padding_length is None and packet_length is None:
        return _NONE.seal(0, payload, os.urandom)
    pad = -(5 + len(payload)) % 8
    pad = pad + 8 if pad < 4 else pad
    length = 1 + len(payload) + pad
    return (
        (length if packet_length is None else packet_length).to_bytes(4, "big")
        + bytes([pad if padding_length is None else padding_length])
        + payload
        + bytes(pad)
    )


def kexinit(*, strict: bool = True, **fields: object) -> bytes:
    """A client KEXINIT payload our server would accept, with ``fields`` replaced."""
    kex = ("curve25519-sha256",) + (("kex-strict-c-v00@openssh.com",) if strict else ())
    values: dict[str, object] = {
        "cookie": os.urandom(16),
        "kex_algorithms": kex,
        "server_host_key_algorithms": ("ssh-ed25519",),
        "ciphers_c2s": ("aes128-gcm@openssh.com",),
        "ciphers_s2c": ("aes128-gcm@openssh.com",),
        "macs_c2s": ("hmac-sha2-256-etm@openssh.com",),
        "macs_s2c": ("hmac-sha2-256-etm@openssh.com",),
        "compression_c2s": ("none",),
        "compression_s2c": ("none",),
    }
    values.update(fields)
    return bytes(m.KexInit(**values))  # type: ignore[arg-type]


class HostilePeer:
    """A client that says exactly what the test tells it to; see the module docstring.

    Make one with :meth:`connect`. Attributes:

    - ``conn``: the client core; it reads everything the server sends.
    - ``stream``: the TCP stream to the server.
    - ``outbox``: what the core wants to send and the test has not sent yet.
    - ``events``: every event the core emitted, in order.
    - ``drop``: message numbers the core's own output may not contain.
    - ``dropped``: the payloads withheld because of ``drop``.
    - ``written``: the payloads the core sealed (its own output, not injections).
    - ``eof``: the server closed the connection.
    """

    def __init__(self, stream: trio.SocketStream, config: ConnectionConfig) -> None:
        self.stream = stream
        self.conn = Connection(config, rng=os.urandom, now=trio.current_time())
        self.outbox = bytearray()
        self.events: list[ev.Event] = []
        self.drop: set[int] = set()
        self.dropped: list[bytes] = []
        #: Every payload the core sealed (sent or still in the outbox), injections excluded.
        self.written: list[bytes] = []
        self.eof = False
        #: True until our NEWKEYS went out: :meth:`send_message` then writes cleartext.
        self.cleartext = True
        transport = self.conn._transport
        self._seal = transport._write  # the original: seal with current keys and seqnr

        def write(payload: bytes) -> None:
            if payload[0] in self.drop:
                self.dropped.append(payload)
                return
            self.written.append(payload)
            self._seal(payload)

        transport._write = write  # type: ignore[method-assign]
        self._take_output()

    @classmethod
    async def connect(
        cls,
        port: int,
        *,
        config: ConnectionConfig | None = None,
        local_address: str | None = None,
    ) -> HostilePeer:
        """Open a TCP connection to ``127.0.0.1:port`` (from ``local_address``, a loopback
        address, when given); nothing is sent yet: the version line and KEXINIT wait in
        :attr:`outbox`."""
        stream = await trio.open_tcp_stream("127.0.0.1", port, local_address=local_address)
        return cls(stream, config or ConnectionConfig(role=Role.CLIENT))

    # --- writing ----------------------------------------------------------------------

    def _take_output(self) -> None:
        self.outbox += self.conn.data_to_send()

    async def send_raw(self, data: bytes) -> None:
        """Write ``data`` to the socket as it is."""
        await self.stream.send_all(data)

    async def flush(self) -> None:
        """Send what the core has queued (the outbox)."""
        self._take_output()
        data, self.outbox = bytes(self.outbox), bytearray()
        if data:
            await self.stream.send_all(data)

    def discard(self) -> bytes:
        """Throw away what the core has queued; returns it."""
        self._take_output()
        data, self.outbox = bytes(self.outbox), bytearray()
        return data

    def split_greeting(self) -> tuple[bytes, bytes]:
        """Take the core's first output apart: (identification line, KEXINIT packet)."""
        data = self.discard()
        end = data.index(b"\n") + 1
        return data[:end], data[end:]

    async def send_greeting(self, version_line: bytes) -> None:
        """Send ``version_line`` (with its CR LF) instead of the core's, then its KEXINIT.

        The core is told it sent this line (``Transport.local_version``, private),
        so the key exchange hash still matches and the handshake can go on.
        """
        _, first_kexinit = self.split_greeting()
        self.conn._transport.local_version = version_line.rstrip(b"\r\n").decode("ascii")
        await self.send_raw(version_line + first_kexinit)

    async def send_version(self) -> None:
        """Send only the core's identification line; its KEXINIT is thrown away."""
        version, _ = self.split_greeting()
        await self.send_raw(version)

    async def inject(self, *payloads: bytes) -> None:
        """Seal each payload with the current keys and sequence number, and send."""
        for payload in payloads:
            self._seal(payload)
        await self.flush()

    def sealed_with_length(self, length: int) -> bytes:
        """An encrypted packet (an IGNORE) whose packet_length field claims ``length``.

        The packet is sealed with the current keys and sequence number, then its
        first four bytes are XORed with ``old ^ length``. That sets the field in
        every mode: where the length is clear (AES-GCM, ETM) it is replaced, where
        it is encrypted with a stream (chacha20-poly1305's K_1, AES-CTR) the XOR
        goes through the keystream. The MAC no longer matches, but the length is
        checked first. Returns only the first 16 bytes: enough for the server to
        read the length, and nothing left unread on its socket.
        """
        wire = bytearray(self._sealed(bytes(m.Ignore(bytes(32)))))
        old = len(wire) - 4 - self.conn._transport._send_prot.mac_size
        flip = (old ^ length).to_bytes(4, "big")
        wire[:4] = bytes(a ^ b for a, b in zip(wire[:4], flip, strict=True))
        return bytes(wire[:16])

    def _sealed(self, payload: bytes) -> bytes:
        """Seal one payload and take its bytes back out of the outbox."""
        self._take_output()
        before = len(self.outbox)
        self._seal(payload)
        self._take_output()
        packet = bytes(self.outbox[before:])
        del self.outbox[before:]
        return packet

    async def send_message(self, *payloads: bytes) -> None:
        """Send payloads as the current state allows a liar to: cleartext packets
        before our NEWKEYS, sealed with the current keys after it."""
        if self.cleartext:
            await self.send_raw(b"".join(plain_packet(p) for p in payloads))
        else:
            await self.inject(*payloads)

    async def send_event(self, event: ev.Event) -> None:
        """Send an event through the core (its state checks apply)."""
        self.conn.send(event)
        await self.flush()

    # --- reading ----------------------------------------------------------------------

    async def step(self) -> list[ev.Event]:
        """Read one chunk from the server and return the events it produced.

        The core's replies go to the outbox, not the wire.
        """
        if self.eof:
            raise AssertionError("the server already closed the connection")
        try:
            data = await self.stream.receive_some(65536)
        except trio.BrokenResourceError:
            data = b""  # a reset after the server closed with our bytes unread
        if not data:
            self.eof = True
        self.conn.receive_data(data)
        got = []
        while (event := self.conn.next_event()) is not None:
            got.append(event)
        self.events += got
        self._take_output()
        return got

    async def until(self, done: Callable[[], bool], *, answer: bool = False) -> None:
        """Read until ``done()``; with ``answer`` the core's replies are sent as they come."""
        while not done():
            if answer:
                await self.flush()
            await self.step()
        if answer:
            await self.flush()

    async def wait_for(
        self, predicate: Callable[[ev.Event], bool], *, answer: bool = False
    ) -> ev.Event:
        """Read until an event *arriving from now on* matches ``predicate``; return it."""
        start = len(self.events)

        def match() -> ev.Event | None:
            return next((e for e in self.events[start:] if predicate(e)), None)

        await self.until(lambda: match() is not None, answer=answer)
        event = match()
        assert event is not None
        return event

    def seen_kex(self) -> bool:
        """True once the first key exchange completed."""
        return bool(self.seen(ev.KexComplete))

    def seen(self, kind: type[ev.Event]) -> list[ev.Event]:
        """The events of one type received so far."""
        return [e for e in self.events if isinstance(e, kind)]

    async def expect_disconnect(self) -> ev.Disconnect:
        """Read to the end of the connection; return the server's DISCONNECT.

        Nothing more is sent. Fails if the server closes without a DISCONNECT, or
        sends anything after it.
        """
        while not self.eof:
            await self.step()
        found = self.seen(ev.Disconnect)
        assert found, f"no DISCONNECT before the connection closed; got {self.events}"
        assert len(found) == 1
        after = self.events[self.events.index(found[0]) + 1 :]
        assert all(isinstance(e, ev.ConnectionLost) for e in after), after
        disconnect = found[0]
        assert isinstance(disconnect, ev.Disconnect)
        return disconnect

    # --- the legitimate parts ---------------------------------------------------------

    async def handshake(self) -> None:
        """Version exchange and the first key exchange, answered by the core."""
        await self.until(lambda: bool(self.seen(ev.KexComplete)), answer=True)
        self.cleartext = False

    async def to_kex_window(self) -> None:
        """Stop inside the first key exchange, after the server's NEWKEYS, before ours.

        The server has switched its outgoing keys, its incoming side still reads
        cleartext: the window of asyncssh's CVE-2023-46445/46446 and of Terrapin.
        Our NEWKEYS (and anything after it) is thrown away, never sent.
        """
        await self.flush()
        # Our ECDH init is queued once the server's KEXINIT is read.
        await self.until(lambda: bool(self.outbox))
        await self.flush()
        # The server answers ECDH_REPLY then NEWKEYS; the core queues its NEWKEYS.
        await self.until(lambda: bool(self.seen(ev.KexComplete)))
        self.discard()

    async def userauth_state(self) -> None:
        """Handshake, then ssh-userauth accepted: the server waits for a request."""
        await self.handshake()
        await self.until(lambda: self.conn.state is TransportState.USERAUTH, answer=True)

    async def authenticate(self, username: str, key: PrivateKey) -> None:
        """Handshake (if not done) and publickey authentication; must succeed."""
        if not self.seen(ev.KexComplete):
            await self.handshake()
        algorithm = key.public.signature_algorithms()[0]
        data = self.conn.publickey_data_to_sign(username, algorithm, key.public.blob)
        request = ev.UserauthRequest(
            username=username,
            method="publickey",
            public_key=key.public.blob,
            algorithm=algorithm,
            signature=key.sign(data, signature_algorithm_for(algorithm)),
        )
        await self.send_event(request)
        await self.until(
            lambda: bool(self.seen(ev.UserauthSuccess) or self.seen(ev.UserauthFailure)),
            answer=True,
        )
        assert self.seen(ev.UserauthSuccess), self.events

    async def open_session(self) -> int:
        """Open a session channel through the core; returns our channel id."""
        cid = self.conn.new_channel_id()
        await self.send_event(ev.ChannelOpen(channel=cid, kind="session"))
        answer = await self.wait_for(
            lambda e: (
                isinstance(e, ev.ChannelOpenConfirmation | ev.ChannelOpenFailure)
                and e.channel == cid
            ),
            answer=True,
        )
        assert answer == ev.ChannelOpenConfirmation(channel=cid), answer
        return cid

    async def open_session_as(self, *, window: int, max_packet: int) -> tuple[int, ev.Event]:
        """Open a session channel advertising any ``window`` and ``max_packet`` (even
        values our own config refuses, such as 0); returns (our id, the server's answer).

        The core registers the channel as usual; its CHANNEL_OPEN is withheld and a
        copy with the new numbers is injected in its place.
        """
        cid = self.conn.new_channel_id()
        self.drop.add(m.MsgId.CHANNEL_OPEN)
        try:
            self.conn.send(ev.ChannelOpen(channel=cid, kind="session"))
        finally:
            self.drop.discard(m.MsgId.CHANNEL_OPEN)
        opened = m.parse(self.dropped.pop())
        assert isinstance(opened, m.ChannelOpen) and opened.sender == cid
        await self.inject(bytes(m.ChannelOpen(opened.kind, cid, window, max_packet)))
        answer = await self.wait_for(
            lambda e: (
                isinstance(e, ev.ChannelOpenConfirmation | ev.ChannelOpenFailure | ev.Disconnect)
                and getattr(e, "channel", cid) == cid
            )
        )
        return cid, answer

    async def exec(self, command: bytes, cid: int | None = None) -> bytes:
        """Run ``command`` on a (new) session channel; its stdout once the channel closed."""
        if cid is None:
            cid = await self.open_session()
        start = len(self.events)
        await self.send_event(ev.ChannelRequest(channel=cid, request=ev.Exec(command=command)))
        await self.wait_for(lambda e: e == ev.ChannelClose(channel=cid), answer=True)
        return b"".join(
            e.data
            for e in self.events[start:]
            if isinstance(e, ev.ChannelData) and e.channel == cid and e.stream is None
        )

    async def goto(self, position: str, key: PrivateKey | None = None) -> None:
        """Bring the connection to one of :data:`POSITIONS`, ready for a hostile message.

        ``connected`` logs in as ``mallory`` with ``key``.
        """
        if position == "before-kexinit":
            await self.send_version()
        elif position == "kex":
            await self.flush()
        elif position == "kex-not-strict":
            await self.send_version()
            await self.send_raw(plain_packet(kexinit(strict=False)))
        elif position == "kex-window":
            await self.to_kex_window()
        elif position == "service":
            self.drop.add(m.MsgId.SERVICE_REQUEST)
            await self.handshake()
        elif position == "userauth":
            await self.userauth_state()
        elif position == "connected":
            assert key is not None
            await self.authenticate("mallory", key)
        else:
            raise ValueError(position)

    def remote_channel(self, cid: int) -> int:
        """The server's number for our channel ``cid`` (what our messages must name)."""
        return self.conn._channels._channels[cid].peer_id

    async def aclose(self) -> None:
        await trio.aclose_forcefully(self.stream)
