"""HTTPS for the proxy: certificates (:mod:`.certs`) and RFC 9325 ssl contexts (:mod:`.context`)."""

from .certs import CertificateFiles, ensure_self_signed, file_fingerprint, fingerprint
from .context import client_context, server_context

__all__ = [
    "CertificateFiles",
    "client_context",
    "ensure_self_signed",
    "file_fingerprint",
    "fingerprint",
    "server_context",
]
