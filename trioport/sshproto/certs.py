"""OpenSSH certificates (PROTOCOL.certkeys): build, sign, parse and validate.

Theory of operation
-------------------
An OpenSSH certificate is a public key plus identity and policy fields, signed by a
certificate authority (CA) key. On the wire and on disk it is one blob whose key
type is ``<plain type>-cert-v01@openssh.com``; :class:`Certificate` is a
:class:`~trioport.sshproto.keys.PublicKey` whose ``blob`` is that whole blob, so a
certificate goes wherever a key goes (userauth, KEXDH_REPLY, ``*.pub`` lines). It
*signs* and *verifies* as the key it certifies (:attr:`Certificate.key`).

Importing this module registers every certificate key type with
:func:`~trioport.sshproto.keys.register_key_type`, so
:func:`~trioport.sshproto.keys.parse_public_key` returns :class:`Certificate`
objects for certificate blobs.

Parsing and checking are separate steps, on purpose:

- :func:`parse_certificate` checks *structure* only and raises
  :class:`~trioport.errors.DecodeError`: unknown type or cert type, truncation,
  trailing bytes, more than :data:`MAX_PRINCIPALS` principals, duplicate or unsorted
  options, a bad certified key, and a CA key that is itself a certificate (nested
  certificates are refused before they are parsed: Teleport CVE-2025-49825, and a
  chain of them could otherwise recurse without bound). It does **not** verify the
  signature: a parsed certificate is *untrusted data*.
- :func:`check_certificate` is the one validation function. It answers a
  :class:`CertificateCheckResult` with typed permissions, or raises
  :class:`~trioport.errors.CertificateInvalid` whose message says exactly why. Nothing
  else in trioport may grant access from a certificate.

Checks run in this order, so the reason names the first thing wrong and no field is
trusted before the signature over it verified: structure → CA is not a certificate →
CA trusted → signature algorithm allowed → signature → certificate type → validity
window → principals → critical options (and ``source-address``).

trioport's own extensions (see docs/certificates.md) carry comma-separated UTF-8
text in ``string`` data, exactly as ``ssh-keygen -O extension:name=value`` writes:

- ``trioport-roles@trioport.dev``: the user's roles;
- ``trioport-service-role@trioport.dev``: a host's service role (node/proxy/auth);
- ``trioport-cluster@trioport.dev``: the cluster name.

Extensions are non-critical, so OpenSSH's sshd accepts certificates carrying them.
"""

from __future__ import annotations

import datetime
import enum
import ipaddress
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass

from ..errors import CertificateInvalid, DecodeError, KeyFormatError
from .keys import CERT_SUFFIX, PrivateKey, PublicKey, parse_public_key, register_key_type
from .wire import Reader, string, uint32, uint64

__all__ = [
    "CERTIFICATE_KEY_TYPES",
    "DEFAULT_CA_SIGNATURE_ALGORITHMS",
    "DEFAULT_CLOCK_SKEW",
    "DEFAULT_USER_EXTENSIONS",
    "EXT_CLUSTER",
    "EXT_PERMIT_AGENT",
    "EXT_PERMIT_PORT",
    "EXT_PERMIT_PTY",
    "EXT_PERMIT_USER_RC",
    "EXT_PERMIT_X11",
    "EXT_ROLES",
    "EXT_SERVICE_ROLE",
    "MAX_PRINCIPALS",
    "VALID_FOREVER",
    "CertType",
    "Certificate",
    "CertificateCheckResult",
    "ServiceRole",
    "check_certificate",
    "match_address_list",
    "match_pattern",
    "parse_certificate",
    "parse_cidr_list",
    "sign_certificate",
    "trioport_extensions",
]

#: Most principals a certificate may list (OpenSSH ``SSHKEY_CERT_MAX_PRINCIPALS``).
MAX_PRINCIPALS = 256
#: ``valid_before`` meaning "never expires" (what ``ssh-keygen`` writes without ``-V``).
VALID_FOREVER = 0xFFFF_FFFF_FFFF_FFFF
#: Seconds a certificate is accepted *before* its ``valid_after`` (an issuer clock
#: running ahead of ours). Expiry is never stretched: ``valid_before`` is exact.
DEFAULT_CLOCK_SKEW = 60.0

