"""Play a real SSH peer against a victim :class:`Connection` for the transport targets.

A fuzz input for ``fuzz_transport_server`` / ``fuzz_transport_client`` is two
header bytes and a body (:func:`parse_input`):

- **stage 0, from the start**: the body is the raw byte stream the victim receives,
  version line first. The seeds are whole recorded sessions of a real peer; because
  every RNG is seeded, a recorded session replays against a fresh victim byte for
  byte, so mutations land in the version exchange, the cleartext KEXINIT and the
  key exchange (later, encrypted bytes fail their MAC, as they should).
- **stages 1-3, after a valid prefix**: a real peer and the victim first run the
  key exchange (1), user authentication (2) or authentication plus an open
  session channel with a pty and a shell (3), with the algorithms the header picks.
  The body is then a sequence of *plaintext payloads* (``uint16 length || bytes``
  each) that the peer seals with its real outgoing keys and sequence numbers and
  hands to the victim, so the fuzzer speaks directly to the message parsers and
  state machines behind the encryption: userauth, channels, global requests,
  re-keying, EXT_INFO ...

Both sides answer what they receive through one :class:`Driver` policy (accept
the right password, key or certificate, confirm channels, reply to requests, echo
data within the window ...), the same one that recorded the seeds, so the fuzzer
reaches states a silent victim never enters.

The invariant (h11's, extended): ``receive_data`` / ``next_event`` return events or
raise :class:`~trioport.errors.RemoteProtocolError`; after that error every call
raises and ``data_to_send`` still works. A :class:`LocalProtocolError` from the
receive side, any other exception, an answer the driver gives to an event being
refused, or different events for the same bytes fed whole and byte by byte, is a
bug and crashes the fuzzer.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace

from _fixtures import (
    CA,
    HOST_CERT,
    HOST_ECDSA,
    HOST_ED25519,
    HOST_NAME,
    HOST_RSA,
    NOW,
    PASSWORD,
    PEER_ADDRESS,
    USER_CERT,
    USER_ED25519,
    USER_NAME,
    make_rng,
)

from trioport.errors import (
    CertificateInvalid,
    ChannelOpenFailureReason,
    LocalProtocolError,
    ProtocolError,
    RemoteProtocolError,
)
from trioport.sshproto import Connection, ConnectionConfig, HostKey, Role, TransportState
from trioport.sshproto import events as ev
from trioport.sshproto.certs import CertType, check_certificate
from trioport.sshproto.ciphers import CIPHERS, MACS
from trioport.sshproto.kex import KEX_METHODS
from trioport.sshproto.keys import CERT_SUFFIX, HOST_KEY_ALGORITHMS

#: Channel kinds a driver confirms; any other open is refused.
_CONFIRMED_KINDS = {
    Role.SERVER: ("session", "direct-tcpip"),
    Role.CLIENT: ("forwarded-tcpip", "auth-agent@openssh.com", "x11"),
}
_ALL_AUTH = ("publickey", "password", "keyboard-interactive")
#: A bound on events per input byte: more means the core is looping on its own.
_EVENTS_PER_BYTE = 4

# Header choices for stages 1-3 (the victim offers everything; the peer only these).
CIPHER_CHOICES: tuple[tuple[str, str], ...] = (
    ("aes128-gcm@openssh.com", "hmac-sha2-256-etm@openssh.com"),
    ("chacha20-poly1305@openssh.com", "hmac-sha2-256-etm@openssh.com"),
    ("aes128-ctr", "hmac-sha2-256-etm@openssh.com"),
    ("aes256-ctr", "hmac-sha2-512"),
)
HOST_KEY_CHOICES = (
    "ssh-ed25519",
    "ssh-ed25519" + CERT_SUFFIX,
    "rsa-sha2-256",
    "ecdsa-sha2-nistp256",
)
KEX_CHOICES = ("curve25519-sha256", "ecdh-sha2-nistp256")
STAGES = ("start", "kex", "auth", "channel")
#: Largest body also fed byte by byte (and compared with the whole feed).
BYTEWISE_LIMIT = 1024


TRUSTED_HOST_KEYS = frozenset(k.public.blob for k in (HOST_ED25519, HOST_ECDSA, HOST_RSA))


def host_key_policy(blob: bytes, algorithm: str) -> bool:
    """The victim client's host-key policy: the fixture host keys, or a host cert from CA."""
    if algorithm.endswith(CERT_SUFFIX):
        check_certificate(
            blob, cert_type=CertType.HOST, trusted_cas=[CA.public], principal=HOST_NAME, now=NOW
        )
        return True
    return blob in TRUSTED_HOST_KEYS


