"""The diagnostics endpoint: ``/healthz``, ``/readyz`` and Prometheus ``/metrics``.

Plain HTTP (h11) on the address of ``--diag-addr``, meant for a load balancer's
health checks and a Prometheus scraper on a private network. ``/healthz`` answers
200 while the process runs; ``/readyz`` answers 200 once every service it runs has
started and 503 (with what is missing) before; ``/metrics`` is the text exposition
format of :mod:`trioport.metrics`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable

import h11
import trio
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

__all__ = ["serve_diag"]

log = logging.getLogger("trioport.diag")

#: Largest request head accepted; diagnostics requests are tiny.
MAX_REQUEST = 8192
#: Seconds a client has to send its request.
REQUEST_TIMEOUT = 10.0


async def serve_diag(
    host: str,
    port: int,
    readiness: Callable[[], dict[str, bool]],
    *,
    task_status: trio.TaskStatus[list[tuple[str, int]]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the diagnostics endpoint; ``readiness()`` maps each service to started-or-not."""
    listeners = await trio.open_tcp_listeners(port, host=host or None)

    async def one(stream: trio.SocketStream) -> None:
        try:
            with trio.move_on_after(REQUEST_TIMEOUT):
                await _answer(stream, readiness)
        except (trio.BrokenResourceError, h11.RemoteProtocolError) as exc:
            log.debug("diag request failed: %s", exc)
        finally:
            await trio.aclose_forcefully(stream)

    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, one, listeners)
        task_status.started([lst.socket.getsockname()[:2] for lst in listeners])


async def _answer(stream: trio.SocketStream, readiness: Callable[[], dict[str, bool]]) -> None:
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
        ready = bool(services) and all(services.values())
        status, ctype = (200 if ready else 503), b"application/json"
        body = json.dumps({"ready": ready, "services": services}).encode() + b"\n"
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
