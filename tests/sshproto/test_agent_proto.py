"""The ssh-agent protocol, sans-IO: codecs, framing and the per-connection state machine."""

from __future__ import annotations

import pathlib

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import given, settings
from hypothesis import strategies as st

from trioport.errors import DecodeError, LocalProtocolError
from trioport.sshproto import agent as ag
from trioport.sshproto.certs import CertType, sign_certificate
from trioport.sshproto.keyfiles import load_private_key
from trioport.sshproto.keys import PrivateKey
from trioport.sshproto.wire import mpint, string, uint32

DATA = pathlib.Path(__file__).resolve().parent.parent / "data" / "keys"
ED = load_private_key((DATA / "ed25519").read_bytes())
RSA = load_private_key((DATA / "rsa2048").read_bytes())
EC = load_private_key((DATA / "ecdsa384").read_bytes())
HOST = load_private_key((DATA / "ecdsa256").read_bytes())
CERT = sign_certificate(
    ED,
    EC.public,
    cert_type=CertType.USER,
    key_id="alice",
    principals=["alice"],
    valid_after=0,
    valid_before=2**40,
    nonce=bytes(16),
)


def _add(key: PrivateKey, *constraints, comment: str = "c", cert=None) -> ag.AddIdentity:
    return ag.AddIdentity(key, comment, cert, tuple(constraints))


# --- codecs -------------------------------------------------------------------------


def test_known_answer_encodings() -> None:
    assert ag.frame(ag.RequestIdentities()) == b"\x00\x00\x00\x01\x0b"
    assert ag.encode_message(ag.SignRequest(b"K", b"D", 4)) == (
        b"\x0d" + string(b"K") + string(b"D") + uint32(4)
    )
    assert ag.encode_message(ag.Failure()) == b"\x05"
    assert ag.encode_message(ag.Success()) == b"\x06"
    assert ag.encode_message(ag.IdentitiesAnswer((ag.Identity(b"K", "c"),))) == (
        b"\x0c" + uint32(1) + string(b"K") + string(b"c")
    )
    assert ag.encode_message(ag.Lock(b"pw")) == b"\x16" + string(b"pw")
    assert ag.encode_message(_add(ED))[0] == ag.MessageType.ADD_IDENTITY
    assert ag.encode_message(_add(ED, ag.Lifetime(5)))[-5:] == b"\x01" + uint32(5)
    assert ag.encode_message(_add(ED, ag.Confirm()))[0] == ag.MessageType.ADD_ID_CONSTRAINED
    bind = ag.SessionBind(b"H", b"S", b"G", True)
    assert (
        ag.encode_message(bind)
        == b"\x1b"
        + string(ag.SESSION_BIND)
        + b"".join(string(x) for x in (b"H", b"S", b"G"))
        + b"\x01"
    )


@pytest.mark.parametrize("key", [ED, RSA, EC], ids=["ed25519", "rsa", "ecdsa"])
def test_add_identity_round_trips_plain_and_certificate_forms(key) -> None:
    for message in (
        _add(key),
        _add(key, ag.Lifetime(60), ag.Confirm(), comment="ü\udcff raw byte"),
    ):
        again = ag.decode_request(ag.encode_message(message))
        assert again == message and again.key.public == key.public
    with_cert = _add(EC, ag.Lifetime(1), cert=CERT)
    again = ag.decode_request(ag.encode_message(with_cert))
    assert again == with_cert and again.certificate == CERT


def test_constraint_extensions_and_smartcard_messages_decode() -> None:
    dest = ag.ConstraintExtension("restrict-destination-v00@openssh.com", string(b"x"))
    unknown = ag.ConstraintExtension("new@example.com", b"\x00\x01anything")
    for message in (
        _add(ED, dest, ag.Confirm(), unknown),
        _add(ED, ag.MaxSignatures(10)),
        ag.AddSmartcardKey("/usr/lib/p11.so", "1234"),
        ag.AddSmartcardKey("/usr/lib/p11.so", "1234", (ag.Lifetime(3),)),
        ag.RemoveSmartcardKey("/usr/lib/p11.so", "1234"),
    ):
        assert ag.decode_request(ag.encode_message(message)) == message
    assert "1234" not in repr(ag.AddSmartcardKey("r", "1234"))
    assert "pw" not in repr(ag.Lock(b"pw"))


