"""OpenSSH certificates: build, parse, and every refusal of the one validation function.

Hostile certificates that ssh-keygen refuses to make (nested CA, trailing bytes,
tampered fields, a signature by the wrong key, SHA-1, too many principals) come from
:func:`_build`, a small encoder of our own that signs whatever it is given.
"""

from __future__ import annotations

import pathlib
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trioport.errors import CertificateInvalid, DecodeError, KeyFormatError
from trioport.sshproto import certs
from trioport.sshproto.certs import (
    DEFAULT_USER_EXTENSIONS,
    VALID_FOREVER,
    Certificate,
    CertType,
    ServiceRole,
    check_certificate,
    match_pattern,
    parse_certificate,
    sign_certificate,
    trioport_extensions,
)
from trioport.sshproto.keys import PrivateKey, PublicKey, parse_public_key, public_key_from_line
from trioport.sshproto.wire import string, uint32, uint64

DATA = pathlib.Path(__file__).resolve().parent.parent / "data" / "keys"
NOW = 1_700_000_000
NONCE = bytes(range(32))

CA = PrivateKey.from_openssh((DATA / "ed25519").read_bytes())
OTHER_CA = PrivateKey.from_openssh((DATA / "ecdsa256").read_bytes())
RSA_CA = PrivateKey.from_openssh((DATA / "rsa2048").read_bytes())
USER = PrivateKey.from_openssh((DATA / "ecdsa384").read_bytes())
KEYS = {
    "ssh-ed25519": CA,
    "ssh-rsa": RSA_CA,
    "ecdsa-sha2-nistp256": OTHER_CA,
    "ecdsa-sha2-nistp384": USER,
    "ecdsa-sha2-nistp521": PrivateKey.from_openssh((DATA / "ecdsa521").read_bytes()),
}


def _user_cert(**overrides) -> Certificate:
    args = dict(
        cert_type=CertType.USER,
        key_id="alice@example",
        principals=["alice", "root"],
        valid_after=NOW - 60,
        valid_before=NOW + 3600,
        nonce=NONCE,
        serial=7,
        extensions=dict(DEFAULT_USER_EXTENSIONS),
    )
    args.update(overrides)
    ca = args.pop("ca", CA)
    key = args.pop("key", USER.public)
    return sign_certificate(ca, key, **args)


def _check(cert, **overrides):
    args = dict(
        cert_type=CertType.USER,
        trusted_cas=[CA.public],
        principal="alice",
        now=NOW,
        source_address="127.0.0.1",
    )
    args.update(overrides)
    return check_certificate(cert, **args)


def _refused(cert, match: str, **overrides) -> None:
    with pytest.raises(CertificateInvalid, match=match):
        _check(cert, **overrides)


# --- a hostile builder: encodes and signs anything --------------------------------


def _options(items: list[tuple[str, bytes]]) -> bytes:
    return b"".join(string(n) + string(d) for n, d in items)


def _build(
    *,
    key: PublicKey = USER.public,
    cert_key_type: str | None = None,
    cert_type: int = 1,
    key_id: bytes = b"id",
    principals: list[bytes] | None = None,
    principals_blob: bytes | None = None,
    valid_after: int = NOW - 60,
    valid_before: int = NOW + 3600,
    critical: list[tuple[str, bytes]] = (),
    extensions: list[tuple[str, bytes]] = (),
    ca_blob: bytes | None = None,
    signer: PrivateKey = CA,
    algorithm: str | None = None,
    trailing: bytes = b"",
) -> bytes:
    """A certificate blob with every field under the test's control."""
    fields = key.blob[len(string(key.key_type)) :]
    if principals_blob is None:
        principals_blob = b"".join(string(p) for p in (principals or [b"alice"]))
    body = b"".join(
        [
            string(cert_key_type or key.key_type + "-cert-v01@openssh.com"),
            string(NONCE),
            fields,
            uint64(42),
            uint32(cert_type),
            string(key_id),
            string(principals_blob),
            uint64(valid_after),
            uint64(valid_before),
            string(_options(list(critical))),
            string(_options(list(extensions))),
            string(b""),
            string(ca_blob if ca_blob is not None else signer.public.blob),
        ]
    )
    return body + string(signer.sign(body, algorithm)) + trailing


# --- building and parsing ------------------------------------------------------------


