"""The process's Prometheus metrics, in one place so every service counts the same way.

prometheus-client keeps them in its default registry; ``trioport run --diag-addr``
serves them at ``/metrics`` (see :mod:`trioport.diag`).
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge

__all__ = [
    "CERTIFICATES",
    "CONNECTIONS",
    "HEARTBEATS",
    "LOGINS",
    "OPEN_CONNECTIONS",
    "SESSIONS",
]

#: SSH connections accepted by a trioport server (node, proxy or auth).
CONNECTIONS = Counter("trioport_ssh_connections", "SSH connections accepted")
#: SSH connections open right now.
OPEN_CONNECTIONS = Gauge("trioport_ssh_connections_open", "SSH connections open now")
#: Interactive and exec sessions started on nodes.
SESSIONS = Counter("trioport_sessions", "Sessions started on nodes")
#: Password + TOTP login attempts at the auth service, by outcome.
LOGINS = Counter("trioport_logins", "Login attempts", ["result"])
#: Certificates the auth service signed, by kind (user or host).
CERTIFICATES = Counter("trioport_certificates_issued", "Certificates issued", ["kind"])
#: Node heartbeats the auth service absorbed.
HEARTBEATS = Counter("trioport_heartbeats", "Node heartbeats received")
