"""RFC 4251 §5 data types: encoders, the bounds-checked reader, and round trips."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trioport.errors import DecodeError, RemoteProtocolError
from trioport.sshproto import wire

# RFC 4251 §5, the mpint examples.
MPINT_EXAMPLES = [
    (0, "00000000"),
    (0x9A378F9B2E332A7, "0000000809a378f9b2e332a7"),
    (0x80, "000000020080"),
    (-0x1234, "00000002edcc"),
    (-0xDEADBEEF, "00000005ff21524111"),
]


@pytest.mark.parametrize(("value", "hexed"), MPINT_EXAMPLES)
def test_mpint_matches_rfc_4251_examples(value: int, hexed: str) -> None:
    assert wire.mpint(value).hex() == hexed
    assert wire.Reader(bytes.fromhex(hexed)).mpint() == value


def test_name_list_examples() -> None:
    assert wire.name_list([]) == b"\x00\x00\x00\x00"
    assert wire.name_list(["zlib"]) == bytes.fromhex("000000047a6c6962")
    assert wire.name_list(["zlib", "none"]) == bytes.fromhex("000000097a6c69622c6e6f6e65")


@given(st.integers(min_value=-(2**600), max_value=2**600))
def test_mpint_round_trips(value: int) -> None:
    r = wire.Reader(wire.mpint(value))
    assert r.mpint() == value
    r.end()


@given(st.binary(max_size=300), st.integers(0, 2**32 - 1), st.integers(0, 2**64 - 1))
def test_strings_and_integers_round_trip(data: bytes, u32: int, u64: int) -> None:
    r = wire.Reader(wire.string(data) + wire.uint32(u32) + wire.uint64(u64) + wire.boolean(True))
    assert (r.string(), r.uint32(), r.uint64(), r.boolean()) == (data, u32, u64, True)
    r.end()


@pytest.mark.parametrize(
    ("data", "read"),
    [
        (b"", "byte"),
        (b"\x00\x00\x00", "uint32"),
        (b"\x00\x00\x00\x05abc", "string"),
        (b"\xff\xff\xff\xff", "string"),
        (b"\x00\x00\x00\x02\x00\x01", "mpint"),  # redundant leading zero
        (b"\x00\x00\x00\x03a,,", "name_list"),
        (b"\x00\x00\x00\x02\xc3\xa9", "name_list"),
        (b"\x00\x00\x00\x01\xff", "text"),
    ],
)
def test_malformed_input_raises_decode_error_only(data: bytes, read: str) -> None:
    with pytest.raises(DecodeError):
        getattr(wire.Reader(data), read)()


def test_trailing_bytes_are_refused_and_decode_errors_are_remote_errors() -> None:
    r = wire.Reader(wire.uint32(1) + b"x")
    r.uint32()
    with pytest.raises(RemoteProtocolError, match="unexpected bytes"):
        r.end()
