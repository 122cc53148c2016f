"""Typed messages: every one round-trips, and malformed bytes only raise DecodeError."""

from __future__ import annotations

from dataclasses import fields
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trioport.errors import DecodeError, LocalProtocolError
from trioport.sshproto import events as ev
from trioport.sshproto import messages as m
from trioport.sshproto import wire

_NAME = st.text(
    alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters=","),
    min_size=1,
    max_size=20,
)
_TEXT = st.text(max_size=40)
_STRATEGIES: dict[str, st.SearchStrategy[Any]] = {
    "byte": st.integers(0, 255),
    "bool": st.booleans(),
    "u32": st.integers(0, 2**32 - 1),
    "str": st.binary(max_size=64),
    "text": _TEXT,
    "lenient": _TEXT,
    "names": st.lists(_NAME, max_size=5).map(tuple),
    "raw16": st.binary(min_size=16, max_size=16),
    "rest": st.binary(max_size=64),
}

_CUSTOM = (m.ExtInfo, m.UserauthInfoRequest, m.UserauthInfoResponse)
SPEC_MESSAGES = [cls for cls in m.REGISTRY.values() if cls not in _CUSTOM] + [
    m.UserauthPkOk,
    m.UserauthPasswdChangeReq,
]


def _strategy(cls: type[m.Message]) -> st.SearchStrategy[m.Message]:
    return st.builds(cls, *(_STRATEGIES[kind] for kind in cls.SPEC))


def _context(cls: type[m.Message]) -> str | None:
    return {
        m.UserauthPkOk: "publickey",
        m.UserauthPasswdChangeReq: "password",
        m.UserauthInfoRequest: "keyboard-interactive",
    }.get(cls)


@pytest.mark.parametrize("cls", SPEC_MESSAGES, ids=lambda c: c.__name__)
@settings(max_examples=25)
@given(data=st.data())
def test_every_message_round_trips(cls: type[m.Message], data: st.DataObject) -> None:
    msg = data.draw(_strategy(cls))
    payload = bytes(msg)
    assert payload[0] == cls.ID
    assert m.parse(payload, auth_method=_context(cls)) == msg


@given(st.lists(st.tuples(_NAME, st.binary(max_size=20)), max_size=5))
def test_ext_info_round_trips(extensions: list[tuple[str, bytes]]) -> None:
    msg = m.ExtInfo(tuple(extensions))
    assert m.parse(bytes(msg)) == msg


@given(
    st.lists(st.tuples(_TEXT, st.booleans()), max_size=5),
    st.lists(_TEXT, max_size=5),
)
def test_keyboard_interactive_round_trips(
    prompts: list[tuple[str, bool]], answers: list[str]
) -> None:
    request = m.UserauthInfoRequest("name", "instruction", "", tuple(prompts))
    assert m.parse(bytes(request), auth_method="keyboard-interactive") == request
    response = m.UserauthInfoResponse(tuple(answers))
    assert m.parse(bytes(response)) == response


@pytest.mark.parametrize("cls", SPEC_MESSAGES, ids=lambda c: c.__name__)
@settings(max_examples=25)
@given(data=st.data())
def test_truncated_or_padded_messages_are_decode_errors(
    cls: type[m.Message], data: st.DataObject
) -> None:
    payload = bytes(data.draw(_strategy(cls)))
    if cls.SPEC and cls.SPEC[-1] != "rest":
        with pytest.raises(DecodeError):
            m.parse(payload + b"\x00", auth_method=_context(cls))
    cut = data.draw(st.integers(1, len(payload)))
    try:
        msg = m.parse(payload[:cut], auth_method=_context(cls))
    except DecodeError:
        return
    # Only a message whose last field swallows the rest may parse shorter.
    assert cut == len(payload) or cls.SPEC[-1] == "rest" or not cls.SPEC
    assert isinstance(msg, cls)


@given(st.binary(max_size=200))
def test_garbage_only_ever_raises_decode_error(data: bytes) -> None:
    for method in (None, "publickey", "password", "keyboard-interactive"):
        try:
            m.parse(data, auth_method=method)
        except DecodeError:
            pass


def test_message_60_needs_a_method() -> None:
    payload = bytes(m.UserauthPkOk("ssh-ed25519", b"blob"))
    with pytest.raises(DecodeError):
        m.parse(payload)
    with pytest.raises(DecodeError):
        m.parse(payload, auth_method="none")


