"""The whole path through the proxy beside OpenSSH's jump host, in one run.

    python3 bench/proxy_bench.py [--quick] [--size 256M] [--runs 30] [--repeat 3]

Issue 5's benchmark. It starts, on loopback ports:

- **trioport**: one ``trioport run`` (auth, proxy and a node in one process; see
  ``tests/load/harness.py``), a user logged in over HTTPS whose key, certificate
  and host CA are written as ``tsh login`` writes them (a ``TSH_HOME`` here), and
  the OpenSSH configuration ``tsh config`` prints;
- **OpenSSH on both hops**: two of Debian's ``sshd`` (started as ``bench/peers.py``
  starts them: own config, host key and authorized_keys, the ``trioport-bench``
  account), the first the jump host, the second the target.

Then, sequentially so the rows do not disturb one another:

1. **latency** of a command that does nothing, each a fresh client process, as a
   user types it: ``tsh ssh NODE true``; OpenSSH's ``ssh -J proxy NODE true``
   through trioport; ``ssh -J sshd1 sshd2 true`` (OpenSSH on both hops); plain
   ``ssh sshd2 true`` (no jump). Two floors explain tsh's figure: the Python
   interpreter starting and importing tsh (``tsh --help``), and the same two SSH
   connections made by the library tsh uses from a process already running (no
   start-up).
2. **bulk throughput** of SIZE bytes into ``cat >/dev/null`` on the target: the
   library tsh uses, direct to the node and through the proxy; ``tsh ssh`` with
   the data on stdin; OpenSSH's ``ssh`` direct to sshd2, ``-J`` through sshd1, and
   ``-J`` through trioport's proxy to trioport's node.

OpenSSH's clients are pinned to curve25519-sha256 and aes128-gcm@openssh.com (the
cipher trioport prefers); ``tsh`` uses its defaults (mlkem768x25519-sha256 when
both ends are trioport, then aes128-gcm). Writes ``bench/results/proxy.json`` and
``bench/results/proxy.md``. A benchmark: nothing is asserted; every client run has
a timeout; the servers are stopped by pid on exit, on error too.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import signal
import statistics
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
import peers  # noqa: E402

RESULTS = BENCH / "results"
CIPHER = "aes128-gcm@openssh.com"
#: Seconds any one client run may take.
CLIENT_TIMEOUT = 300.0


def _program(name: str) -> str:
    beside = pathlib.Path(sys.executable).parent / name
    return str(beside) if beside.exists() else (shutil.which(name) or name)


def parse_size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    text = text.strip().upper()
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


# --- timing a client process ---------------------------------------------------------------


def timed(argv: list[str], *, env: dict[str, str] | None = None, stdin: Any = None) -> float:
    """Seconds ``argv`` took; raises with its stderr if it failed."""
    t0 = time.perf_counter()
    out = subprocess.run(
        argv,
        stdin=stdin if stdin is not None else subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
        timeout=CLIENT_TIMEOUT,
        check=False,
    )
    elapsed = time.perf_counter() - t0
    if out.returncode != 0:
        tail = out.stderr.decode(errors="replace").strip()[-400:]
        raise RuntimeError(f"{argv[0]} exited {out.returncode}: {tail}")
    return elapsed


def latency_row(name: str, runs: int, one: Any) -> dict[str, Any]:
    """Run ``one()`` (returns seconds) ``runs`` times, after one untimed warm-up."""
    row: dict[str, Any] = {"name": name, "runs": runs}
    try:
        one()
        samples = [one() for _ in range(runs)]
    except Exception as exc:
        row["error"] = f"{type(exc).__name__}: {exc}"[:400]
        return row
    ms = sorted(s * 1000 for s in samples)
    row.update(
        median_ms=statistics.median(ms),
        p90_ms=ms[min(len(ms) - 1, round(0.9 * len(ms)) - 1)],
        min_ms=ms[0],
        max_ms=ms[-1],
    )
    return row


def throughput_row(
    name: str, size: int, repeat: int, one: Any, setup: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Run ``one()`` (seconds to move ``size`` bytes) ``repeat`` times; MB/s.

    ``setup``: the latency row of the same path running ``true``; its median is
    taken off each run for a second figure, the bytes' own rate.
    """
    row: dict[str, Any] = {"name": name, "bytes": size, "repeat": repeat}
    try:
        times = [one() for _ in range(repeat)]
    except Exception as exc:
        row["error"] = f"{type(exc).__name__}: {exc}"[:400]
        return row
    rates = [size / t / 1e6 for t in times]
    row.update(
        median_mbps=statistics.median(rates),
        min_mbps=min(rates),
        max_mbps=max(rates),
    )
    if setup and "median_ms" in setup:
        net = [t - setup["median_ms"] / 1000 for t in times]
        if all(t > 0 for t in net):
            row["net_of_setup_mbps"] = statistics.median(size / t / 1e6 for t in net)
    return row