#: CA signature algorithms accepted by default: OpenSSH's ``CASignatureAlgorithms``
#: default minus the FIDO types we do not support. ``ssh-rsa`` (SHA-1) is absent.
DEFAULT_CA_SIGNATURE_ALGORITHMS: frozenset[str] = frozenset(
    {
        "ssh-ed25519",
        "ecdsa-sha2-nistp256",
        "ecdsa-sha2-nistp384",
        "ecdsa-sha2-nistp521",
        "rsa-sha2-512",
        "rsa-sha2-256",
    }
)

#: Extension names (PROTOCOL.certkeys "Extensions").
EXT_PERMIT_X11 = "permit-X11-forwarding"
EXT_PERMIT_AGENT = "permit-agent-forwarding"
EXT_PERMIT_PORT = "permit-port-forwarding"
EXT_PERMIT_PTY = "permit-pty"
EXT_PERMIT_USER_RC = "permit-user-rc"
#: trioport's own extensions (docs/certificates.md).
EXT_ROLES = "trioport-roles@trioport.dev"
EXT_SERVICE_ROLE = "trioport-service-role@trioport.dev"
EXT_CLUSTER = "trioport-cluster@trioport.dev"

#: The extensions ``ssh-keygen`` gives a user certificate by default.
DEFAULT_USER_EXTENSIONS: dict[str, None] = {
    EXT_PERMIT_X11: None,
    EXT_PERMIT_AGENT: None,
    EXT_PERMIT_PORT: None,
    EXT_PERMIT_PTY: None,
    EXT_PERMIT_USER_RC: None,
}

#: Certificate key type -> (certified plain key type, number of string/mpint key
#: fields after the nonce). PROTOCOL.certkeys "New public key formats".
CERTIFICATE_KEY_TYPES: dict[str, tuple[str, int]] = {
    "ssh-ed25519" + CERT_SUFFIX: ("ssh-ed25519", 1),  # string pk
    "ssh-rsa" + CERT_SUFFIX: ("ssh-rsa", 2),  # mpint e, mpint n
    "ecdsa-sha2-nistp256" + CERT_SUFFIX: ("ecdsa-sha2-nistp256", 2),  # curve, Q
    "ecdsa-sha2-nistp384" + CERT_SUFFIX: ("ecdsa-sha2-nistp384", 2),
    "ecdsa-sha2-nistp521" + CERT_SUFFIX: ("ecdsa-sha2-nistp521", 2),
}
_CERT_TYPE_FOR_PLAIN = {plain: cert for cert, (plain, _) in CERTIFICATE_KEY_TYPES.items()}


class CertType(enum.IntEnum):
    """What a certificate identifies (PROTOCOL.certkeys ``SSH_CERT_TYPE_*``)."""

    #: A user, for publickey authentication.
    USER = 1
    #: A host, for server authentication during key exchange.
    HOST = 2


class ServiceRole(enum.Enum):
    """A trioport host's service role, carried in :data:`EXT_SERVICE_ROLE`."""

    NODE = "node"
    PROXY = "proxy"
    AUTH = "auth"


# --- patterns and address lists ------------------------------------------------------


def match_pattern(text: str, pattern: str) -> bool:
    """Glob-match ``text`` against ``pattern``: ``*`` is any run, ``?`` one character.

    This is OpenSSH's ``match_pattern`` (no character classes, no negation), used for
    host certificate principals and host patterns. It runs in O(len(text) *
    len(pattern)) time whatever the pattern, unlike a naive backtracking matcher.
    """
    t = p = 0
    star_p = star_t = -1
    while t < len(text):
        if p < len(pattern) and (pattern[p] == "?" or pattern[p] == text[t]):
            t += 1
            p += 1
        elif p < len(pattern) and pattern[p] == "*":
            star_p, star_t = p, t
            p += 1
        elif star_p >= 0:  # let the last '*' swallow one more character
            star_t += 1
            t = star_t
            p = star_p + 1
        else:
            return False
    while p < len(pattern) and pattern[p] == "*":
        p += 1
    return p == len(pattern)


IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_cidr_list(value: str) -> tuple[IPNetwork, ...]:
    """Parse a comma-separated CIDR list as in ``source-address`` (PROTOCOL.certkeys).

    Each entry is an IPv4 or IPv6 address, optionally ``/masklen``; host bits below
    the mask must be zero (OpenSSH ``addr_pton_cidr``).

    Raises:
        ValueError: an empty list, an empty entry or an invalid address or mask.
    """
    networks = []
    for entry in value.split(","):
        entry = entry.strip()
        if not entry:
            raise ValueError("empty entry in address list")
        networks.append(ipaddress.ip_network(entry, strict=True))
    return tuple(networks)


def _normalise_address(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """Parse a peer address; an IPv4-mapped IPv6 address becomes IPv4."""
    addr = ipaddress.ip_address(address.split("%", 1)[0])  # drop a zone id
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def match_address_list(address: str, networks: Iterable[IPNetwork]) -> bool:
    """Whether ``address`` lies in any of ``networks``.

    Raises:
        ValueError: ``address`` is not an IP address.
    """
    addr = _normalise_address(address)
    return any(addr.version == net.version and addr in net for net in networks)


# --- the Certificate ------------------------------------------------------------------


class Certificate(PublicKey):
    """A parsed OpenSSH certificate: untrusted until :func:`check_certificate` says so.

    Attributes:
        key_type: e.g. ``"ssh-ed25519-cert-v01@openssh.com"``.
        blob: the whole certificate blob, signature included.
        key: the certified plain :class:`PublicKey`; signatures verify with it.
        nonce: the CA's random nonce.
        serial: the CA-assigned serial number (0 if unused).
        cert_type: :class:`CertType`.
        key_id: free-form identity text, for logs.
        principals: user names (user certificates) or host name patterns (host).
        valid_after / valid_before: the validity window, seconds since the epoch.
        critical_options / extensions: name -> raw data, in wire order.
        reserved: the reserved field (ignored).
        signature_key: the CA's public key.
        signature: the CA's signature blob over :attr:`signed_data`.
    """

    __slots__ = (
        "_signed_len",
        "cert_type",
        "critical_options",
        "extensions",
        "key",
        "key_id",
        "key_type",
        "nonce",
        "principals",
        "reserved",
        "serial",
        "signature",
        "signature_key",
        "valid_after",
        "valid_before",
    )

    key_type: str  # type: ignore[misc]
    key: PublicKey
    nonce: bytes
    serial: int
    cert_type: CertType
    key_id: str
    principals: tuple[str, ...]
    valid_after: int
    valid_before: int
    critical_options: dict[str, bytes]
    extensions: dict[str, bytes]
    reserved: bytes
    signature_key: PublicKey
    signature: bytes
    _signed_len: int

    @property
    def signed_data(self) -> bytes:
        """The bytes the CA signed: every field up to and including the signature key."""
        return self.blob[: self._signed_len]

    @property
    def signature_algorithm(self) -> str:
        """The algorithm name inside :attr:`signature` (e.g. ``"rsa-sha2-512"``)."""
        return Reader(self.signature).string().decode("ascii")

    def signature_algorithms(self) -> tuple[str, ...]:
        """The certified key's signature algorithms (a certificate signs as its key)."""
        return self.key.signature_algorithms()

    def verify(
        self, signature: bytes, data: bytes, *, allowed: Collection[str] | None = None
    ) -> bool:
        """Check a signature made by the certified key (never raises).

        This says nothing about the certificate itself: use :func:`check_certificate`.
        """
        return self.key.verify(signature, data, allowed=allowed)

    def fingerprint(self) -> str:
        """The certified key's fingerprint, as ``ssh-keygen -l`` prints for a certificate."""
        return self.key.fingerprint()

    def to_cryptography(self) -> object:
        """The certified key as a ``cryptography`` public key."""
        return self.key.to_cryptography()

    def __repr__(self) -> str:
        return (
            f"<Certificate {self.cert_type.name.lower()} {self.key_type} id={self.key_id!r}"
            f" serial={self.serial} {self.fingerprint()}>"
        )


# --- parsing --------------------------------------------------------------------------


def _read_options(data: bytes, what: str) -> dict[str, bytes]:
    """Parse a critical-options or extensions section: ``(string name, string data)*``.

    PROTOCOL.certkeys: "Options must be lexically ordered by name ... Each named
    option may only appear once."
    """
    reader = Reader(data)
    options: dict[str, bytes] = {}
    previous: bytes | None = None
    while reader.remaining:
        raw_name = reader.string()
        value = reader.string()
        if not raw_name or b"\x00" in raw_name:
            raise DecodeError(f"certificate has an empty or NUL-bearing {what} name")
        if previous is not None and raw_name <= previous:
            if raw_name == previous:
                raise DecodeError(f"certificate repeats the {what} {raw_name[:64]!r}")
            raise DecodeError(f"certificate {what}s are not in lexical order")
        previous = raw_name
        try:
            name = raw_name.decode("utf-8")
        except UnicodeDecodeError:
            raise DecodeError(f"certificate {what} name is not UTF-8") from None
        options[name] = value
    return options


def _cstring(reader: Reader, what: str) -> str:
    data = reader.string()
    if b"\x00" in data:
        raise DecodeError(f"certificate {what} contains a NUL byte")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise DecodeError(f"certificate {what} is not UTF-8") from None


def parse_certificate(blob: bytes) -> Certificate:
    """Parse a ``*-cert-v01@openssh.com`` blob (PROTOCOL.certkeys). Structure only.

    The signature is *not* verified here; see :func:`check_certificate`.

    Args:
        blob: the certificate as on the wire or base64-decoded from a ``-cert.pub``.

    Returns:
        The :class:`Certificate`, whose ``blob`` is ``blob``.

    Raises:
        DecodeError: an unknown certificate key type or certificate type, truncated
            or trailing data, a bad certified key or CA key, more than
            :data:`MAX_PRINCIPALS` principals, duplicate or unsorted options, or a CA
            key that is itself a certificate.
    """
    blob = bytes(blob)
    reader = Reader(blob)
    try:
        key_type = reader.string().decode("ascii")
    except UnicodeDecodeError:
        raise DecodeError("certificate key type is not ASCII") from None
    if key_type not in CERTIFICATE_KEY_TYPES:
        raise DecodeError(f"unknown certificate type {key_type[:64]!r}")
    plain_type, nfields = CERTIFICATE_KEY_TYPES[key_type]
    nonce = reader.string()
    # The certified key's fields are string- or mpint-framed; re-frame them as a
    # plain key blob and let keys.py check them (RSA size, point on curve ...).
    key_fields = b"".join(string(reader.string()) for _ in range(nfields))
    key = parse_public_key(string(plain_type) + key_fields)
    serial = reader.uint64()
    raw_type = reader.uint32()
    try:
        cert_type = CertType(raw_type)
    except ValueError:
        raise DecodeError(f"unknown certificate type number {raw_type}") from None
    key_id = _cstring(reader, "key id")
    principals_reader = Reader(reader.string())
    principals: list[str] = []
    while principals_reader.remaining:
        if len(principals) >= MAX_PRINCIPALS:
            raise DecodeError(f"certificate has more than {MAX_PRINCIPALS} principals")
        principals.append(_cstring(principals_reader, "principal"))
    valid_after = reader.uint64()
    valid_before = reader.uint64()
    critical_options = _read_options(reader.string(), "critical option")
    extensions = _read_options(reader.string(), "extension")
    reserved = reader.string()
    ca_blob = reader.string()
    signed_len = len(blob) - reader.remaining
    signature = reader.string()
    reader.end()
    # PROTOCOL.certkeys: "Chained certificates ... are NOT supported." Look at the
    # type string before parsing, so a nested chain is never recursed into.
    try:
        ca_type = Reader(ca_blob).string().decode("ascii")
    except UnicodeDecodeError:
        raise DecodeError("certificate CA key type is not ASCII") from None
    if ca_type.endswith(CERT_SUFFIX) or ca_type in CERTIFICATE_KEY_TYPES:
        raise DecodeError(
            "certificate is signed by a key that is itself a certificate"
            " (nested certificates are not allowed)"
        )
    signature_key = parse_public_key(ca_blob)
    sig_reader = Reader(signature)
    try:
        sig_reader.string().decode("ascii")
    except UnicodeDecodeError:
        raise DecodeError("certificate signature algorithm is not ASCII") from None
    sig_reader.string()
    sig_reader.end()

    cert = Certificate.__new__(Certificate)
    cert.blob = blob
    cert.key_type = key_type
    cert.key = key
    cert.nonce = nonce
    cert.serial = serial
    cert.cert_type = cert_type
    cert.key_id = key_id
    cert.principals = tuple(principals)
    cert.valid_after = valid_after
    cert.valid_before = valid_before
    cert.critical_options = critical_options
    cert.extensions = extensions
    cert.reserved = reserved
    cert.signature_key = signature_key
    cert.signature = signature
    cert._signed_len = signed_len
    return cert


for _cert_type in CERTIFICATE_KEY_TYPES:
    register_key_type(_cert_type, parse_certificate)


# --- building -------------------------------------------------------------------------

OptionValue = str | bytes | None


def _encode_options(options: Mapping[str, OptionValue], what: str) -> bytes:
    out = []
    for name in sorted(options, key=lambda n: n.encode("utf-8")):
        if not name or "\x00" in name:
            raise KeyFormatError(f"invalid {what} name {name!r}")
        value = options[name]
        if value is None:
            data = b""
        elif isinstance(value, str):
            data = string(value)
        else:
            data = bytes(value)
        out.append(string(name) + string(data))
    return b"".join(out)


def trioport_extensions(
    *,
    roles: Iterable[str] | None = None,
    service_role: ServiceRole | str | None = None,
    cluster: str | None = None,
) -> dict[str, str]:
    """trioport's typed extensions, ready to merge into ``extensions=``.

    Raises:
        KeyFormatError: a role name that is empty or holds a comma, or an unknown
            service role.
    """
    out: dict[str, str] = {}
    if roles is not None:
        role_list = list(roles)
        for role in role_list:
            if not role or "," in role:
                raise KeyFormatError(f"invalid role name {role!r}")
        out[EXT_ROLES] = ",".join(role_list)
    if service_role is not None:
        try:
            out[EXT_SERVICE_ROLE] = ServiceRole(service_role).value
        except ValueError:
            raise KeyFormatError(f"unknown service role {service_role!r}") from None
    if cluster is not None:
        if not cluster:
            raise KeyFormatError("empty cluster name")
        out[EXT_CLUSTER] = cluster
    return out


def sign_certificate(
    ca: PrivateKey,
    key: PublicKey,
    *,
    cert_type: CertType,
    key_id: str,
    principals: Iterable[str],
    valid_after: int,
    valid_before: int,
    nonce: bytes,
    serial: int = 0,
    critical_options: Mapping[str, OptionValue] | None = None,
    extensions: Mapping[str, OptionValue] | None = None,
    signature_algorithm: str | None = None,
) -> Certificate:
    """Build and sign a certificate for ``key`` with the CA key ``ca``.

    Option values: ``None`` is a flag (empty data, e.g. ``permit-pty``); a ``str`` is
    encoded as an SSH string (``force-command``, ``source-address``, trioport's
    extensions); ``bytes`` are used as the raw data. Names are sorted as
    PROTOCOL.certkeys requires.

    Args:
        ca: the CA private key (any supported type).
        key: the plain public key to certify.
        cert_type: :attr:`CertType.USER` or :attr:`CertType.HOST`.
        key_id: identity text for logs (the user name, for trioport).
        principals: 1 to :data:`MAX_PRINCIPALS` user names or host name patterns.
        valid_after / valid_before: the validity window in seconds since the epoch
            (:data:`VALID_FOREVER` for no expiry).
        nonce: at least 16 random bytes from the caller's RNG.
        serial: the serial number.
        critical_options / extensions: see above; user certificates usually carry
            :data:`DEFAULT_USER_EXTENSIONS`.
        signature_algorithm: defaults to the CA's best (``rsa-sha2-512`` for RSA).

    Returns:
        The parsed :class:`Certificate`.

    Raises:
        KeyFormatError: a certificate or unsupported key to certify, a short nonce,
            no or too many principals, a principal or key id with a NUL, a window
            that ends before it starts, or bad option names.
        LocalProtocolError: ``signature_algorithm`` does not fit the CA key.
    """
    if isinstance(key, Certificate) or key.key_type not in _CERT_TYPE_FOR_PLAIN:
        raise KeyFormatError(f"cannot certify a {key.key_type} key")
    principal_list = list(principals)
    if not principal_list:
        raise KeyFormatError("a certificate needs at least one principal")
    if len(principal_list) > MAX_PRINCIPALS:
        raise KeyFormatError(f"a certificate may list at most {MAX_PRINCIPALS} principals")
    if any("\x00" in p or not p for p in principal_list) or "\x00" in key_id:
        raise KeyFormatError("principals and key id must be non-empty and free of NUL bytes")
    if len(nonce) < 16:
        raise KeyFormatError("the certificate nonce must be at least 16 random bytes")
    if not 0 <= valid_after < valid_before <= VALID_FOREVER:
        raise KeyFormatError("valid_after must be before valid_before")
    if not 0 <= serial < 2**64:
        raise KeyFormatError("serial must fit in 64 bits")
    cert_key_type = _CERT_TYPE_FOR_PLAIN[key.key_type]
    key_fields = Reader(key.blob)
    key_fields.string()  # drop the plain key type; the rest are the key's fields
    body = b"".join(
        [
            string(cert_key_type),
            string(nonce),
            key_fields.rest(),
            uint64(serial),
            uint32(int(cert_type)),
            string(key_id),
            string(b"".join(string(p) for p in principal_list)),
            uint64(valid_after),
            uint64(valid_before),
            string(_encode_options(critical_options or {}, "critical option")),
            string(_encode_options(extensions or {}, "extension")),
            string(b""),  # reserved
            string(ca.public.blob),
        ]
    )
    signature = ca.sign(body, signature_algorithm)
    return parse_certificate(body + string(signature))


# --- validation -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class CertificateCheckResult:
    """What a valid certificate allows. Produced only by :func:`check_certificate`.

    For host certificates the ``permit_*`` fields are ``False`` (they mean nothing
    there) and ``force_command``/``source_addresses`` are ``None``.
    """

    #: The certificate that passed.
    certificate: Certificate
    #: The principal that matched (``None`` when the caller asked for none).
    principal: str | None
    #: ``force-command``: run this instead of any shell, exec or subsystem.
    force_command: str | None
    #: ``source-address``: the networks the certificate may be used from.
    source_addresses: tuple[IPNetwork, ...] | None
    permit_pty: bool
    permit_port_forwarding: bool
    permit_agent_forwarding: bool
    permit_x11_forwarding: bool
    permit_user_rc: bool
    #: trioport roles (:data:`EXT_ROLES`); empty when absent.
    roles: tuple[str, ...]
    #: A host's service role (:data:`EXT_SERVICE_ROLE`).
    service_role: ServiceRole | None
    #: The cluster name (:data:`EXT_CLUSTER`).
    cluster: str | None

    @property
    def key_id(self) -> str:
        """The certificate's key id."""
        return self.certificate.key_id


def _when(seconds: int | float) -> str:
    if seconds >= VALID_FOREVER:
        return "forever"
    try:
        moment = datetime.datetime.fromtimestamp(seconds, tz=datetime.UTC)
    except (OverflowError, ValueError, OSError):
        return f"{seconds} seconds after the epoch"
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _string_option(name: str, data: bytes) -> str:
    """Decode option data that must be exactly one UTF-8 string."""
    reader = Reader(data)
    try:
        value = reader.text()
        reader.end()
    except DecodeError:
        raise CertificateInvalid(f"certificate option {name!r} is malformed") from None
    return value


def _want_flag(name: str, data: bytes) -> bool:
    # OpenSSH auth-options.c: a flag option carrying data is corrupt.
    if data:
        raise CertificateInvalid(f"certificate option {name!r} carries unexpected data")
    return True


_USER_CRITICAL = {"force-command", "source-address"}


def check_certificate(
    cert: Certificate | bytes,
    *,
    cert_type: CertType,
    trusted_cas: Collection[PublicKey],
    principal: str | Collection[str] | None,
    now: float,
    skew: float = DEFAULT_CLOCK_SKEW,
    source_address: str | None = None,
    allowed_signature_algorithms: Collection[str] = DEFAULT_CA_SIGNATURE_ALGORITHMS,
) -> CertificateCheckResult:
    """Decide whether a certificate is valid for this use, and what it permits.

    Mirrors OpenSSH's ``sshkey_cert_check_authority`` and certificate option
    handling, so a certificate sshd refuses is refused here with a readable reason.

    Args:
        cert: a parsed :class:`Certificate`, or a raw blob (parse errors become
            :class:`CertificateInvalid`).
        cert_type: the use: :attr:`CertType.USER` for publickey auth,
            :attr:`CertType.HOST` when checking a server.
        trusted_cas: CA public keys trusted for this use (plain keys).
        principal: user certificates: the login (or the logins any one of which is
            acceptable), matched exactly; host certificates: the host name, matched
            against each principal as a glob (``*``, ``?``). ``None`` skips the
            match (the caller matches principals itself), but a certificate with no
            principals is still refused.
        now: the current time, seconds since the epoch.
        skew: seconds of grace before ``valid_after`` (never after ``valid_before``).
        source_address: the peer's IP address, required when a user certificate
            carries ``source-address``.
        allowed_signature_algorithms: CA signature algorithms accepted; SHA-1
            ``ssh-rsa`` is not among the defaults.

    Returns:
        The :class:`CertificateCheckResult` with typed permissions.

    Raises:
        CertificateInvalid: with the reason, for every refusal.
    """
    if not isinstance(cert, Certificate):
        try:
            cert = parse_certificate(cert)
        except DecodeError as exc:
            raise CertificateInvalid(f"certificate is malformed: {exc.description}") from None
    ca = cert.signature_key
    if isinstance(ca, Certificate) or ca.key_type.endswith(CERT_SUFFIX):
        raise CertificateInvalid(
            "certificate is signed by a key that is itself a certificate"
            " (nested certificates are not allowed)"
        )
    trusted = [k for k in trusted_cas if not isinstance(k, Certificate)]
    if ca not in trusted:
        raise CertificateInvalid(
            f"certificate is signed by an untrusted CA ({ca.key_type} {ca.fingerprint()})"
        )
    algorithm = cert.signature_algorithm
    if algorithm not in allowed_signature_algorithms:
        raise CertificateInvalid(
            f"certificate signature algorithm {algorithm!r} is not allowed"
            f" (allowed: {', '.join(sorted(allowed_signature_algorithms))})"
        )
    if not ca.verify(cert.signature, cert.signed_data, allowed=allowed_signature_algorithms):
        raise CertificateInvalid("certificate signature does not verify against its CA key")
    if cert.cert_type != cert_type:
        raise CertificateInvalid(
            f"certificate is a {cert.cert_type.name.lower()} certificate,"
            f" not a {cert_type.name.lower()} certificate"
        )
    # PROTOCOL.certkeys: "valid after <= current time < valid before".
    if now >= cert.valid_before:
        raise CertificateInvalid(
            f"certificate expired at {_when(cert.valid_before)} (now {_when(now)})"
        )
    if now + skew < cert.valid_after:
        raise CertificateInvalid(
            f"certificate is not valid until {_when(cert.valid_after)} (now {_when(now)})"
        )
    if not cert.principals:
        raise CertificateInvalid("certificate has no principals")
    matched = _match_principal(cert, principal)

    if cert_type is CertType.HOST:
        # No critical options are defined for host certificates; OpenSSH's ssh
        # refuses a host certificate that carries any (sshconnect.c).
        if cert.critical_options:
            names = ", ".join(sorted(cert.critical_options))
            raise CertificateInvalid(f"host certificate carries critical options ({names})")
        force_command = None
        networks = None
    else:
        force_command, networks = _user_critical_options(cert, source_address)

    flags = {}
    for name in (EXT_PERMIT_PTY, EXT_PERMIT_PORT, EXT_PERMIT_AGENT, EXT_PERMIT_X11):
        flags[name] = name in cert.extensions and _want_flag(name, cert.extensions[name])
    user_rc = EXT_PERMIT_USER_RC in cert.extensions and _want_flag(
        EXT_PERMIT_USER_RC, cert.extensions[EXT_PERMIT_USER_RC]
    )
    is_user = cert_type is CertType.USER
    roles, service_role, cluster = _trioport_extensions(cert)
    return CertificateCheckResult(
        certificate=cert,
        principal=matched,
        force_command=force_command,
        source_addresses=networks,
        permit_pty=is_user and flags[EXT_PERMIT_PTY],
        permit_port_forwarding=is_user and flags[EXT_PERMIT_PORT],
        permit_agent_forwarding=is_user and flags[EXT_PERMIT_AGENT],
        permit_x11_forwarding=is_user and flags[EXT_PERMIT_X11],
        permit_user_rc=is_user and user_rc,
        roles=roles,
        service_role=service_role,
        cluster=cluster,
    )


def _match_principal(cert: Certificate, principal: str | Collection[str] | None) -> str | None:
    if principal is None:
        return None
    wanted = [principal] if isinstance(principal, str) else list(principal)
    if cert.cert_type is CertType.USER:
        # User principals match exactly: "-n user,*" must not act as a wildcard.
        for name in wanted:
            if name in cert.principals:
                return name
    else:
        for name in wanted:
            if any(match_pattern(name, pattern) for pattern in cert.principals):
                return name
    listed = ", ".join(cert.principals[:8]) + (" ..." if len(cert.principals) > 8 else "")
    asked = " or ".join(repr(n) for n in wanted) or "(none)"
    raise CertificateInvalid(
        f"{asked} is not a listed principal of the certificate (principals: {listed})"
    )


def _user_critical_options(
    cert: Certificate, source_address: str | None
) -> tuple[str | None, tuple[IPNetwork, ...] | None]:
    for name in cert.critical_options:
        if name not in _USER_CRITICAL:
            # PROTOCOL.certkeys: refuse a certificate with an unrecognised option.
            # (verify-required belongs to FIDO keys, which trioport does not support.)
            raise CertificateInvalid(f"certificate has unknown critical option {name!r}")
    force_command = None
    if "force-command" in cert.critical_options:
        force_command = _string_option("force-command", cert.critical_options["force-command"])
    networks = None
    if "source-address" in cert.critical_options:
        value = _string_option("source-address", cert.critical_options["source-address"])
        try:
            networks = parse_cidr_list(value)
        except ValueError:
            raise CertificateInvalid(
                f"certificate source-address {value!r} is not a valid CIDR list"
            ) from None
        if source_address is None:
            raise CertificateInvalid(
                f"certificate is restricted to source-address {value}"
                " and the peer's address is unknown"
            )
        try:
            ok = match_address_list(source_address, networks)
        except ValueError:
            ok = False
        if not ok:
            raise CertificateInvalid(
                f"certificate source-address {value} does not allow {source_address}"
            )
    return force_command, networks


def _trioport_extensions(
    cert: Certificate,
) -> tuple[tuple[str, ...], ServiceRole | None, str | None]:
    roles: tuple[str, ...] = ()
    if EXT_ROLES in cert.extensions:
        value = _string_option(EXT_ROLES, cert.extensions[EXT_ROLES])
        roles = tuple(r for r in value.split(",") if r) if value else ()
    service_role = None
    if EXT_SERVICE_ROLE in cert.extensions:
        value = _string_option(EXT_SERVICE_ROLE, cert.extensions[EXT_SERVICE_ROLE])
        try:
            service_role = ServiceRole(value)
        except ValueError:
            raise CertificateInvalid(f"certificate names unknown service role {value!r}") from None
    cluster = None
    if EXT_CLUSTER in cert.extensions:
        cluster = _string_option(EXT_CLUSTER, cert.extensions[EXT_CLUSTER]) or None
    return roles, service_role, cluster
