"""Test helpers for the sans-IO core: a seeded RNG, fixed keys, and a ConnectionPair.

A :class:`ConnectionPair` is a client and a server :class:`Connection` with a fake
network link between them (h11's habit): bytes move only when a test says so, all
randomness comes from a seeded RNG, and every event either side emits is recorded.
:class:`RawPeer` speaks cleartext packets for hostile scenarios before NEWKEYS, and
:func:`inject` writes an arbitrary payload through a real connection's current keys.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Callable, Iterable
from dataclasses import replace

from cryptography.hazmat.primitives.asymmetric import ed25519

from trioport.sshproto import Connection, ConnectionConfig, HostKey, Role, wire
from trioport.sshproto import events as ev
from trioport.sshproto import messages as m
from trioport.sshproto.ciphers import none_protection
from trioport.sshproto.keys import PrivateKey

#: Curve25519 everywhere a test compares bytes: the ML-KEM hybrid's server side
#: draws its own randomness (cryptography offers no derandomised encapsulation).
DETERMINISTIC_KEX = ("curve25519-sha256",)


def make_rng(seed: bytes | str) -> Callable[[int], bytes]:
    """A deterministic ``rng(n)``: SHA-256 in counter mode over ``seed``."""
    if isinstance(seed, str):
        seed = seed.encode()
    counter = itertools.count()

    def rng(n: int) -> bytes:
        out = b""
        while len(out) < n:
            out += hashlib.sha256(seed + next(counter).to_bytes(8, "big")).digest()
        return out[:n]

    return rng


def ed25519_key(seed: str) -> PrivateKey:
    """A fixed Ed25519 key derived from ``seed``."""
    raw = hashlib.sha256(seed.encode()).digest()
    return PrivateKey.from_cryptography(ed25519.Ed25519PrivateKey.from_private_bytes(raw))


HOST_KEY = ed25519_key("host key")
USER_KEY = ed25519_key("alice's key")
OTHER_KEY = ed25519_key("mallory's key")


def server_config(**overrides: object) -> ConnectionConfig:
    fields: dict[str, object] = {"role": Role.SERVER, "host_keys": [HostKey(HOST_KEY)]}
    fields.update(overrides)
    return ConnectionConfig(**fields)  # type: ignore[arg-type]


def client_config(**overrides: object) -> ConnectionConfig:
    fields: dict[str, object] = {"role": Role.CLIENT}
    fields.update(overrides)
    return ConnectionConfig(**fields)  # type: ignore[arg-type]


def publickey_request(
    conn: Connection,
    key: PrivateKey = USER_KEY,
    *,
    username: str = "alice",
    sign: bool = True,
    signer: PrivateKey | None = None,
) -> ev.UserauthRequest:
    """A client's publickey request for ``key`` (signed by ``signer or key``)."""
    algorithm = key.public.key_type
    signature = None
    if sign:
        data = conn.publickey_data_to_sign(username, algorithm, key.public.blob)
        signature = (signer or key).sign(data)
    return ev.UserauthRequest(
        username=username,
        method="publickey",
        public_key=key.public.blob,
        algorithm=algorithm,
        signature=signature,
    )


