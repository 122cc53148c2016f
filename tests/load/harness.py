"""The load scenarios of issue 7, shared by the CI tests (small) and ``bench/load.py`` (full).

Each scenario runs against a real cluster and returns a plain ``dict`` of what it
saw: errors, counts, and the server's resources measured from outside through
``/proc``. The tests assert on the errors and counts; the benchmark prints the
numbers. Nothing here asserts on speed.

**The server** (:func:`start_server`) is one ``trioport run`` subprocess with the
auth service, the proxy and one node, on free loopback ports, with ``--diag-addr``
(its ``trioport_ssh_connections_open`` gauge counts connections still open), its
own ``TMPDIR`` (so temporary files it leaves behind can be counted) and connection
limits raised for a load generator on one address (the defaults admit 10
unauthenticated connections per source). Its resident memory, descriptors,
threads and descendants are read from ``/proc/PID``.

**The clients** run in the caller's trio loop with the library ``tsh`` uses: one
user (:func:`login`: invite, password, TOTP code, certificate over HTTPS), then
each session is :func:`~trioport.roles.proxy.client.connect_proxy` and, inside it,
:func:`~trioport.roles.proxy.client.connect_node`: two SSH connections end to end,
as ``tsh ssh`` makes.

Scenarios: :func:`interactive_sessions`, :func:`idle_connections`,
:func:`stalled_reader`, :func:`connect_cycles`; :func:`heartbeating_nodes` runs the
auth service alone, in-process, on SQLite or etcd.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pyotp
import trio

from trioport.authclient import ClientIdentity, connect_auth
from trioport.config import Address
from trioport.roles.proxy import client as pc
from trioport.ssh import KeySigner, Signer, SSHConnection
from trioport.sshproto import events as ev
from trioport.sshproto.keys import PrivateKey, PublicKey, public_key_from_line
from trioport.tls import client_context

CLUSTER = "load.test"
NODENAME = "load-node"
PASSWORD = "correct horse battery staple"
#: The OS account the sessions run as on the node (the tests run as it).
LOGIN = getpass.getuser()
#: Seconds ``trioport run`` may take to announce itself.
START_TIMEOUT = 60.0
#: Audit events asked for at once (the auth API's largest page).
PAGE = 10_000
#: Seconds one connect/authenticate/exec/exit cycle may take before it counts as failed.
CYCLE_TIMEOUT = 60.0
#: Seconds resources may take to come back to the baseline after clients close.
SETTLE_TIMEOUT = 20.0


def _program(name: str) -> str:
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else name


def _free_ports(count: int) -> list[int]:
    import socket

    socks = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


# --- /proc ---------------------------------------------------------------------------------


def _status(pid: int) -> dict[str, str]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        out[key] = value.strip()
    return out


def rss_bytes(pid: int) -> int:
    """Resident memory of ``pid`` (VmRSS)."""
    return int(_status(pid)["VmRSS"].split()[0]) * 1024


def fd_count(pid: int) -> int:
    """Open file descriptors of ``pid``."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def pss_bytes(pid: int) -> int:
    """Proportional set size of ``pid`` (shared pages split among the processes sharing them)."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    return 0


def thread_count(pid: int) -> int:
    return int(_status(pid)["Threads"])


def descendants(pid: int) -> list[int]:
    """Every live (or zombie) process below ``pid``."""
    parents: dict[int, int] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                stat = Path(entry.path, "stat").read_text()
                parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found: list[int] = []
    frontier = [pid]
    while frontier:
        p = frontier.pop()
        kids = [c for c, pp in parents.items() if pp == p]
        found += kids
        frontier += kids
    return found


# --- the server ------------------------------------------------------------------------------


@dataclass
class Server:
    """A running ``trioport run`` (auth, proxy, node) and where to reach it."""

    popen: subprocess.Popen[bytes]
    work: Path
    data_dir: Path
    tmpdir: Path
    auth: Address
    node: Address
    proxy_ssh: Address
    web: Address
    diag: Address
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def metric(self, name: str) -> float:
        """One sample of ``/metrics`` (summed over its labels)."""
        text = httpx.get(f"http://{self.diag}/metrics", timeout=10, trust_env=False).text
        total = 0.0
        for line in text.splitlines():
            if re.match(rf"{re.escape(name)}(\{{.*\}})? ", line):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def resources(self) -> dict[str, int]:
        """The server's footprint now: memory, descriptors, threads, processes, temp files."""
        return {
            "rss": rss_bytes(self.pid),
            "fds": fd_count(self.pid),
            "threads": thread_count(self.pid),
            "children": len(descendants(self.pid)),
            "tmp_files": sum(len(files) + len(dirs) for _, dirs, files in os.walk(self.tmpdir)),
            "open_connections": int(self.metric("trioport_ssh_connections_open")),
        }

    def stop(self) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(30)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        return self.popen.returncode