@pytest.mark.parametrize("key_type", sorted(KEYS))
@pytest.mark.parametrize("ca_type", ["ssh-ed25519", "ssh-rsa", "ecdsa-sha2-nistp521"])
def test_every_key_type_certified_by_every_ca_type_round_trips(key_type, ca_type) -> None:
    cert = _user_cert(ca=KEYS[ca_type], key=KEYS[key_type].public)
    assert cert.key_type == key_type + "-cert-v01@openssh.com"
    again = parse_public_key(cert.blob)
    assert isinstance(again, Certificate) and again == cert
    assert again.key == KEYS[key_type].public
    assert again.signature_key == KEYS[ca_type].public
    assert public_key_from_line(cert.openssh_line("c")) == cert
    result = _check(again, trusted_cas=[KEYS[ca_type].public])
    assert result.principal == "alice"


def test_rsa_ca_signs_with_sha512_by_default_and_sha256_on_request() -> None:
    assert _user_cert(ca=RSA_CA).signature_algorithm == "rsa-sha2-512"
    cert = _user_cert(ca=RSA_CA, signature_algorithm="rsa-sha2-256")
    assert cert.signature_algorithm == "rsa-sha2-256"
    assert _check(cert, trusted_cas=[RSA_CA.public]).principal == "alice"


def test_certificate_signs_and_verifies_as_its_key() -> None:
    cert = _user_cert()
    sig = USER.sign(b"data")
    assert cert.verify(sig, b"data")
    assert not cert.verify(sig, b"other")
    assert cert.fingerprint() == USER.public.fingerprint()
    assert cert.signature_algorithms() == USER.public.signature_algorithms()


def test_fields_are_exposed_as_written() -> None:
    cert = _user_cert(
        critical_options={"force-command": "uptime", "source-address": "10.0.0.0/8"},
        extensions={**DEFAULT_USER_EXTENSIONS, **trioport_extensions(roles=["dev", "ops"])},
    )
    assert cert.cert_type is CertType.USER
    assert (cert.key_id, cert.serial, cert.principals) == ("alice@example", 7, ("alice", "root"))
    assert (cert.valid_after, cert.valid_before) == (NOW - 60, NOW + 3600)
    assert cert.nonce == NONCE
    assert cert.critical_options == {
        "force-command": string("uptime"),
        "source-address": string("10.0.0.0/8"),
    }
    assert list(cert.extensions) == sorted(cert.extensions)
    assert cert.extensions["trioport-roles@trioport.dev"] == string("dev,ops")


def test_builder_refuses_what_ssh_keygen_would_not_make() -> None:
    for bad in (
        dict(principals=[]),
        dict(principals=[f"u{i}" for i in range(257)]),
        dict(principals=["a\x00b"]),
        dict(nonce=b"short"),
        dict(valid_after=NOW, valid_before=NOW),
        dict(key=_user_cert()),
    ):
        with pytest.raises(KeyFormatError):
            _user_cert(**bad)
    with pytest.raises(KeyFormatError, match="service role"):
        trioport_extensions(service_role="database")
    with pytest.raises(KeyFormatError, match="role name"):
        trioport_extensions(roles=["a,b"])


# --- the good verdicts ---------------------------------------------------------------


def test_valid_user_certificate_exposes_typed_permissions() -> None:
    cert = _user_cert(
        critical_options={"force-command": "/bin/date", "source-address": "127.0.0.0/8,::1"},
        extensions={
            "permit-pty": None,
            "permit-agent-forwarding": None,
            **trioport_extensions(roles=["admin", "dev"], cluster="prod"),
        },
    )
    result = _check(cert)
    assert result.force_command == "/bin/date"
    assert [str(n) for n in result.source_addresses] == ["127.0.0.0/8", "::1/128"]
    assert result.permit_pty and result.permit_agent_forwarding
    assert not result.permit_port_forwarding
    assert not result.permit_x11_forwarding and not result.permit_user_rc
    assert result.roles == ("admin", "dev")
    assert result.cluster == "prod" and result.service_role is None
    assert result.key_id == "alice@example"
    assert _check(cert, source_address="::1").principal == "alice"
    assert _check(cert, source_address="::ffff:127.0.0.9").principal == "alice"


