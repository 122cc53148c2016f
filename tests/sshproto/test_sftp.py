"""SFTP v3, sans-IO: codecs, framing and the order of a session (no I/O anywhere)."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trioport.errors import DecodeError, LocalProtocolError, RemoteProtocolError
from trioport.sshproto import sftp
from trioport.sshproto.sftp import Attrs, PacketType, SessionState, StatusCode
from trioport.sshproto.wire import Reader, string, uint32, uint64

U32 = st.integers(0, 2**32 - 1)
U64 = st.integers(0, 2**64 - 1)
BLOB = st.binary(max_size=40)

attrs = st.builds(
    lambda size, ids, perms, times, ext: Attrs(
        size, *(ids or (None, None)), perms, *(times or (None, None)), tuple(ext)
    ),
    st.none() | U64,
    st.none() | st.tuples(U32, U32),
    st.none() | U32,
    st.none() | st.tuples(U32, U32),
    st.lists(st.tuples(BLOB, BLOB), max_size=3),
)
_KIND = {"u32": U32, "u64": U64, "str": BLOB, "attrs": attrs}


def _flat(cls) -> st.SearchStrategy:
    return st.builds(cls, *(_KIND[k] for k in cls._FIELDS))


FLAT_REQUESTS = sorted(
    [*sftp._REQUESTS.values(), *sftp.EXTENDED_REQUESTS.values()], key=lambda c: c.__name__
)
pairs = st.lists(st.tuples(BLOB, BLOB), max_size=4).map(tuple)
requests = st.one_of(
    *(_flat(cls) for cls in FLAT_REQUESTS),
    st.builds(sftp.Init, U32, pairs),
    st.builds(
        sftp.ExtendedRequest,
        U32,
        BLOB.filter(lambda n: n not in sftp.EXTENDED_REQUESTS),
        BLOB,
    ),
    st.builds(
        sftp.UnknownRequest,
        st.integers(0, 255).filter(lambda t: t not in sftp._REQUESTS and t not in (1, 200)),
        U32,
    ),
)
text = st.text(max_size=20)
responses = st.one_of(
    st.builds(sftp.Version, U32, pairs),
    st.builds(sftp.Status, U32, U32, text, text),
    _flat(sftp.Handle),
    _flat(sftp.Data),
    _flat(sftp.StatReply),
    st.builds(
        sftp.Name,
        U32,
        st.lists(st.builds(sftp.NameEntry, BLOB, BLOB, attrs), max_size=4).map(tuple),
    ),
    st.builds(sftp.ExtendedReply, U32, BLOB),
)


# --- codecs -------------------------------------------------------------------------------


def test_known_answer_encodings() -> None:
    assert sftp.frame(sftp.Init()) == b"\x00\x00\x00\x05\x01\x00\x00\x00\x03"
    assert sftp.encode(sftp.Status(7, StatusCode.EOF, "End of file", "en")) == (
        b"\x65" + uint32(7) + uint32(1) + string("End of file") + string("en")
    )
    assert sftp.encode(sftp.Read(1, b"h", 2**40, 32768)) == (
        b"\x05" + uint32(1) + string(b"h") + uint64(2**40) + uint32(32768)
    )
    # OpenSSH's SYMLINK order (PROTOCOL §4.1): the target first, then the new link.
    assert sftp.encode(sftp.Symlink(3, b"target", b"link")) == (
        b"\x14" + uint32(3) + string(b"target") + string(b"link")
    )
    # Extended requests: id, then the name, then the extension's own fields.
    assert sftp.encode(sftp.PosixRename(4, b"a", b"b")) == (
        b"\xc8" + uint32(4) + string(b"posix-rename@openssh.com") + string(b"a") + string(b"b")
    )
    assert sftp.encode(sftp.Limits(5)) == b"\xc8" + uint32(5) + string(b"limits@openssh.com")


def test_attrs_wire_form_follows_the_flags() -> None:
    assert Attrs().encode() == uint32(0)
    full = Attrs(1, 2, 3, 0o100644, 5, 6, ((b"k", b"v"),))
    assert full.encode() == (
        uint32(0x8000000F)
        + uint64(1)
        + uint32(2)
        + uint32(3)
        + uint32(0o100644)
        + uint32(5)
        + uint32(6)
        + uint32(1)
        + string(b"k")
        + string(b"v")
    )
    for half in (Attrs(uid=1), Attrs(gid=1), Attrs(atime=1), Attrs(mtime=1)):
        with pytest.raises(LocalProtocolError):
            half.encode()


def test_attrs_ignore_unknown_flag_bits_and_refuse_absurd_counts() -> None:
    # sftp-server reads only the fields whose bits it knows.
    parsed = Attrs.decode(Reader(uint32(0x00000100 | 0x1) + uint64(9)))
    assert parsed == Attrs(size=9)
    with pytest.raises(DecodeError):
        Attrs.decode(Reader(uint32(0x80000000) + uint32(2**32 - 1) + bytes(16)))


@given(requests)
def test_every_request_round_trips(message) -> None:
    assert sftp.decode_request(sftp.encode(message)) == message


@given(responses)
def test_every_response_round_trips(message) -> None:
    assert sftp.decode_response(sftp.encode(message)) == message


@pytest.mark.parametrize("cls", FLAT_REQUESTS, ids=lambda c: c.__name__)
def test_every_truncated_request_is_a_decode_error(cls) -> None:
    values = {"u32": 1, "u64": 2, "str": b"abc", "attrs": Attrs(size=1)}
    message = cls(*(values[k] for k in cls._FIELDS))
    payload = sftp.encode(message)
    for cut in range(1, len(payload)):
        with pytest.raises(DecodeError):
            sftp.decode_request(payload[:cut])


def test_requests_tolerate_trailing_bytes_as_sftp_server_does() -> None:
    payload = sftp.encode(sftp.Remove(1, b"f")) + b"extra"
    assert sftp.decode_request(payload) == sftp.Remove(1, b"f")


def test_unknown_types_and_extensions_decode_so_they_can_be_refused() -> None:
    assert sftp.decode_request(b"\x63" + uint32(5)) == sftp.UnknownRequest(99, 5)
    # A response type sent as a request is just as unknown.
    assert sftp.decode_request(b"\x65" + uint32(6)) == sftp.UnknownRequest(101, 6)
    ext = b"\xc8" + uint32(7) + string(b"vendor@example.com") + b"opaque"
    assert sftp.decode_request(ext) == sftp.ExtendedRequest(7, b"vendor@example.com", b"opaque")
    with pytest.raises(DecodeError):
        sftp.decode_request(b"\x63\x00")  # not even an id
    with pytest.raises(DecodeError):
        sftp.decode_request(b"")


def test_responses_are_checked_strictly() -> None:
    # Version-3 servers that omit the message and language tag still parse.
    assert sftp.decode_response(b"\x65" + uint32(1) + uint32(0)) == sftp.Status(1, 0)
    with pytest.raises(DecodeError):
        sftp.decode_response(sftp.encode(sftp.Handle(1, b"h")) + b"x")
    with pytest.raises(DecodeError):
        sftp.decode_response(b"\x68" + uint32(1) + uint32(10**6) + bytes(20))
    with pytest.raises(DecodeError):
        sftp.decode_response(sftp.encode(sftp.Open(1, b"f", 1)))


def test_extension_reply_bodies() -> None:
    limits = sftp.LimitsReply()
    assert (limits.max_packet_length, limits.max_read_length) == (256 * 1024, 255 * 1024)
    assert sftp.LimitsReply.decode(limits.encode()) == limits
    vfs = sftp.StatvfsReply(*range(1, 12))
    assert len(vfs.encode()) == 88
    assert sftp.StatvfsReply.decode(vfs.encode()) == vfs
    names = sftp.UsersGroupsReply((b"root", b""), (b"wheel",))
    assert sftp.UsersGroupsReply.decode(names.encode()) == names
    assert sftp.unpack_ids(uint32(0) + uint32(65534)) == [0, 65534]
    for bad in (lambda: sftp.unpack_ids(b"123"), lambda: sftp.LimitsReply.decode(bytes(31))):
        with pytest.raises(DecodeError):
            bad()


def test_server_advertises_every_extension_it_decodes() -> None:
    assert {name for name, _ in sftp.SERVER_EXTENSIONS} == set(sftp.EXTENDED_REQUESTS)
    assert dict(sftp.SERVER_EXTENSIONS)[b"statvfs@openssh.com"] == b"2"


# --- framing ---------------------------------------------------------------------------------


def test_framer_reassembles_byte_by_byte() -> None:
    stream = b"".join(sftp.frame(m) for m in (sftp.Init(), sftp.Stat(1, b"/"), sftp.Limits(2)))
    framer = sftp.Framer()
    payloads = []
    for i in range(len(stream)):
        framer.receive_data(stream[i : i + 1])
        payloads += list(framer.payloads())
    assert [sftp.decode_request(p) for p in payloads] == [
        sftp.Init(),
        sftp.Stat(1, b"/"),
        sftp.Limits(2),
    ]
    assert framer.buffered == 0


def test_framer_limit_is_256_kib_like_openssh() -> None:
    framer = sftp.Framer()
    framer.receive_data(uint32(sftp.MAX_MESSAGE) + b"\x06")
    assert framer.next_payload() is None  # allowed: waits for the rest
    framer = sftp.Framer()
    framer.receive_data(uint32(sftp.MAX_MESSAGE + 1))
    with pytest.raises(DecodeError):
        framer.next_payload()  # refused from the header alone, before the body arrives
    framer = sftp.Framer()
    framer.receive_data(uint32(0))
    with pytest.raises(DecodeError):
        framer.next_payload()
    with pytest.raises(LocalProtocolError):
        sftp.frame(bytes(sftp.MAX_MESSAGE + 1))
    assert len(sftp.frame(bytes(sftp.MAX_MESSAGE))) == sftp.MAX_MESSAGE + 4


# --- session order ---------------------------------------------------------------------------


def _feed(session, *messages) -> list:
    for m in messages:
        session.receive_data(sftp.frame(m))
    out = []
    while (r := session.next_request()) is not None:
        out.append(r)
    return out


def test_a_whole_server_exchange() -> None:
    server = sftp.ServerSession()
    assert _feed(server, sftp.Init(3, ((b"x@example.com", b"1"),))) == [
        sftp.Init(3, ((b"x@example.com", b"1"),))
    ]
    assert server.client_extensions == ((b"x@example.com", b"1"),)
    out = server.send(sftp.Version(3, sftp.SERVER_EXTENSIONS))
    assert out[4] == PacketType.VERSION
    assert _feed(server, sftp.Realpath(1, b".")) == [sftp.Realpath(1, b".")]
    server.send(sftp.Name(1, (sftp.NameEntry(b"/home/u", b"/home/u"),)))
    assert server.state is SessionState.READY


def test_nothing_is_processed_before_init() -> None:
    server = sftp.ServerSession()
    server.receive_data(sftp.frame(sftp.Open(1, b"f", 0x1A)) + sftp.frame(sftp.Init()))
    with pytest.raises(RemoteProtocolError):
        server.next_request()
    assert server.state is SessionState.ERROR
    with pytest.raises(RemoteProtocolError):
        server.next_request()  # the INIT behind it is never reached


def test_init_twice_is_refused() -> None:
    server = sftp.ServerSession()
    server.receive_data(sftp.frame(sftp.Init()) * 2)
    assert isinstance(server.next_request(), sftp.Init)
    with pytest.raises(RemoteProtocolError):
        server.next_request()


def test_server_sends_version_first_and_once() -> None:
    server = sftp.ServerSession()
    with pytest.raises(LocalProtocolError):
        server.send(sftp.Version())  # no INIT yet
    _feed(server, sftp.Init())
    with pytest.raises(LocalProtocolError):
        server.send(sftp.Status(1, 0))  # VERSION must come first
    server.send(sftp.Version())
    with pytest.raises(LocalProtocolError):
        server.send(sftp.Version())


def test_an_oversized_packet_fails_the_session() -> None:
    server = sftp.ServerSession()
    _feed(server, sftp.Init())
    server.receive_data(uint32(sftp.MAX_MESSAGE + 1))
    with pytest.raises(DecodeError):
        server.next_request()
    assert server.state is SessionState.ERROR


def test_client_session_mirrors_the_order() -> None:
    client = sftp.ClientSession()
    init = client.start()
    assert sftp.decode_request(init[4:]) == sftp.Init(3)
    with pytest.raises(LocalProtocolError):
        client.send(sftp.Stat(1, b"/"))  # before VERSION
    client.receive_data(sftp.frame(sftp.Version(3, sftp.SERVER_EXTENSIONS)))
    assert isinstance(client.next_response(), sftp.Version)
    assert b"limits@openssh.com" in client.server_extensions
    assert client.next_id() == 1 and client.next_id() == 2
    with pytest.raises(LocalProtocolError):
        client.send(sftp.Init())
    client.receive_data(sftp.frame(sftp.Version()))
    with pytest.raises(RemoteProtocolError):
        client.next_response()  # VERSION twice

    early = sftp.ClientSession()
    early.receive_data(sftp.frame(sftp.Status(1, 0)))
    with pytest.raises(RemoteProtocolError):
        early.next_response()


@given(st.binary(max_size=600))
def test_garbage_raises_only_remote_protocol_errors(data) -> None:
    for prefix in (b"", sftp.frame(sftp.Init())):
        server = sftp.ServerSession()
        server.receive_data(prefix + data)
        try:
            while server.next_request() is not None:
                pass
        except RemoteProtocolError:
            assert server.state is SessionState.ERROR


def test_dataclasses_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        sftp.Read(1, b"h", 0, 1).length = 2  # type: ignore[misc]