def test_unknown_requests_decode_and_unknown_responses_do_not() -> None:
    assert ag.decode_request(b"\x09") == ag.UnknownRequest(9)  # ssh-add -D's SSH1 request
    assert ag.decode_request(b"\x63abc") == ag.UnknownRequest(99, b"abc")
    with pytest.raises(DecodeError, match="unknown agent response type 99"):
        ag.decode_response(b"\x63")
    with pytest.raises(DecodeError, match="empty"):
        ag.decode_request(b"")
    with pytest.raises(DecodeError, match="unexpected bytes"):
        ag.decode_request(b"\x0bX")
    with pytest.raises(DecodeError, match="claims 1000 keys"):
        ag.decode_response(b"\x0c" + uint32(1000))
    with pytest.raises(DecodeError, match="without constraints"):
        ag.decode_request(b"\x19" + ag.encode_message(_add(ED))[1:])


_bytes = st.binary(max_size=64)
_text = st.text(st.characters(exclude_categories=("Cs",)), max_size=20)
_constraint = st.one_of(
    st.builds(ag.Lifetime, st.integers(0, 2**32 - 1)),
    st.just(ag.Confirm()),
    st.builds(ag.MaxSignatures, st.integers(0, 2**32 - 1)),
    st.builds(
        ag.ConstraintExtension,
        st.just("sk-provider@openssh.com"),
        _bytes.map(string),
    ),
)
_requests = st.one_of(
    st.just(ag.RequestIdentities()),
    st.builds(ag.SignRequest, _bytes, _bytes, st.integers(0, 2**32 - 1)),
    st.builds(
        ag.AddIdentity,
        st.sampled_from([ED, RSA, EC]),
        _text,
        st.none(),
        st.lists(_constraint, max_size=3).map(tuple),
    ),
    st.builds(ag.RemoveIdentity, _bytes),
    st.just(ag.RemoveAllIdentities()),
    st.builds(ag.AddSmartcardKey, _text, _text, st.lists(_constraint, max_size=2).map(tuple)),
    st.builds(ag.RemoveSmartcardKey, _text, _text),
    st.builds(ag.Lock, _bytes),
    st.builds(ag.Unlock, _bytes),
    st.builds(
        ag.Extension,
        _text.filter(lambda n: n != ag.SESSION_BIND),
        _bytes,
    ),
    st.builds(ag.SessionBind, _bytes, _bytes, _bytes, st.booleans()),
    st.builds(
        ag.UnknownRequest,
        st.integers(0, 255).filter(lambda t: t not in {int(m) for m in ag.MessageType}),
        _bytes,
    ),
)
_responses = st.one_of(
    st.just(ag.Failure()),
    st.builds(ag.Success, _bytes),
    st.builds(
        ag.IdentitiesAnswer,
        st.lists(st.builds(ag.Identity, _bytes, _text), max_size=5).map(tuple),
    ),
    st.builds(ag.SignResponse, _bytes),
    st.just(ag.ExtensionFailure()),
    st.builds(ag.ExtensionResponse, _text, _bytes),
)


@settings(max_examples=300, deadline=None)
@given(_requests)
def test_every_request_round_trips(message) -> None:
    payload = ag.encode_message(message)
    assert ag.decode_request(payload) == message
    framer = ag.AgentFramer()
    framer.receive_data(ag.frame(message))
    assert list(framer.payloads()) == [payload]


