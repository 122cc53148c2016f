"""Load at full size: sessions, idle connections, a stalled reader, heartbeating nodes, cycles.

    python3 bench/load.py [--quick] [--only sessions,idle,stalled,cycles,nodes]
                          [--sessions 500] [--idle 1000] [--nodes 5000] [--cycles 10000]
                          [--backends sqlite,etcd] [--sshd-idle 200]

The scenarios of issue 7's "Load" proof, the same code as the CI tests in
``tests/load/`` (:mod:`tests.load.harness`, :mod:`tests.load.heartbeats`) at the
sizes the issue names; ``--quick`` runs them at a tenth or so. Each against a
fresh ``trioport run`` (auth, proxy and a node in one process, on loopback; fresh
so that no scenario reuses memory another freed), with the clients in this
process using the library ``tsh`` uses:

- **sessions**: SESSIONS pty sessions through the proxy to the node, all open at
  once, each running ``cat`` and typing 20 keys at about 5 a second (a random
  0-400 ms pause before each); the echo latency of every key (p50/p90/p99) and the
  server's resident memory per open session (its RSS with all open minus before,
  over the sessions; the ``cat`` processes are not in it);
- **idle**: IDLE authenticated ``tsh ssh`` connections (the proxy's and the node's
  inside it), no session: memory per connection, and the descriptors, threads,
  processes and open connections after they all closed, beside the baseline;
- **stalled**: ``yes`` into a client that stops reading, for STALL seconds, while
  another session types: the server's RSS over time and the other's echo latency;
- **cycles**: CYCLES x (connect, authenticate, exec ``true``, exit), two at a time:
  errors, the audit log's ``exec`` count, the server's RSS along the way, and its
  descriptors, processes and temporary files at the end beside the start;
- **nodes**: NODES simulated nodes (own token, key, certificate and connection
  each; see :mod:`tests.load.heartbeats`) joining and heartbeating to one auth
  service in its own process (``load.py serve-auth CONFIG``, the join rate limit
  lifted in it), on SQLite and on etcd: first a burst (3 heartbeats each, all
  nodes at once: the most it absorbs), then paced as nodes send them (every
  10 s from a random start, 3 each: the offered rate is NODES / 10 per second);
  joins/s, heartbeats/s, failures, latency, and the auth service's memory per
  connected node;
- **sshd-idle** (the OpenSSH figure beside *idle*): SSHD_IDLE ``ssh -N`` clients
  held against one of Debian's ``sshd`` (started as ``bench/peers.py`` does): the
  proportional set size (PSS) of sshd's per-connection processes, per connection.

Writes ``bench/results/load.json`` and ``bench/results/load.md``. A benchmark:
nothing is asserted; each scenario's failure is recorded and the run goes on;
servers are stopped by pid at the end, on error too.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any

BENCH = pathlib.Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(ROOT))

import benchlib  # noqa: E402

RESULTS = BENCH / "results"
#: A node's heartbeat interval (trioport.roles.node.heartbeat.HEARTBEAT_INTERVAL).
PACED_INTERVAL = 10.0
SCENARIOS = ("sessions", "idle", "stalled", "cycles", "nodes", "sshd-idle")
FULL = {"sessions": 500, "idle": 1000, "nodes": 5000, "cycles": 10000, "stall": 30.0, "sshd": 200}
QUICK = {"sessions": 50, "idle": 200, "nodes": 500, "cycles": 300, "stall": 10.0, "sshd": 50}


# --- the auth service process for the nodes scenario -------------------------------------------


def serve_auth_main(config_path: str) -> int:
    """``load.py serve-auth CONFIG``: the auth service, joins unlimited; prints ``{"port": N}``."""
    import trio

    from tests.load.heartbeats import unlimited_joins
    from trioport.config import load_config
    from trioport.roles.auth import service

    config = load_config(config_path)

    async def run() -> None:
        async with trio.open_nursery() as nursery:
            addrs = await nursery.start(
                lambda task_status: service.serve(config, task_status=task_status, bcrypt_cost=4)
            )
            benchlib.emit({"port": addrs[0][1]})

    with unlimited_joins():
        trio.run(run)
    return 0


def nodes_on(backend: str, count: int, work: pathlib.Path, burst_rounds: int = 3) -> dict[str, Any]:
    """The nodes scenario against an auth service process on ``backend``."""
    import contextlib

    import trio

    from tests.load import heartbeats as hb
    from trioport.config import Address, dump_config

    work.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        url = None
        etcd_pid = None
        if backend == "etcd":
            url, etcd_pid = stack.enter_context(hb.etcd(work / "etcd"))
        config = hb.auth_config(work / "data", backend, url)
        path = work / "auth.yaml"
        path.write_text(dump_config(config))
        log = (work / "auth.log").open("wb")
        stack.callback(log.close)
        process = subprocess.Popen(
            [sys.executable, str(BENCH / "load.py"), "serve-auth", str(path)],
            stdout=subprocess.PIPE,
            stderr=log,
            start_new_session=True,
        )

        def stop() -> None:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(15)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
            if process.stdout is not None:
                process.stdout.close()

        stack.callback(stop)
        assert process.stdout is not None
        line = process.stdout.readline()
        if not line:
            raise RuntimeError(f"the auth service did not start: {(work / 'auth.log').read_text()}")
        port = json.loads(line)["port"]
        cpu0 = _cpu(process.pid) + (_cpu(etcd_pid) if etcd_pid else 0.0)
        result = trio.run(
            lambda: hb.heartbeating_nodes(
                Address("127.0.0.1", port),
                work / "data",
                count,
                rounds=burst_rounds,
                then=[(3, PACED_INTERVAL)],
                auth_pid=process.pid,
            )
        )
        result["auth_and_etcd_cpu_seconds"] = (
            _cpu(process.pid) + (_cpu(etcd_pid) if etcd_pid else 0.0) - cpu0
        )
        result["backend"] = backend
        return result


def _cpu(pid: int) -> float:
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")


# --- OpenSSH's figure beside "idle" --------------------------------------------------------------


def _pss(pid: int) -> int:
    """Proportional set size of ``pid`` in bytes (shared pages split among their users)."""
    for line in pathlib.Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) * 1024
    return 0


def sshd_idle(count: int, work: pathlib.Path, *, session: bool = False) -> dict[str, Any]:
    """``count`` idle ``ssh -N`` connections held against one sshd: PSS per connection.

    With ``session``, each is ``ssh -tt HOST cat`` instead (a pty session running
    ``cat``, what the trioport sessions scenario holds): PSS per session, sshd's
    processes, the login shell and ``cat`` included.
    """
    import peers

    from tests.load.harness import descendants

    problem = peers.ensure_login_account(peers.BENCH_USER)
    if problem is not None:
        return {"error": problem}
    work.mkdir(parents=True, exist_ok=True)
    procs = peers.Processes()
    clients: list[subprocess.Popen[bytes]] = []
    try:
        key = benchlib.generate_ed25519(work / "user_key")
        authorized = work / "authorized_keys"
        authorized.write_text(key.public_line + "\n")
        # sshd reads authorized_keys as the login account: let it through.
        for d in (work, *work.parents):
            if d == pathlib.Path(tempfile.gettempdir()):
                break
            d.chmod(0o755)
        authorized.chmod(0o644)
        host_key = benchlib.generate_ed25519(work / "host_key")
        server = peers.start_sshd(procs, work, host_key, authorized, peers.BENCH_USER)
        sshd_pid = server.cpu_pids[-1]  # the sshd under the reaper

        def per_connection() -> list[int]:
            return [p for p in descendants(sshd_pid) if p != sshd_pid]

        base = sum(_pss(p) for p in per_connection())
        base_rss = sum(_rss(p) for p in [sshd_pid])
        argv = [
            benchlib.SSH,
            *benchlib.ssh_options(key.path),
            *(["-tt"] if session else ["-N"]),
            "-p",
            str(server.port),
            f"{peers.BENCH_USER}@{benchlib.HOST}",
            *(["cat"] if session else []),
        ]
        # A session's stdin stays open (a pipe nobody writes to) so cat waits.
        stdin = subprocess.PIPE if session else subprocess.DEVNULL
        expected = (4 if session else 2) * count
        for _ in range(count):
            clients.append(
                subprocess.Popen(
                    argv, stdin=stdin, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
                )
            )
            if len(clients) % 8 == 0:
                time.sleep(0.2)  # stay under MaxStartups
        deadline = time.monotonic() + 120
        while len(per_connection()) < expected and time.monotonic() < deadline:
            if all(c.poll() is not None for c in clients):
                break
            time.sleep(0.2)
        time.sleep(2.0)
        kids = per_connection()
        pss = sum(_pss(p) for p in kids)
        rss = sum(_rss(p) for p in kids)
        alive = sum(1 for c in clients if c.poll() is None)
        return {
            "kind": "pty session running cat" if session else "idle connection",
            "connections": count,
            "clients_alive": alive,
            "sshd_processes": len(kids),
            "pss_per_connection": (pss - base) / max(1, alive),
            "rss_per_connection": rss / max(1, alive),
            "listener_rss": base_rss,
        }
    finally:
        for c in clients:
            c.terminate()
            if c.stdin is not None:
                c.stdin.close()
        for c in clients:
            try:
                c.wait(10)
            except subprocess.TimeoutExpired:
                c.kill()
                c.wait()
        procs.stop_all()


def _rss(pid: int) -> int:
    from tests.load.harness import rss_bytes

    try:
        return rss_bytes(pid)
    except (OSError, KeyError):
        return 0


# --- the markdown section ----------------------------------------------------------------------

MiB = 1024 * 1024


def _mb(n: float | None) -> str:
    return "—" if n is None else f"{n / MiB:.1f} MiB"


def _kb(n: float | None) -> str:
    return "—" if n is None else f"{n / 1024:.0f} KiB"


def _signed_mb(n: float | None) -> str:
    return "—" if n is None else f"{n / MiB:+.1f} MiB"


def _ms(x: float | None) -> str:
    return "—" if x is None else f"{x:.1f}"


def _resources(before: dict[str, int], after: dict[str, int]) -> str:
    keys = ("fds", "threads", "children", "open_connections", "tmp_files")
    return ", ".join(f"{k} {before.get(k, '?')}→{after.get(k, '?')}" for k in keys)


def _errors(result: dict[str, Any]) -> str:
    errors = result.get("errors") or []
    if not errors:
        return "0"
    return f"{len(errors)} (first: {errors[0]})"


def render(doc: dict[str, Any]) -> str:
    """The markdown section for ``bench/results/load.md``."""
    m = doc["machine"]
    sizes = doc["sizes"]
    lines = [
        "## Load (bench/load.py)",
        "",
        f"{'Quick' if doc['quick'] else 'Full'} run on {m.get('CPU', '?')},"
        f" {m.get('cores (os.cpu_count)', '?')} cores, load average {doc['load_start']} at"
        f" start and {doc['load_end']} at end; trioport {m.get('trioport commit', '?')};"
        f" took {doc['seconds']:.0f} s. The server is one `trioport run` (auth, proxy, node),"
        " a fresh one for each scenario;"
        " the load generator (every client) shares the same two cores, and the machine is"
        " shared with other work: the latencies include queueing in the generator.",
        "",
        "| scenario | result |",
        "|---|---|",
    ]
    s = doc.get("sessions")
    if s:
        if "error" in s:
            lines.append(f"| {sizes['sessions']} pty sessions | failed: {s['error']} |")
        else:
            e = s["echo_ms"]
            lines.append(
                f"| {s['sessions']} concurrent pty sessions through the proxy, each typing"
                f" 20 keys | held {s['opened']}, errors {_errors(s)}, {s['keystrokes']} echoes;"
                f" echo p50 {_ms(e['p50'])} ms, p90 {_ms(e['p90'])} ms, **p99 {_ms(e['p99'])} ms**;"
                f" server memory **{_kb(s['rss_per_session'])} per session**"
                f" ({_mb(s['baseline']['rss'])} → {_mb(s['held']['rss'])}), plus"
                f" {_kb(s.get('children_pss_per_session'))} PSS of its `cat` process;"
                f" opened in {s['open_seconds']:.1f} s |"
            )
    i = doc.get("idle")
    if i:
        if "error" in i:
            lines.append(f"| {sizes['idle']} idle connections | failed: {i['error']} |")
        else:
            lines.append(
                f"| {i['connections']} idle authenticated tsh connections (proxy + node)"
                f" | held {i['opened']}, errors {_errors(i)}; server memory"
                f" **{_kb(i['rss_per_connection'])} per connection**"
                f" ({_mb(i['baseline']['rss'])} → {_mb(i['held']['rss'])}, after close"
                f" {_mb(i['after']['rss'])}); after close:"
                f" {_resources(i['baseline'], i['after'])} |"
            )
    for key, what in (
        ("sshd_idle", "idle `ssh -N` connections"),
        ("sshd_sessions", "pty sessions running cat (`ssh -tt HOST cat`)"),
    ):
        o = doc.get(key)
        if not o:
            continue
        if "error" in o:
            lines.append(f"| OpenSSH sshd, {what} | failed: {o['error']} |")
        else:
            lines.append(
                f"| OpenSSH sshd, {o['connections']} {what}"
                f" | {o['clients_alive']} held, {o['sshd_processes']} processes under sshd;"
                f" **{_kb(o['pss_per_connection'])} PSS per connection**"
                f" ({_kb(o['rss_per_connection'])} RSS) |"
            )
    st = doc.get("stalled")
    if st:
        if "error" in st:
            lines.append(f"| stalled reader | failed: {st['error']} |")
        else:
            lines.append(
                f"| `yes` into a client that stopped reading, {st['seconds']:.0f} s"
                f" | server RSS {_signed_mb(st['rss_growth'])} in all,"
                f" {_signed_mb(st['rss_growth_last_two_thirds'])} after the first third;"
                f" the other session echoed {st['echoes']} keys (p99"
                f" {_ms(st['echo_ms']['p99'])} ms), errors {_errors(st)} |"
            )
    c = doc.get("cycles")
    if c:
        if "error" in c:
            lines.append(f"| {sizes['cycles']} cycles | failed: {c['error']} |")
        else:
            trace = c.get("rss_trace") or []
            growth = (trace[-1][1] - trace[0][1]) if len(trace) >= 2 else None
            # Whether memory levels off: the second half of the run on its own.
            half = [rss for done, rss in trace if done >= c["cycles"] // 2]
            levels = (
                f"; over the second half {_mb(min(half))} to {_mb(max(half))},"
                f" {_signed_mb(half[-1] - half[0])} from its start to the end"
                if len(half) >= 2
                else ""
            )
            lines.append(
                f"| {c['cycles']} connect/authenticate/exec `true`/exit cycles,"
                f" {c['parallel']} at a time | errors {_errors(c)},"
                f" exit 0: {c['exit_statuses_zero']}, audit `exec` events {c['exec_events']};"
                f" {c['cycles_per_second']:.1f} cycles/s; server RSS"
                f" {_mb(c['baseline']['rss'])} → {_mb(c['after']['rss'])}"
                f" ({_signed_mb(growth)} from the first to the last twentieth{levels});"
                f" at the end: {_resources(c['baseline'], c['after'])} |"
            )
    for backend, n in (doc.get("nodes") or {}).items():
        if "error" in n:
            lines.append(f"| {sizes['nodes']} nodes on {backend} | failed: {n['error']} |")
            continue
        lat = n["latency_ms"]
        burst = (
            f" **{n['heartbeats_per_second']:.0f} heartbeats/s** (all nodes at once,"
            f" {n['rounds']} each; p50 {_ms(lat['p50'])} ms, p99 {_ms(lat['p99'])} ms);"
            if n["rounds"]
            else " no burst;"
        )
        lines.append(
            f"| {n['nodes']} simulated nodes heartbeating, {backend}"
            f" | joined {n['joined']} ({n['joins_per_second']:.0f}/s), connected"
            f" {n['connected']}, listed online {n['listed']}, errors {_errors(n)};{burst}"
            f" auth memory {_kb(n['auth_rss_per_node'])} per connected node |"
        )
        for p in n.get("then") or []:
            plat = p["latency_ms"]
            lines.append(
                f"| the same {n['connected']} nodes, {backend}, each every"
                f" {p['interval']:.0f} s (a node's interval), {p['rounds']} each"
                f" | offered {p['offered_per_second']:.0f}/s, **absorbed"
                f" {p['heartbeats_per_second']:.0f}/s**, {p['heartbeats']} answered,"
                f" **{p['failed']} failed**"
                f"{' (first: ' + p['errors'][0] + ')' if p['errors'] else ''};"
                f" p50 {_ms(plat['p50'])} ms, p99 {_ms(plat['p99'])} ms |"
            )
    lines += [
        "",
        "Memory is the server process's resident set (VmRSS) while everything is held"
        " minus before, over the count; the node's `cat` processes and sshd's are separate"
        " processes (sshd's figure is PSS, so shared pages count once). Python's allocator"
        " keeps freed memory, so RSS after close stays near its peak; descriptors,"
        " threads, processes and connections are what must return.",
        "",
    ]
    return "\n".join(lines)


# --- the run -------------------------------------------------------------------------------------


def _attempt(name: str, fn: Any) -> dict[str, Any]:
    print(f"load: {name} ...", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    try:
        result = fn()
    except Exception as exc:  # a failed scenario is reported, the run goes on
        result = {"error": f"{type(exc).__name__}: {exc}"[:500]}
    result["wall_seconds"] = time.perf_counter() - t0
    print(f"load: {name} done in {result['wall_seconds']:.0f} s", file=sys.stderr, flush=True)
    return result


def run(args: argparse.Namespace, work: pathlib.Path) -> dict[str, Any]:
    import trio

    from tests.load import harness as h

    out: dict[str, Any] = {}
    wanted = set(args.only)

    def fresh(name: str, scenario: Any) -> Any:
        """Run ``scenario(server, user)`` on a server of its own.

        Each memory figure starts from a server that has not yet held anything:
        Python keeps freed memory for reuse, so a scenario after another one would
        look cheaper than it is.
        """

        def go() -> dict[str, Any]:
            with h.start_server(work / name) as server:
                user = trio.run(h.login, server, "loader")
                return trio.run(lambda: scenario(server, user))  # type: ignore[no-any-return]

        return go

    if "sessions" in wanted:
        out["sessions"] = _attempt(
            f"{args.sessions} sessions",
            fresh(
                "sessions",
                lambda server, user: h.interactive_sessions(
                    server, user, args.sessions, keystrokes=20, pace=0.2
                ),
            ),
        )
    if "idle" in wanted:
        out["idle"] = _attempt(
            f"{args.idle} idle connections",
            fresh("idle", lambda server, user: h.idle_connections(server, user, args.idle)),
        )
    if "stalled" in wanted:
        out["stalled"] = _attempt(
            "stalled reader",
            fresh(
                "stalled",
                lambda server, user: h.stalled_reader(
                    server, user, keys=max(3, int(args.stall / 0.5)), interval=0.5
                ),
            ),
        )
    if "cycles" in wanted:
        out["cycles"] = _attempt(
            f"{args.cycles} cycles",
            fresh("cycles", lambda server, user: h.connect_cycles(server, user, args.cycles)),
        )
    if "nodes" in wanted:
        out["nodes"] = {
            backend: _attempt(
                f"{args.nodes} nodes on {backend}",
                lambda backend=backend: nodes_on(
                    backend, args.nodes, work / f"nodes-{backend}", args.burst_rounds
                ),
            )
            for backend in args.backends
        }
    if "sshd-idle" in wanted:
        out["sshd_idle"] = _attempt(
            f"{args.sshd_idle} idle OpenSSH connections",
            lambda: sshd_idle(args.sshd_idle, work / "sshd"),
        )
        out["sshd_sessions"] = _attempt(
            f"{args.sshd_idle} OpenSSH pty sessions",
            lambda: sshd_idle(args.sshd_idle, work / "sshd-sessions", session=True),
        )
    return out


def main() -> int:
    if len(sys.argv) >= 3 and sys.argv[1] == "serve-auth":
        return serve_auth_main(sys.argv[2])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="about a tenth of the full sizes")
    parser.add_argument("--only", default=",".join(SCENARIOS), help="comma-separated scenarios")
    parser.add_argument("--sessions", type=int)
    parser.add_argument("--idle", type=int)
    parser.add_argument("--nodes", type=int)
    parser.add_argument("--cycles", type=int)
    parser.add_argument("--stall", type=float, help="seconds of the stalled reader")
    parser.add_argument("--sshd-idle", type=int, dest="sshd_idle")
    parser.add_argument("--backends", default="sqlite,etcd")
    parser.add_argument(
        "--burst-rounds",
        type=int,
        default=3,
        help="heartbeats per node in the burst before the paced phase (0: no burst)",
    )
    parser.add_argument("--out", type=pathlib.Path, default=RESULTS / "load.json")
    args = parser.parse_args()
    sizes = QUICK if args.quick else FULL
    args.sessions = args.sessions or sizes["sessions"]
    args.idle = args.idle or sizes["idle"]
    args.nodes = args.nodes or sizes["nodes"]
    args.cycles = args.cycles or sizes["cycles"]
    args.stall = args.stall or sizes["stall"]
    args.sshd_idle = args.sshd_idle or sizes["sshd"]
    args.only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(args.only) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenarios: {', '.join(sorted(unknown))}")
    args.backends = [b.strip() for b in args.backends.split(",") if b.strip()]

    # SIGTERM (timeout(1), a CI runner) unwinds like Ctrl-C, so every server is stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    started = time.time()
    load_start = " ".join(f"{x:.2f}" for x in os.getloadavg())
    with tempfile.TemporaryDirectory(prefix="trioport-load-bench-") as tmp:
        results = run(args, pathlib.Path(tmp))
    doc = {
        "bench": "load",
        "quick": args.quick,
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "seconds": time.time() - started,
        "machine": benchlib.machine_description(),
        "load_start": load_start,
        "load_end": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "sizes": {
            "sessions": args.sessions,
            "idle": args.idle,
            "nodes": args.nodes,
            "cycles": args.cycles,
            "stall_seconds": args.stall,
            "sshd_idle": args.sshd_idle,
        },
        **results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    text = render(doc)
    args.out.with_suffix(".md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
