"""What the node's connections share, and who is logged in on one of them."""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable, Mapping
from typing import Any

import attrs

from trioport.config import Address
from trioport.ssh import SSHConnection
from trioport.ssh.trust import UserCertificateChecker
from trioport.sshproto.certs import CertificateCheckResult
from trioport.sshproto.keys import PublicKey

from .access import AccessChecker, AccessDecision
from .recorder import RecordingUploader
from .sessions import Reporter, SessionRegistry

__all__ = ["Login", "NodeContext", "address_of"]


def address_of(conn: SSHConnection, *, local: bool = False) -> str:
    """``ip:port`` of the connection's peer (or our end); ``""`` if not a socket."""
    sock = getattr(conn.stream, "socket", None)
    try:
        name = sock.getsockname() if local else sock.getpeername()  # type: ignore[union-attr]
    except (OSError, AttributeError):
        return ""
    return str(Address(str(name[0]), int(name[1]))) if isinstance(name, tuple) else ""


@attrs.define(eq=False)
class NodeContext:
    """What every connection to the node shares (built by :func:`.service.serve`)."""

    host_id: str
    hostname: str
    cluster_name: str
    user_cas: tuple[PublicKey, ...]
    access: AccessChecker
    labels: Callable[[], Mapping[str, str]]
    registry: SessionRegistry
    reporter: Reporter
    uploader: RecordingUploader
    clock: Callable[[], float] = time.time
    #: The node is shutting down: no new logins.
    draining: bool = False
    #: Connections with a logged-in user, to disconnect at shutdown.
    connections: weakref.WeakSet[SSHConnection] = attrs.Factory(weakref.WeakSet)

    def checker(self) -> UserCertificateChecker:
        return UserCertificateChecker(self.user_cas, clock=self.clock)


@attrs.frozen
class Login:
    """A logged-in user on one connection."""

    #: The user (her certificate's key id).
    user: str
    #: The OS login she asked for.
    login: str
    certificate: CertificateCheckResult
    access: AccessDecision
    remote_addr: str
    local_addr: str

    def audit_fields(self) -> dict[str, Any]:
        return {
            "user": self.user,
            "login": self.login,
            "addr_remote": self.remote_addr,
            "addr_local": self.local_addr,
        }
