"""trioport's sans-IO SSH implementation: bytes in, events out (the h11 shape).

The public API is :class:`Connection` with its :class:`ConnectionConfig`, the event
classes in :mod:`.events`, and the state enums. Nothing here does I/O, reads a
clock or draws randomness by itself: the caller passes ``rng`` and ``now``.
"""

from __future__ import annotations

from ..errors import LocalProtocolError, ProtocolError, RemoteProtocolError
from . import events
from .config import ConnectionConfig, HostKey
from .connection import Connection
from .state import KexPhase, OurChannelState, Role, TheirChannelState, TransportState

__all__ = [
    "Connection",
    "ConnectionConfig",
    "HostKey",
    "KexPhase",
    "LocalProtocolError",
    "OurChannelState",
    "ProtocolError",
    "RemoteProtocolError",
    "Role",
    "TheirChannelState",
    "TransportState",
    "events",
]