def test_host_certificate_matches_principal_globs_and_names_its_service_role() -> None:
    cert = _user_cert(
        cert_type=CertType.HOST,
        principals=["node-?.example.com", "*.internal", "10.0.0.1"],
        extensions=trioport_extensions(service_role=ServiceRole.NODE, cluster="prod"),
    )
    for name in ("node-1.example.com", "a.b.internal", "10.0.0.1"):
        result = _check(cert, cert_type=CertType.HOST, principal=name)
        assert result.principal == name
        assert result.service_role is ServiceRole.NODE and result.cluster == "prod"
        assert not result.permit_pty
    for name in ("node-12.example.com", "internal", "10.0.0.10"):
        with pytest.raises(CertificateInvalid, match="not a listed principal"):
            _check(cert, cert_type=CertType.HOST, principal=name)


def test_any_of_several_authorized_principals_may_match() -> None:
    assert _check(_user_cert(), principal=["bob", "root"]).principal == "root"
    assert _check(_user_cert(), principal=None).principal is None


def test_not_yet_valid_within_skew_is_accepted_but_expiry_is_exact() -> None:
    cert = _user_cert(valid_after=NOW + 30)
    assert _check(cert).principal == "alice"
    _refused(cert, "not valid until", skew=0)
    _refused(_user_cert(valid_before=NOW + 1), "expired", now=NOW + 1, skew=3600)


def test_valid_forever() -> None:
    cert = _user_cert(valid_before=VALID_FOREVER)
    assert _check(cert, now=4_000_000_000).principal == "alice"


# --- every refusal, each with its reason ----------------------------------------------


def test_refuses_expired() -> None:
    _refused(_user_cert(valid_before=NOW - 1), r"certificate expired at 2023-11-14T22:13:19Z")


def test_refuses_not_yet_valid() -> None:
    cert = _user_cert(valid_after=NOW + 3600, valid_before=NOW + 7200)
    _refused(cert, r"certificate is not valid until 2023-11-14T23:13:20Z \(now 2023-11-14T22:13")


def test_refuses_valid_before_exactly_now() -> None:
    _refused(_user_cert(valid_before=NOW), "certificate expired")


def test_refuses_wrong_type_both_ways() -> None:
    host = _user_cert(cert_type=CertType.HOST)
    _refused(host, "is a host certificate, not a user certificate")
    _refused(_user_cert(), "is a user certificate, not a host certificate", cert_type=CertType.HOST)


def test_refuses_untrusted_ca() -> None:
    _refused(_user_cert(ca=OTHER_CA), "untrusted CA .*ecdsa-sha2-nistp256 SHA256:")
    _refused(_user_cert(), "untrusted CA", trusted_cas=[])


def test_refuses_ca_that_is_a_certificate() -> None:
    # An "intermediate" certified by the trusted CA signs a user certificate: the
    # Teleport CVE-2025-49825 shape. Refused at parse, before anything is trusted.
    intermediate = _user_cert(key=OTHER_CA.public, principals=["ca"])
    blob = _build(ca_blob=intermediate.blob, signer=OTHER_CA)
    with pytest.raises(DecodeError, match="nested certificates are not allowed"):
        parse_certificate(blob)
    _refused(blob, "nested certificates are not allowed", trusted_cas=[CA.public, intermediate])
    # A certificate listed as a trusted CA never matches anything.
    _refused(_build(signer=OTHER_CA), "untrusted CA", trusted_cas=[intermediate])


def test_refuses_deeply_nested_chain_without_recursing() -> None:
    # Signatures do not matter: nesting must be refused before anything is verified.
    fields = USER.public.blob[len(string("ecdsa-sha2-nistp384")) :]
    blob = CA.public.blob
    for _ in range(1000):  # would blow the recursion limit if parsed recursively
        blob = b"".join(
            [
                string("ecdsa-sha2-nistp384-cert-v01@openssh.com"),
                string(NONCE),
                fields,
                uint64(1) + uint32(1) + string(b"id") + string(string(b"alice")),
                uint64(0) + uint64(VALID_FOREVER) + string(b"") * 3,
                string(blob),
                string(string("ssh-ed25519") + string(bytes(64))),
            ]
        )
    with pytest.raises(DecodeError, match="nested"):
        parse_certificate(blob)


