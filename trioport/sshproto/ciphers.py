"""Packet protection: the SSH binary packet, framed, padded, encrypted and MACed.

Theory of operation
-------------------
After each NEWKEYS the transport makes one :class:`PacketProtection` per direction
with :func:`create` (before the first NEWKEYS it uses :func:`none_protection`). The
object does the whole binary-packet framing of RFC 4253 §6, so the transport never
learns cipher details:

- sending: ``p.seal_into(seqnr, head, body, rng, queue)`` writes the packet for the
  payload ``head || body`` straight into a :class:`~.sendqueue.SendQueue` (the bulk
  path: no per-packet buffers); ``wire = p.seal(seqnr, payload, rng)`` returns it;
- receiving: wait for ``p.head_size`` bytes, ``total = p.packet_length(seqnr, head)``,
  wait for ``total`` bytes, ``payload = p.open(seqnr, wire)``.

There are three packet layouts, and each class below is one of them:

========================  ====================  ======================  =============
mode                      packet_length field   MAC input               alignment
========================  ====================  ======================  =============
none / CTR + HMAC         encrypted with body   seqnr || plaintext      4 + length
CTR + HMAC-ETM            clear                 seqnr || length || ct   length
AES-GCM (RFC 5647)        clear, AAD            GCM tag                 length
chacha20-poly1305         own key (K_1)         Poly1305 over the wire  length
========================  ====================  ======================  =============

Rules:

- One object per direction, used only to seal or only to open, in sequence-number
  order: CTR keystreams and the GCM invocation counter are state.
- MACs and tags are checked before anything is decrypted wherever the mode allows it
  (everything but CTR + non-ETM HMAC, whose MAC covers the plaintext), always with a
  constant-time comparison.
- A bad MAC or tag raises :class:`~trioport.errors.MACError` ("Corrupted MAC on
  input", as OpenSSH says); a bad length or padding raises
  :class:`~trioport.errors.RemoteProtocolError` with ``PROTOCOL_ERROR``.
- Per-packet work is kept small: the AES-GCM object, the CTR context and the keyed
  HMAC are made once; chacha20 needs two fresh ChaCha20 contexts per packet because
  its nonce is the sequence number.

Unlike OpenSSH we do not read and discard up to 256 KiB after a bad length under
CTR + non-ETM HMAC; the connection just ends. Prefer the AEAD and ETM modes, which
do not have that length oracle at all.
"""

from __future__ import annotations

import hmac
import struct
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, CipherContext, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.poly1305 import Poly1305

from ..errors import DisconnectReason, LocalProtocolError, MACError, RemoteProtocolError
from .sendqueue import SendQueue

__all__ = [
    "CIPHERS",
    "DEFAULT_CIPHERS",
    "DEFAULT_MACS",
    "MACS",
    "MAX_PACKET_SIZE",
    "CipherSpec",
    "MacSpec",
    "PacketProtection",
    "create",
    "none_protection",
]

#: Largest packet_length we accept or send (OpenSSH ``PACKET_MAX_SIZE``; RFC 4253
#: §6.1 requires at least 35,000).
MAX_PACKET_SIZE = 256 * 1024
#: Smallest packet_length: the padding_length byte and 4 bytes of padding (RFC 4253 §6).
MIN_PACKET_LENGTH = 5
#: Smallest padding (RFC 4253 §6: "at least four bytes").
MIN_PADDING = 4


@dataclass(frozen=True, slots=True)
class CipherSpec:
    """Sizes the key exchange needs to derive keys for a cipher."""

    #: Bytes of encryption key (RFC 4253 §7.2 letters C/D).
    key_size: int
    #: Bytes of IV (letters A/B); 0 for chacha20-poly1305.
    iv_size: int
    #: Alignment of packets, and the unit of the rekey limit.
    block_size: int
    #: True when the cipher authenticates by itself and no MAC is negotiated.
    aead: bool


@dataclass(frozen=True, slots=True)
class MacSpec:
    """Sizes of a MAC algorithm."""

    #: Bytes of MAC key (letters E/F).
    key_size: int
    #: Bytes of MAC appended to each packet.
    digest_size: int
    #: Encrypt-then-MAC (OpenSSH PROTOCOL §1.7): length in clear, MAC over ciphertext.
    etm: bool