@settings(max_examples=200, deadline=None)
@given(_responses)
def test_every_response_round_trips(message) -> None:
    assert ag.decode_response(ag.encode_message(message)) == message


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=300))
def test_random_payloads_raise_only_decode_errors(data) -> None:
    for decode in (ag.decode_request, ag.decode_response):
        try:
            decode(data)
        except DecodeError:
            pass
    # The agent answers anything well framed; garbage gets FAILURE.
    response = ag.AgentState(ag.Keyring()).handle(data, now=0)
    assert isinstance(response, ag.Failure | ag.Success | ag.IdentitiesAnswer)


# --- framing -------------------------------------------------------------------------


def test_framer_handles_byte_at_a_time_and_batched_input() -> None:
    frames = ag.frame(ag.RequestIdentities()) + ag.frame(ag.SignRequest(b"k", b"d", 2))
    framer = ag.AgentFramer()
    seen = []
    for i in range(len(frames)):
        framer.receive_data(frames[i : i + 1])
        seen.extend(framer.payloads())
    assert [ag.decode_request(p) for p in seen] == [
        ag.RequestIdentities(),
        ag.SignRequest(b"k", b"d", 2),
    ]
    framer.receive_data(frames * 3)
    assert len(list(framer.payloads())) == 6 and framer.buffered == 0


def test_messages_over_256_kib_are_refused() -> None:
    framer = ag.AgentFramer()
    framer.receive_data(uint32(ag.MAX_MESSAGE + 1))
    with pytest.raises(DecodeError, match="262145 bytes"):
        framer.next_payload()
    framer = ag.AgentFramer()
    framer.receive_data(uint32(0))
    with pytest.raises(DecodeError):
        framer.next_payload()
    # Exactly the cap is fine, and waits for its bytes.
    biggest = b"\x0d" + b"\x00" * (ag.MAX_MESSAGE - 1)
    framer = ag.AgentFramer()
    framer.receive_data(ag.frame(biggest)[:-1])
    assert framer.next_payload() is None
    framer.receive_data(b"\x00")
    assert framer.next_payload() == biggest
    with pytest.raises(LocalProtocolError):
        ag.frame(biggest + b"\x00")
    with pytest.raises(LocalProtocolError):
        ag.encode_message(ag.SignRequest(b"", b"x" * ag.MAX_MESSAGE))
    with pytest.raises(DecodeError, match="longer than"):
        ag.decode_request(biggest + b"\x00")


# --- the agent state -------------------------------------------------------------------


def _listed(state: ag.AgentState, now: float = 0) -> list[bytes]:
    answer = state.handle(ag.RequestIdentities(), now=now)
    assert isinstance(answer, ag.IdentitiesAnswer)
    return [i.key_blob for i in answer.identities]


def test_add_list_sign_remove() -> None:
    state = ag.AgentState()
    assert _listed(state) == []
    assert state.handle(_add(ED, comment="ed"), now=0) == ag.Success()
    assert state.handle(_add(EC, cert=CERT), now=0) == ag.Success()
    answer = state.handle(ag.RequestIdentities(), now=0)
    assert answer == ag.IdentitiesAnswer(
        (ag.Identity(ED.public.blob, "ed"), ag.Identity(CERT.blob, "c"))
    )
    for key, blob in ((ED.public, ED.public.blob), (CERT, CERT.blob)):
        response = state.handle(ag.SignRequest(blob, b"to sign"), now=0)
        assert isinstance(response, ag.SignResponse)
        assert key.verify(response.signature, b"to sign")
    # The plain key behind a certificate is not listed, so it cannot be used.
    assert state.handle(ag.SignRequest(EC.public.blob, b"x"), now=0) == ag.Failure()
    assert state.handle(ag.RemoveIdentity(ED.public.blob), now=0) == ag.Success()
    assert state.handle(ag.RemoveIdentity(ED.public.blob), now=0) == ag.Failure()
    assert _listed(state) == [CERT.blob]
    assert state.handle(ag.RemoveAllIdentities(), now=0) == ag.Success()
    assert _listed(state) == []