@pytest.mark.parametrize(
    ("what", "field_bytes"),
    [
        ("principals", string("bob")),
        ("validity", uint64(NOW + 3600)),
        ("options", string("127.0.0.0/8")),
    ],
)
def test_refuses_a_tampered_byte(what, field_bytes) -> None:
    blob = _user_cert(
        critical_options={"source-address": "127.0.0.0/8"}, principals=["alice", "bob"]
    ).blob
    assert blob.count(field_bytes) == 1
    at = blob.index(field_bytes) + len(field_bytes) - 1  # the field's last byte
    tampered = blob[:at] + bytes([blob[at] ^ 0x01]) + blob[at + 1 :]
    _refused(tampered, "certificate signature does not verify against its CA key")


def test_refuses_trailing_bytes() -> None:
    blob = _user_cert().blob + b"\x00"
    with pytest.raises(DecodeError, match="unexpected bytes at end"):
        parse_certificate(blob)
    _refused(blob, "certificate is malformed: 1 unexpected bytes at end")
    _refused(_build(trailing=b"junk"), "malformed")


def test_refuses_empty_principals() -> None:
    _refused(_build(principals_blob=b""), "certificate has no principals")
    _refused(_build(principals_blob=b"", cert_type=2), "no principals", cert_type=CertType.HOST)


def test_user_principal_wildcard_is_literal() -> None:
    blob = _build(principals=[b"*"])
    _refused(blob, r"'alice' is not a listed principal of the certificate \(principals: \*\)")
    assert _check(blob, principal="*").principal == "*"


def test_refuses_unknown_critical_option() -> None:
    blob = _build(critical=[("foo@example.com", b"")])
    _refused(blob, "unknown critical option 'foo@example.com'")
    # verify-required is a FIDO option; trioport has no FIDO keys to satisfy it.
    _refused(_build(critical=[("verify-required", b"")]), "unknown critical option")


def test_unknown_extension_is_ignored() -> None:
    blob = _build(extensions=[("whatever@example.com", b"\x01\x02")])
    assert _check(blob).principal == "alice"


def test_refuses_source_address_mismatch() -> None:
    cert = _user_cert(critical_options={"source-address": "10.0.0.0/8,2001:db8::/32"})
    _refused(cert, r"source-address 10.0.0.0/8,2001:db8::/32 does not allow 127.0.0.1")
    _refused(cert, "does not allow", source_address="2001:db9::1")
    _refused(cert, "does not allow", source_address="not-an-ip")
    _refused(cert, "peer's address is unknown", source_address=None)
    assert _check(cert, source_address="10.9.8.7").principal == "alice"
    assert _check(cert, source_address="2001:db8::5").principal == "alice"


def test_refuses_invalid_source_address_list() -> None:
    for value in ("10.0.0.1/8", "banana", "10.0.0.0/8,", "*"):
        blob = _build(critical=[("source-address", string(value))])
        _refused(blob, "not a valid CIDR list")


def test_refuses_signature_by_a_different_key() -> None:
    # Claims CA as its signer but OTHER_CA made the signature.
    blob = _build(ca_blob=CA.public.blob, signer=OTHER_CA)
    _refused(blob, "signature does not verify")


def test_refuses_sha1_ca_signature_unless_allowed() -> None:
    blob = _build(signer=RSA_CA, algorithm="ssh-rsa")
    _refused(blob, "signature algorithm 'ssh-rsa' is not allowed", trusted_cas=[RSA_CA.public])
    allowed = certs.DEFAULT_CA_SIGNATURE_ALGORITHMS | {"ssh-rsa"}
    result = _check(blob, trusted_cas=[RSA_CA.public], allowed_signature_algorithms=allowed)
    assert result.principal == "alice"


def test_refuses_more_than_256_principals() -> None:
    blob = _build(principals=[b"p%d" % i for i in range(257)])
    with pytest.raises(DecodeError, match="more than 256 principals"):
        parse_certificate(blob)
    _refused(blob, "more than 256 principals")
    assert len(parse_certificate(_build(principals=[b"p%d" % i for i in range(256)])).principals)


def test_refuses_host_certificate_with_critical_options() -> None:
    blob = _build(cert_type=2, principals=[b"h"], critical=[("force-command", string("x"))])
    _refused(blob, r"host certificate carries critical options \(force-command\)",
             cert_type=CertType.HOST, principal="h")  # fmt: skip


def test_refuses_flag_extension_with_data_and_malformed_options() -> None:
    _refused(_build(extensions=[("permit-pty", b"x")]), "'permit-pty' carries unexpected data")
    _refused(_build(critical=[("force-command", b"\x00\x00")]), "'force-command' is malformed")
    bad_role = _build(extensions=[("trioport-service-role@trioport.dev", string("db"))])
    _refused(bad_role, "unknown service role 'db'")