#: Every cipher we implement. Names per RFC 4344 §4 (CTR), OpenSSH PROTOCOL §1.6
#: (AES-GCM, after RFC 5647) and PROTOCOL.chacha20poly1305.
CIPHERS: dict[str, CipherSpec] = {
    "aes128-gcm@openssh.com": CipherSpec(16, 12, 16, True),
    "aes256-gcm@openssh.com": CipherSpec(32, 12, 16, True),
    "chacha20-poly1305@openssh.com": CipherSpec(64, 0, 8, True),
    "aes128-ctr": CipherSpec(16, 16, 16, False),
    "aes192-ctr": CipherSpec(24, 16, 16, False),
    "aes256-ctr": CipherSpec(32, 16, 16, False),
}

#: Every MAC we implement (RFC 6668 for SHA-2, OpenSSH PROTOCOL §1.7 for ``-etm``).
MACS: dict[str, MacSpec] = {
    "hmac-sha2-256-etm@openssh.com": MacSpec(32, 32, True),
    "hmac-sha2-512-etm@openssh.com": MacSpec(64, 64, True),
    "hmac-sha2-256": MacSpec(32, 32, False),
    "hmac-sha2-512": MacSpec(64, 64, False),
    "hmac-sha1-etm@openssh.com": MacSpec(20, 20, True),
    "hmac-sha1": MacSpec(20, 20, False),
}
_MAC_HASH = {
    "hmac-sha2-256-etm@openssh.com": "sha256",
    "hmac-sha2-512-etm@openssh.com": "sha512",
    "hmac-sha2-256": "sha256",
    "hmac-sha2-512": "sha512",
    "hmac-sha1-etm@openssh.com": "sha1",
    "hmac-sha1": "sha1",
}

#: What we offer, best first. AES-GCM leads: it is the fastest with AES-NI and,
#: unlike chacha20-poly1305, is not touched by Terrapin even without strict KEX.
DEFAULT_CIPHERS: tuple[str, ...] = (
    "aes128-gcm@openssh.com",
    "aes256-gcm@openssh.com",
    "chacha20-poly1305@openssh.com",
    "aes128-ctr",
    "aes192-ctr",
    "aes256-ctr",
)
#: MACs offered by default, best first (ETM first; no SHA-1).
DEFAULT_MACS: tuple[str, ...] = (
    "hmac-sha2-256-etm@openssh.com",
    "hmac-sha2-512-etm@openssh.com",
    "hmac-sha2-256",
    "hmac-sha2-512",
)

_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_BYTE = [bytes((i,)) for i in range(256)]
_SEQ_MASK = 0xFFFFFFFF  # RFC 4253 §6.4: the sequence number wraps at 2^32
_MAC_ERROR = "Corrupted MAC on input"
_PROTOCOL_ERROR = DisconnectReason.PROTOCOL_ERROR


def _padding_length(payload_size: int, block: int, aligned_extra: int) -> int:
    """RFC 4253 §6: at least 4 bytes, so the aligned part is a multiple of ``block``."""
    pad = -(aligned_extra + 1 + payload_size) % block
    return pad + block if pad < MIN_PADDING else pad


def _check_length(length: int, block: int, aligned_extra: int) -> None:
    """Refuse a packet_length OpenSSH would refuse ("Bad packet length", "padding error")."""
    if length < MIN_PACKET_LENGTH or length > MAX_PACKET_SIZE:
        raise RemoteProtocolError(f"Bad packet length {length}", _PROTOCOL_ERROR)
    if (length + aligned_extra) % block:
        raise RemoteProtocolError(
            f"padding error: packet length {length} is not a multiple of {block}",
            _PROTOCOL_ERROR,
        )


def _unpad(plain: bytes | memoryview, length: int, offset: int) -> bytes:
    """Strip the padding: ``plain[offset]`` is padding_length, then payload, then padding."""
    pad = plain[offset]
    if pad < MIN_PADDING or pad > length - 1:
        raise RemoteProtocolError(f"Corrupted padlen {pad} on input", _PROTOCOL_ERROR)
    return bytes(plain[offset + 1 : offset + length - pad])


