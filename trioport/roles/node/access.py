"""Which OS logins a user may use on this node: asked of the auth service, cached briefly.

A user's certificate says which logins she may use *somewhere* in the cluster
(its principals). Whether she may use one *here* depends on her roles and this
node's labels, and roles change: so at every login the node asks the auth
service (``POST /v1/access`` with the user, the login and the node's current
labels) and keeps the answer for :data:`FRESH_SECONDS`. A role change therefore
reaches this node within seconds, and a burst of logins costs one request.

When the auth service cannot be reached, an answer up to :data:`STALE_SECONDS`
old is still used (Teleport's nodes work from their cache the same way); with
no such answer the login is refused. The auth service's own options for the
user (agent and port forwarding, idle timeout, disconnecting when the
certificate expires, the recording policy ``record_session``) come with the answer.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable, Mapping
from typing import Any

import attrs
import trio

from trioport.authclient import AuthServiceUnavailable
from trioport.errors import TrioportError

from .authlink import AuthLink

__all__ = ["FRESH_SECONDS", "STALE_SECONDS", "AccessChecker", "AccessDecision"]

log = logging.getLogger("trioport.node.access")

#: Seconds an answer is used without asking again.
FRESH_SECONDS = 10.0
#: Seconds an answer is still used while the auth service cannot be reached.
STALE_SECONDS = 300.0
#: Answers kept at most (the oldest are forgotten first).
MAX_ENTRIES = 4096


@attrs.frozen
class AccessDecision:
    """Whether a user may log in as a login here, why, and what her roles allow."""

    allowed: bool
    reason: str
    forward_agent: bool = False
    port_forwarding: bool = False
    client_idle_timeout: float | None = None
    disconnect_expired_cert: bool = False
    #: What a session does when its recording cannot be stored: ``best_effort``
    #: (go on unrecorded) or ``strict`` (end it); see :mod:`.recorder`.
    record_session: str = "best_effort"
    #: The user's roles (names), for the audit log.
    roles: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return self.allowed

    @property
    def strict_recording(self) -> bool:
        """Whether a session must end when its recording cannot be stored."""
        return self.record_session == "strict"

    @classmethod
    def from_reply(cls, reply: Mapping[str, Any]) -> AccessDecision:
        options = reply.get("options") or {}
        idle = options.get("client_idle_timeout")
        return cls(
            allowed=reply.get("allowed") is True,
            reason=str(reply.get("reason") or ""),
            forward_agent=options.get("forward_agent") is True,
            port_forwarding=options.get("port_forwarding") is True,
            client_idle_timeout=float(idle) if idle else None,
            disconnect_expired_cert=options.get("disconnect_expired_cert") is True,
            record_session="strict" if options.get("record_session") == "strict" else "best_effort",
            roles=tuple(str(r) for r in reply.get("roles") or ()),
        )


_Key = tuple[str, str, tuple[tuple[str, str], ...]]


class AccessChecker:
    """Asks the auth service about logins on this node, through ``link``, with a cache.

    Args:
        link: the connection to the auth service.
        fresh: seconds an answer is used as it is.
        stale: seconds an answer is used while the auth service is unreachable.
        timeout: seconds to wait for the auth service per question.
        clock: monotonic seconds (trio's clock by default).
    """

    def __init__(
        self,
        link: AuthLink,
        *,
        fresh: float = FRESH_SECONDS,
        stale: float = STALE_SECONDS,
        timeout: float = 5.0,
        clock: Callable[[], float] = trio.current_time,
    ) -> None:
        self.link = link
        self.fresh = fresh
        self.stale = stale
        self.timeout = timeout
        self.clock = clock
        self._cache: collections.OrderedDict[_Key, tuple[float, AccessDecision]] = (
            collections.OrderedDict()
        )

    def forget(self) -> None:
        """Drop every cached answer."""
        self._cache.clear()

    async def check(self, user: str, login: str, labels: Mapping[str, str]) -> AccessDecision:
        """Whether ``user`` may log in as ``login`` on a node with ``labels``.

        Never raises for the auth service's absence: that is a refusal with a reason.
        """
        key: _Key = (user, login, tuple(sorted(labels.items())))
        now = self.clock()
        cached = self._cache.get(key)
        if cached is not None and now - cached[0] < self.fresh:
            return cached[1]
        try:
            reply = await self.link.call(
                lambda c: c.access(user, login=login, labels=dict(labels)), within=self.timeout
            )
        except AuthServiceUnavailable as exc:
            if cached is not None and now - cached[0] < self.stale:
                log.info("auth unreachable; using a %.0fs old answer for %s", now - cached[0], user)
                return cached[1]
            return AccessDecision(False, f"the auth service cannot be reached ({exc})")
        except TrioportError as exc:
            return AccessDecision(False, f"the auth service refused the question: {exc}")
        decision = AccessDecision.from_reply(reply)
        self._cache[key] = (self.clock(), decision)
        self._cache.move_to_end(key)
        while len(self._cache) > MAX_ENTRIES:
            self._cache.popitem(last=False)
        return decision
