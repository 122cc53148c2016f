"""Auth service benchmark: user certificates and heartbeats per second, on SQLite and etcd.

    python3 bench/auth_bench.py [--quick] [--backends sqlite,etcd] [--budget S]

For each backend, in one run:

1. the backend: SQLite (a file under the data directory, the default), or etcd
   (Debian's ``/usr/bin/etcd``, started here on free loopback ports, its data in
   the temporary directory);
2. the auth service (``trioport.roles.auth.service.serve``, production bcrypt
   cost 12) in its own process (``auth_bench.py serve CONFIG``), on a loopback
   port the OS picks;
3. set-up through the API, not timed: a proxy joins, USERS users are invited and
   enrolled (password + TOTP), NODES nodes join;
4. **over SSH** (the real API, :mod:`trioport.authclient`, from this process):
   - *user certificates*: the proxy forwards USERS logins (``POST /v1/login``:
     bcrypt, one-time TOTP, lockout bookkeeping, signing, audit), 8 at a time;
   - *heartbeats*: every node reports (``POST /v1/nodes/heartbeat``) over its own
     connection, one request in flight each, for SECONDS;
5. the service is stopped and the same store is opened **in-process**
   (:func:`~trioport.roles.auth.server.open_auth_server` in this process, a second
   view without SSH): the same logins through :meth:`AuthServer.login`, certificates
   without a password check (:meth:`AuthServer.user_certificate`, what a web
   session gets), and heartbeats through :meth:`NodeRegistry.heartbeat`, 8 tasks.

Plus the floor every login pays: one bcrypt cost-12 check.

Prints a table and writes it with the machine description to
``bench/AUTH_RESULTS.md``. A benchmark, not a test: nothing is asserted. Every
phase has a time limit, the whole run a budget; etcd and the auth service run in
their own process groups and are stopped by pid at the end, on error too, and the
temporary directory is removed (see docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import os
import pathlib
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

BENCH = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import benchlib  # noqa: E402
import peers  # noqa: E402

ETCD = shutil.which("etcd") or "/usr/bin/etcd"
CLUSTER = "bench.example"
PASSWORD = "correct horse battery staple"
#: Production bcrypt cost (trioport.roles.auth.users.BCRYPT_COST).
BCRYPT_COST = 12
#: Requests in flight for the login and in-process rows.
PARALLEL = 8


# --- the auth service process -----------------------------------------------------------


def serve_main(config_path: str, bcrypt_cost: int) -> int:
    """``auth_bench.py serve CONFIG``: run the auth service; print ``{"port": N}``."""
    import trio

    from trioport.config import load_config
    from trioport.roles.auth import service

    config = load_config(config_path)

    async def run() -> None:
        async with trio.open_nursery() as nursery:
            addresses = await nursery.start(
                lambda task_status: service.serve(
                    config, task_status=task_status, bcrypt_cost=bcrypt_cost
                )
            )
            benchlib.emit({"port": addresses[0][1]})

    trio.run(run)
    return 0


# --- measurements ------------------------------------------------------------------------


@dataclass
class Row:
    """One measured operation."""

    operation: str
    view: str
    backend: str
    count: int = 0
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    #: CPU seconds of the auth service (its process, or this one in-process), the
    #: etcd server, and the client (this process, over SSH only).
    auth_cpu: float | None = None
    etcd_cpu: float | None = None
    client_cpu: float | None = None
    error: str = ""

    @property
    def rate(self) -> float:
        return self.count / self.seconds if self.seconds else 0.0

    def per_op_ms(self, cpu: float | None) -> str:
        if cpu is None or not self.count:
            return "—"
        return f"{cpu / self.count * 1000:.1f}"


async def load(
    operation: Callable[[int], Awaitable[object]],
    *,
    parallel: int,
    count: int | None = None,
    seconds: float | None = None,
    limit: float,
) -> tuple[int, float, list[float]]:
    """Run ``operation(i)`` from ``parallel`` tasks until ``count`` ran or ``seconds`` passed.

    Returns (operations done, wall seconds, latency of each).
    """
    import trio

    latencies: list[float] = []
    next_index = 0
    start = time.perf_counter()
    stop_at = start + seconds if seconds is not None else None

    async def worker() -> None:
        nonlocal next_index
        while True:
            if count is not None and next_index >= count:
                return
            if stop_at is not None and time.perf_counter() >= stop_at:
                return
            i = next_index
            next_index += 1
            t0 = time.perf_counter()
            await operation(i)
            latencies.append(time.perf_counter() - t0)

    with trio.fail_after(limit):
        async with trio.open_nursery() as nursery:
            for _ in range(parallel):
                nursery.start_soon(worker)
    return len(latencies), time.perf_counter() - start, latencies


class CpuClock:
    """CPU seconds used by some processes (their own and their reaped children's)."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self.start = [peers.tree_cpu(pid) for pid in pids]

    def stop(self) -> list[float]:
        return [peers.tree_cpu(pid) - s for pid, s in zip(self.pids, self.start, strict=True)]


# --- one backend --------------------------------------------------------------------------


@dataclass
class Plan:
    users: int
    nodes: int
    heartbeat_seconds: float
    phase_limit: float


def start_etcd(procs: peers.Processes, work: pathlib.Path) -> tuple[str, int]:
    """Start etcd on free loopback ports; return its client URL and pid."""
    import httpx

    client, peer = benchlib.free_port(), benchlib.free_port()
    url, peer_url = f"http://127.0.0.1:{client}", f"http://127.0.0.1:{peer}"
    log = (work / "etcd.log").open("wb")
    process = procs.popen(
        [
            ETCD,
            "--name=bench",
            f"--data-dir={work / 'etcd-data'}",
            f"--listen-client-urls={url}",
            f"--advertise-client-urls={url}",
            f"--listen-peer-urls={peer_url}",
            f"--initial-advertise-peer-urls={peer_url}",
            f"--initial-cluster=bench={peer_url}",
            "--log-level=warn",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    log.close()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        try:
            if httpx.get(url + "/health", timeout=1).json().get("health") == "true":
                return url, process.pid
        except (httpx.HTTPError, ValueError):
            pass
        time.sleep(0.05)
    raise RuntimeError(f"etcd did not start: {(work / 'etcd.log').read_text()[-1000:]}")


def write_config(work: pathlib.Path, backend: str, etcd_url: str | None) -> pathlib.Path:
    from trioport.config import (
        Address,
        AuthService,
        Config,
        Global,
        StorageConfig,
        dump_config,
    )

    storage = (
        StorageConfig(type="etcd", peers=[etcd_url or ""], prefix="/bench")
        if backend == "etcd"
        else StorageConfig()
    )
    config = Config(
        teleport=Global(nodename="auth1", data_dir=str(work / "data"), storage=storage),
        auth_service=AuthService(listen_addr=Address("127.0.0.1", 0), cluster_name=CLUSTER),
    )
    path = work / "teleport.yaml"
    path.write_text(dump_config(config))
    return path


async def over_ssh(
    port: int, data_dir: pathlib.Path, plan: Plan, backend: str, pids: list[int]
) -> tuple[list[Row], list[tuple[str, str]], dict[str, str]]:
    """Set up through the API, then time logins and heartbeats over SSH.

    Returns the rows, (host_id, name) of every node that joined, and every user's
    TOTP secret.
    """
    import pyotp
    import trio

    from trioport.authclient import ClientIdentity, connect_auth, join_cluster
    from trioport.resources import Metadata, Node, NodeSpec
    from trioport.sshproto.keys import PrivateKey

    addr = ("127.0.0.1", port)
    admin_identity = ClientIdentity.load(data_dir / "admin")
    rows: list[Row] = []
    names: dict[str, str] = {}  # user -> TOTP secret
    async with connect_auth(addr, admin_identity) as admin:
        proxy_token = (await admin.add_token(["proxy"]))["token"]
        node_tokens = [(await admin.add_token(["node"]))["token"] for _ in range(plan.nodes)]
        invites = [
            (await admin.add_user(f"user{i}", logins=["root"]))["token"] for i in range(plan.users)
        ]
    proxy_key = PrivateKey.generate()
    joined = await join_cluster(
        addr, token=proxy_token, key=proxy_key, node_name="proxy1", role="proxy"
    )
    proxy_identity = joined.identity(proxy_key)
    async with connect_auth(addr, proxy_identity, max_channels=PARALLEL) as proxy:
        # Enrol with the code of the step *before* now (the window allows it), so a
        # login with the current code is not a reuse.

        async def enrol_named(i: int) -> None:
            enrolment = await proxy.start_enrolment(invites[i])
            code = pyotp.TOTP(enrolment["secret"]).at(time.time() - 30)
            await proxy.complete_invite(invites[i], PASSWORD, code)
            names[f"user{i}"] = enrolment["secret"]

        await load(enrol_named, parallel=2, count=plan.users, limit=plan.phase_limit)
        user_keys = [PrivateKey.generate().public for _ in range(plan.users)]

        async def login(i: int) -> None:
            name = f"user{i}"
            code = pyotp.TOTP(names[name]).now()
            await proxy.login(name, PASSWORD, code, user_keys[i], ttl=3600)

        row = Row("user certificate (login: bcrypt + TOTP + sign)", "SSH API", backend)
        await _measure(
            row, pids, login, parallel=PARALLEL, count=plan.users, plan=plan, client=True
        )
        rows.append(row)

    nodes: list[tuple[str, str, ClientIdentity]] = []
    for i, token in enumerate(node_tokens):
        key = PrivateKey.generate()
        name = f"node{i}"
        result = await join_cluster(
            addr, token=token, key=key, node_name=name, addresses=["127.0.0.1"]
        )
        nodes.append((result.host_id, name, result.identity(key)))

    row = Row("heartbeat", "SSH API", backend)
    try:
        async with trio.open_nursery() as nursery:
            clients = []
            for host_id, name, identity in nodes:
                clients.append((host_id, name, await nursery_connect(nursery, addr, identity)))
            reports = [
                Node(
                    metadata=Metadata(name=host_id, labels={"env": "bench", "i": str(i)}),
                    spec=NodeSpec(hostname=name, addr="127.0.0.1:3022"),
                )
                for i, (host_id, name, _client) in enumerate(clients)
            ]

            async def beat(i: int) -> None:
                await clients[i % len(clients)][2].heartbeat(reports[i % len(clients)])

            # One request in flight per node: each task owns one node's connection.
            await _measure_per_node(row, pids, beat, len(clients), plan)
            nursery.cancel_scope.cancel()
    except Exception as exc:  # a failed row is reported, the run goes on
        row.error = f"{type(exc).__name__}: {exc}"[:300]
    rows.append(row)
    return rows, [(host_id, name) for host_id, name, _ in nodes], names


async def nursery_connect(nursery, addr, identity):  # type: ignore[no-untyped-def]
    """Open a connection to the auth service in ``nursery``; return its client."""
    import trio

    from trioport.authclient import connect_auth

    ready: list[object] = []
    opened = trio.Event()

    async def hold() -> None:
        async with connect_auth(addr, identity, max_channels=1) as client:
            ready.append(client)
            opened.set()
            await trio.sleep_forever()

    nursery.start_soon(hold)
    await opened.wait()
    return ready[0]


async def _measure(
    row: Row,
    pids: list[int],
    operation: Callable[[int], Awaitable[object]],
    *,
    parallel: int,
    plan: Plan,
    count: int | None = None,
    seconds: float | None = None,
    client: bool = False,
) -> None:
    cpu = CpuClock(pids)
    client0 = time.process_time()
    try:
        row.count, row.seconds, row.latencies = await load(
            operation, parallel=parallel, count=count, seconds=seconds, limit=plan.phase_limit
        )
    except Exception as exc:
        row.error = f"{type(exc).__name__}: {exc}"[:300]
        return
    used = cpu.stop()
    row.auth_cpu = used[0]
    row.etcd_cpu = used[1] if len(used) > 1 else None
    if client:
        row.client_cpu = time.process_time() - client0


async def _measure_per_node(
    row: Row, pids: list[int], beat: Callable[[int], Awaitable[object]], nodes: int, plan: Plan
) -> None:
    """Heartbeats: task k sends for node k only, until the time is up."""
    import trio

    cpu = CpuClock(pids)
    client0 = time.process_time()
    stop_at = time.perf_counter() + plan.heartbeat_seconds
    start = time.perf_counter()

    async def node_loop(k: int) -> None:
        while time.perf_counter() < stop_at:
            t0 = time.perf_counter()
            await beat(k)
            row.latencies.append(time.perf_counter() - t0)

    with trio.fail_after(plan.phase_limit):
        async with trio.open_nursery() as nursery:
            for k in range(nodes):
                nursery.start_soon(node_loop, k)
    row.seconds = time.perf_counter() - start
    row.count = len(row.latencies)
    used = cpu.stop()
    row.auth_cpu = used[0]
    row.etcd_cpu = used[1] if len(used) > 1 else None
    row.client_cpu = time.process_time() - client0


async def in_process(
    config_path: pathlib.Path,
    plan: Plan,
    backend: str,
    etcd_pid: int | None,
    totp_secrets: dict[str, str],
    nodes: list[tuple[str, str]],
) -> list[Row]:
    """The same store, opened in this process: AuthServer methods without SSH."""
    import pyotp

    from trioport.config import load_config
    from trioport.resources import Metadata, Node, NodeSpec
    from trioport.roles.auth.server import open_auth_server
    from trioport.sshproto.keys import PrivateKey
    from trioport.store import open_backend

    config = load_config(config_path)
    # Two TOTP steps ahead of the wall clock: every user's last code (SSH rows) is older.
    offset = 60.0

    def clock() -> float:
        return time.time() + offset

    rows: list[Row] = []
    pids = [os.getpid()] + ([etcd_pid] if etcd_pid else [])
    async with (
        open_backend(
            config.teleport.storage, data_dir=config.teleport.data_dir, clock=clock
        ) as store,
        open_auth_server(
            store,
            data_dir=config.teleport.data_dir,
            cluster_name=CLUSTER,
            bcrypt_cost=BCRYPT_COST,
        ) as auth,
    ):
        users = len(totp_secrets)
        keys = [PrivateKey.generate().public for _ in range(users)]

        async def login(i: int) -> None:
            code = pyotp.TOTP(totp_secrets[f"user{i}"]).at(clock())
            await auth.login(user=f"user{i}", password=PASSWORD, totp_code=code, public_key=keys[i])

        row = Row("user certificate (login: bcrypt + TOTP + sign)", "in-process", backend)
        await _measure(row, pids, login, parallel=PARALLEL, count=users, plan=plan)
        rows.append(row)

        async def certificate(i: int) -> None:
            await auth.user_certificate(f"user{i % users}", keys[i % len(keys)], ttl=3600)

        row = Row(
            "user certificate (no password check: sign + store + audit)", "in-process", backend
        )
        await _measure(
            row, pids, certificate, parallel=PARALLEL, seconds=plan.heartbeat_seconds, plan=plan
        )
        rows.append(row)

        reports = [
            Node(
                metadata=Metadata(name=host_id, labels={"env": "bench", "i": str(i)}),
                spec=NodeSpec(hostname=name, addr="127.0.0.1:3022"),
            )
            for i, (host_id, name) in enumerate(nodes)
        ]

        async def beat(i: int) -> None:
            report = reports[i % len(reports)]
            await auth.nodes.heartbeat(report, caller_host_id=report.metadata.name)

        row = Row("heartbeat", "in-process", backend)
        await _measure(
            row, pids, beat, parallel=PARALLEL, seconds=plan.heartbeat_seconds, plan=plan
        )
        rows.append(row)
    return rows


def bcrypt_floor(seconds: float) -> Row:
    """One thread checking one cost-12 bcrypt hash in a loop: the floor of every login."""
    import bcrypt

    row = Row(f"bcrypt check, cost {BCRYPT_COST} (floor of a login)", "one thread", "—")
    stored = bcrypt.hashpw(b"x" * 32, bcrypt.gensalt(BCRYPT_COST))
    cpu0 = time.process_time()
    start = time.perf_counter()
    while time.perf_counter() - start < seconds or not row.latencies:
        t0 = time.perf_counter()
        bcrypt.checkpw(b"x" * 32, stored)
        row.latencies.append(time.perf_counter() - t0)
    row.seconds = time.perf_counter() - start
    row.count = len(row.latencies)
    row.auth_cpu = time.process_time() - cpu0
    return row


def run_backend(backend: str, plan: Plan, work: pathlib.Path) -> list[Row]:
    """Every row of one backend; processes are stopped before returning."""
    import trio

    procs = peers.Processes()
    work.mkdir(parents=True)
    try:
        etcd_url, etcd_pid = (None, None)
        if backend == "etcd":
            etcd_url, etcd_pid = start_etcd(procs, work)
        config = write_config(work, backend, etcd_url)
        server = peers.start_script_server(
            procs,
            f"auth ({backend})",
            ["auth_bench.py", "serve", str(config), "--bcrypt-cost", str(BCRYPT_COST)],
            work / "auth.log",
        )
        pids = [server.process.pid] + ([etcd_pid] if etcd_pid else [])
        rows, nodes, totp = trio.run(over_ssh, server.port, work / "data", plan, backend, pids)
        procs.stop(server.process)
        rows += trio.run(in_process, config, plan, backend, etcd_pid, totp, nodes)
        return rows
    finally:
        procs.stop_all()


# --- the report ---------------------------------------------------------------------------


def _ms(values: list[float], q: float) -> str:
    if not values:
        return "—"
    ordered = sorted(values)
    return f"{ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000:.1f}"


def _find(rows: list[Row], operation: str, view: str, backend: str) -> Row | None:
    for row in rows:
        if row.operation.startswith(operation) and row.view == view and row.backend == backend:
            if not row.error and row.count:
                return row
    return None


def _notes(rows: list[Row]) -> list[str]:
    """Ratios between rows of this run (computed, not checked against anything)."""
    floor = _find(rows, "bcrypt", "one thread", "—")
    lines: list[str] = []
    for backend in ("sqlite", "etcd"):
        login = _find(rows, "user certificate (login", "SSH API", backend)
        if floor and login and login.auth_cpu is not None and floor.auth_cpu is not None:
            bcrypt_ms = floor.auth_cpu / floor.count * 1000
            login_ms = login.auth_cpu / login.count * 1000
            lines.append(
                f"- {backend}: logins over SSH ran at {login.rate / floor.rate:.2f}x the"
                f" one-thread bcrypt floor; of the auth service's {login_ms:.0f} ms of CPU per"
                f" login, bcrypt is {bcrypt_ms:.0f} ms and everything else (SSH, HTTP, TOTP,"
                f" store, signing, audit) {login_ms - bcrypt_ms:.1f} ms."
            )
        ssh = _find(rows, "heartbeat", "SSH API", backend)
        local = _find(rows, "heartbeat", "in-process", backend)
        if ssh and local and ssh.auth_cpu is not None and local.auth_cpu is not None:
            lines.append(
                f"- {backend}: a heartbeat costs the auth service"
                f" {ssh.auth_cpu / ssh.count * 1000:.1f} ms of CPU over SSH and"
                f" {local.auth_cpu / local.count * 1000:.1f} ms in-process (load generator"
                f" included); over SSH it absorbed {ssh.rate / local.rate:.2f}x the"
                " in-process rate."
            )
    if not lines:
        return []
    return ["", "## Notes", "", *lines]


def render(rows: list[Row], machine: dict[str, str], info: dict[str, str]) -> str:
    out = ["# trioport auth service benchmark results", ""]
    out.append(info["summary"])
    out += ["", "## Machine", "", "| | |", "|---|---|"]
    out += [f"| {k} | {v} |" for k, v in machine.items()]
    out += [
        "",
        "## Operations per second",
        "",
        "CPU columns are milliseconds per operation: the auth service (its process over"
        " SSH; this process in-process, where it includes the load generator), etcd, and"
        " the client (this process, SSH rows only). Latency is per operation, from the"
        " caller, with the stated number of operations in flight.",
        "",
        "| operation | view | backend | in flight | ops | seconds | **ops/s** | p50 ms | p90 ms"
        " | auth CPU ms | etcd CPU ms | client CPU ms |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        if row.error:
            out.append(f"| {row.operation} | {row.view} | {row.backend} | | | | error | | | | | |")
            continue
        flight = info.get(f"flight:{row.operation}:{row.view}", "")
        out.append(
            f"| {row.operation} | {row.view} | {row.backend} | {flight} | {row.count}"
            f" | {row.seconds:.1f} | **{row.rate:.1f}** | {_ms(row.latencies, 0.5)}"
            f" | {_ms(row.latencies, 0.9)} | {row.per_op_ms(row.auth_cpu)}"
            f" | {row.per_op_ms(row.etcd_cpu)} | {row.per_op_ms(row.client_cpu)} |"
        )
    out += _notes(rows)
    errors = [row for row in rows if row.error]
    if errors:
        out += ["", "## Errors", ""]
        out += [f"- {r.operation}, {r.view}, {r.backend}: {r.error}" for r in errors]
    out.append("")
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command")
    serve = sub.add_parser("serve", help="(internal) run the auth service")
    serve.add_argument("config")
    serve.add_argument("--bcrypt-cost", type=int, default=BCRYPT_COST)
    parser.add_argument("--quick", action="store_true", help="fewer users, shorter phases")
    parser.add_argument("--backends", default="sqlite,etcd")
    parser.add_argument("--budget", type=float, default=900.0, help="seconds for the whole run")
    parser.add_argument("--output", default=str(BENCH / "AUTH_RESULTS.md"))
    args = parser.parse_args()
    if args.command == "serve":
        return serve_main(args.config, args.bcrypt_cost)

    plan = (
        Plan(users=16, nodes=8, heartbeat_seconds=4.0, phase_limit=120.0)
        if args.quick
        else Plan(users=48, nodes=16, heartbeat_seconds=10.0, phase_limit=300.0)
    )
    started = time.monotonic()
    machine = benchlib.machine_description()
    machine["etcd"] = benchlib._first_line([ETCD, "--version"])
    machine["bcrypt cost"] = f"{BCRYPT_COST} (production)"
    rows: list[Row] = [bcrypt_floor(3.0)]
    backends = [b for b in args.backends.split(",") if b]
    with tempfile.TemporaryDirectory(prefix="trioport-auth-bench-") as tmp:
        for backend in backends:
            if time.monotonic() - started > args.budget:
                rows.append(Row("all", "—", backend, error="skipped: time budget spent"))
                continue
            print(f"  {backend} ...", file=sys.stderr)
            try:
                rows += run_backend(backend, plan, pathlib.Path(tmp) / backend)
            except Exception as exc:  # a failed backend is reported, the run goes on
                rows.append(Row("all", "—", backend, error=f"{type(exc).__name__}: {exc}"[:300]))
            for row in rows[-5:]:
                print(
                    f"  {row.operation} / {row.view} / {row.backend}: {row.rate:.1f}/s {row.error}",
                    file=sys.stderr,
                )
    machine["load average at end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    command = []
    skip = False
    for arg in sys.argv[1:]:  # where the report went does not matter
        if not skip and arg != "--output" and not arg.startswith("--output="):
            command.append(arg)
        skip = arg == "--output"
    info = {
        "summary": (
            f"{'Quick' if args.quick else 'Full'} run: {plan.users} users, {plan.nodes} nodes,"
            f" {plan.heartbeat_seconds:g} s per heartbeat row and per row of certificates"
            " without a password check; took"
            f" {time.monotonic() - started:.0f} s. Produced by"
            f" `{shlex.join(['python3', 'bench/auth_bench.py', *command])}`;"
            " docs/benchmarks.md says what each row means."
        ),
    }
    for row in rows:
        if row.operation.startswith("heartbeat") and row.view == "SSH API":
            flight = f"{plan.nodes} (1 per node)"
        elif row.view == "one thread":
            flight = "1"
        else:
            flight = str(PARALLEL)
        info[f"flight:{row.operation}:{row.view}"] = flight
    report = render(rows, machine, info)
    print(report)
    pathlib.Path(args.output).write_text(report)
    print(f"written to {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
