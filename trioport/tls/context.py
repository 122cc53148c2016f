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
- Key exchange groups: X25519, P-256 and P-384 only (:data:`GROUPS`, what
  Mozilla's "intermediate" profile lists); OpenSSL would otherwise also offer
  X448, P-521 and finite-field groups. Python's ``ssl`` has no call for a group
  list before 3.15, so :func:`_set_groups` asks OpenSSL directly through the
  context's own ``SSL_CTX``, after checking that the pointer it found is that
  context's (its options must read back the same); if anything does not match
  it falls back to ``set_ecdh_curve("prime256v1")``: P-256 alone, still within
  the profile, at the cost of a HelloRetryRequest for X25519-only clients.
"""

from __future__ import annotations

import ctypes
import logging
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
#: (EC)DHE groups offered and accepted, strongest-first by preference.
GROUPS = "X25519:P-256:P-384"
_SSL_CTRL_SET_GROUPS_LIST = 92  # OpenSSL's ssl.h; SSL_CTX_set1_groups_list is a macro

log = logging.getLogger("trioport.tls")


def _libssl() -> ctypes.CDLL | None:
    try:
        import _ssl

        lib = ctypes.CDLL(_ssl.__file__)
        lib.SSL_CTX_get_options.restype = ctypes.c_uint64
        lib.SSL_CTX_get_options.argtypes = [ctypes.c_void_p]
        lib.SSL_CTX_ctrl.restype = ctypes.c_long
        lib.SSL_CTX_ctrl.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_void_p]
        return lib
    except (OSError, AttributeError, ImportError):
        return None


def _set_groups(ctx: ssl.SSLContext, groups: str = GROUPS) -> bool:
    """Limit ``ctx``'s key exchange groups to ``groups``; False if it fell back to P-256."""
    lib = _libssl()
    if lib is not None:
        # CPython's context object holds its SSL_CTX * right after the object header.
        ptr = ctypes.c_void_p.from_address(id(ctx) + object.__basicsize__).value
        probe = ssl.OP_NO_COMPRESSION
        if ptr and lib.SSL_CTX_get_options(ptr) == ctx.options:
            ctx.options ^= probe  # a second, different reading must match too
            same = lib.SSL_CTX_get_options(ptr) == ctx.options
            ctx.options ^= probe
            if same and lib.SSL_CTX_ctrl(ptr, _SSL_CTRL_SET_GROUPS_LIST, 0, groups.encode()):
                return True
    log.info("cannot set the TLS groups to %s here; offering P-256 only", groups)
    ctx.set_ecdh_curve("prime256v1")
    return False


def _harden(ctx: ssl.SSLContext) -> ssl.SSLContext:
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(TLS12_CIPHERS)
    ctx.options |= _COMMON_OPTIONS
    ctx.set_alpn_protocols(ALPN_PROTOCOLS)
    _set_groups(ctx)
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