def _frame(payload_size: int, block: int, aligned_extra: int) -> tuple[int, int]:
    """``(padding_length, packet_length)`` for a payload of ``payload_size`` bytes.

    Raises:
        LocalProtocolError: the packet would exceed :data:`MAX_PACKET_SIZE`.
    """
    pad = _padding_length(payload_size, block, aligned_extra)
    length = 1 + payload_size + pad
    if length > MAX_PACKET_SIZE:
        raise LocalProtocolError(f"payload of {payload_size} bytes exceeds the packet size limit")
    return pad, length


Buffer = bytes | bytearray | memoryview


def _fill(view: memoryview, pad: int, head: Buffer, body: Buffer, padding: bytes) -> None:
    """Write padding_length || payload (``head`` then ``body``) || padding into ``view``."""
    view[0] = pad
    end = 1 + len(head)
    view[1:end] = head
    start, end = end, end + len(body)
    view[start:end] = body
    view[end:] = padding


def _stream_into(stream: CipherContext, view: memoryview, *parts: Buffer) -> None:
    """Encrypt ``parts`` one after another into ``view`` (a stream cipher: CTR, ChaCha20)."""
    offset = 0
    for part in parts:
        end = offset + len(part)
        if end > offset:
            stream.update_into(part, view[offset:end])
        offset = end


class PacketProtection:
    """One direction's packet protection. See the module docstring for the protocol.

    Attributes:
        head_size: bytes needed before :meth:`packet_length` can be called.
        mac_size: bytes of MAC or tag at the end of each packet.
        block_size: alignment of packets (8 for none and chacha, 16 for AES).
    """

    __slots__ = ("block_size", "head_size", "mac_size")

    head_size: int
    mac_size: int
    block_size: int

    def seal(self, seqnr: int, payload: bytes, rng: Callable[[int], bytes]) -> bytes:
        """Frame, pad, encrypt and MAC one payload; return the bytes for the wire.

        Raises:
            LocalProtocolError: the packet would exceed :data:`MAX_PACKET_SIZE`.
        """
        queue = SendQueue()
        self.seal_into(seqnr, payload, b"", rng, queue)
        return bytes(queue.take())

    def seal_into(
        self,
        seqnr: int,
        head: Buffer,
        body: Buffer,
        rng: Callable[[int], bytes],
        out: SendQueue,
    ) -> int:
        """Frame, pad, encrypt and MAC the payload ``head || body`` into ``out``.

        The payload comes in two parts so channel data is encrypted straight from
        the application's buffer: ``head`` is the message header, ``body`` its data.

        Args:
            seqnr: this packet's sequence number (RFC 4253 §6.4).
            head: the start of the message (its first byte is the message number).
            body: the rest of the message (may be empty).
            rng: source of random padding.
            out: where the packet is queued.

        Returns:
            The packet's size on the wire.

        Raises:
            LocalProtocolError: the packet would exceed :data:`MAX_PACKET_SIZE`.
        """
        raise NotImplementedError

    def packet_length(self, seqnr: int, head: bytes) -> int:
        """The total wire size of the packet that starts with ``head``.

        Call exactly once per packet, before :meth:`open` (CTR without ETM decrypts
        the first block here and keeps it).

        Args:
            seqnr: the packet's sequence number.
            head: at least :attr:`head_size` bytes from the start of the packet.

        Returns:
            ``4 + packet_length + mac_size``.

        Raises:
            RemoteProtocolError: packet_length below 5, above :data:`MAX_PACKET_SIZE`
                or not aligned to the block size.
        """
        raise NotImplementedError

    def open(self, seqnr: int, wire: bytes | bytearray | memoryview) -> bytes:
        """Check the MAC or tag, decrypt and unpad one whole packet.

        Args:
            seqnr: the packet's sequence number.
            wire: exactly the number of bytes :meth:`packet_length` returned.

        Returns:
            The payload.

        Raises:
            MACError: the MAC or tag does not match (corrupt, forged or wrong seqnr).
            RemoteProtocolError: bad packet length or padding length.
            LocalProtocolError: ``wire`` is not the size :meth:`packet_length` gave.
        """
        raise NotImplementedError

    def _expect(self, wire: bytes | bytearray | memoryview, length: int) -> int:
        end = 4 + length
        if len(wire) != end + self.mac_size:
            raise LocalProtocolError(
                f"open() got {len(wire)} bytes, packet_length() said {end + self.mac_size}"
            )
        return end


