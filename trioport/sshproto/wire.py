"""SSH data types (RFC 4251 §5): encoders and a bounds-checked reader.

Encoders are free functions returning ``bytes``; :class:`Reader` walks a buffer and
raises :class:`~trioport.errors.DecodeError` on anything short, over-long or
malformed, so a hostile packet can never cause an ``IndexError`` or ``struct.error``.
"""

from __future__ import annotations

import struct

from ..errors import DecodeError

__all__ = [
    "MAX_NAME_LIST",
    "Reader",
    "boolean",
    "byte",
    "mpint",
    "name_list",
    "string",
    "uint32",
    "uint64",
]

_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")

#: Longest name-list we accept. OpenSSH bounds them only by the packet size; a
#: KEXINIT fits easily in 64 KiB, and this keeps a hostile one from costing CPU.
MAX_NAME_LIST = 64 * 1024


def byte(value: int) -> bytes:
    """Encode one byte."""
    return bytes((value,))


def boolean(value: bool) -> bytes:
    """Encode a boolean (RFC 4251: 0 is false, anything else true; we write 1)."""
    return b"\x01" if value else b"\x00"


def uint32(value: int) -> bytes:
    """Encode a 32-bit unsigned integer, big-endian."""
    return _U32.pack(value)


def uint64(value: int) -> bytes:
    """Encode a 64-bit unsigned integer, big-endian."""
    return _U64.pack(value)


def string(value: bytes | bytearray | memoryview | str) -> bytes:
    """Encode a length-prefixed string; ``str`` is encoded as UTF-8."""
    if isinstance(value, str):
        value = value.encode()
    return _U32.pack(len(value)) + bytes(value)


def mpint(value: int) -> bytes:
    """Encode a multiple-precision integer in two's complement (RFC 4251 §5)."""
    if value == 0:
        return b"\x00\x00\x00\x00"
    length = (value.bit_length() + 8) // 8  # room for the sign bit
    data = value.to_bytes(length, "big", signed=True)
    # Drop a redundant leading byte: 0x00 before a clear top bit, 0xff before a set one.
    if len(data) > 1 and (
        (data[0] == 0 and data[1] < 0x80) or (data[0] == 0xFF and data[1] >= 0x80)
    ):
        data = data[1:]
    return _U32.pack(len(data)) + data


def name_list(names: list[str] | tuple[str, ...]) -> bytes:
    """Encode a comma-separated name-list."""
    return string(",".join(names).encode("ascii"))


class Reader:
    """Reads SSH data types from a buffer, front to back.

    Every method raises :class:`DecodeError` instead of reading past the end.
    Call :meth:`end` once a message is fully read to refuse trailing bytes.
    """

    __slots__ = ("_data", "_pos")

    def __init__(self, data: bytes | bytearray | memoryview, pos: int = 0) -> None:
        self._data = bytes(data)
        self._pos = pos

    @property
    def remaining(self) -> int:
        """How many bytes are left unread."""
        return len(self._data) - self._pos

    def _take(self, n: int) -> bytes:
        end = self._pos + n
        if n < 0 or end > len(self._data):
            raise DecodeError(f"message truncated: wanted {n} bytes, {self.remaining} left")
        out = self._data[self._pos : end]
        self._pos = end
        return out

    def byte(self) -> int:
        """Read one byte."""
        if self._pos >= len(self._data):
            raise DecodeError("message truncated: wanted 1 byte, 0 left")
        self._pos += 1
        return self._data[self._pos - 1]

    def raw(self, n: int) -> bytes:
        """Read exactly ``n`` bytes."""
        return self._take(n)

    def boolean(self) -> bool:
        """Read a boolean (any non-zero byte is true, RFC 4251 §5)."""
        return self.byte() != 0

    def uint32(self) -> int:
        """Read a 32-bit unsigned integer."""
        return _U32.unpack(self._take(4))[0]

    def uint64(self) -> int:
        """Read a 64-bit unsigned integer."""
        return _U64.unpack(self._take(8))[0]

    def string(self) -> bytes:
        """Read a length-prefixed string as bytes."""
        return self._take(self.uint32())

    def text(self) -> str:
        """Read a string that must be UTF-8 (user names, descriptions)."""
        data = self.string()
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            raise DecodeError("string is not valid UTF-8") from None

    def mpint(self) -> int:
        """Read a multiple-precision integer."""
        data = self.string()
        if not data:
            return 0
        # RFC 4251 §5: "Unnecessary leading bytes with the value 0 or 255 MUST NOT
        # be included."
        if len(data) > 1 and (
            (data[0] == 0 and data[1] < 0x80) or (data[0] == 0xFF and data[1] >= 0x80)
        ):
            raise DecodeError("mpint has a redundant leading byte")
        return int.from_bytes(data, "big", signed=True)

    def name_list(self) -> list[str]:
        """Read a name-list; names must be printable US-ASCII without commas."""
        data = self.string()
        if len(data) > MAX_NAME_LIST:
            raise DecodeError(f"name-list longer than {MAX_NAME_LIST} bytes")
        if not data:
            return []
        try:
            text = data.decode("ascii")
        except UnicodeDecodeError:
            raise DecodeError("name-list is not US-ASCII") from None
        names = text.split(",")
        for name in names:
            if not name or not name.isprintable() or " " in name:
                raise DecodeError("name-list holds an empty or unprintable name")
        return names

    def rest_string(self) -> bytes:
        """Read a string that must be the last field: nothing may follow it."""
        n = self.uint32()
        if n != self.remaining:
            raise DecodeError(
                f"string of {n} bytes does not end the message ({self.remaining} left)"
            )
        return self._take(n)

    def rest(self) -> bytes:
        """Read everything that is left."""
        return self._take(self.remaining)

    def end(self) -> None:
        """Refuse trailing bytes: the message must be fully read."""
        if self._pos != len(self._data):
            raise DecodeError(f"{self.remaining} unexpected bytes at end of message")