def test_adding_the_same_key_again_replaces_it() -> None:
    state = ag.AgentState()
    state.handle(_add(ED, comment="old"), now=0)
    state.handle(_add(ED, comment="new"), now=0)
    answer = state.handle(ag.RequestIdentities(), now=0)
    assert answer == ag.IdentitiesAnswer((ag.Identity(ED.public.blob, "new"),))


def test_rsa_signature_algorithm_follows_the_flags_and_sha1_is_refused() -> None:
    state = ag.AgentState()
    state.handle(_add(RSA), now=0)
    blob = RSA.public.blob
    for flags, algorithm in ((ag.SIGN_RSA_SHA2_512, "rsa-sha2-512"), (2, "rsa-sha2-256")):
        response = state.handle(ag.SignRequest(blob, b"m", flags), now=0)
        assert response.signature.startswith(string(algorithm))
        assert RSA.public.verify(response.signature, b"m")
    assert state.handle(ag.SignRequest(blob, b"m", 0), now=0) == ag.Failure()
    permissive = ag.AgentState(ag.Keyring(allow_sha1=True))
    permissive.handle(_add(RSA), now=0)
    response = permissive.handle(ag.SignRequest(blob, b"m", 0), now=0)
    assert response.signature.startswith(string("ssh-rsa"))


def test_lifetimes_expire_keys_at_the_given_time() -> None:
    keyring = ag.Keyring(default_lifetime=100)
    state = ag.AgentState(keyring)
    state.handle(_add(ED, ag.Lifetime(10)), now=1000)
    state.handle(_add(EC), now=1000)
    assert state.next_expiry() == 1010
    assert len(_listed(state, now=1009.9)) == 2
    assert _listed(state, now=1010) == [EC.public.blob]
    assert state.next_expiry() == 1100
    assert state.handle(ag.SignRequest(EC.public.blob, b"x"), now=1100) == ag.Failure()
    assert _listed(state, now=1100) == [] and state.next_expiry() is None


def test_lock_and_unlock() -> None:
    state = ag.AgentState()
    state.handle(_add(ED), now=0)
    assert state.handle(ag.Unlock(b"pw"), now=0) == ag.Failure()  # not locked
    assert state.handle(ag.Lock(b"pw"), now=0) == ag.Success()
    assert state.keyring.locked
    assert state.handle(ag.Lock(b"pw"), now=0) == ag.Failure()
    assert _listed(state) == []
    for request in (
        ag.SignRequest(ED.public.blob, b"x"),
        _add(EC),
        ag.RemoveIdentity(ED.public.blob),
        ag.RemoveAllIdentities(),
    ):
        assert state.handle(request, now=0) == ag.Failure()
    assert state.handle(ag.Unlock(b"wrong"), now=0) == ag.Failure()
    assert state.keyring.unlock_failures == 1
    assert state.handle(ag.Unlock(b"pw"), now=0) == ag.Success()
    assert _listed(state) == [ED.public.blob] and state.keyring.unlock_failures == 0


def test_confirm_constraint_asks_the_driver() -> None:
    state = ag.AgentState()
    state.handle(_add(ED, ag.Confirm()), now=0)
    pending = state.handle(ag.SignRequest(ED.public.blob, b"data"), now=0)
    assert isinstance(pending, ag.ConfirmationRequired)
    assert pending.entry.confirm and pending.algorithm == "ssh-ed25519"
    assert state.complete_confirmation(pending, False, now=0) == ag.Failure()
    response = state.complete_confirmation(pending, True, now=0)
    assert ED.public.verify(response.signature, b"data")
    state.handle(ag.RemoveAllIdentities(), now=0)
    assert state.complete_confirmation(pending, True, now=0) == ag.Failure()


def test_undecodable_requests_get_failure_not_a_crash() -> None:
    state = ag.AgentState()
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024).private_numbers()
    fields = (weak.public_numbers.n, weak.public_numbers.e, weak.d, weak.iqmp, weak.p, weak.q)
    add_weak = b"\x11" + string("ssh-rsa") + b"".join(mpint(v) for v in fields) + string(b"c")
    with pytest.raises(DecodeError, match="1024 bits is too small"):
        ag.decode_request(add_weak)
    assert state.handle(add_weak, now=0) == ag.Failure()
    assert state.handle(b"\x0d\x00", now=0) == ag.Failure()
    assert state.handle(b"", now=0) == ag.Failure()
    assert _listed(state) == []