@contextlib.contextmanager
def start_server(work: Path) -> Iterator[Server]:
    """Run ``trioport run`` with all three services on loopback; stop it (SIGTERM) after."""
    work.mkdir(parents=True, exist_ok=True)
    auth, node, proxy_ssh, web, diag = _free_ports(5)
    data_dir = work / "data"
    tmpdir = work / "tmp"
    tmpdir.mkdir(exist_ok=True)
    config = work / "trioport.yaml"
    config.write_text(
        f"""version: v1
teleport:
  nodename: {NODENAME}
  data_dir: {data_dir}
  connection_limits:
    max_unauthenticated: 200
    max_unauthenticated_per_source: 200
auth_service:
  listen_addr: 127.0.0.1:{auth}
  cluster_name: {CLUSTER}
ssh_service:
  listen_addr: 127.0.0.1:{node}
proxy_service:
  listen_addr: 127.0.0.1:{proxy_ssh}
  web_listen_addr: 127.0.0.1:{web}
"""
    )
    log = work / "server.log"
    out = work / "server.out"
    env = {k: v for k, v in os.environ.items() if k not in ("SSH_AUTH_SOCK", "TSH_HOME")}
    env["TMPDIR"] = str(tmpdir)
    diag_addr = f"127.0.0.1:{diag}"
    with log.open("ab") as err, out.open("wb") as stdout:
        popen = subprocess.Popen(
            [_program("trioport"), "run", "--config", str(config), "--diag-addr", diag_addr],
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=err,
            env=env,
            start_new_session=True,
        )
    lo = "127.0.0.1"
    server = Server(
        popen,
        work,
        data_dir,
        tmpdir,
        Address(lo, auth),
        Address(lo, node),
        Address(lo, proxy_ssh),
        Address(lo, web),
        Address(lo, diag),
        log,
    )
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while b"Stop with Ctrl-C." not in out.read_bytes():
            if popen.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"trioport run did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.05)
        yield server
    finally:
        server.stop()


# --- the user ----------------------------------------------------------------------------------


@dataclass
class Login:
    """A logged-in user: her certificate and the cluster's host CA, as tsh keeps them."""

    name: str
    signers: list[Signer]
    host_cas: list[PublicKey]
    #: The key and its certificate (to write a tsh profile with).
    key: PrivateKey | None = None
    certificate: Any = None


async def login(server: Server, name: str = "loader") -> Login:
    """Invite ``name`` (logins: this OS account), finish the invite, log in over HTTPS."""
    admin = ClientIdentity.load(server.data_dir / "admin")
    async with connect_auth(server.auth, admin) as client:
        invite = await client.add_user(name, logins=[LOGIN])
        enrolment = await client.start_enrolment(invite["token"])
        totp = pyotp.TOTP(enrolment["secret"])
        # The step before now for the invite, now for the login: never the same code.
        await client.complete_invite(invite["token"], PASSWORD, totp.at(time.time() - 30))
    key = PrivateKey.generate()
    ctx = client_context(cafile=server.data_dir / "proxy" / "https" / "cert.pem")
    reply = await trio.to_thread.run_sync(
        lambda: pc.login(
            server.web,
            ctx,
            user=name,
            password=PASSWORD,
            totp_code=totp.now(),
            public_key=key.public,
        )
    )
    cert = public_key_from_line(reply["cert"])
    return Login(
        name,
        [KeySigner(key, certificate=cert.blob)],
        [public_key_from_line(line) for line in reply["host_ca"]],
        key,
        cert,
    )


@contextlib.asynccontextmanager
async def tsh_ssh(server: Server, user: Login) -> AsyncIterator[SSHConnection]:
    """What ``tsh ssh`` opens: the proxy, then the node end to end inside it."""
    async with pc.connect_proxy(
        server.proxy_ssh,
        login=LOGIN,
        signers=user.signers,
        host_cas=user.host_cas,
        cluster=CLUSTER,
    ) as proxy:
        async with pc.connect_node(
            proxy,
            NODENAME,
            server.node.port,
            login=LOGIN,
            signers=user.signers,
            host_cas=user.host_cas,
            cluster=CLUSTER,
        ) as node:
            yield node


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:300]