class _NoProtection(PacketProtection):
    """Before the first NEWKEYS: clear text, block size 8, no MAC (RFC 4253 §6)."""

    __slots__ = ()

    def __init__(self) -> None:
        self.head_size = 4
        self.mac_size = 0
        self.block_size = 8

    def seal_into(
        self, seqnr: int, head: Buffer, body: Buffer, rng: Callable[[int], bytes], out: SendQueue
    ) -> int:
        pad, length = _frame(len(head) + len(body), 8, 4)
        total = 4 + length
        view = out.reserve(total)
        _U32.pack_into(view, 0, length)
        _fill(view[4:], pad, head, body, rng(pad))
        out.commit(total)
        return total

    def packet_length(self, seqnr: int, head: bytes) -> int:
        length = _U32.unpack_from(head)[0]
        _check_length(length, 8, 4)
        return 4 + length

    def open(self, seqnr: int, wire: bytes | bytearray | memoryview) -> bytes:
        length = _U32.unpack_from(wire)[0]
        _check_length(length, 8, 4)
        self._expect(wire, length)
        return _unpad(wire, length, 4)


class _CtrHmac(PacketProtection):
    """AES-CTR (RFC 4344) with HMAC (RFC 4253 §6.4) or HMAC-ETM (OpenSSH PROTOCOL §1.7)."""

    __slots__ = ("_etm", "_first", "_mac", "_stream")

    def __init__(self, key: bytes, iv: bytes, mac_name: str, mac_key: bytes) -> None:
        spec = MACS[mac_name]
        # CTR encryption and decryption are the same keystream XOR: one context.
        self._stream = Cipher(algorithms.AES(key), modes.CTR(iv)).encryptor()
        self._mac = hmac.new(mac_key, digestmod=_MAC_HASH[mac_name])
        self._etm = spec.etm
        self._first: bytes | None = None
        self.mac_size = spec.digest_size
        self.block_size = 16
        # ETM: the length is in clear. Otherwise the first block must be decrypted.
        self.head_size = 4 if spec.etm else 16

    def _digest(self, seqnr: int, *parts: bytes | memoryview) -> bytes:
        mac = self._mac.copy()
        mac.update(_U32.pack(seqnr & _SEQ_MASK))
        for part in parts:
            mac.update(part)
        return mac.digest()

    def seal_into(
        self, seqnr: int, head: Buffer, body: Buffer, rng: Callable[[int], bytes], out: SendQueue
    ) -> int:
        pad, length = _frame(len(head) + len(body), 16, 0 if self._etm else 4)
        end = 4 + length
        total = end + self.mac_size
        view = out.reserve(total)
        padding = rng(pad)
        if self._etm:
            # PROTOCOL §1.7: mac = MAC(key, seqnr || packet_length || encrypted packet).
            _U32.pack_into(view, 0, length)
            _stream_into(self._stream, view[4:end], _BYTE[pad] + head, body, padding)
            view[end:total] = self._digest(seqnr, view[:end])
        else:
            # RFC 4253 §6.4: mac = MAC(key, seqnr || unencrypted packet).
            start = _U32.pack(length) + _BYTE[pad] + head
            view[end:total] = self._digest(seqnr, start, body, padding)
            _stream_into(self._stream, view[:end], start, body, padding)
        out.commit(total)
        return total

    def packet_length(self, seqnr: int, head: bytes) -> int:
        if self._etm:
            length = _U32.unpack_from(head)[0]
            _check_length(length, 16, 0)
        else:
            self._first = first = self._stream.update(head[:16])
            length = _U32.unpack_from(first)[0]
            _check_length(length, 16, 4)
        return 4 + length + self.mac_size

    def open(self, seqnr: int, wire: bytes | bytearray | memoryview) -> bytes:
        view = memoryview(wire)
        if self._etm:
            length = _U32.unpack_from(view)[0]
            _check_length(length, 16, 0)
            end = self._expect(view, length)
            if not hmac.compare_digest(self._digest(seqnr, view[:end]), view[end:]):
                raise MACError(_MAC_ERROR)
            plain = self._stream.update(view[4:end])
            return _unpad(plain, length, 0)
        first = self._first
        if first is None:
            raise LocalProtocolError("packet_length() must be called before open()")
        self._first = None
        length = _U32.unpack_from(first)[0]
        end = self._expect(view, length)
        plain = first + self._stream.update(view[16:end])
        if not hmac.compare_digest(self._digest(seqnr, plain), view[end:]):
            raise MACError(_MAC_ERROR)
        return _unpad(plain, length, 4)


