"""The proxy's HTTPS certificate: the operator's files, or a self-signed one made on first start.

When ``proxy_service.https_cert_file`` and ``https_key_file`` are set, those PEM
files are used as they are. Otherwise :func:`ensure_self_signed` makes an ECDSA
P-256 key and a self-signed X.509 certificate under the data directory on the
first start (``DATA_DIR/proxy/https/cert.pem`` and ``key.pem``, the key 0600) and
reuses them afterwards. A certificate that has expired, expires within
:data:`RENEW_BEFORE`, or no longer names every host the proxy is reached at is
made again.

A self-signed certificate proves nothing to a browser or to ``tsh`` on its own:
``tsh login`` refuses it unless told ``--insecure`` or given the certificate to
trust. Its SHA-256 fingerprint (:func:`fingerprint`) is logged at start so an
operator can compare it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import os
from collections.abc import Iterable

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from trioport.errors import ConfigError

__all__ = [
    "CERT_FILE",
    "KEY_FILE",
    "RENEW_BEFORE",
    "SELF_SIGNED_LIFETIME",
    "CertificateFiles",
    "ensure_self_signed",
    "file_fingerprint",
    "fingerprint",
    "make_self_signed",
]

CERT_FILE = "cert.pem"
KEY_FILE = "key.pem"
#: How long a self-signed certificate is valid (browsers cap public ones at 398 days).
SELF_SIGNED_LIFETIME = dt.timedelta(days=365)
#: A self-signed certificate this close to expiry is made again at start.
RENEW_BEFORE = dt.timedelta(days=30)


@attrs.frozen
class CertificateFiles:
    """Where the certificate and its key are, and whether this call made them."""

    cert_file: str
    key_file: str
    created: bool
    #: ``sha256:`` and the hex digest of the DER certificate.
    fingerprint: str


def fingerprint(cert: x509.Certificate) -> str:
    """``sha256:<hex>`` of the certificate's DER encoding (what browsers show)."""
    der = cert.public_bytes(serialization.Encoding.DER)
    return "sha256:" + hashlib.sha256(der).hexdigest()


def _split_names(names: Iterable[str]) -> tuple[list[str], list[str]]:
    dns: list[str] = []
    ips: list[str] = []
    for name in names:
        name = name.strip().strip("[]")
        if not name:
            continue
        try:
            text = str(ipaddress.ip_address(name))
        except ValueError:
            if name.lower() not in dns:
                dns.append(name.lower())
            continue
        if ipaddress.ip_address(text).is_unspecified:
            continue
        if text not in ips:
            ips.append(text)
    return dns, ips


def make_self_signed(
    names: Iterable[str], *, now: dt.datetime | None = None
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A new ECDSA P-256 key and a self-signed server certificate for ``names``.

    Args:
        names: host names and IP addresses (the first one is the common name);
            unspecified addresses (``0.0.0.0``) are skipped.
        now: the start of validity (backdated one hour for clock skew).
    """
    dns, ips = _split_names(names)
    if not dns and not ips:
        dns = ["localhost"]
    key = ec.generate_private_key(ec.SECP256R1())
    start = (now or dt.datetime.now(dt.UTC)) - dt.timedelta(hours=1)
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "trioport"),
            x509.NameAttribute(NameOID.COMMON_NAME, (dns or ips)[0][:64]),
        ]
    )
    sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
    sans += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + SELF_SIGNED_LIFETIME)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _covers(cert: x509.Certificate, names: Iterable[str], now: dt.datetime) -> bool:
    """Whether an existing certificate is still good for ``names`` at ``now``."""
    if cert.not_valid_after_utc - RENEW_BEFORE <= now or cert.not_valid_before_utc > now:
        return False
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    have_dns = {d.lower() for d in san.get_values_for_type(x509.DNSName)}
    have_ips = {str(i) for i in san.get_values_for_type(x509.IPAddress)}
    dns, ips = _split_names(names)
    return set(dns) <= have_dns and set(ips) <= have_ips


def _write(path: str, data: bytes, mode: int) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        os.fchmod(fd, mode)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def ensure_self_signed(
    directory: str | os.PathLike[str], names: Iterable[str], *, now: dt.datetime | None = None
) -> CertificateFiles:
    """The self-signed certificate in ``directory``, made (again) when needed.

    Blocking (file I/O and key generation): call it from a worker thread.

    Args:
        directory: where ``cert.pem`` and ``key.pem`` live (created 0700).
        names: host names and addresses the certificate must name.
        now: the current time (tests).

    Raises:
        ConfigError: an existing file cannot be read as a certificate.
    """
    names = list(names)
    now = now or dt.datetime.now(dt.UTC)
    folder = os.fspath(directory)
    os.makedirs(folder, mode=0o700, exist_ok=True)
    cert_path = os.path.join(folder, CERT_FILE)
    key_path = os.path.join(folder, KEY_FILE)
    if os.path.exists(cert_path) and os.path.exists(key_path):
        try:
            with open(cert_path, "rb") as f:
                existing = x509.load_pem_x509_certificate(f.read())
        except ValueError:
            raise ConfigError(
                "not a PEM certificate; remove it to make a new one", path=cert_path
            ) from None
        if _covers(existing, names, now):
            return CertificateFiles(cert_path, key_path, False, fingerprint(existing))
    cert, key = make_self_signed(names, now=now)
    _write(
        key_path,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        0o600,
    )
    _write(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return CertificateFiles(cert_path, key_path, True, fingerprint(cert))


def file_fingerprint(cert_file: str | os.PathLike[str]) -> str:
    """The fingerprint of the first certificate in a PEM file.

    Raises:
        ConfigError: the file cannot be read or holds no certificate.
    """
    path = os.fspath(cert_file)
    try:
        with open(path, "rb") as f:
            return fingerprint(x509.load_pem_x509_certificate(f.read()))
    except OSError as exc:
        raise ConfigError(f"cannot read the file: {exc.strerror}", path=path) from None
    except ValueError:
        raise ConfigError("not a PEM certificate", path=path) from None