def victim_config(role: Role) -> ConnectionConfig:
    """Everything switched on, small windows and limits, so fuzz inputs reach them."""
    common: dict[str, object] = {
        "role": role,
        "kex_algorithms": tuple(KEX_METHODS),
        "host_key_algorithms": tuple(HOST_KEY_ALGORITHMS),
        "ciphers": tuple(CIPHERS),
        "macs": tuple(MACS),
        "pubkey_algorithms": tuple(HOST_KEY_ALGORITHMS),
        "window_size": 512,
        "max_packet": 256,
        "max_channels": 4,
        "rekey_bytes": 4096,  # the least allowed: fuzz inputs can cross it
        "max_auth_tries": 4,
    }
    if role is Role.SERVER:
        return ConnectionConfig(
            **common,  # type: ignore[arg-type]
            host_keys=[
                HostKey(HOST_ED25519, HOST_CERT.blob),
                HostKey(HOST_ECDSA),
                HostKey(HOST_RSA),
            ],
            auth_methods=_ALL_AUTH,
            banner="fuzz banner\r\n",
        )
    return ConnectionConfig(**common, verify_host_key=host_key_policy)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Options:
    """What the two header bytes choose."""

    #: 0: raw bytes from the start; 1-3: payloads after the kex/auth/channel prefix.
    stage: int = 0
    #: Stages 1-3: also feed the sealed packets one byte at a time to a second,
    #: identical pair, and require the same events and error. (Stage 0 always does
    #: this for bodies up to BYTEWISE_LIMIT.)
    bytewise: bool = False
    #: Which of AUTH_SCRIPTS the client runs; which cipher/MAC, host key and kex the
    #: peer offers (it offers only those; the victim offers everything).
    auth_style: int = 0
    cipher: int = 0
    host_key: int = 0
    kex: int = 0
    #: The victim's rekey timer fires just before the payloads arrive, so they meet
    #: a victim in the middle of an exchange it started (its own sends held).
    rekey: bool = False

    def header(self) -> bytes:
        b0 = self.stage | self.bytewise << 2 | self.auth_style << 3
        b1 = self.cipher | self.host_key << 2 | self.kex << 4 | self.rekey << 5
        return bytes((b0, b1))


def parse_input(data: bytes) -> tuple[Options, bytes]:
    b0, b1 = data[0], data[1]
    opts = Options(
        stage=b0 & 3,
        bytewise=bool(b0 >> 2 & 1),
        auth_style=b0 >> 3 & 3,
        cipher=b1 & 3,
        host_key=b1 >> 2 & 3,
        kex=b1 >> 4 & 1,
        rekey=bool(b1 >> 5 & 1),
    )
    return opts, data[2:]


def peer_config(role: Role, opts: Options) -> ConnectionConfig:
    """The peer offers only the algorithms the header picked."""
    cipher, mac = CIPHER_CHOICES[opts.cipher]
    fields: dict[str, object] = {
        "role": role,
        "kex_algorithms": (KEX_CHOICES[opts.kex],),
        "host_key_algorithms": (HOST_KEY_CHOICES[opts.host_key],),
        "ciphers": (cipher,),
        "macs": (mac,),
    }
    if role is Role.SERVER:
        fields["host_keys"] = [
            HostKey(HOST_ED25519, HOST_CERT.blob),
            HostKey(HOST_ECDSA),
            HostKey(HOST_RSA),
        ]
        fields["auth_methods"] = _ALL_AUTH
        fields["pubkey_algorithms"] = tuple(HOST_KEY_ALGORITHMS)
    return ConnectionConfig(**fields)  # type: ignore[arg-type]


# --- the driver ---------------------------------------------------------------------


def _signed(conn: Connection, cert: bool) -> ev.UserauthRequest:
    algorithm = USER_CERT.key_type if cert else USER_ED25519.public.key_type
    blob = USER_CERT.blob if cert else USER_ED25519.public.blob
    data = conn.publickey_data_to_sign(USER_NAME, algorithm, blob)
    return ev.UserauthRequest(
        username=USER_NAME,
        method="publickey",
        public_key=blob,
        algorithm=algorithm,
        signature=USER_ED25519.sign(data),
    )