class ConnectionPair:
    """A client and a server connected by a fake link.

    Args:
        client: client config overrides (or a full config).
        server: server config overrides (or a full config).
        seed: seeds both RNGs (client and server get different streams).
        common: overrides applied to both configs.
    """

    def __init__(
        self,
        *,
        client: ConnectionConfig | dict[str, object] | None = None,
        server: ConnectionConfig | dict[str, object] | None = None,
        seed: str = "pair",
        **common: object,
    ) -> None:
        if not isinstance(client, ConnectionConfig):
            client = client_config(**{**common, **(client or {})})
        if not isinstance(server, ConnectionConfig):
            server = server_config(**{**common, **(server or {})})
        self.client = Connection(client, rng=make_rng(seed + "/client"), now=0.0)
        self.server = Connection(server, rng=make_rng(seed + "/server"), now=0.0)
        self.events: dict[Connection, list[ev.Event]] = {self.client: [], self.server: []}
        self.wire: dict[Connection, bytearray] = {
            self.client: bytearray(),
            self.server: bytearray(),
        }
        #: Called for every event as it is taken from a connection (auto-answers).
        self.on_event: Callable[[Connection, ev.Event], None] | None = None

    def other(self, conn: Connection) -> Connection:
        return self.server if conn is self.client else self.client

    def transfer(self, src: Connection, *, byte_at_a_time: bool = False) -> int:
        """Move ``src``'s pending bytes to its peer, processing events as they come."""
        data = src.data_to_send()
        if not data:
            return 0
        self.wire[src] += data
        dst = self.other(src)
        chunks: Iterable[bytes] = (
            (data[i : i + 1] for i in range(len(data))) if byte_at_a_time else (data,)
        )
        for chunk in chunks:
            if dst.closed:
                break
            dst.receive_data(chunk)
            self.drain(dst)
        return len(data)

    def drain(self, conn: Connection) -> list[ev.Event]:
        """Take every event ``conn`` has ready."""
        got = []
        while (event := conn.next_event()) is not None:
            got.append(event)
            self.events[conn].append(event)
            if self.on_event is not None:
                self.on_event(conn, event)
        return got

    def pump(self, *, byte_at_a_time: bool = False, rounds: int = 1000) -> None:
        """Move bytes both ways until neither side has anything left to say."""
        for _ in range(rounds):
            moved = self.transfer(self.client, byte_at_a_time=byte_at_a_time)
            moved += self.transfer(self.server, byte_at_a_time=byte_at_a_time)
            if not moved:
                return
        raise AssertionError("the connections never went quiet")

    def take(self, conn: Connection) -> list[ev.Event]:
        """The events recorded for ``conn`` since the last take."""
        got, self.events[conn] = self.events[conn], []
        return got

    def handshake(self, *, byte_at_a_time: bool = False) -> None:
        """Run version exchange and the first key exchange."""
        self.pump(byte_at_a_time=byte_at_a_time)
        for conn in (self.client, self.server):
            assert any(isinstance(e, ev.KexComplete) for e in self.events[conn]), conn.state

    def authenticate(self, username: str = "alice", key: PrivateKey = USER_KEY) -> None:
        """Handshake, then publickey auth with ``key``; the server accepts it."""
        self.handshake()
        self.client.send(publickey_request(self.client, key, username=username))
        self.pump()
        requests = [e for e in self.events[self.server] if isinstance(e, ev.UserauthRequest)]
        assert requests and requests[-1].signature_ok is True
        self.server.send(ev.UserauthSuccess())
        self.pump()
        assert self.client.is_authenticated and self.server.is_authenticated
        self.take(self.client)
        self.take(self.server)

    def open_session(self, opener: Connection | None = None) -> tuple[int, int]:
        """Open a session channel from ``opener`` (client by default); (our id, their id)."""
        opener = opener or self.client
        peer = self.other(opener)
        cid = opener.new_channel_id()
        opener.send(ev.ChannelOpen(channel=cid, kind="session"))
        self.transfer(opener)
        opened = [e for e in self.take(peer) if isinstance(e, ev.ChannelOpen)]
        assert len(opened) == 1
        peer.send(ev.ChannelOpenConfirmation(channel=opened[0].channel))
        self.transfer(peer)
        assert ev.ChannelOpenConfirmation(channel=cid) in self.take(opener)
        return cid, opened[0].channel


def inject(conn: Connection, payload: bytes) -> None:
    """Queue a raw payload through ``conn``'s current keys, bypassing every check.

    This is how a hostile peer is played: the victim sees a correctly encrypted and
    MACed packet carrying whatever the test wants.
    """
    conn._transport._write(payload)


def authenticated_pair(**kwargs: object) -> ConnectionPair:
    pair = ConnectionPair(**kwargs)  # type: ignore[arg-type]
    pair.authenticate()
    return pair


class RawPeer:
    """A peer that speaks cleartext packets (before any NEWKEYS) for hostile tests."""

    def __init__(self, version: bytes = b"SSH-2.0-Hostile_1.0\r\n") -> None:
        self._prot = none_protection()
        self._rng = make_rng("raw peer")
        self.seqnr = 0
        self.version = version

    def packet(self, payload: bytes) -> bytes:
        out = self._prot.seal(self.seqnr, payload, self._rng)
        self.seqnr += 1
        return out

    def kexinit(self, *, role: Role, strict: bool = True, **fields: object) -> bytes:
        """A plausible KEXINIT payload for ``role`` (the peer's role, not ours)."""
        kex: tuple[str, ...] = ("curve25519-sha256",)
        if strict:
            kex += (
                "kex-strict-c-v00@openssh.com"
                if role is Role.CLIENT
                else "kex-strict-s-v00@openssh.com",
            )
        msg = m.KexInit(
            cookie=bytes(16),
            kex_algorithms=kex,
            server_host_key_algorithms=("ssh-ed25519",),
            ciphers_c2s=("aes128-gcm@openssh.com",),
            ciphers_s2c=("aes128-gcm@openssh.com",),
            macs_c2s=("hmac-sha2-256-etm@openssh.com",),
            macs_s2c=("hmac-sha2-256-etm@openssh.com",),
            compression_c2s=("none",),
            compression_s2c=("none",),
        )
        return bytes(replace(msg, **fields))  # type: ignore[arg-type]


def cleartext_messages(data: bytes) -> list[m.Message]:
    """Decode what a connection sent before any NEWKEYS: its version line, then packets."""
    data = data[data.index(b"\n") + 1 :]
    out = []
    r = wire.Reader(data)
    while r.remaining:
        length = r.uint32()
        padding = r.byte()
        payload = r.raw(length - padding - 1)
        r.raw(padding)
        out.append(m.parse(payload))
    return out


def last_disconnect(messages: list[m.Message]) -> m.Disconnect:
    """The DISCONNECT that must end ``messages``."""
    assert messages, "nothing was sent"
    last = messages[-1]
    assert isinstance(last, m.Disconnect), last
    return last
