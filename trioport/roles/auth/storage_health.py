"""The auth service's view of its own storage, for ``/readyz``.

An auth service whose backend stops answering (every etcd member down, a
network partition) cannot log anyone in, yet its process and port are fine.
:func:`watch_storage` reads one key every few seconds and reports the outcome
to the process's :class:`~trioport.diag.Health`: ``"auth: storage"`` is marked
``storage unreachable`` (with the backend's own error) while reads fail, and
cleared when one succeeds, so ``/readyz`` answers 503 and names the cause.
"""

from __future__ import annotations

import logging

import trio

from trioport.diag import Health
from trioport.errors import NotFound, StoreError
from trioport.store.backend import Backend

__all__ = ["COMPONENT", "PROBE_KEY", "watch_storage"]

log = logging.getLogger("trioport.auth.storage")

#: The component name in ``/readyz``'s answer.
COMPONENT = "auth: storage"
#: The key read (it need not exist: "not found" is an answer too).
PROBE_KEY = "/meta/readiness-probe"


async def watch_storage(backend: Backend, health: Health, *, interval: float = 5.0) -> None:
    """Probe ``backend`` every ``interval`` seconds until cancelled."""
    while True:
        try:
            with trio.fail_after(max(interval, 1.0)):
                await backend.get(PROBE_KEY)
        except NotFound:
            pass
        except (StoreError, trio.TooSlowError) as exc:
            reason = str(exc) or "no answer in time"
            if health.since(COMPONENT) is None:
                log.warning("the auth service's storage does not answer: %s", reason)
            health.unreachable(COMPONENT, "storage", reason)
            await trio.sleep(interval)
            continue
        if health.since(COMPONENT) is not None:
            log.info("the auth service's storage answers again")
        health.ok(COMPONENT)
        await trio.sleep(interval)
