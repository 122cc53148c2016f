"""The auth service's storage probe: /readyz says when etcd stops answering, and when it is back.

A real etcd is stopped under an open backend and started again on the same data
directory and port; the probe marks ``auth: storage`` unreachable with etcd's own
error meanwhile, and clears it once a read succeeds.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import trio

from trioport.diag import Health
from trioport.roles.auth.storage_health import COMPONENT, watch_storage
from trioport.store.etcd import open_etcd_backend

from .conftest import ETCD, start_etcd, stop_etcd


async def _until(predicate, seconds: float = 30.0) -> None:
    with trio.fail_after(seconds):
        while True:
            if predicate():
                return
            await trio.sleep(0.05)


async def test_a_stopped_etcd_marks_storage_unreachable_until_it_answers_again(
    tmp_path: Path,
) -> None:
    server = start_etcd(tmp_path / "etcd")
    health = Health()
    try:
        async with (
            open_etcd_backend([server.url], request_timeout=1.0) as backend,
            trio.open_nursery() as nursery,
        ):
            nursery.start_soon(lambda: watch_storage(backend, health, interval=0.1))
            await trio.sleep(0.5)
            assert health.problems() == {}
            await trio.to_thread.run_sync(stop_etcd, server)
            await _until(lambda: health.since(COMPONENT) is not None)
            [(component, text)] = health.problems().items()
            assert component == COMPONENT
            assert text.startswith("storage unreachable since ")
            # etcd again, same member, same data: the probe clears the problem.
            argv = server.process.args
            assert isinstance(argv, list) and argv[0] == ETCD

            def restart() -> subprocess.Popen[bytes]:
                with server.log_path.open("ab") as log:
                    return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)

            server.process = await trio.to_thread.run_sync(restart)
            await _until(lambda: health.since(COMPONENT) is None)
            nursery.cancel_scope.cancel()
    finally:
        stop_etcd(server)