class _AesGcm(PacketProtection):
    """AES-GCM as OpenSSH PROTOCOL §1.6 / RFC 5647 §7: length is clear AAD."""

    __slots__ = ("_aead", "_counter", "_fixed")

    def __init__(self, key: bytes, iv: bytes) -> None:
        self._aead = AESGCM(key)
        # RFC 5647 §7.1: nonce = 4-byte fixed field || 8-byte invocation counter,
        # the counter incremented (mod 2^64) after every packet.
        self._fixed = iv[:4]
        self._counter = int.from_bytes(iv[4:], "big")
        self.head_size = 4
        self.mac_size = 16
        self.block_size = 16

    def _nonce(self) -> bytes:
        nonce = self._fixed + _U64.pack(self._counter)
        self._counter = (self._counter + 1) & 0xFFFFFFFFFFFFFFFF
        return nonce

    def seal_into(
        self, seqnr: int, head: Buffer, body: Buffer, rng: Callable[[int], bytes], out: SendQueue
    ) -> int:
        pad, length = _frame(len(head) + len(body), 16, 0)
        total = 4 + length + 16
        # The AEAD call wants the plaintext in one piece: assemble it just past the
        # packet (reserved, never committed), then encrypt into the packet itself.
        view = out.reserve(total + length)
        _U32.pack_into(view, 0, length)
        plain = view[total:]
        _fill(plain, pad, head, body, rng(pad))
        self._aead.encrypt_into(self._nonce(), plain, view[:4], view[4:total])
        out.commit(total)
        return total

    def packet_length(self, seqnr: int, head: bytes) -> int:
        length = _U32.unpack_from(head)[0]
        _check_length(length, 16, 0)
        return 4 + length + 16

    def open(self, seqnr: int, wire: bytes | bytearray | memoryview) -> bytes:
        view = memoryview(wire)
        length = _U32.unpack_from(view)[0]
        _check_length(length, 16, 0)
        self._expect(view, length)
        try:
            plain = self._aead.decrypt(self._nonce(), view[4:], view[:4])
        except InvalidTag:
            raise MACError(_MAC_ERROR) from None
        return _unpad(plain, length, 0)


_ZERO_BLOCK = bytes(64)
_COUNTER_0 = bytes(8)