def _query(conn: Connection) -> ev.UserauthRequest:
    return ev.UserauthRequest(
        username=USER_NAME,
        method="publickey",
        public_key=USER_ED25519.public.blob,
        algorithm=USER_ED25519.public.key_type,
    )


def _password(conn: Connection, password: str) -> ev.UserauthRequest:
    return ev.UserauthRequest(username=USER_NAME, method="password", password=password)


#: The client's authentication attempts, in order, by ``Options.auth_style``.
AUTH_SCRIPTS: tuple[tuple[Callable[[Connection], ev.UserauthRequest], ...], ...] = (
    # 0: publickey query, PK_OK, then the signed request.
    (_query,),
    # 1: a wrong password, then keyboard-interactive answered with the password.
    (
        lambda c: _password(c, "wrong"),
        lambda c: ev.UserauthRequest(username=USER_NAME, method="keyboard-interactive"),
    ),
    # 2: a user certificate.
    (lambda c: _signed(c, cert=True),),
    # 3: "none" (the list of methods), then the password.
    (
        lambda c: ev.UserauthRequest(username=USER_NAME, method="none"),
        lambda c: _password(c, PASSWORD),
    ),
)


@dataclass
class Driver:
    """A well-behaved application on one end: answers every event it is shown.

    Args:
        conn: the connection it drives.
        authenticate: client: run the auth script after the first key exchange.
        answer_auth: server: answer authentication requests.
        open_channels: client: open channels once authenticated.
        auth_style: client: which of :data:`AUTH_SCRIPTS`.
    """

    conn: Connection
    authenticate: bool = True
    answer_auth: bool = True
    open_channels: bool = True
    auth_style: int = 0
    attempts: list[Callable[[Connection], ev.UserauthRequest]] = field(default_factory=list)
    eof_sent: set[int] = field(default_factory=set)
    close_sent: set[int] = field(default_factory=set)
    kinds: dict[int, str] = field(default_factory=dict)
    done: bool = False
    #: The last request seen while ``answer_auth`` was off (seed generation).
    unanswered: ev.UserauthRequest | None = None

    def __post_init__(self) -> None:
        self.attempts = list(AUTH_SCRIPTS[self.auth_style])

    @property
    def server(self) -> bool:
        return self.conn.role is Role.SERVER

    def send(self, event: ev.Event) -> None:
        """Send an answer; the core refusing a legal answer is a bug."""
        try:
            self.conn.send(event)
        except LocalProtocolError as exc:
            raise AssertionError(f"the core refused the driver's {event!r}: {exc!r}") from exc

    def on_event(self, event: ev.Event) -> None:
        if self.done:
            return
        handler = getattr(self, "_on_" + type(event).__name__, None)
        if handler is not None:
            handler(event)

    # --- transport and auth ---------------------------------------------------------

    def _on_Disconnect(self, event: ev.Disconnect) -> None:
        self.done = True

    _on_ConnectionLost = _on_Disconnect

    def _on_KexComplete(self, event: ev.KexComplete) -> None:
        if event.first and not self.server and self.authenticate:
            self._next_attempt()

    def _next_attempt(self) -> None:
        if self.attempts:
            self.send(self.attempts.pop(0)(self.conn))

    def _on_UserauthRequest(self, event: ev.UserauthRequest) -> None:
        if not self.answer_auth:
            self.unanswered = event
            return
        if event.method == "keyboard-interactive":
            self.send(
                ev.UserauthInfoRequest(name="", instruction="", prompts=(("Password: ", False),))
            )
            return
        if event.method == "password":
            self._decide(event.password == PASSWORD)
            return
        assert event.method == "publickey" and event.public_key is not None
        acceptable = self._acceptable_key(event.public_key)
        if event.signature_ok is None and acceptable:
            assert event.algorithm is not None
            self.send(ev.UserauthPKOk(algorithm=event.algorithm, public_key=event.public_key))
        else:
            self._decide(acceptable and event.signature_ok is True)

    def _acceptable_key(self, blob: bytes) -> bool:
        if blob == USER_ED25519.public.blob:
            return True
        try:
            check_certificate(
                blob,
                cert_type=CertType.USER,
                trusted_cas=[CA.public],
                principal=USER_NAME,
                now=NOW,
                source_address=PEER_ADDRESS,
            )
        except CertificateInvalid:
            return False
        return True

    def _decide(self, ok: bool) -> None:
        if ok:
            self.send(ev.UserauthSuccess())
        else:
            self.send(ev.UserauthFailure(methods=_ALL_AUTH))

    def _on_UserauthInfoResponse(self, event: ev.UserauthInfoResponse) -> None:
        self._decide(event.responses == (PASSWORD,))

    def _on_UserauthPKOk(self, event: ev.UserauthPKOk) -> None:
        for cert in (False, True):
            request = _signed(self.conn, cert)
            if (request.algorithm, request.public_key) == (event.algorithm, event.public_key):
                self.send(request)
                return

    def _on_UserauthFailure(self, event: ev.UserauthFailure) -> None:
        self._next_attempt()

    def _on_UserauthInfoRequest(self, event: ev.UserauthInfoRequest) -> None:
        self.send(ev.UserauthInfoResponse(responses=(PASSWORD,) * len(event.prompts)))

    def _on_UserauthSuccess(self, event: ev.UserauthSuccess) -> None:
        if self.server or not self.open_channels:
            return
        self._open(ev.ChannelOpen(channel=self.conn.new_channel_id(), kind="session"))
        self._open(
            ev.ChannelOpen(
                channel=self.conn.new_channel_id(),
                kind="direct-tcpip",
                host="127.0.0.1",
                port=22,
                originator_address="127.0.0.1",
                originator_port=40000,
            )
        )
        self.send(
            ev.GlobalRequest(request=ev.TcpipForward(address="127.0.0.1", port=0), want_reply=True)
        )
        self.send(ev.GlobalRequest(request=ev.KeepAlive(), want_reply=True))

    # --- channels ---------------------------------------------------------------------

    def _open(self, event: ev.ChannelOpen) -> None:
        if len(self.kinds) >= self.conn.config.max_channels:
            return  # our own limit: opening more is ours to refuse, not a finding
        self.kinds[event.channel] = event.kind
        self.send(event)

    def _forget(self, channel: int) -> None:
        self.eof_sent.discard(channel)
        self.close_sent.discard(channel)
        self.kinds.pop(channel, None)

    def _write(self, channel: int, data: bytes, stream: int | None = None) -> None:
        if channel in self.eof_sent or channel in self.close_sent:
            return
        n = min(len(data), self.conn.send_window(channel), self.conn.max_packet(channel))
        if n > 0:
            self.send(ev.ChannelData(channel=channel, data=data[:n], stream=stream))

    def _on_ChannelOpen(self, event: ev.ChannelOpen) -> None:
        self._forget(event.channel)
        if event.kind in _CONFIRMED_KINDS[self.conn.role]:
            self.kinds[event.channel] = event.kind
            self.send(ev.ChannelOpenConfirmation(channel=event.channel))
        else:
            self.send(
                ev.ChannelOpenFailure(
                    channel=event.channel, reason=ChannelOpenFailureReason.UNKNOWN_CHANNEL_TYPE
                )
            )

    def _on_ChannelOpenConfirmation(self, event: ev.ChannelOpenConfirmation) -> None:
        ch = event.channel
        if self.kinds.get(ch) == "session":
            pty = ev.PtyRequest(term="xterm", width_chars=80, height_rows=24, modes={1: 3, 53: 1})
            self.send(ev.ChannelRequest(channel=ch, request=pty, want_reply=True))
            self.send(ev.ChannelRequest(channel=ch, request=ev.Env(name="LANG", value="C")))
            self.send(ev.ChannelRequest(channel=ch, request=ev.Shell(), want_reply=True))
        else:
            self._write(ch, b"ping")
            self.send(ev.ChannelEOF(channel=ch))
            self.eof_sent.add(ch)

    def _on_ChannelOpenFailure(self, event: ev.ChannelOpenFailure) -> None:
        self._forget(event.channel)

    def _on_ChannelRequest(self, event: ev.ChannelRequest) -> None:
        ch, request = event.channel, event.request
        if event.want_reply and ch not in self.close_sent:
            ok = not isinstance(request, ev.UnknownRequest)
            self.send(ev.ChannelRequestReply(channel=ch, ok=ok))
        if self.server and isinstance(request, ev.Shell | ev.Exec):
            self._write(ch, b"$ ")
            self._write(ch, b"warning\n", stream=1)

    def _on_ChannelData(self, event: ev.ChannelData) -> None:
        self.conn.acknowledge_received_data(event.channel, len(event.data))
        if self.server and event.stream is None:
            self._write(event.channel, event.data)  # cat: echo within the window

    def _on_ChannelEOF(self, event: ev.ChannelEOF) -> None:
        ch = event.channel
        if ch in self.close_sent:
            return
        if ch not in self.eof_sent:
            if self.server and self.kinds.get(ch) == "session":
                status = ev.ExitStatus(status=0)
                self.send(ev.ChannelRequest(channel=ch, request=status))
            self.send(ev.ChannelEOF(channel=ch))
            self.eof_sent.add(ch)
        self.send(ev.ChannelClose(channel=ch))
        self.close_sent.add(ch)

    def _on_ChannelClose(self, event: ev.ChannelClose) -> None:
        if event.channel not in self.close_sent:
            self.send(ev.ChannelClose(channel=event.channel))
        self._forget(event.channel)

    def _on_GlobalRequest(self, event: ev.GlobalRequest) -> None:
        request = event.request
        if not event.want_reply:
            return
        if self.server and isinstance(request, ev.TcpipForward):
            port = 4242 if request.port == 0 else None
            self.send(ev.GlobalRequestReply(ok=True, port=port))
            if self.conn.state is TransportState.CONNECTED:
                self._open(
                    ev.ChannelOpen(
                        channel=self.conn.new_channel_id(),
                        kind="forwarded-tcpip",
                        host=request.address,
                        port=port or request.port,
                        originator_address="127.0.0.1",
                        originator_port=50000,
                    )
                )
        else:
            self.send(ev.GlobalRequestReply(ok=False))