# --- the library tsh uses, in this process ------------------------------------------------------


def library_runs(server: Any, user: Any, runs: int, size: int, repeat: int) -> dict[str, Any]:
    """tsh's two connections without process start-up, and bulk direct vs through the proxy."""
    import trio

    from tests.load import harness as h
    from trioport.roles.proxy import client as pc
    from trioport.ssh import connect
    from trioport.sshproto import ConnectionConfig, Role
    from trioport.sshproto import events as ev
    from trioport.sshproto.certs import ServiceRole

    chunk = os.urandom(256 * 1024)

    def direct() -> Any:
        verify = pc.host_verifier(user.host_cas, h.CLUSTER, ServiceRole.NODE, principal=h.NODENAME)
        return connect(
            server.node.host,
            server.node.port,
            username=h.LOGIN,
            signers=user.signers,
            config=ConnectionConfig(role=Role.CLIENT, verify_host_key=verify),
        )

    async def push(conn: Any) -> float:
        chan = await conn.open_session()
        if not await chan.request(ev.Exec(command=benchlib.CAT_COMMAND.encode())):
            raise RuntimeError("the node refused cat")
        t0 = time.perf_counter()
        sent = 0
        while sent < size:
            piece = chunk[: min(len(chunk), size - sent)]
            await chan.send_all(piece)
            sent += len(piece)
        await chan.send_eof()
        while await chan.receive_some():
            pass
        await chan.wait_closed()
        elapsed = time.perf_counter() - t0
        status = chan.exit_status
        await chan.aclose()
        if status != 0:
            raise RuntimeError(f"cat exited {status}")
        return elapsed

    async def setup_once() -> float:
        t0 = time.perf_counter()
        async with h.tsh_ssh(server, user) as node:
            result = await node.run("true")
        if result.exit_status != 0:
            raise RuntimeError(f"true exited {result.exit_status}")
        return time.perf_counter() - t0

    async def main() -> dict[str, Any]:
        out: dict[str, Any] = {}
        samples: list[float] = []
        try:
            await setup_once()
            for _ in range(runs):
                samples.append(await setup_once())
            ms = sorted(s * 1000 for s in samples)
            out["setup"] = {
                "name": "library tsh uses, in a running process (proxy + node + exec true)",
                "runs": runs,
                "median_ms": statistics.median(ms),
                "p90_ms": ms[min(len(ms) - 1, round(0.9 * len(ms)) - 1)],
                "min_ms": ms[0],
                "max_ms": ms[-1],
            }
        except Exception as exc:
            out["setup"] = {"name": "library setup", "error": f"{type(exc).__name__}: {exc}"}
        for label, opener in (("direct", "direct"), ("proxy", "proxy")):
            rates: list[float] = []
            try:
                for _ in range(repeat):
                    if opener == "direct":
                        async with direct() as conn:
                            rates.append(size / await push(conn) / 1e6)
                    else:
                        async with h.tsh_ssh(server, user) as conn:
                            rates.append(size / await push(conn) / 1e6)
                out[label] = {
                    "median_mbps": statistics.median(rates),
                    "min_mbps": min(rates),
                    "max_mbps": max(rates),
                    "bytes": size,
                    "repeat": repeat,
                }
            except Exception as exc:
                out[label] = {"error": f"{type(exc).__name__}: {exc}"[:400]}
        return out

    return trio.run(main)


# --- the run ------------------------------------------------------------------------------


def write_ssh_config(path: pathlib.Path, key: pathlib.Path, user: str) -> pathlib.Path:
    """An ssh_config for both OpenSSH hops (``-J`` passes ``-F`` to the jump's ssh)."""
    path.write_text(
        f"""Host *
  User {user}
  IdentityFile {key}
  IdentitiesOnly yes
  StrictHostKeyChecking no
  UserKnownHostsFile /dev/null
  GlobalKnownHostsFile /dev/null
  BatchMode yes
  LogLevel ERROR
  ConnectTimeout 20
  KexAlgorithms {benchlib.KEX}
  HostKeyAlgorithms ssh-ed25519
  Ciphers {CIPHER}
  Compression no
"""
    )
    return path


