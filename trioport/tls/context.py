"""TLS contexts for the proxy's HTTPS endpoint and its clients, per RFC 9325 (BCP 195).

What the recommendations ask, and where each is done here:

- §3.1.1: TLS 1.2 at least, TLS 1.3 preferred; never SSL 3, TLS 1.0 or 1.1
  (``minimum_version``; Python's default maximum is TLS 1.3).
- §4.1 / §4.2: for TLS 1.2, only ephemeral (EC)DHE key exchange with AEAD
  ciphers; the four recommended suites are ECDHE with AES-GCM. We add
  ChaCha20-Poly1305 (RFC 7905), also AEAD with ECDHE, for hosts without AES
  instructions. No CBC, no RSA key transport, no static DH, no SHA-1 MACs.
  TLS 1.3 suites are all AEAD and OpenSSL's defaults are kept.
- §3.3: no TLS-level compression (CRIME): ``OP_NO_COMPRESSION``.
- §3.5: renegotiation is refused outright (``OP_NO_RENEGOTIATION``), which is
  stronger than requiring RFC 5746 secure renegotiation.
- §3.4: session tickets are off for TLS 1.2 (``OP_NO_TICKET``), whose tickets
  would weaken forward secrecy until the ticket key rotates.
- §3.2 / §6.1: clients verify the server's certificate chain and host name
  (``CERT_REQUIRED`` + ``check_hostname``); turning that off is an explicit,
  visible choice (``insecure=True``, ``tsh --insecure``).
- §3.7: ALPN names the application protocol (``http/1.1``).
"""

from __future__ import annotations

import os
import ssl

__all__ = ["ALPN_PROTOCOLS", "TLS12_CIPHERS", "client_context", "server_context"]

#: TLS 1.2 suites in OpenSSL's names: RFC 9325 §4.2's four, then ChaCha20-Poly1305.
TLS12_CIPHERS = ":".join(
    [
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
    ]
)
ALPN_PROTOCOLS = ["http/1.1"]

_COMMON_OPTIONS = ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION | ssl.OP_NO_TICKET


def _harden(ctx: ssl.SSLContext) -> ssl.SSLContext:
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(TLS12_CIPHERS)
    ctx.options |= _COMMON_OPTIONS
    ctx.set_alpn_protocols(ALPN_PROTOCOLS)
    return ctx


def server_context(
    cert_file: str | os.PathLike[str], key_file: str | os.PathLike[str]
) -> ssl.SSLContext:
    """The HTTPS server's context: our certificate chain and key, RFC 9325 settings.

    Raises:
        OSError / ssl.SSLError: the files cannot be read or do not match.
    """
    ctx = _harden(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))
    # §4.2: the server picks from its own (strongest-first) order.
    ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE | ssl.OP_SINGLE_ECDH_USE
    ctx.load_cert_chain(os.fspath(cert_file), os.fspath(key_file))
    return ctx


def client_context(
    *, cafile: str | os.PathLike[str] | None = None, insecure: bool = False
) -> ssl.SSLContext:
    """A client's context: verify the server against the system's CAs (or ``cafile``).

    Args:
        cafile: a PEM file of certificates to trust instead of the system store
            (a self-signed proxy's own certificate works).
        insecure: skip certificate and host name verification (a self-signed
            proxy during setup). The connection is still encrypted, but anyone on
            the path could read the password sent over it.
    """
    ctx = _harden(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT))
    if insecure:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.check_hostname = True
    if cafile is not None:
        ctx.load_verify_locations(cafile=os.fspath(cafile))
    else:
        ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
    return ctx