# --- running a victim ---------------------------------------------------------------------


@dataclass
class Outcome:
    """What a victim did with its input: the events, and the error that ended it."""

    events: list[ev.Event] = field(default_factory=list)
    error: RemoteProtocolError | None = None

    def summary(self) -> tuple[list[ev.Event], tuple[str, int] | None]:
        # The error's class and code, not its text: where a long line is noticed
        # depends on how the bytes arrive, and both wordings are right.
        err = self.error
        return [_comparable(e) for e in self.events], (
            None if err is None else (type(err).__name__, int(err.code))
        )


def _comparable(event: ev.Event) -> ev.Event:
    # An ML-KEM server's encapsulation draws from the OS (see kex.py), so its
    # exchange hash differs from run to run; everything else must match.
    if isinstance(event, ev.KexComplete) and event.algorithms.get("kex", "").startswith("mlkem"):
        return replace(event, session_id=b"")
    return event


def _drain(conn: Connection, driver: Driver, outcome: Outcome, budget: int) -> None:
    while (event := conn.next_event()) is not None:
        if not isinstance(event, ev.Event):
            raise AssertionError(f"next_event() returned {event!r}")
        outcome.events.append(event)
        if len(outcome.events) > budget:
            raise AssertionError(f"{len(outcome.events)} events from {budget} bytes: a loop?")
        driver.on_event(event)
        conn.data_to_send()  # the victim's replies go nowhere


