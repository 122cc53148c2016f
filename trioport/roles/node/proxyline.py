"""The proxy's signed line telling a node who the client really is (sans-IO).

A connection that comes through the proxy reaches the node from the proxy's
address, so without help the node's audit events (``session.start``, ``exec``,
``sftp``, ``port``, logins) would name the proxy as ``addr.remote``. Before it
splices a client's bytes to a node, the proxy therefore writes one line:

    TRIOPORT-PROXY v1 <client> <node> <time> <nonce> <certificate> <signature>\\r\\n

- ``client``: the client's address as the proxy saw it, ``IP:PORT`` (``[v6]:PORT``);
- ``node``: the host id (UUID) of the node the proxy means to reach, so a line
  given to one node is worthless to another;
- ``time``: the proxy's clock, whole seconds since the epoch;
- ``nonce``: 16 random bytes in hex; a node accepts each nonce once;
- ``certificate``: the proxy's host certificate (its SSH blob, base64);
- ``signature``: an SSH signature blob (base64) by the certificate's key over
  :func:`signed_data` (a labelled encoding of the four fields before it, so the
  signature can be mistaken for no other use of the host key).

The node accepts the line (:func:`verify`) only if the certificate is a host
certificate signed by the cluster's host CA, valid now, for this cluster, with
the service role ``proxy`` (the check ``tsh`` makes of the proxy, see
:func:`trioport.roles.proxy.client.host_verifier`); the node named is this one;
the time is within :data:`MAX_SKEW_SECONDS` of the node's clock; the nonce was
not seen before; and the signature verifies. Anything else is refused with the
reason, and the connection is closed: a line never lets anyone claim an address
without the proxy's key. A connection that starts with ``SSH-`` is plain SSH
(OpenSSH straight to the node), as before.

A node that understands the line says so in its SSH identification
(``SSH-2.0-trioport_0.1+proxyline1``, :func:`node_software_version`), which the
server sends first; the proxy reads it before writing anything and sends the line
only to such a node (:func:`accepts_proxy_line`), so an SSH server that does not
know it (an older node, a test's stand-in) still gets plain SSH.

This module does no I/O and keeps no clock: :mod:`.proxied` reads the line off
the socket, the proxy's :mod:`trioport.roles.proxy.nodedial` writes it.
"""

from __future__ import annotations

import base64
import binascii
import collections
import ipaddress
from collections.abc import Collection

import attrs

from trioport.errors import AccessDenied, CertificateInvalid, DecodeError
from trioport.sshproto.certs import (
    Certificate,
    CertType,
    ServiceRole,
    check_certificate,
)
from trioport.sshproto.keys import PrivateKey, PublicKey, parse_public_key
from trioport.sshproto.wire import string, uint64

__all__ = [
    "MAGIC",
    "MAX_LINE",
    "MAX_SKEW_SECONDS",
    "NONCE_BYTES",
    "VERSION_MARK",
    "ProxyLine",
    "ProxyLineRefused",
    "ReplayGuard",
    "accepts_proxy_line",
    "encode",
    "node_software_version",
    "parse",
    "signed_data",
    "verify",
]

#: What a proxy line starts with (an SSH connection starts with ``SSH-``).
MAGIC = b"TRIOPORT-PROXY "
#: The line's version.
VERSION = "v1"
#: The longest line accepted, CR LF included (a host certificate is well under it).
MAX_LINE = 8192
#: How far the proxy's time may be from the node's, either way.
MAX_SKEW_SECONDS = 120
#: Random bytes in a nonce.
NONCE_BYTES = 16
#: Added to a node's SSH software version: it accepts proxy lines.
VERSION_MARK = "+proxyline1"
#: The label the signature covers first (domain separation from SSH's own uses).
_LABEL = b"trioport-proxy-line-v1@trioport.dev"


class ProxyLineRefused(AccessDenied):
    """A proxy line the node does not accept; the message says why."""


@attrs.frozen
class ProxyLine:
    """A parsed (not yet verified) proxy line."""

    client_ip: str
    client_port: int
    node_id: str
    time: int
    nonce: str
    certificate: Certificate
    signature: bytes

    @property
    def client_addr(self) -> str:
        """``IP:PORT`` (``[v6]:PORT``), as the node's audit events write addresses."""
        host = f"[{self.client_ip}]" if ":" in self.client_ip else self.client_ip
        return f"{host}:{self.client_port}"


