"""The SSH transport layer: version exchange, binary packets, (re)keying, strict KEX.

Theory of operation
-------------------
:class:`Transport` turns bytes into ``(seqnr, payload)`` pairs and payloads into
bytes. It owns everything RFC 4253 puts below the message layer:

- the identification lines (§4.2), the one part of SSH that is text;
- one :class:`~.ciphers.PacketProtection` per direction, swapped at NEWKEYS, and the
  two sequence numbers (§6.4), which wrap at 2**32 and, under strict KEX, restart at
  zero after every NEWKEYS (OpenSSH PROTOCOL §1.9);
- the key exchange (§7, RFC 5656 §4): KEXINIT negotiation, the ECDH-style round
  over messages 30/31, the exchange hash, the host-key signature, NEWKEYS and key
  derivation (§7.2), and RFC 8308's EXT_INFO after the server's first NEWKEYS;
- rekeying after ``rekey_bytes`` in either direction or ``rekey_seconds``.

It does *not* decide which messages are legal in which connection state: that is
:mod:`.state`'s tables, applied by the connection. It does enforce the ordering of
the key exchange itself (:class:`~.state.KexPhase`).

While our side of an exchange runs (our KEXINIT sent, our NEWKEYS not yet), only
transport messages may be sent (RFC 4253 §7.1); anything else a caller sends then is
held in order and released right after our NEWKEYS, so channel data keeps flowing
across a rekey with the window already accounted.

Limits: an identification line is at most 255 bytes including CR LF (RFC 4253
§4.2, stricter than OpenSSH's 8 KiB); a client skips at most 1024 lines of at most
8 KiB before it (OpenSSH's limits for pre-banner text); a server accepts no text
before the client's identification line.
"""

from __future__ import annotations

from collections.abc import Callable

from ..errors import (
    DecodeError,
    HostKeyNotVerifiable,
    KeyExchangeFailed,
    LocalProtocolError,
    ProtocolVersionNotSupported,
    RemoteProtocolError,
    TrioportError,
)
from . import ciphers, kex
from . import events as ev
from . import messages as m
from .config import ConnectionConfig
from .keys import CERT_SUFFIX, HOST_KEY_ALGORITHMS, PrivateKey, parse_public_key
from .keys import signature_algorithm_for as sig_alg_for
from .sendqueue import SendQueue
from .state import KEX_EXPECTS, KexPhase, Role
from .wire import Reader

__all__ = [
    "MAX_PREBANNER_LINES",
    "MAX_PREBANNER_LINE_LENGTH",
    "MAX_VERSION_LINE",
    "STRICT_KEX_CLIENT",
    "STRICT_KEX_SERVER",
    "Transport",
]

#: RFC 4253 §4.2: "The maximum length of the string is 255 characters, including
#: the Carriage Return and Line Feed."
MAX_VERSION_LINE = 255
#: Lines a server may send before its identification line (RFC 4253 §4.2 allows
#: them; OpenSSH gives up after 1024 lines), and the longest such line we read.
MAX_PREBANNER_LINES = 1024
MAX_PREBANNER_LINE_LENGTH = 8192

#: OpenSSH PROTOCOL §1.9 pseudo-algorithms, only ever in the first KEXINIT.
STRICT_KEX_CLIENT = "kex-strict-c-v00@openssh.com"
STRICT_KEX_SERVER = "kex-strict-s-v00@openssh.com"
#: RFC 8308 §2.1 pseudo-algorithm: the client would like an EXT_INFO.
EXT_INFO_CLIENT = "ext-info-c"

_SEQ_MASK = 0xFFFFFFFF
#: Messages that may be sent during our side of a key exchange (RFC 4253 §7.1:
#: "transport layer generic messages (1 to 19) ... algorithm negotiation (20 to 29)
#: ... key exchange method specific messages (30 to 49)"), minus SERVICE_* and
#: EXT_INFO, which carry higher-layer meaning.
_KEX_SAFE = frozenset({1, 2, 3, 4, *range(20, 50)})
#: Compact the receive buffer once this much of its front has been consumed.
_COMPACT_AT = 1 << 16


def _key_type_of_blob(blob: bytes) -> str | None:
    try:
        return Reader(blob).string().decode("ascii")
    except (DecodeError, UnicodeDecodeError):
        return None