def feed(conn: Connection, driver: Driver, chunks: Iterable[bytes], size: int) -> Outcome:
    """Feed ``chunks`` then EOF, answering every event; check the error contract."""
    outcome = Outcome()
    budget = _EVENTS_PER_BYTE * size + 64
    try:
        for chunk in chunks:
            conn.receive_data(chunk)
            _drain(conn, driver, outcome, budget)
        if not conn.closed:
            conn.receive_data(b"")
            _drain(conn, driver, outcome, budget)
    except RemoteProtocolError as exc:
        outcome.error = exc
        _check_failed(conn, exc)
    return outcome


def _check_failed(conn: Connection, exc: RemoteProtocolError) -> None:
    """h11's rule: after a protocol error every call raises; the DISCONNECT can go."""
    if not conn.closed:
        raise AssertionError(f"{exc!r} raised but the connection is in {conn.state}")
    conn.data_to_send()
    try:
        conn.next_event()
    except RemoteProtocolError:
        pass
    else:
        raise AssertionError(f"next_event() after {exc!r} did not raise")
    try:
        conn.receive_data(b"more")
    except ProtocolError:
        pass
    else:
        raise AssertionError(f"receive_data() after {exc!r} did not raise")


def _bytewise(data: bytes) -> Iterable[bytes]:
    return (data[i : i + 1] for i in range(len(data)))


def _compare(whole: Outcome, bytewise: Outcome) -> None:
    if whole.summary() != bytewise.summary():
        raise AssertionError(
            "the same bytes fed whole and byte by byte gave different results:\n"
            f"whole:     {whole.summary()}\nbytewise:  {bytewise.summary()}"
        )