def test_unsupported_constraints_and_smartcards_are_refused() -> None:
    state = ag.AgentState()
    dest = ag.ConstraintExtension("restrict-destination-v00@openssh.com", string(b""))
    for request in (
        _add(ED, dest),
        _add(ED, ag.MaxSignatures(5)),
        ag.AddSmartcardKey("/lib/p11.so", "0000"),
        ag.RemoveSmartcardKey("/lib/p11.so", "0000"),
        ag.Extension("query"),
        ag.UnknownRequest(9),
    ):
        assert state.handle(request, now=0) == ag.Failure()
    assert _listed(state) == []


def test_a_forwarded_agent_only_lists_and_signs() -> None:
    keyring = ag.Keyring()
    local = ag.AgentState(keyring)
    local.handle(_add(ED), now=0)
    remote = ag.AgentState(keyring, forwarded=True)
    assert _listed(remote) == [ED.public.blob]
    assert isinstance(remote.handle(ag.SignRequest(ED.public.blob, b"x"), now=0), ag.SignResponse)
    refused = [
        _add(EC),
        ag.RemoveIdentity(ED.public.blob),
        ag.RemoveAllIdentities(),
        ag.Lock(b"pw"),
        ag.Unlock(b"pw"),
        ag.AddSmartcardKey("/tmp/evil.so", ""),
        ag.SessionBind(b"", b"", b"", False),
        ag.Extension("anything@example.com"),
    ]
    for request in refused:
        assert remote.handle(request, now=0) == ag.Failure()
        assert not ag.forwarded_request_allowed(ag.encode_message(request))
    assert _listed(local) == [ED.public.blob] and not keyring.locked
    assert ag.forwarded_request_allowed(ag.encode_message(ag.RequestIdentities()))
    assert ag.forwarded_request_allowed(ag.encode_message(ag.SignRequest(b"k", b"d")))
    assert not ag.forwarded_request_allowed(b"")


def _bind(session_id: bytes, *, forwarding: bool, key: PrivateKey = HOST, signer=None):
    signature = (signer or key).sign(session_id)
    return ag.SessionBind(key.public.blob, session_id, signature, forwarding)


def test_session_bind_verifies_and_records_bindings() -> None:
    state = ag.AgentState()
    assert state.handle(_bind(b"s" * 32, forwarding=True, signer=ED), now=0) == ag.Failure()
    assert state.handle(_bind(b"", forwarding=True), now=0) == ag.Failure()
    assert state.handle(_bind(b"s" * 129, forwarding=True), now=0) == ag.Failure()
    assert state.handle(_bind(b"s" * 32, forwarding=True), now=0) == ag.Success()
    assert state.handle(_bind(b"s" * 32, forwarding=True), now=0) == ag.Success()  # same again
    assert state.handle(_bind(b"s" * 32, forwarding=True, key=ED), now=0) == ag.Failure()
    for i in range(1, ag.MAX_BOUND_SESSIONS):
        assert state.handle(_bind(bytes([i]) * 32, forwarding=True), now=0) == ag.Success()
    assert state.handle(_bind(b"z" * 32, forwarding=True), now=0) == ag.Failure()
    assert len(state.bindings) == ag.MAX_BOUND_SESSIONS

    auth = ag.AgentState()
    assert auth.handle(_bind(b"a" * 32, forwarding=False), now=0) == ag.Success()
    # A connection bound for authentication cannot be bound again.
    assert auth.handle(_bind(b"b" * 32, forwarding=True), now=0) == ag.Failure()
    assert auth.handle(ag.SessionBind(b"junk", b"a", b"", True), now=0) == ag.Failure()
