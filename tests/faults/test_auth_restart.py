"""The auth service restarts while 20 shells run through the proxy.

The auth service runs in the test's trio loop (stopped and started again on its
port, with its data), the node beside it, and the proxy in its own process
(``trioport run``). 20 OpenSSH clients hold interactive shells on the node
through the proxy (``ProxyCommand ... -s proxy:%h:%p``). What users see:

- while the auth service is down, every shell keeps working;
- ``tsh login`` fails with a clear error naming the outage instead of hanging
  (the proxy answers ``POST /v1/webapi/ssh/certs`` with ``503 unavailable``
  after waiting at most ``AUTH_WAIT_SECONDS`` for the auth service);
- once it is back, ``tsh login`` works and its certificate opens a new shell;
- every shell ends normally, and all 20 recordings are complete, each with
  what was typed before, during and after the outage.
"""

from __future__ import annotations

import time
from typing import Any

import pyotp
import trio

from tests.e2e import cluster as e2e
from tests.roles.node.conftest import ALICE_LOGIN, PASSWORD, Cluster, wait_for
from tests.roles.node.test_node_recording import Terminal
from trioport.roles.node.recorder import parse_recording

from .conftest import ProxyProcess, proxied_ssh_argv

SHELLS = 20


async def _tsh_login(proxy: ProxyProcess, home: Any, code: str) -> Any:
    """``tsh login`` through the proxy, as a person with a password and a TOTP code."""
    with trio.fail_after(90):
        return await trio.run_process(
            [
                e2e.program("tsh"),
                *("login", f"--proxy={proxy.web}", "--user=alice", "--insecure"),
                "--password-stdin",
            ],
            stdin=f"{PASSWORD}\n{code}\n".encode(),
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            env=e2e.base_env(TSH_HOME=str(home)),
        )


async def test_shells_survive_an_auth_restart_and_logins_fail_clearly_meanwhile(
    cluster: Cluster, proxy: ProxyProcess
) -> None:
    node = await cluster.start_node()
    await cluster.add_user("alice", [ALICE_LOGIN])
    alice = await cluster.login("alice")
    await cluster.wait_online(node)
    totp = pyotp.TOTP(cluster.secrets["alice"])
    script = 'echo "ready-$SSH_SESSION_ID"; read x; echo "during-$x"; read y; echo "after-$y"'
    terminals: list[Terminal] = []
    try:
        # One after the other: at most 10 unauthenticated connections per source.
        for _ in range(SHELLS):
            term = Terminal(proxied_ssh_argv(alice, proxy, node, ALICE_LOGIN, "-tt", script))
            await term.__aenter__()
            terminals.append(term)
            await term.expect(b"ready-")

        await cluster.stop_auth()
        # Every shell goes on ...
        for term in terminals:
            await term.type(b"outage\n")
        for term in terminals:
            await term.expect(b"during-outage")
        # ... while a new login fails, saying why, and the proxy says so too.
        home = cluster.tmp / "tsh-alice"
        refused = await _tsh_login(proxy, home, totp.at(time.time()))
        assert refused.returncode != 0
        # "... (HTTP 503): the auth service is unavailable: cannot reach ..." (or "lost
        # the connection to the auth service", if the proxy had not noticed yet).
        assert b"(HTTP 503)" in refused.stderr and b"auth service" in refused.stderr
        assert len(refused.stderr.splitlines()) == 1  # one line, no traceback
        assert not list(home.rglob("*-cert.pub"))  # no certificate was stored

        await cluster.start_auth()

        async def logged_in() -> Any:
            done = await _tsh_login(proxy, home, totp.at(time.time() + 30))
            return done if done.returncode == 0 else None

        await wait_for(logged_in, seconds=60, step=1.0)
        assert len(list(home.rglob("*-cert.pub"))) == 1
        for term in terminals:
            await term.type(b"back\n")
        for term in terminals:
            await term.expect(b"after-back")
            with trio.fail_after(30):
                assert await term.proc.wait() == 0
    finally:
        for term in terminals:
            await term.__aexit__(None, None, None)

    # The certificate of the new login opens a shell through the proxy.
    fresh = await trio.run_process(
        [e2e.program("tsh"), "ssh", f"{ALICE_LOGIN}@{node.name}", "echo fresh"],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
        env=e2e.base_env(TSH_HOME=str(home)),
    )
    assert fresh.stdout == b"fresh\n", fresh.stderr

    # All 20 recordings are complete and hold the whole shell.
    sids = {bytes(t.output).split(b"ready-")[1][:36].decode() for t in terminals}
    assert len(sids) == SHELLS

    async def complete() -> set[str]:
        listing = await cluster.admin_call(lambda c: c.list_recordings())
        found = {r["sid"] for r in listing["recordings"]} & sids
        return found if found == sids else set()

    await wait_for(complete, seconds=60)
    for sid in sids:
        data = await cluster.admin_call(lambda c, sid=sid: c.fetch_recording(sid))
        _, events = parse_recording(data)
        assert events[-1].type == "end"
        output = b"".join(e.data for e in events if e.type == "o")
        assert b"during-outage" in output and b"after-back" in output
    ends = await cluster.admin_call(lambda c: c.search_events(events=["session.end"]))
    assert sids <= {e["sid"] for e in ends}