def run(args: argparse.Namespace, work: pathlib.Path) -> dict[str, Any]:
    import trio

    from tests.load import harness as h
    from trioport.roles.proxy.profile import Profile

    size, runs, repeat = args.size, args.runs, args.repeat
    result: dict[str, Any] = {"latency": [], "throughput": []}
    procs = peers.Processes()
    with h.start_server(work / "trioport") as server:
        try:
            user = trio.run(h.login, server, "bench")
            home = work / "tsh"
            Profile(
                proxy_host="127.0.0.1",
                web_port=server.web.port,
                ssh_host="127.0.0.1",
                ssh_port=server.proxy_ssh.port,
                user=user.name,
                cluster=h.CLUSTER,
                insecure=True,
                home=str(home),
                key=user.key,
                certificate=user.certificate,
                host_cas=user.host_cas,
            ).save()
            env = {k: v for k, v in os.environ.items() if k not in ("SSH_AUTH_SOCK",)}
            env["TSH_HOME"] = str(home)
            tsh = _program("tsh")
            snippet = subprocess.run(
                [tsh, "config"], env=env, capture_output=True, text=True, check=True, timeout=60
            ).stdout
            tsh_ssh_config = work / "tsh_ssh_config"
            tsh_ssh_config.write_text(
                snippet + f"\nHost *\n  KexAlgorithms {benchlib.KEX}\n  Ciphers {CIPHER}\n"
                "  BatchMode yes\n  LogLevel ERROR\n"
            )
            node_name = f"{h.NODENAME}.{h.CLUSTER}"
            jump = f"{user.name}@127.0.0.1:{server.proxy_ssh.port}"
            via_proxy = [
                benchlib.SSH,
                "-F",
                str(tsh_ssh_config),
                "-J",
                jump,
                f"{h.LOGIN}@{node_name}",
            ]

            # OpenSSH on both hops.
            account_problem = peers.ensure_login_account(peers.BENCH_USER)
            ossh: dict[str, Any] = {}
            if account_problem is None:
                key = benchlib.generate_ed25519(work / "user_key")
                authorized = work / "authorized_keys"
                authorized.write_text(key.public_line + "\n")
                # sshd reads authorized_keys as the login account: let it through.
                work.chmod(0o755)
                authorized.chmod(0o644)
                for name in ("jump", "target"):
                    d = work / f"sshd-{name}"
                    d.mkdir()
                    host_key = benchlib.generate_ed25519(d / "host_key")
                    ossh[name] = peers.start_sshd(procs, d, host_key, authorized, peers.BENCH_USER)
                ssh_cfg = write_ssh_config(work / "ssh_config", key.path, peers.BENCH_USER)
            else:
                result["openssh_error"] = account_problem

            def ssh_argv(*rest: str, jump_port: int | None = None) -> list[str]:
                argv = [benchlib.SSH, "-F", str(ssh_cfg)]
                if jump_port is not None:
                    argv += ["-J", f"{peers.BENCH_USER}@127.0.0.1:{jump_port}"]
                return [*argv, "-p", str(ossh["target"].port), "127.0.0.1", *rest]

            lat = result["latency"]
            rows: dict[str, dict[str, Any]] = {}
            rows["tsh"] = latency_row(
                "tsh ssh NODE true (trioport proxy -> trioport node)",
                runs,
                lambda: timed([tsh, "ssh", f"{h.LOGIN}@{h.NODENAME}", "true"], env=env),
            )
            rows["ssh_via_trioport"] = latency_row(
                "OpenSSH ssh -J trioport proxy -> trioport node, true",
                runs,
                lambda: timed([*via_proxy, "true"], env=env),
            )
            if ossh:
                rows["ssh_jump"] = latency_row(
                    "OpenSSH ssh -J sshd -> sshd, true",
                    runs,
                    lambda: timed(ssh_argv("true", jump_port=ossh["jump"].port)),
                )
                rows["ssh_direct"] = latency_row(
                    "OpenSSH ssh -> sshd directly, true (no jump)",
                    runs,
                    lambda: timed(ssh_argv("true")),
                )
            lat += list(rows.values())
            lat.append(
                latency_row(
                    "floor: tsh --help (Python start-up and tsh's imports)",
                    runs,
                    lambda: timed([tsh, "--help"], env=env),
                )
            )

            # Throughput.
            payload = work / "payload"
            with payload.open("wb") as f:
                left = size
                block = os.urandom(1 << 20)
                while left > 0:
                    f.write(block[: min(left, len(block))])
                    left -= len(block)

            def piped(argv: list[str], run_env: dict[str, str] | None = None) -> float:
                with payload.open("rb") as stdin:
                    return timed(argv, env=run_env, stdin=stdin)

            lib = library_runs(server, user, runs, size, repeat)
            lat.append(lib["setup"])
            thr = result["throughput"]
            thr.append({"name": "trioport library, direct to the node", **lib["direct"]})
            thr.append({"name": "trioport library, through the proxy", **lib["proxy"]})
            thr.append(
                throughput_row(
                    "tsh ssh NODE 'cat >/dev/null' < file (through the proxy)",
                    size,
                    repeat,
                    lambda: piped(
                        [tsh, "ssh", f"{h.LOGIN}@{h.NODENAME}", benchlib.CAT_COMMAND], env
                    ),
                    rows["tsh"],
                )
            )
            thr.append(
                throughput_row(
                    "OpenSSH ssh -J trioport proxy -> trioport node",
                    size,
                    repeat,
                    lambda: piped(
                        [*via_proxy, benchlib.CAT_COMMAND],
                        env,
                    ),
                    rows["ssh_via_trioport"],
                )
            )
            if ossh:
                thr.append(
                    throughput_row(
                        "OpenSSH ssh -> sshd directly",
                        size,
                        repeat,
                        lambda: piped(ssh_argv(benchlib.CAT_COMMAND)),
                        rows["ssh_direct"],
                    )
                )
                thr.append(
                    throughput_row(
                        "OpenSSH ssh -J sshd -> sshd",
                        size,
                        repeat,
                        lambda: piped(ssh_argv(benchlib.CAT_COMMAND, jump_port=ossh["jump"].port)),
                        rows["ssh_jump"],
                    )
                )
        finally:
            procs.stop_all()
    return result