def percentile(values: list[float], q: float) -> float | None:
    """The ``q`` quantile (0..1) of ``values`` by nearest rank; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


async def settle(server: Server, baseline: dict[str, int], keys: tuple[str, ...]) -> dict[str, int]:
    """Poll until ``keys`` are back at (or below) the baseline, or SETTLE_TIMEOUT passes."""
    deadline = time.monotonic() + SETTLE_TIMEOUT
    while True:
        now = await trio.to_thread.run_sync(server.resources)
        if all(now[k] <= baseline[k] for k in keys) or time.monotonic() > deadline:
            return now
        await trio.sleep(0.2)


# --- an echoing pty session ----------------------------------------------------------------------


async def open_pty_cat(node: SSHConnection) -> Any:
    """A session channel running ``cat`` on a pty: every keystroke comes back (tty echo)."""
    chan = await node.open_session()
    ok = await chan.request(ev.PtyRequest(term="xterm", width_chars=80, height_rows=24))
    if not ok:
        raise RuntimeError("the node refused a pty")
    if not await chan.request(ev.Exec(command=b"cat")):
        raise RuntimeError("the node refused to run cat")
    return chan


async def keystroke(chan: Any, key: bytes, pending: bytearray) -> float:
    """Send one key; seconds until its echo came back."""
    t0 = time.perf_counter()
    await chan.send_all(key)
    while key not in pending:
        chunk = await chan.receive_some()
        if not chunk:
            raise RuntimeError("the session ended while waiting for an echo")
        pending += chunk
    del pending[: pending.index(key) + 1]
    return time.perf_counter() - t0


async def end_pty_cat(chan: Any) -> int | None:
    """Finish the line and send ^D so ``cat`` exits; its exit status."""
    await chan.send_all(b"\r\x04")
    with trio.fail_after(30):
        while await chan.receive_some():
            pass
        await chan.wait_closed()
    await chan.aclose()
    return chan.exit_status  # type: ignore[no-any-return]


# --- scenarios ------------------------------------------------------------------------------------


@dataclass
class _Phase:
    opened: int = 0
    errors: list[str] = field(default_factory=list)


async def interactive_sessions(
    server: Server,
    user: Login,
    sessions: int,
    *,
    keystrokes: int = 20,
    open_parallel: int = 8,
    pace: float = 0.05,
) -> dict[str, Any]:
    """``sessions`` pty sessions at once through the proxy to the node, each typing.

    Every session opens (``open_parallel`` handshakes at a time), then, once all are
    open and the server's memory is sampled, each types ``keystrokes`` keys, a random
    pause of up to 2 x ``pace`` between them, timing each echo; then ^D ends ``cat``.
    """
    phase = _Phase()
    latencies: list[float] = []
    statuses: list[int | None] = []
    gate = trio.Semaphore(open_parallel)
    all_open = trio.Event()
    baseline = await trio.to_thread.run_sync(server.resources)
    rng = random.Random(7)

    async def one(i: int) -> None:
        try:
            async with gate:
                cm = tsh_ssh(server, user)
                node = await cm.__aenter__()
            try:
                chan = await open_pty_cat(node)
                phase.opened += 1
                if phase.opened == sessions:
                    all_open.set()
                await all_open.wait()
                pending = bytearray()
                for k in range(keystrokes):
                    await trio.sleep(rng.uniform(0, 2 * pace))
                    key = bytes([ord("a") + (i + k) % 26])
                    latencies.append(await keystroke(chan, key, pending))
                statuses.append(await end_pty_cat(chan))
            finally:
                await cm.__aexit__(None, None, None)
        except Exception as exc:
            phase.errors.append(_error(exc))
            all_open.set()  # do not keep the others waiting for one that failed

    t0 = time.perf_counter()
    held: dict[str, int] = {}
    async with trio.open_nursery() as nursery:
        for i in range(sessions):
            nursery.start_soon(one, i)
        await all_open.wait()
        opened_in = time.perf_counter() - t0
        held = await trio.to_thread.run_sync(server.resources)
        children_pss = sum(pss_bytes(p) for p in descendants(server.pid))
    after = await settle(server, baseline, ("fds", "children", "open_connections"))
    return {
        "sessions": sessions,
        "children_pss_per_session": children_pss / max(1, phase.opened),
        "opened": phase.opened,
        "errors": phase.errors,
        "exit_statuses_zero": sum(1 for s in statuses if s == 0),
        "keystrokes": len(latencies),
        "echo_ms": _summary_ms(latencies),
        "open_seconds": opened_in,
        "baseline": baseline,
        "held": held,
        "after": after,
        "rss_per_session": (held["rss"] - baseline["rss"]) / max(1, phase.opened),
    }


def _summary_ms(values: list[float]) -> dict[str, float | None]:
    ms = [v * 1000 for v in values]
    return {
        "p50": percentile(ms, 0.50),
        "p90": percentile(ms, 0.90),
        "p99": percentile(ms, 0.99),
        "max": max(ms) if ms else None,
        "mean": statistics.fmean(ms) if ms else None,
    }


async def idle_connections(
    server: Server, user: Login, connections: int, *, open_parallel: int = 8
) -> dict[str, Any]:
    """``connections`` authenticated ``tsh ssh`` connections (proxy + node), no session, held.

    Samples the server before, while all are held, and after all closed (waiting up
    to SETTLE_TIMEOUT for descriptors, processes and open connections to return).
    """
    phase = _Phase()
    gate = trio.Semaphore(open_parallel)
    all_open = trio.Event()
    release = trio.Event()
    baseline = await trio.to_thread.run_sync(server.resources)

    async def one() -> None:
        try:
            async with gate:
                cm = tsh_ssh(server, user)
                await cm.__aenter__()
            try:
                phase.opened += 1
                if phase.opened == connections:
                    all_open.set()
                await release.wait()
            finally:
                await cm.__aexit__(None, None, None)
        except Exception as exc:
            phase.errors.append(_error(exc))
            all_open.set()

    async with trio.open_nursery() as nursery:
        for _ in range(connections):
            nursery.start_soon(one)
        await all_open.wait()
        await trio.sleep(1.0)  # let the node's per-connection work finish
        held = await trio.to_thread.run_sync(server.resources)
        release.set()
    after = await settle(server, baseline, ("fds", "children", "open_connections", "threads"))
    return {
        "connections": connections,
        "opened": phase.opened,
        "errors": phase.errors,
        "baseline": baseline,
        "held": held,
        "after": after,
        "rss_per_connection": (held["rss"] - baseline["rss"]) / max(1, phase.opened),
    }


async def stalled_reader(
    server: Server, user: Login, *, keys: int = 20, interval: float = 0.5
) -> dict[str, Any]:
    """``yes`` into a client that stops reading, beside a session that keeps typing.

    The stalled session reads 64 KiB and then nothing. Then, ``keys`` times, the
    server's RSS is sampled, the other session types one key and waits for its
    echo, and ``interval`` seconds pass. Returns the samples, the echoes, and what
    was left after both closed.
    """
    baseline = await trio.to_thread.run_sync(server.resources)
    samples: list[tuple[float, int]] = []
    echoes: list[float] = []
    errors: list[str] = []
    async with tsh_ssh(server, user) as stalled_conn, tsh_ssh(server, user) as typing_conn:
        stalled = await stalled_conn.open_session()
        if not await stalled.request(ev.Exec(command=b"yes")):
            raise RuntimeError("the node refused to run yes")
        got = 0
        while got < 64 * 1024:
            got += len(await stalled.receive_some())
        chan = await open_pty_cat(typing_conn)
        pending = bytearray()
        t0 = time.perf_counter()
        for k in range(keys):
            samples.append((time.perf_counter() - t0, rss_bytes(server.pid)))
            try:
                with trio.fail_after(60):
                    echoes.append(await keystroke(chan, bytes([ord("a") + k % 26]), pending))
            except Exception as exc:
                errors.append(_error(exc))
                break
            await trio.sleep(interval)
        samples.append((time.perf_counter() - t0, rss_bytes(server.pid)))
        status = await end_pty_cat(chan)
        await trio.aclose_forcefully(stalled)
    after = await settle(server, baseline, ("fds", "children", "open_connections"))
    rss = [r for _, r in samples]
    third = max(1, len(rss) // 3)
    return {
        "keys": keys,
        "seconds": samples[-1][0],
        "samples": samples,
        "baseline": baseline,
        "after": after,
        "errors": errors,
        "echoes": len(echoes),
        "echo_ms": _summary_ms(echoes),
        "typing_exit_status": status,
        "rss_growth": max(rss) - baseline["rss"],
        # Growth from the end of the first third to the end: ~0 once it levelled off.
        "rss_growth_last_two_thirds": max(rss[third:]) - max(rss[:third]),
    }


async def connect_cycles(
    server: Server, user: Login, cycles: int, *, parallel: int = 2, warmup: int = 10
) -> dict[str, Any]:
    """``cycles`` x (connect, authenticate, exec ``true``, exit), ``parallel`` at a time.

    The first ``warmup`` cycles run before the baseline is sampled (caches, lazy
    imports); the audit log's ``exec`` events are counted from the baseline on.
    """
    errors: list[str] = []
    statuses: list[int | None] = []

    async def cycle() -> None:
        try:
            # A user would give up on `true` long before this; count it as an error.
            with trio.fail_after(CYCLE_TIMEOUT):
                async with tsh_ssh(server, user) as node:
                    result = await node.run("true")
                    statuses.append(result.exit_status)
        except Exception as exc:
            errors.append(_error(exc))

    admin = ClientIdentity.load(server.data_dir / "admin")

    async def exec_events(since: float) -> int:
        """This user's ``exec`` events since ``since``, a page of at most PAGE at a time."""
        sessions: set[str] = set()
        cursor = since - 1
        async with connect_auth(server.auth, admin) as client:
            while True:
                page = await client.search_events(since=cursor, events=["exec"], limit=PAGE)
                for e in page:
                    if e.get("user") == user.name and _after(e, since):
                        sessions.add(str(e.get("sid")))
                if len(page) < PAGE:
                    return len(sessions)
                # The next page starts at the last one's time (the set drops repeats).
                last = _when(page[-1])
                if last is None or last <= cursor:
                    return len(sessions)
                cursor = last

    start = time.time()
    for _ in range(warmup):
        await cycle()
    statuses.clear()
    # The node reports audit events in the background: let the warm-up's arrive first.
    deadline = time.monotonic() + SETTLE_TIMEOUT
    while await exec_events(start) < warmup and time.monotonic() < deadline:  # noqa: ASYNC110
        await trio.sleep(0.25)  # polling another process's audit log
    since = time.time()
    baseline = await settle(server, {}, ())
    t0 = time.perf_counter()
    rss_trace: list[tuple[int, int]] = []
    done = 0
    gate = trio.Semaphore(parallel)

    async def paced() -> None:
        nonlocal done
        try:
            await cycle()
        finally:
            gate.release()
        done += 1
        if done % max(1, cycles // 20) == 0:
            rss_trace.append((done, rss_bytes(server.pid)))

    async with trio.open_nursery() as nursery:
        for _ in range(cycles):
            await gate.acquire()  # bounded: at most ``parallel`` cycles in flight
            nursery.start_soon(paced)
    elapsed = time.perf_counter() - t0
    after = await settle(server, baseline, ("fds", "children", "open_connections", "tmp_files"))
    # The node sends its audit events in the background: wait for the last ones.
    audited = 0
    deadline = time.monotonic() + SETTLE_TIMEOUT
    while (audited := await exec_events(since)) < cycles and time.monotonic() < deadline:  # noqa: ASYNC110
        await trio.sleep(0.25)  # polling another process's audit log
    return {
        "cycles": cycles,
        "parallel": parallel,
        "errors": errors,
        "exit_statuses_zero": sum(1 for s in statuses if s == 0),
        "exec_events": audited,
        "seconds": elapsed,
        "cycles_per_second": cycles / elapsed if elapsed else 0.0,
        "baseline": baseline,
        "after": after,
        "rss_trace": rss_trace,
    }


def _when(event: dict[str, Any]) -> float | None:
    """An audit event's ``time`` (ISO 8601) in epoch seconds; None without one."""
    import datetime as dt

    stamp = event.get("time")
    if not isinstance(stamp, str):
        return None
    return dt.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def _after(event: dict[str, Any], since: float) -> bool:
    """Whether an audit event happened at or after ``since`` (True if it has no time)."""
    when = _when(event)
    return when is None or when >= since - 0.001
