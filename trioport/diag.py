"""The diagnostics endpoint: ``/healthz``, ``/readyz`` and Prometheus ``/metrics``.

Plain HTTP (h11) on the address of ``--diag-addr``, meant for a load balancer's
health checks and a Prometheus scraper on a private network. ``/metrics`` is the
text exposition format of :mod:`trioport.metrics`.

- ``/healthz`` answers 200 while the process runs, degraded or not: restarting a
  proxy because the auth service is away would only cut the sessions it carries.
- ``/readyz`` answers 200 once every service it runs has started and nothing is
  degraded, and 503 otherwise, with a JSON body that says what is missing and
  what is wrong, e.g. ``{"ready": false, "services": {"node": true},
  "degraded": {"node: auth": "auth unreachable since 2026-11-25T12:00:00Z: ..."}}``.

**Degraded states** are reported to a :class:`Health` by the parts that notice
them: the node's and the proxy's links to the auth service call
:meth:`Health.unreachable` when no auth server answers and :meth:`Health.ok` when
one does again. While degraded they keep serving what they can (the sessions they
carry, the answers they cached); ``/readyz`` is how an operator or a load balancer
learns of it. One :class:`Health` serves a process (:func:`process_health`); a
test that runs several "processes" in one interpreter can give each its own
through :data:`HEALTH`, a context variable that tasks inherit.
"""

from __future__ import annotations

import contextvars
import datetime as dt
import json
import logging
import time
from collections.abc import Callable

import attrs
import h11
import trio
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

__all__ = ["HEALTH", "Health", "process_health", "serve_diag"]

log = logging.getLogger("trioport.diag")

#: Largest request head accepted; diagnostics requests are tiny.
MAX_REQUEST = 8192
#: Seconds a client has to send its request.
REQUEST_TIMEOUT = 10.0
#: Longest reason kept for a degraded component (they come from error messages).
MAX_REASON = 300


def _utc(when: float) -> str:
    return dt.datetime.fromtimestamp(when, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@attrs.define
class _Problem:
    what: str
    since: float
    reason: str


class Health:
    """What is degraded in this process right now, and since when.

    Components are free-form names (``"node: auth"``, ``"proxy: auth"``). A
    component is either healthy (absent) or degraded with a description and the
    time it *first* went wrong: repeated reports while degraded keep that time,
    so ``since`` says how long the outage has lasted, not when it was last seen.

    Args:
        clock: the wall clock (tests pass a fake one).
    """

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._problems: dict[str, _Problem] = {}

    def degraded(
        self, component: str, what: str, reason: str = "", *, since: float | None = None
    ) -> None:
        """Mark ``component`` degraded: ``what`` went wrong (``"auth unreachable"``) and why.

        Args:
            component: who reports (``"node: auth"``).
            what: the problem, a few words.
            reason: details (an error message), cut to :data:`MAX_REASON` characters.
            since: when it started (default: now, or the time already recorded).
        """
        reason = reason[:MAX_REASON]
        current = self._problems.get(component)
        if current is not None and current.what == what:
            current.reason = reason
            return
        self._problems[component] = _Problem(what, self.clock() if since is None else since, reason)

    def unreachable(
        self, component: str, peer: str, reason: str = "", *, since: float | None = None
    ) -> None:
        """Shorthand: ``component`` cannot reach ``peer`` (``"auth"``); see :meth:`degraded`."""
        self.degraded(component, f"{peer} unreachable", reason, since=since)

    def ok(self, component: str) -> None:
        """``component`` works again (or is gone): forget its problem."""
        self._problems.pop(component, None)

    def since(self, component: str) -> float | None:
        """When ``component`` went wrong, or None if it is healthy."""
        problem = self._problems.get(component)
        return None if problem is None else problem.since

    def problems(self) -> dict[str, str]:
        """Each degraded component and a sentence for humans, e.g.
        ``auth unreachable since 2026-11-25T12:00:00Z: connection refused``."""
        out = {}
        for component, p in sorted(self._problems.items()):
            text = f"{p.what} since {_utc(p.since)}"
            out[component] = f"{text}: {p.reason}" if p.reason else text
        return out


#: The process-wide :class:`Health` (see :func:`process_health`).
_PROCESS_HEALTH = Health()
#: Overrides the process-wide :class:`Health` for the tasks that inherit it.
HEALTH: contextvars.ContextVar[Health | None] = contextvars.ContextVar("HEALTH", default=None)


def process_health() -> Health:
    """The :class:`Health` of the current context (:data:`HEALTH`), else the process's."""
    return HEALTH.get() or _PROCESS_HEALTH


async def serve_diag(
    host: str,
    port: int,
    readiness: Callable[[], dict[str, bool]],
    *,
    health: Health | None = None,
    task_status: trio.TaskStatus[list[tuple[str, int]]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the diagnostics endpoint until cancelled.

    Args:
        host, port: where to listen (port 0: any free port).
        readiness: maps each service of the process to started-or-not.
        health: what is degraded (default: :func:`process_health` of the caller).
        task_status: ``started`` with the addresses it listens on.
    """
    health = health or process_health()
    listeners = await trio.open_tcp_listeners(port, host=host or None)

    async def one(stream: trio.SocketStream) -> None:
        try:
            with trio.move_on_after(REQUEST_TIMEOUT):
                await _answer(stream, readiness, health)
        except (trio.BrokenResourceError, h11.RemoteProtocolError) as exc:
            log.debug("diag request failed: %s", exc)
        finally:
            await trio.aclose_forcefully(stream)

    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, one, listeners)
        task_status.started([lst.socket.getsockname()[:2] for lst in listeners])


async def _answer(
    stream: trio.SocketStream, readiness: Callable[[], dict[str, bool]], health: Health
) -> None:
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST)
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await stream.receive_some(4096))
            continue
        break
    if not isinstance(event, h11.Request):
        return
    path = event.target.split(b"?", 1)[0]
    if event.method not in (b"GET", b"HEAD"):
        status, ctype, body = 405, b"text/plain", b"method not allowed\n"
    elif path == b"/healthz":
        status, ctype, body = 200, b"text/plain", b"ok\n"
    elif path == b"/readyz":
        services = readiness()
        degraded = health.problems()
        ready = bool(services) and all(services.values()) and not degraded
        status, ctype = (200 if ready else 503), b"application/json"
        answer: dict[str, object] = {"ready": ready, "services": services}
        if degraded:
            answer["degraded"] = degraded
        body = json.dumps(answer).encode() + b"\n"
    elif path == b"/metrics":
        status, ctype, body = 200, CONTENT_TYPE_LATEST.encode(), generate_latest()
    else:
        status, ctype, body = 404, b"text/plain", b"not found\n"
    headers = [
        (b"content-type", ctype),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
        (b"cache-control", b"no-store"),
    ]
    out = conn.send(h11.Response(status_code=status, headers=headers))
    if event.method != b"HEAD":
        out += conn.send(h11.Data(data=body))
    out += conn.send(h11.EndOfMessage())
    await stream.send_all(out)