# --- the prefix -------------------------------------------------------------------------


class Pair:
    """The victim and a real peer, each with a driver, joined by a fake link."""

    def __init__(self, victim_role: Role, opts: Options) -> None:
        peer_role = Role.CLIENT if victim_role is Role.SERVER else Role.SERVER
        self.victim = Connection(victim_config(victim_role), rng=make_rng("victim"), now=0.0)
        self.peer = Connection(peer_config(peer_role, opts), rng=make_rng("peer"), now=0.0)
        stage = STAGES[opts.stage]
        client_drives = stage in ("auth", "channel")
        self.victim_driver = Driver(self.victim, auth_style=opts.auth_style)
        self.peer_driver = Driver(
            self.peer,
            auth_style=opts.auth_style,
            authenticate=client_drives,
            answer_auth=client_drives,
            open_channels=stage == "channel",
        )
        if victim_role is Role.CLIENT:
            self.victim_driver.open_channels = stage != "auth"
        #: Every byte the peer sent the victim, in order (the stage-0 seeds).
        self.peer_bytes = bytearray()

    def pump(self, rounds: int = 100) -> None:
        """Move bytes both ways, answering events, until neither side speaks."""
        for _ in range(rounds):
            moved = False
            for src, dst, driver in (
                (self.victim, self.peer, self.peer_driver),
                (self.peer, self.victim, self.victim_driver),
            ):
                data = src.data_to_send()
                if not data or dst.closed:
                    continue
                moved = True
                if src is self.peer:
                    self.peer_bytes += data
                dst.receive_data(data)
                while (event := dst.next_event()) is not None:
                    driver.on_event(event)
            if not moved:
                return
        raise AssertionError("the prefix never went quiet")

    def seal(self, payloads: Iterable[bytes]) -> bytes:
        """The peer's real packet protection around arbitrary payloads.

        Uses the transport's raw packet writer, as tests/sshproto/helpers.inject
        does: the victim sees correctly encrypted and MACed packets with the next
        sequence numbers, carrying whatever the fuzzer chose.
        """
        write = self.peer._transport._write
        for payload in payloads:
            write(payload)
        return self.peer.data_to_send()


def split_payloads(body: bytes) -> list[bytes]:
    """``uint16 length || payload`` repeated; a short last one takes what is left."""
    out, i = [], 0
    while i + 2 <= len(body):
        n = int.from_bytes(body[i : i + 2], "big")
        out.append(body[i + 2 : i + 2 + n])
        i += 2 + n
    return out


def join_payloads(payloads: Iterable[bytes]) -> bytes:
    return b"".join(len(p).to_bytes(2, "big") + p for p in payloads)


def run(victim_role: Role, data: bytes) -> Outcome | None:
    """One fuzz input against a victim of ``victim_role`` (see the module docstring).

    Returns the victim's :class:`Outcome` (for the seed generator's checks).
    """
    if len(data) < 2:
        return None
    opts, body = parse_input(data)
    if opts.stage == 0:
        runs = [(body,)] + ([_bytewise(body)] if len(body) <= BYTEWISE_LIMIT else [])
        outcomes = []
        for chunks in runs:
            conn = Connection(victim_config(victim_role), rng=make_rng("victim"), now=0.0)
            outcomes.append(feed(conn, Driver(conn, auth_style=opts.auth_style), chunks, len(body)))
        if len(outcomes) == 2:
            _compare(*outcomes)
        return outcomes[0]
    whole = _after_prefix(victim_role, opts, body, bytewise=False)
    if opts.bytewise:
        # The same packets again, one byte at a time, on a second identical pair.
        _compare(whole, _after_prefix(victim_role, opts, body, bytewise=True))
    return whole


def _after_prefix(victim_role: Role, opts: Options, body: bytes, *, bytewise: bool) -> Outcome:
    pair = Pair(victim_role, opts)
    pair.pump()
    if pair.victim.closed:
        raise AssertionError(f"the {STAGES[opts.stage]} prefix failed: {pair.victim.state}")
    if opts.rekey:
        timer = pair.victim.get_timer()
        assert timer is not None, "no rekey timer after the first exchange"
        pair.victim.handle_timer(timer)
    wire = pair.seal(split_payloads(body))
    chunks = _bytewise(wire) if bytewise else (wire,)
    return feed(pair.victim, pair.victim_driver, chunks, len(wire))