def node_software_version(base: str) -> str:
    """The SSH software version a node that accepts proxy lines announces."""
    return base + VERSION_MARK


def accepts_proxy_line(identification: bytes) -> bool:
    """Whether a server's identification line (``SSH-2.0-...``) announces
    :data:`VERSION_MARK` in its software version."""
    if not identification.startswith(b"SSH-2.0-"):
        return False
    software = identification[8:].split(b" ", 1)[0].rstrip(b"\r\n")
    return software.endswith(VERSION_MARK.encode("ascii"))


def _parse_client(text: str) -> tuple[str, int]:
    host, sep, port_text = text.rpartition(":")
    if not sep or not port_text.isdigit() or len(port_text) > 5:
        raise ProxyLineRefused(f"the client address {text[:64]!r} is not IP:PORT")
    port = int(port_text)
    if not 0 < port < 65536:
        raise ProxyLineRefused(f"the client port {port} is out of range")
    bracketed = host.startswith("[") and host.endswith("]")
    try:
        ip = ipaddress.ip_address(host[1:-1] if bracketed else host)
    except ValueError:
        raise ProxyLineRefused(f"the client address {text[:64]!r} is not IP:PORT") from None
    if (ip.version == 6) != bracketed:
        raise ProxyLineRefused(f"the client address {text[:64]!r} is not IP:PORT")
    return str(ip), port


def signed_data(client_addr: str, node_id: str, time: int, nonce: str) -> bytes:
    """What the signature covers: a label, then the four fields, SSH-encoded."""
    return (
        string(_LABEL)
        + string(client_addr.encode("ascii"))
        + string(node_id.encode("ascii"))
        + uint64(time)
        + string(nonce.encode("ascii"))
    )


def encode(
    *,
    key: PrivateKey,
    certificate: bytes,
    client_addr: str,
    node_id: str,
    now: float,
    nonce: bytes,
) -> bytes:
    """The line a proxy writes before splicing a client's bytes to a node.

    Args:
        key: the proxy's host key (the one its certificate certifies).
        certificate: the proxy's host certificate blob.
        client_addr: the client's ``IP:PORT`` (``[v6]:PORT``).
        node_id: the host id of the node being reached.
        now: the proxy's wall clock.
        nonce: :data:`NONCE_BYTES` random bytes.

    Raises:
        ValueError: a field would not fit the line.
    """
    ip, port = _parse_client(client_addr)
    client = f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"
    if not node_id or not node_id.isascii() or any(c.isspace() for c in node_id):
        raise ValueError("the node id must be ASCII without spaces")
    stamp = int(now)
    nonce_hex = nonce.hex()
    signature = key.sign(signed_data(client, node_id, stamp, nonce_hex))
    fields = [
        MAGIC.decode().rstrip(),
        VERSION,
        client,
        node_id,
        str(stamp),
        nonce_hex,
        base64.b64encode(certificate).decode("ascii"),
        base64.b64encode(signature).decode("ascii"),
    ]
    line = (" ".join(fields) + "\r\n").encode("ascii")
    if len(line) > MAX_LINE:
        raise ValueError("the proxy line would be longer than a node accepts")
    return line