class _ChaChaPoly(PacketProtection):
    """chacha20-poly1305@openssh.com (PROTOCOL.chacha20poly1305).

    The 64-byte key is K_2 (first 32 bytes: payload and Poly1305 key) then K_1 (last
    32: the length). The nonce is the sequence number as a uint64. cryptography's
    ChaCha20 takes 16 bytes, a 32-bit little-endian block counter then 96 bits of
    nonce; with our counters (< 2^32 blocks per packet) that equals the original
    ChaCha layout of a 64-bit counter followed by the 64-bit nonce.
    """

    __slots__ = ("_cached", "_k1", "_k2")

    def __init__(self, key: bytes) -> None:
        self._k2 = key[:32]
        self._k1 = key[32:64]
        self._cached: tuple[int, int] | None = None  # (seqnr, length) from packet_length
        self.head_size = 4
        self.mac_size = 16
        self.block_size = 8

    def _length_stream(self, nonce: bytes) -> CipherContext:
        return Cipher(algorithms.ChaCha20(self._k1, _COUNTER_0 + nonce), None).encryptor()

    def _main_stream(self, nonce: bytes) -> tuple[CipherContext, bytes]:
        """The K_2 stream positioned at block 1, and the Poly1305 key from block 0."""
        stream = Cipher(algorithms.ChaCha20(self._k2, _COUNTER_0 + nonce), None).encryptor()
        return stream, stream.update(_ZERO_BLOCK)[:32]

    def seal_into(
        self, seqnr: int, head: Buffer, body: Buffer, rng: Callable[[int], bytes], out: SendQueue
    ) -> int:
        pad, length = _frame(len(head) + len(body), 8, 0)
        end = 4 + length
        total = end + 16
        view = out.reserve(total)
        nonce = _U64.pack(seqnr & _SEQ_MASK)
        self._length_stream(nonce).update_into(_U32.pack(length), view[:4])
        stream, poly_key = self._main_stream(nonce)
        _stream_into(stream, view[4:end], _BYTE[pad] + head, body, rng(pad))
        mac = Poly1305(poly_key)
        mac.update(view[:end])
        view[end:total] = mac.finalize()
        out.commit(total)
        return total

    def _length(self, seqnr: int, head: bytes | memoryview) -> int:
        nonce = _U64.pack(seqnr & _SEQ_MASK)
        clear = self._length_stream(nonce).update(head[:4])
        length = _U32.unpack(clear)[0]
        _check_length(length, 8, 0)
        return length

    def packet_length(self, seqnr: int, head: bytes) -> int:
        length = self._length(seqnr, head)
        self._cached = (seqnr, length)
        return 4 + length + 16

    def open(self, seqnr: int, wire: bytes | bytearray | memoryview) -> bytes:
        view = memoryview(wire)
        cached, self._cached = self._cached, None
        length = cached[1] if cached and cached[0] == seqnr else self._length(seqnr, view)
        end = self._expect(view, length)
        stream, poly_key = self._main_stream(_U64.pack(seqnr & _SEQ_MASK))
        mac = Poly1305(poly_key)
        mac.update(view[:end])
        try:
            mac.verify(bytes(view[end:]))  # constant time
        except InvalidSignature:
            raise MACError(_MAC_ERROR) from None
        plain = stream.update(view[4:end])
        return _unpad(plain, length, 0)


def none_protection() -> PacketProtection:
    """The protection before the first NEWKEYS: none (RFC 4253 §6, block size 8)."""
    return _NoProtection()


def create(
    cipher: str, mac: str | None, key: bytes, iv: bytes, mac_key: bytes | None
) -> PacketProtection:
    """Make one direction's packet protection after NEWKEYS.

    Args:
        cipher: a key of :data:`CIPHERS`.
        mac: a key of :data:`MACS`; ignored (may be ``None``) for AEAD ciphers.
        key: ``CIPHERS[cipher].key_size`` bytes of encryption key.
        iv: ``CIPHERS[cipher].iv_size`` bytes of IV.
        mac_key: ``MACS[mac].key_size`` bytes; ignored for AEAD ciphers.

    Returns:
        A fresh :class:`PacketProtection` for one direction.

    Raises:
        LocalProtocolError: unknown algorithm, a missing MAC, or wrong key sizes.
    """
    spec = CIPHERS.get(cipher)
    if spec is None:
        raise LocalProtocolError(f"unknown cipher {cipher!r}")
    if len(key) != spec.key_size or len(iv) != spec.iv_size:
        raise LocalProtocolError(
            f"{cipher} needs a {spec.key_size}-byte key and a {spec.iv_size}-byte IV"
        )
    key = bytes(key)
    if cipher == "chacha20-poly1305@openssh.com":
        return _ChaChaPoly(key)
    if spec.aead:
        return _AesGcm(key, bytes(iv))
    mac_spec = MACS.get(mac or "")
    if mac is None or mac_spec is None:
        raise LocalProtocolError(f"{cipher} needs a MAC, got {mac!r}")
    if mac_key is None or len(mac_key) != mac_spec.key_size:
        raise LocalProtocolError(f"{mac} needs a {mac_spec.key_size}-byte key")
    return _CtrHmac(key, bytes(iv), mac, bytes(mac_key))