def test_kexinit_layout_matches_rfc_4253() -> None:
    msg = m.KexInit(
        cookie=bytes(range(16)),
        kex_algorithms=("curve25519-sha256",),
        server_host_key_algorithms=("ssh-ed25519",),
        ciphers_c2s=("aes128-gcm@openssh.com",),
        ciphers_s2c=("aes128-gcm@openssh.com",),
        macs_c2s=(),
        macs_s2c=(),
        compression_c2s=("none",),
        compression_s2c=("none",),
    )
    r = wire.Reader(bytes(msg))
    assert r.byte() == 20
    assert r.raw(16) == bytes(range(16))
    lists = [r.name_list() for _ in range(10)]
    assert lists[0] == ["curve25519-sha256"] and lists[8] == [] and lists[9] == []
    assert r.boolean() is False and r.uint32() == 0
    r.end()


def test_hostile_counts_are_bounded() -> None:
    too_many = wire.byte(m.MsgId.EXT_INFO) + wire.uint32(10**9)
    with pytest.raises(DecodeError):
        m.parse(too_many)
    prompts = wire.byte(60) + wire.string("") * 3 + wire.uint32(10**6)
    with pytest.raises(DecodeError):
        m.parse(prompts, auth_method="keyboard-interactive")


def test_descriptions_tolerate_invalid_utf8() -> None:
    payload = wire.byte(1) + wire.uint32(2) + wire.string(b"bad \xff byte") + wire.string(b"")
    msg = m.parse(payload)
    assert isinstance(msg, m.Disconnect) and msg.description == "bad \ufffd byte"


# --- payload codecs ------------------------------------------------------------------------


@given(st.dictionaries(st.integers(1, 159), st.integers(0, 2**32 - 1), max_size=10))
def test_pty_modes_round_trip(modes: dict[int, int]) -> None:
    encoded = m.encode_pty_modes(modes)
    assert encoded.endswith(b"\x00")
    assert m.decode_pty_modes(encoded) == modes


def test_pty_mode_opcodes_above_159_are_refused_on_encode() -> None:
    with pytest.raises(LocalProtocolError):
        m.encode_pty_modes({160: 1})


@given(
    st.sampled_from(["direct-tcpip", "forwarded-tcpip"]),
    _TEXT,
    st.integers(0, 65535),
    _TEXT,
    st.integers(0, 65535),
)
def test_tcpip_channel_opens_round_trip(
    kind: str, host: str, port: int, origin: str, origin_port: int
) -> None:
    event = ev.ChannelOpen(
        channel=3,
        kind=kind,
        host=host,
        port=port,
        originator_address=origin,
        originator_port=origin_port,
    )
    assert m.decode_channel_open(3, kind, m.encode_channel_open(event)) == event


def test_known_open_kinds_refuse_trailing_bytes() -> None:
    with pytest.raises(DecodeError):
        m.decode_channel_open(0, "session", b"\x00")


@given(_TEXT, st.binary(max_size=30))
def test_unknown_requests_keep_their_bytes(name: str, data: bytes) -> None:
    known = {"pty-req", "shell", "exec", "subsystem", "window-change", "env", "signal"}
    if name in known or name.startswith(("exit-", "eow", "auth-agent")):
        return
    request = m.decode_channel_request(name, data)
    assert request == ev.UnknownRequest(name=name, data=data)
    assert m.encode_channel_request(request) == (name, data)


def test_env_values_need_not_be_utf8() -> None:
    data = wire.string(b"NAME") + wire.string(b"caf\xe9")
    request = m.decode_channel_request("env", data)
    assert isinstance(request, ev.Env)
    assert m.encode_channel_request(request) == ("env", data)


@pytest.mark.parametrize(
    "request_",
    [
        ev.TcpipForward(address="0.0.0.0", port=0),
        ev.CancelTcpipForward(address="::", port=22),
        ev.KeepAlive(),
        ev.NoMoreSessions(),
        ev.UnknownGlobalRequest(name="hostkeys-00@openssh.com", data=b"\x00\x00\x00\x00"),
    ],
)
def test_global_requests_round_trip(request_: Any) -> None:
    name, data = m.encode_global_request(request_)
    assert m.decode_global_request(name, data) == request_


def test_every_registered_class_has_a_consistent_spec() -> None:
    for cls in SPEC_MESSAGES:
        assert len(cls.SPEC) == len(fields(cls)), cls