def test_refuses_duplicate_and_unsorted_options_at_parse() -> None:
    with pytest.raises(DecodeError, match="repeats"):
        parse_certificate(_build(extensions=[("permit-pty", b""), ("permit-pty", b"")]))
    with pytest.raises(DecodeError, match="lexical order"):
        parse_certificate(_build(extensions=[("permit-pty", b""), ("permit-X11-forwarding", b"")]))


def test_refuses_unknown_certificate_type_number_and_key_type() -> None:
    with pytest.raises(DecodeError, match="type number 3"):
        parse_certificate(_build(cert_type=3))
    with pytest.raises(DecodeError, match="unknown certificate type"):
        parse_certificate(_build(cert_key_type="ssh-dss-cert-v01@openssh.com"))


# --- patterns ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "pattern", "expected"),
    [
        ("a.example.com", "*.example.com", True),
        ("example.com", "*.example.com", False),
        ("node1", "node?", True),
        ("node12", "node?", False),
        ("anything", "*", True),
        ("", "*", True),
        ("abc", "a*c*", True),
        ("a" * 200, "*a*a*a*a*a*a*a*a*b", False),  # linear, not exponential
    ],
)
def test_match_pattern(text, pattern, expected) -> None:
    assert match_pattern(text, pattern) is expected


# --- hypothesis: round trips and robustness -----------------------------------------

_names = st.text(
    st.characters(codec="utf-8", exclude_characters="\x00", exclude_categories=("Cs",)),
    min_size=1,
    max_size=12,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    cert_type=st.sampled_from(CertType),
    key_id=st.text(st.characters(exclude_characters="\x00", exclude_categories=("Cs",))),
    principals=st.lists(_names, min_size=1, max_size=10),
    window=st.tuples(st.integers(0, 2**63), st.integers(1, 2**63 - 1)),
    serial=st.integers(0, 2**64 - 1),
    nonce=st.binary(min_size=16, max_size=64),
    critical=st.dictionaries(_names, st.one_of(st.none(), _names, st.binary(max_size=8))),
    extensions=st.dictionaries(_names, st.one_of(st.none(), _names, st.binary(max_size=8))),
    key_type=st.sampled_from(sorted(KEYS)),
)
def test_encode_parse_round_trip(
    cert_type, key_id, principals, window, serial, nonce, critical, extensions, key_type
) -> None:
    valid_after, length = window
    cert = sign_certificate(
        CA,
        KEYS[key_type].public,
        cert_type=cert_type,
        key_id=key_id,
        principals=principals,
        valid_after=valid_after,
        valid_before=valid_after + length,
        nonce=nonce,
        serial=serial,
        critical_options=critical,
        extensions=extensions,
    )
    again = parse_certificate(cert.blob)
    assert again.blob == cert.blob
    assert (again.cert_type, again.key_id, again.principals) == (
        cert_type,
        key_id,
        tuple(principals),
    )
    assert (again.valid_after, again.valid_before, again.serial) == (
        valid_after,
        valid_after + length,
        serial,
    )
    assert again.nonce == nonce and again.key == KEYS[key_type].public
    assert set(again.critical_options) == set(critical)
    assert set(again.extensions) == set(extensions)
    assert again.signature_key.verify(again.signature, again.signed_data)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_random_bytes_raise_only_our_errors(data) -> None:
    for blob in (data, string("ssh-ed25519-cert-v01@openssh.com") + data):
        try:
            parse_certificate(blob)
        except DecodeError:
            pass
        try:
            _check(blob)
        except CertificateInvalid:
            pass


def test_every_single_byte_mutation_is_refused_or_harmless() -> None:
    """Flip each byte of a valid certificate: parse or check refuses with our errors."""
    blob = _user_cert(critical_options={"force-command": "x"}).blob
    rng = random.Random(1)
    for i in range(len(blob)):
        mutated = bytearray(blob)
        mutated[i] ^= 1 << rng.randrange(8)
        with pytest.raises(CertificateInvalid):
            _check(bytes(mutated))
    for cut in range(len(blob)):
        with pytest.raises(CertificateInvalid, match="malformed"):
            _check(blob[:cut])