class Transport:
    """One connection's transport layer. Used by :class:`~.connection.Connection` only.

    Args:
        config: the connection's configuration.
        rng: randomness (cookies, padding, ephemeral keys).
        now: the current time, for the rekey timer.
    """

    def __init__(self, config: ConnectionConfig, rng: Callable[[int], bytes], now: float) -> None:
        self.config = config
        self.role = config.role
        self._rng = rng
        self._now = now
        # Bytes in and out.
        self._inbuf = bytearray()
        self._inpos = 0
        self.eof = False
        self._out = SendQueue()
        # Version exchange.
        self.local_version = f"SSH-2.0-{config.software_version}"
        self.peer_version: str | None = None
        self._prebanner_lines = 0
        # Packets.
        self._send_prot = ciphers.none_protection()
        self._recv_prot = ciphers.none_protection()
        self._send_seq = 0
        self._recv_seq = 0
        self._pending_size: int | None = None
        self._bytes_out = 0
        self._bytes_in = 0
        # Key exchange.
        self.phase = KexPhase.IDLE
        self.kex_count = 0  # completed exchanges
        self.session_id: bytes | None = None
        self.strict = False
        self.host_key: bytes | None = None
        self.negotiated: dict[str, str] = {}
        self._client_wants_ext_info = False
        self._ext_info_slot = False
        self._our_kexinit: m.KexInit | None = None
        self._our_kexinit_payload = b""
        self._peer_kexinit: m.KexInit | None = None
        self._peer_kexinit_payload = b""
        self._pending_algs: dict[str, str] = {}
        self._skip_guess = False
        self._kex_client: kex.KexClient | None = None
        self._q_c = b""
        self._newkeys_sent = True  # nothing held before the first KEXINIT
        self._next_recv: ciphers.PacketProtection | None = None
        self._held: list[bytes] = []
        self._deadline = now + config.rekey_seconds
        self._offered_host_keys = self._host_key_offer()
        if self.role is Role.SERVER and not self._offered_host_keys:
            raise LocalProtocolError("no host key matches the configured host_key_algorithms")
        self._out.append((self.local_version + "\r\n").encode("ascii"))
        self.send_kexinit()

    # --- bytes ------------------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Buffer bytes from the peer; ``b""`` marks the end of the stream."""
        if not data:
            self.eof = True
            return
        if self._inpos >= _COMPACT_AT:
            del self._inbuf[: self._inpos]
            self._inpos = 0
        self._inbuf += data

    @property
    def buffered(self) -> int:
        """Bytes received but not yet consumed."""
        return len(self._inbuf) - self._inpos

    @property
    def holding(self) -> bool:
        """Whether non-kex messages are being held until our NEWKEYS (a kex runs)."""
        return not self._newkeys_sent

    @property
    def has_data_to_send(self) -> bool:
        """Whether anything is queued for the wire."""
        return bool(self._out)

    @property
    def bytes_to_send(self) -> int:
        """How many bytes are queued for the wire."""
        return len(self._out)

    def data_to_send(self) -> bytes:
        """Everything queued for the wire; the queue is then empty."""
        return bytes(self._out.take())

    def data_to_send_view(self) -> memoryview:
        """Like :meth:`data_to_send`, without a copy: valid until the next call of either."""
        return self._out.take()

    # --- version exchange (RFC 4253 §4.2) ----------------------------------------------

    def read_version(self) -> str | None:
        """Consume the peer's identification line, or return None to wait for more.

        Raises:
            ProtocolVersionNotSupported: not SSH-2.0 or SSH-1.99.
            RemoteProtocolError: junk, an over-long line, too many pre-banner lines.
        """
        while True:
            buf = self._inbuf
            newline = buf.find(b"\n", self._inpos)
            if newline < 0:
                limit = MAX_VERSION_LINE
                if self.role is Role.CLIENT and not buf.startswith(b"SSH-", self._inpos):
                    limit = MAX_PREBANNER_LINE_LENGTH
                if self.buffered > limit:
                    raise RemoteProtocolError("identification line too long")
                return None
            line = bytes(buf[self._inpos : newline + 1])
            self._inpos = newline + 1
            text = line[:-1].removesuffix(b"\r")
            if text.startswith(b"SSH-"):
                return self._parse_version(line, text)
            # A server gets no text before the client's version (RFC 4253 §4.2 lets
            # only the server send other lines first).
            if self.role is Role.SERVER:
                raise RemoteProtocolError("expected an SSH identification line")
            self._prebanner_lines += 1
            if self._prebanner_lines > MAX_PREBANNER_LINES:
                raise RemoteProtocolError("too many lines before the identification line")
            if len(line) > MAX_PREBANNER_LINE_LENGTH or b"\x00" in line:
                raise RemoteProtocolError("bad line before the identification line")

    def _parse_version(self, line: bytes, text: bytes) -> str:
        if len(line) > MAX_VERSION_LINE:
            raise RemoteProtocolError("identification line longer than 255 bytes")
        if not (text.startswith(b"SSH-2.0-") or text.startswith(b"SSH-1.99-")):
            raise ProtocolVersionNotSupported(
                f"protocol version not supported: {text[:40].decode('ascii', 'replace')!r}"
            )
        software = text.split(b"-", 2)[2]
        if not software or not all(0x20 <= c < 0x7F for c in text):
            raise RemoteProtocolError("identification line is not printable US-ASCII")
        self.peer_version = text.decode("ascii")
        return self.peer_version

    # --- packets (RFC 4253 §6) -----------------------------------------------------------

    def read_packet(self) -> tuple[int, bytes] | None:
        """The next packet's ``(seqnr, payload)``, or None until it has fully arrived.

        Raises:
            RemoteProtocolError: bad length or padding; MACError: bad MAC.
        """
        prot = self._recv_prot
        if self._pending_size is None:
            if self.buffered < prot.head_size:
                return None
            head = bytes(self._inbuf[self._inpos : self._inpos + prot.head_size])
            self._pending_size = prot.packet_length(self._recv_seq, head)
        size = self._pending_size
        if self.buffered < size:
            return None
        packet = memoryview(self._inbuf)[self._inpos : self._inpos + size]
        try:
            payload = prot.open(self._recv_seq, packet)
        finally:
            packet.release()
        self._inpos += size
        self._pending_size = None
        seqnr = self._recv_seq
        self._recv_seq = (seqnr + 1) & _SEQ_MASK
        if self._recv_seq == 0 and self.kex_count == 0:
            # OpenSSH refuses this too: a wrap before the first NEWKEYS can only be
            # an attacker padding the handshake (Terrapin).
            raise RemoteProtocolError("sequence number wrapped during the initial key exchange")
        self._bytes_in += size
        if not payload:
            raise RemoteProtocolError("packet without a message number")
        if self._ext_info_slot and payload[0] != m.MsgId.EXT_INFO:
            self._ext_info_slot = False
        return seqnr, payload

    def send(self, payload: bytes) -> None:
        """Queue one message; held until our NEWKEYS if a key exchange is running."""
        if not self._newkeys_sent and payload[0] not in _KEX_SAFE:
            self._held.append(payload)
            return
        self._write(payload)

    def send_message(self, message: m.Message) -> None:
        """Queue one typed message (see :meth:`send`)."""
        self.send(bytes(message))

    def send_parts(self, head: bytes, body: bytes | bytearray | memoryview) -> None:
        """Queue the message ``head || body`` (channel data: header, then the data).

        The body is encrypted straight from the caller's buffer when it can go out
        now; a message held for a key exchange keeps its own copy.
        """
        if not self._newkeys_sent and head[0] not in _KEX_SAFE:
            self._held.append(head + bytes(body))
            return
        self._write(head, body)

    def _write(self, head: bytes, body: bytes | bytearray | memoryview = b"") -> None:
        size = self._send_prot.seal_into(self._send_seq, head, body, self._rng, self._out)
        self._send_seq = (self._send_seq + 1) & _SEQ_MASK
        self._bytes_out += size

    def send_disconnect(self, code: int, description: str) -> None:
        """Queue DISCONNECT now, ahead of anything held (RFC 4253 §11.1)."""
        self._write(bytes(m.Disconnect(int(code), description)))
        self._held.clear()

    # --- rekey triggers ----------------------------------------------------------------------

    @property
    def peer_in_kex(self) -> bool:
        """The peer sent KEXINIT and not yet NEWKEYS: only kex messages may come."""
        return self._peer_kexinit is not None

    def rekey_due(self) -> bool:
        """True when the byte limit has been reached in either direction."""
        limit = self.config.rekey_bytes
        return (
            self.phase is KexPhase.IDLE
            and self.kex_count > 0
            and (self._bytes_in >= limit or self._bytes_out >= limit)
        )

    def get_timer(self) -> float | None:
        """When the next time-based rekey is due (None during an exchange)."""
        if self.phase is not KexPhase.IDLE or self.kex_count == 0:
            return None
        return self._deadline

    def handle_timer(self, now: float) -> None:
        """Note the time; start a re-exchange if ``rekey_seconds`` have passed.

        The core only learns the time here (and at construction), so after an
        exchange started by the byte limit or by the peer, the next deadline counts
        from the last time it was told: a little early, never late.
        """
        self._now = max(self._now, now)
        timer = self.get_timer()
        if timer is not None and self._now >= timer:
            self.send_kexinit()

    # --- key exchange (RFC 4253 §7) --------------------------------------------------------

    def _host_key_for(self, algorithm: str) -> tuple[PrivateKey, bytes] | None:
        wanted = HOST_KEY_ALGORITHMS[algorithm]
        for hk in self.config.host_keys:
            if algorithm.endswith(CERT_SUFFIX):
                if hk.certificate_blob and _key_type_of_blob(hk.certificate_blob) == wanted:
                    return hk.private_key, hk.certificate_blob
            elif hk.private_key.public.key_type == wanted:
                return hk.private_key, hk.private_key.public.blob
        return None

    def _host_key_offer(self) -> tuple[str, ...]:
        if self.role is Role.CLIENT:
            return tuple(self.config.host_key_algorithms)
        return tuple(a for a in self.config.host_key_algorithms if self._host_key_for(a))

    def send_kexinit(self) -> None:
        """Start a key exchange: send our KEXINIT (no-op if one is already running)."""
        if self._our_kexinit is not None:
            return
        cfg = self.config
        kex_names = list(cfg.kex_algorithms)
        if self.kex_count == 0:
            # PROTOCOL §1.9 and RFC 8308 §2.1: only in the first KEXINIT.
            if self.role is Role.CLIENT:
                kex_names += [EXT_INFO_CLIENT, STRICT_KEX_CLIENT]
            else:
                kex_names.append(STRICT_KEX_SERVER)
        ciphers_ = tuple(cfg.ciphers)
        macs = tuple(cfg.macs)
        msg = m.KexInit(
            cookie=self._rng(16),
            kex_algorithms=tuple(kex_names),
            server_host_key_algorithms=self._offered_host_keys,
            ciphers_c2s=ciphers_,
            ciphers_s2c=ciphers_,
            macs_c2s=macs,
            macs_s2c=macs,
            compression_c2s=("none",),
            compression_s2c=("none",),
        )
        self._our_kexinit = msg
        self._our_kexinit_payload = bytes(msg)
        self._newkeys_sent = False
        self._write(self._our_kexinit_payload)
        if self.phase is KexPhase.IDLE:
            self.phase = KexPhase.KEXINIT

    def handle_kex(self, seqnr: int, payload: bytes) -> ev.Event | None:
        """Handle KEXINIT, the method's messages, or NEWKEYS.

        Returns:
            :class:`~.events.KexComplete` when the peer's NEWKEYS completes an exchange.

        Raises:
            RemoteProtocolError: out of order; KeyExchangeFailed: no common algorithm
                or a bad value or signature; HostKeyNotVerifiable: policy refused.
        """
        number = payload[0]
        if number == m.MsgId.KEXINIT:
            self._on_kexinit(seqnr, payload)
            return None
        if self._skip_guess:
            # RFC 4253 §7: after a wrong guess the guessed packet is ignored.
            self._skip_guess = False
            if number != m.MsgId.NEWKEYS:
                return None
        if KEX_EXPECTS.get((self.role, self.phase)) != number:
            raise RemoteProtocolError(f"unexpected key exchange message {number}")
        msg = m.parse(payload)
        if isinstance(msg, m.KexEcdhInit):
            self._on_ecdh_init(msg)
        elif isinstance(msg, m.KexEcdhReply):
            self._on_ecdh_reply(msg)
        else:
            return self._on_newkeys()
        return None

    def _on_kexinit(self, seqnr: int, payload: bytes) -> None:
        if self._peer_kexinit is not None:
            raise RemoteProtocolError("KEXINIT during a key exchange")
        msg = m.parse(payload)
        assert isinstance(msg, m.KexInit)
        if self.kex_count == 0:
            marker = STRICT_KEX_CLIENT if self.role is Role.SERVER else STRICT_KEX_SERVER
            self.strict = marker in msg.kex_algorithms
            if self.strict and seqnr != 0:
                raise RemoteProtocolError("strict KEX: KEXINIT was not the first packet")
            if self.role is Role.SERVER:
                self._client_wants_ext_info = EXT_INFO_CLIENT in msg.kex_algorithms
        self._peer_kexinit = msg
        self._peer_kexinit_payload = payload
        self.send_kexinit()  # RFC 4253 §7.1: answer with ours if not sent yet
        algs = self._negotiate()
        self._pending_algs = algs
        if msg.first_kex_packet_follows:
            guessed = (msg.kex_algorithms[:1], msg.server_host_key_algorithms[:1])
            self._skip_guess = guessed != ((algs["kex"],), (algs["host_key"],))
        if self.role is Role.CLIENT:
            self._kex_client = kex.KexClient(algs["kex"], self._rng)
            self._q_c = self._kex_client.client_public()
            self._write(bytes(m.KexEcdhInit(self._q_c)))
            self.phase = KexPhase.AWAIT_ECDH_REPLY
        else:
            self.phase = KexPhase.AWAIT_ECDH_INIT

    def _negotiate(self) -> dict[str, str]:
        """RFC 4253 §7.1: for each category, the client's first name the server has."""
        ours, peer = self._our_kexinit, self._peer_kexinit
        assert ours is not None and peer is not None
        c, s = (ours, peer) if self.role is Role.CLIENT else (peer, ours)

        def pick(category: str, client: tuple[str, ...], server: tuple[str, ...]) -> str:
            for name in client:
                if name in server:
                    return name
            raise KeyExchangeFailed(f"no matching {category} found")

        kex_names = tuple(n for n in c.kex_algorithms if n in kex.KEX_METHODS)
        algs = {
            "kex": pick("key exchange method", kex_names, s.kex_algorithms),
            "host_key": pick(
                "host key type",
                tuple(n for n in c.server_host_key_algorithms if n in HOST_KEY_ALGORITHMS),
                s.server_host_key_algorithms,
            ),
            "cipher_c2s": pick("cipher", c.ciphers_c2s, s.ciphers_c2s),
            "cipher_s2c": pick("cipher", c.ciphers_s2c, s.ciphers_s2c),
        }
        for direction in ("c2s", "s2c"):
            cipher = algs[f"cipher_{direction}"]
            if cipher not in ciphers.CIPHERS:
                raise KeyExchangeFailed(f"no matching cipher found ({cipher})")
            # PROTOCOL §1.6: with an AEAD cipher the negotiated MAC is ignored.
            if ciphers.CIPHERS[cipher].aead:
                algs[f"mac_{direction}"] = ""
            else:
                algs[f"mac_{direction}"] = pick(
                    "MAC",
                    getattr(c, f"macs_{direction}"),
                    getattr(s, f"macs_{direction}"),
                )
        algs["compression_c2s"] = pick("compression", c.compression_c2s, s.compression_c2s)
        algs["compression_s2c"] = pick("compression", c.compression_s2c, s.compression_s2c)
        if algs["compression_c2s"] != "none" or algs["compression_s2c"] != "none":
            raise KeyExchangeFailed("no matching compression method found")
        return algs

    def _exchange_hash(self, k_s: bytes, q_c: bytes, q_s: bytes, k: bytes) -> bytes:
        client_version, server_version = self.local_version, self.peer_version or ""
        i_c, i_s = self._our_kexinit_payload, self._peer_kexinit_payload
        if self.role is Role.SERVER:
            client_version, server_version = server_version, client_version
            i_c, i_s = i_s, i_c
        return kex.exchange_hash(
            self._pending_algs["kex"],
            v_c=client_version.encode("ascii"),
            v_s=server_version.encode("ascii"),
            i_c=i_c,
            i_s=i_s,
            k_s=k_s,
            q_c=q_c,
            q_s=q_s,
            k=k,
        )

    def _on_ecdh_init(self, msg: m.KexEcdhInit) -> None:
        algs = self._pending_algs
        q_s, k = kex.kex_server(algs["kex"], msg.client_public, self._rng)
        found = self._host_key_for(algs["host_key"])
        assert found is not None  # we only offer algorithms we hold keys for
        private_key, k_s = found
        h = self._exchange_hash(k_s, msg.client_public, q_s, k)
        signature = private_key.sign(h, sig_alg_for(algs["host_key"]))
        self._write(bytes(m.KexEcdhReply(k_s, q_s, signature)))
        self.host_key = k_s
        self._send_newkeys(k, h)

    def _on_ecdh_reply(self, msg: m.KexEcdhReply) -> None:
        algs = self._pending_algs
        assert self._kex_client is not None
        k = self._kex_client.finish(msg.server_public)
        self._kex_client = None
        h = self._exchange_hash(msg.host_key, self._q_c, msg.server_public, k)
        self._check_host_key(algs["host_key"], msg.host_key, msg.signature, h)
        self._send_newkeys(k, h)

    def _check_host_key(self, algorithm: str, k_s: bytes, signature: bytes, h: bytes) -> None:
        try:
            key = parse_public_key(k_s)
        except DecodeError as exc:
            raise KeyExchangeFailed(f"unusable host key: {exc.description}") from None
        if key.key_type != HOST_KEY_ALGORITHMS[algorithm]:
            raise KeyExchangeFailed(f"host key is {key.key_type}, negotiated {algorithm}")
        if not key.verify(signature, h, allowed=(sig_alg_for(algorithm),)):
            raise KeyExchangeFailed("incorrect signature on the exchange hash")
        if self.host_key is not None:
            # A re-exchange must present the key we already trusted.
            if k_s != self.host_key:
                raise HostKeyNotVerifiable("host key changed during a key re-exchange")
            return
        policy = self.config.verify_host_key
        if policy is not None:
            try:
                trusted = policy(k_s, algorithm)
            except TrioportError as exc:
                raise HostKeyNotVerifiable(f"host key refused: {exc}") from exc
            if not trusted:
                raise HostKeyNotVerifiable("host key not trusted")
        self.host_key = k_s

    def _keys(self, k: bytes, h: bytes, outbound: bool) -> ciphers.PacketProtection:
        """Derive one direction's keys (RFC 4253 §7.2) and build its protection."""
        c2s = (self.role is Role.CLIENT) == outbound
        direction = "c2s" if c2s else "s2c"
        iv_l, key_l, mac_l = (b"A", b"C", b"E") if c2s else (b"B", b"D", b"F")
        method = self._pending_algs["kex"]
        cipher = self._pending_algs[f"cipher_{direction}"]
        mac = self._pending_algs[f"mac_{direction}"] or None
        spec = ciphers.CIPHERS[cipher]
        assert self.session_id is not None
        sid = self.session_id
        key = kex.derive_key(method, k, h, sid, key_l, spec.key_size)
        iv = kex.derive_key(method, k, h, sid, iv_l, spec.iv_size)
        mac_key = None
        if mac is not None:
            mac_key = kex.derive_key(method, k, h, sid, mac_l, ciphers.MACS[mac].key_size)
        return ciphers.create(cipher, mac, key, iv, mac_key)

    def _send_newkeys(self, k: bytes, h: bytes) -> None:
        if self.session_id is None:
            self.session_id = h  # RFC 4253 §7.2: the first H is the session id
        self._write(bytes(m.NewKeys()))
        self._send_prot = self._keys(k, h, outbound=True)
        self._next_recv = self._keys(k, h, outbound=False)
        if self.strict:
            self._send_seq = 0
        self._bytes_out = 0
        self._newkeys_sent = True
        self.phase = KexPhase.AWAIT_NEWKEYS
        if self.kex_count == 0 and self._client_wants_ext_info:
            # RFC 8308 §2.4: "the next packet following the server's first NEWKEYS".
            value = ",".join(self.config.server_sig_algs or ()).encode("ascii")
            self._write(bytes(m.ExtInfo((("server-sig-algs", value),))))
        held, self._held = self._held, []
        for payload in held:
            self._write(payload)

    def _on_newkeys(self) -> ev.KexComplete:
        assert self._next_recv is not None
        self._recv_prot = self._next_recv
        self._next_recv = None
        if self.strict:
            self._recv_seq = 0
        self._bytes_in = 0
        first = self.kex_count == 0
        self.kex_count += 1
        if first and self.role is Role.CLIENT:
            self._ext_info_slot = True
        self.negotiated = self._pending_algs
        self.phase = KexPhase.IDLE
        self._our_kexinit = self._peer_kexinit = None
        self._our_kexinit_payload = self._peer_kexinit_payload = b""
        self._deadline = self._now + self.config.rekey_seconds
        assert self.session_id is not None and self.host_key is not None
        return ev.KexComplete(
            session_id=self.session_id,
            algorithms=dict(self.negotiated),
            host_key=self.host_key,
            first=first,
            strict=self.strict,
        )

    def take_ext_info_slot(self) -> bool:
        """True (once) if an EXT_INFO arriving now is the first packet after NEWKEYS."""
        slot, self._ext_info_slot = self._ext_info_slot, False
        return slot