def _cell(value: float | None, fmt: str = "{:.1f}") -> str:
    return "—" if value is None else fmt.format(value)


def render(doc: dict[str, Any]) -> str:
    """The markdown section for ``bench/results/proxy.md``."""
    lines = [
        "## Through the proxy: `tsh ssh` beside `ssh -J` (bench/proxy_bench.py)",
        "",
        f"{'Quick' if doc['quick'] else 'Full'} run on {doc['machine'].get('CPU', '?')},"
        f" {doc['machine'].get('cores (os.cpu_count)', '?')} cores, load average"
        f" {doc['load_start']} at start and {doc['load_end']} at end; trioport"
        f" {doc['machine'].get('trioport commit', '?')}; took {doc['seconds']:.0f} s."
        " The machine is shared with other work and noisy: read ratios, not absolutes.",
        "",
        "### Latency of a command that does nothing, ms (fresh client process each time)",
        "",
        "| path | runs | median | p90 | min | max |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for row in doc["latency"]:
        if "error" in row:
            lines.append(f"| {row['name']} | — | failed: {row['error']} | | | |")
            continue
        lines.append(
            f"| {row['name']} | {row['runs']} | **{row['median_ms']:.1f}** |"
            f" {row['p90_ms']:.1f} | {row['min_ms']:.1f} | {row['max_ms']:.1f} |"
        )
    lines += [
        "",
        f"### Bulk throughput into `cat >/dev/null`, MB/s ({doc['size'] >> 20} MiB per run)",
        "",
        "| path | runs | median | min | max | median, set-up taken off |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for row in doc["throughput"]:
        if "error" in row:
            lines.append(f"| {row['name']} | — | failed: {row['error']} | | | |")
            continue
        net = row.get("net_of_setup_mbps")
        lines.append(
            f"| {row['name']} | {row['repeat']} | **{row['median_mbps']:.0f}** |"
            f" {row['min_mbps']:.0f} | {row['max_mbps']:.0f} |"
            f" {'—' if net is None else f'{net:.0f}'} |"
        )
    lines += [
        "",
        "The `tsh ssh` and `ssh` rows include their process's start-up and handshakes"
        " (the last column takes off the median latency of the same path running `true`);"
        " the library rows time the bytes only. OpenSSH is pinned to curve25519-sha256"
        " and aes128-gcm; tsh negotiates mlkem768x25519-sha256 with trioport's proxy"
        " and node.",
        "",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="64 MiB, 10 runs, 1 repeat")
    parser.add_argument("--size", type=parse_size, default=None, help="bytes per bulk run")
    parser.add_argument("--runs", type=int, default=None, help="latency samples per row")
    parser.add_argument("--repeat", type=int, default=None, help="bulk runs per row")
    parser.add_argument("--out", type=pathlib.Path, default=RESULTS / "proxy.json")
    args = parser.parse_args()
    args.size = args.size or parse_size("64M" if args.quick else "256M")
    args.runs = args.runs or (10 if args.quick else 30)
    args.repeat = args.repeat or (1 if args.quick else 3)
    # SIGTERM (timeout(1), a CI runner) unwinds like Ctrl-C, so every server is stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    started = time.time()
    load_start = " ".join(f"{x:.2f}" for x in os.getloadavg())
    with tempfile.TemporaryDirectory(prefix="trioport-proxy-bench-") as tmp:
        result = run(args, pathlib.Path(tmp))
    doc = {
        "bench": "proxy",
        "quick": args.quick,
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "seconds": time.time() - started,
        "size": args.size,
        "machine": benchlib.machine_description(),
        "load_start": load_start,
        "load_end": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        **result,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(render(doc))
    print(render(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
