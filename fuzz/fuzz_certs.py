"""Fuzz OpenSSH certificates (PROTOCOL.certkeys): parse, then validate.

The first input byte chooses how the certificate is checked (user or host use,
which principal, which source address, blob or parsed object) and whether the
harness *re-signs* it first: then a CA the harness holds signs the fuzzed fields
exactly as they are, as a compromised or careless issuer would, so the checks after
the signature (validity window, principals, critical options, source-address,
extensions, trioport's typed extensions) see fuzzed values too.

Invariant: ``parse_certificate`` accepts or raises ``DecodeError``;
``check_certificate`` returns a result or raises ``CertificateInvalid`` (its one
documented refusal), never anything else; and what it accepts is consistent.
"""

from __future__ import annotations

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from _fixtures import CA, HOST_ECDSA, HOST_RSA, NOW
from _harness import main, tolerate_known_bugs

from trioport.errors import CertificateInvalid, DecodeError
from trioport.sshproto.certs import CertType, check_certificate, parse_certificate
from trioport.sshproto.keys import parse_public_key
from trioport.sshproto.wire import Reader, string

#: The CAs the harness trusts and can sign with.
SIGNERS = {k.public: k for k in (CA, HOST_RSA, HOST_ECDSA)}
TRUSTED = list(SIGNERS)
PRINCIPALS = (None, "alice", "fuzz.example", ("bob", "host.fuzz.example", "alice"))
SOURCES = (None, "127.0.0.1", "::1", "10.1.2.3")


def _resign(blob: bytes) -> bytes:
    """The same fields, signed by the harness's key for the certificate's CA."""
    cert = parse_certificate(blob)
    signer = SIGNERS.get(cert.signature_key)
    if signer is None:
        return blob
    algorithm = Reader(cert.signature).string().decode("ascii")
    if algorithm not in signer.public.signature_algorithms():
        algorithm = signer.public.signature_algorithms()[0]
    return cert.signed_data + string(signer.sign(cert.signed_data, algorithm))


def check(data: bytes) -> None:
    if not data:
        return
    selector, blob = data[0], data[1:]
    if selector & 32:
        try:
            blob = _resign(blob)
        except DecodeError:
            return
    try:
        cert = parse_certificate(blob)
    except DecodeError:
        cert = None
    if cert is not None:
        if cert.blob != blob or parse_public_key(blob) != cert:
            raise AssertionError("a certificate does not parse back to itself")
        cert.fingerprint()
        cert.openssh_line("c")
        cert.signature_algorithm  # noqa: B018 - must not raise on a parsed certificate
    cert_type = CertType.HOST if selector & 1 else CertType.USER
    principal = PRINCIPALS[selector >> 1 & 3]
    try:
        result = check_certificate(
            cert if cert is not None and selector & 64 else blob,
            cert_type=cert_type,
            trusted_cas=TRUSTED,
            principal=principal,
            now=NOW,
            source_address=SOURCES[selector >> 3 & 3],
        )
    except CertificateInvalid:
        return
    if cert is None or result.certificate != cert or result.certificate.cert_type != cert_type:
        raise AssertionError(f"check_certificate accepted {result!r}")
    if not cert.valid_after - 60 <= NOW < cert.valid_before:
        raise AssertionError("check_certificate accepted a certificate outside its window")
    if (
        cert_type is CertType.USER
        and principal is not None
        and result.principal not in (cert.principals)
    ):
        raise AssertionError("check_certificate accepted a user certificate for another user")


TestOneInput = tolerate_known_bugs("certs", check)

if __name__ == "__main__":
    main(TestOneInput, "certs", instrument=("trioport",))