def parse(line: bytes) -> ProxyLine:
    """Read one line (with or without its CR LF); nothing is trusted yet.

    Raises:
        ProxyLineRefused: not a well-formed line, with what is wrong.
    """
    if len(line) > MAX_LINE:
        raise ProxyLineRefused(f"the proxy line is longer than {MAX_LINE} bytes")
    if not line.startswith(MAGIC):
        raise ProxyLineRefused("not a proxy line")
    try:
        text = line.rstrip(b"\r\n").decode("ascii")
    except UnicodeDecodeError:
        raise ProxyLineRefused("the proxy line is not ASCII") from None
    fields = text.split(" ")
    if len(fields) != 8:
        raise ProxyLineRefused(f"the proxy line has {len(fields)} fields, not 8")
    _magic, version, client, node_id, stamp, nonce, cert_b64, sig_b64 = fields
    if version != VERSION:
        raise ProxyLineRefused(f"proxy line version {version[:16]!r} is not {VERSION}")
    ip, port = _parse_client(client)
    if not node_id or len(node_id) > 128:
        raise ProxyLineRefused("the proxy line names no node")
    if not stamp.isdigit() or len(stamp) > 12:
        raise ProxyLineRefused("the proxy line's time is not a number of seconds")
    if len(nonce) != 2 * NONCE_BYTES or any(c not in "0123456789abcdef" for c in nonce):
        raise ProxyLineRefused(f"the proxy line's nonce is not {NONCE_BYTES} bytes of hex")
    try:
        cert_blob = base64.b64decode(cert_b64, validate=True)
        signature = base64.b64decode(sig_b64, validate=True)
    except (binascii.Error, ValueError):
        raise ProxyLineRefused("the proxy line's certificate or signature is not base64") from None
    try:
        cert = parse_public_key(cert_blob)
    except DecodeError as exc:
        raise ProxyLineRefused(f"the proxy line's certificate is malformed: {exc}") from None
    if not isinstance(cert, Certificate):
        raise ProxyLineRefused("the proxy line carries a plain key, not a host certificate")
    return ProxyLine(ip, port, node_id, int(stamp), nonce, cert, signature)


class ReplayGuard:
    """The nonces seen within the skew window, so each line is accepted once.

    Args:
        window: seconds a nonce is remembered (twice the allowed skew covers
            every line that could still be fresh).
        max_entries: nonces kept at most; past it the oldest are forgotten (a
            replay of one of those must still pass the time check).
    """

    def __init__(self, window: float = 2 * MAX_SKEW_SECONDS, max_entries: int = 100_000) -> None:
        self.window = window
        self.max_entries = max_entries
        self._seen: collections.OrderedDict[str, float] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._seen)

    def check_and_add(self, nonce: str, now: float) -> bool:
        """True the first time ``nonce`` is seen within the window."""
        while self._seen:
            oldest, when = next(iter(self._seen.items()))
            if now - when < self.window and len(self._seen) < self.max_entries:
                break
            del self._seen[oldest]
        if nonce in self._seen:
            return False
        self._seen[nonce] = now
        return True


def verify(
    line: ProxyLine,
    *,
    host_cas: Collection[PublicKey],
    cluster: str,
    node_id: str,
    now: float,
    replay: ReplayGuard | None = None,
    skew: float = MAX_SKEW_SECONDS,
) -> str:
    """Decide whether to believe ``line``; the client's address if so.

    Args:
        line: from :func:`parse`.
        host_cas: the cluster's host CA keys.
        cluster: this cluster's name.
        node_id: this node's host id.
        now: the node's wall clock.
        replay: the node's seen nonces (checked last, so a refused line spends none).
        skew: seconds the line's time may differ from ``now``.

    Raises:
        ProxyLineRefused: with the reason.
    """
    if not host_cas:
        raise ProxyLineRefused("this node knows no host CA to check the proxy with")
    try:
        result = check_certificate(
            line.certificate,
            cert_type=CertType.HOST,
            trusted_cas=host_cas,
            principal=None,
            now=now,
        )
    except CertificateInvalid as exc:
        raise ProxyLineRefused(f"the proxy's certificate is refused: {exc}") from None
    if result.cluster != cluster:
        raise ProxyLineRefused(
            f"the proxy's certificate is for cluster {result.cluster!r}, not {cluster!r}"
        )
    if result.service_role is not ServiceRole.PROXY:
        got = result.service_role.value if result.service_role else "none"
        raise ProxyLineRefused(f"the certificate's service role is {got!r}, not 'proxy'")
    if line.node_id != node_id:
        raise ProxyLineRefused("the proxy line is meant for another node")
    if abs(line.time - now) > skew:
        raise ProxyLineRefused(
            f"the proxy line's time is {line.time - now:+.0f} s from this node's clock"
            f" (at most {skew:g} s either way)"
        )
    data = signed_data(line.client_addr, line.node_id, line.time, line.nonce)
    if not line.certificate.verify(line.signature, data):
        raise ProxyLineRefused("the proxy line's signature does not verify")
    if replay is not None and not replay.check_and_add(line.nonce, now):
        raise ProxyLineRefused("the proxy line was used before (a replay)")
    return line.client_addr
