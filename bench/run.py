"""Side-by-side SSH benchmark: trioport, OpenSSH and asyncssh on loopback, in one run.

    python3 bench/run.py [--size 1G] [--quick] [--repeat N] [--only WORDS]

Starts every server in its own process (trioport, asyncssh, Debian's sshd with a
generated config, and the no-SSH floor receiver), all on 127.0.0.1 ports chosen
by the OS, with keys generated into a temporary directory. Then, side by side:

- bulk throughput: SIZE bytes through one channel whose exec'd command is
  ``cat >/dev/null``, per cipher suite, for each client → server pair; plus the
  in-process sink rows of the libraries; plus the floor;
- connection setup (handshake + publickey auth + ``exec true``): median latency
  of sequential connections, and connections per second with 8 in parallel.

Prints a table and writes it, with the machine description, to bench/SSH_RESULTS.md
(bench/summary.py gathers it with every other figure into bench/RESULTS.md).
This is a benchmark, not a test: nothing is asserted. Every client run has a
timeout, the whole run has a time budget, and every process started here is
stopped before exit (see docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import io
import os
import pathlib
import pstats
import pwd
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Callable

BENCH = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import benchlib  # noqa: E402
import peers  # noqa: E402
from benchlib import CAT_COMMAND, SINK_COMMAND, SUITES  # noqa: E402
from report import (  # noqa: E402
    BULK_PAIRS,
    FLOOR,
    GCM,
    PARALLEL,
    SETUP_PAIRS,
    Results,
    RunInfo,
    Sample,
    SetupRow,
    render,
)


def parse_size(text: str) -> int:
    """``1G``, ``64M``, ``512K`` or a plain byte count (binary units)."""
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    text = text.strip().upper().removesuffix("IB").removesuffix("B")
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:300]


class Bench:
    """The servers of one run and the measurements made against them."""

    def __init__(
        self,
        procs: peers.Processes,
        work: pathlib.Path,
        size: int,
        user: str,
        profile_dir: pathlib.Path | None = None,
    ) -> None:
        self.procs = procs
        self.profile_dir = profile_dir
        self.work = work
        self.size = size
        self.user = user
        self.timeout = 30 + size / 4e6
        self.host_key = benchlib.generate_ed25519(work / "host_ed25519", "bench-host")
        self.user_key = benchlib.generate_ed25519(work / "user_ed25519", "bench-user")
        self.authorized = work / "authorized_keys"
        self.authorized.write_text(self.user_key.public_line + "\n")
        # sshd reads authorized_keys with the login account's privileges.
        work.chmod(0o755)
        self.authorized.chmod(0o644)
        self.source = work / "zeros"
        with self.source.open("wb") as f:
            f.truncate(size)  # sparse: ssh reads it with no producer process
        self.servers: dict[str, peers.Server | str] = {}

    def start_servers(self) -> None:
        keys = ["--host-key", str(self.host_key.path), "--authorized-keys", str(self.authorized)]
        trioport = ["trioport_server.py", *keys]
        if self.profile_dir is not None:
            trioport += ["--profile", str(self.profile_dir / "trioport-server.prof")]
        starters: dict[str, Callable[[], peers.Server]] = {
            "sshd": lambda: peers.start_sshd(
                self.procs, self.work, self.host_key, self.authorized, self.user
            ),
            "asyncssh": lambda: self._script("asyncssh", ["asyncssh_server.py", *keys]),
            "trioport": lambda: self._script("trioport", trioport),
            "floor": lambda: self._script("floor", ["floor.py", "serve"]),
        }
        for name, start in starters.items():
            try:
                self.servers[name] = start()
            except Exception as exc:
                self.servers[name] = _error(exc)
                print(f"! {name} server: {self.servers[name]}", file=sys.stderr)

    def _script(self, name: str, argv: list[str]) -> peers.Server:
        return peers.start_script_server(self.procs, name, argv, self.work / f"{name}.log")

    def _server(self, name: str) -> peers.Server:
        srv = self.servers[name]
        if isinstance(srv, str):
            raise RuntimeError(f"{name} server unavailable: {srv}")
        return srv

    def _client_argv(self, client: str, mode: str, port: int) -> list[str]:
        argv = [f"{client}_client.py", mode, "--port", str(port), "--user", self.user]
        return [*argv, "--key", str(self.user_key.path)]

    def bulk(self, client: str, server: str, view: str, suite: tuple[str, str | None]) -> Sample:
        """One bulk run: SIZE bytes through one channel; throughput and CPU per GB."""
        srv = self._server(server)
        cipher, mac = suite
        command = CAT_COMMAND if view == "cat" else SINK_COMMAND
        meter = peers.CpuMeter(srv)
        if client == "ssh":
            result = peers.ssh_bulk(
                self.procs,
                srv.port,
                self.user_key.path,
                self.user,
                suite,
                command,
                self.source,
                self.timeout,
                str(self.work / "mux"),
            )
        else:
            argv = self._client_argv(client, "bulk", srv.port)
            argv += ["--cipher", cipher, "--command", command, "--size", str(self.size)]
            if mac:
                argv += ["--mac", mac]
            if client == "trioport" and self.profile_dir is not None:
                name = f"trioport-client-{server}-{view}-{cipher.split('@')[0]}.prof"
                argv += ["--profile", str(self.profile_dir / name)]
            result = peers.run_json(argv, self.timeout)
        return self._sample(result, meter)

    def floor(self) -> Sample:
        """The same bytes as AES-GCM frames over trio TCP, without SSH."""
        srv = self._server("floor")
        meter = peers.CpuMeter(srv)
        argv = ["floor.py", "send", "--port", str(srv.port), "--size", str(self.size)]
        return self._sample(peers.run_json(argv, self.timeout), meter)

    @staticmethod
    def _sample(result: dict, meter: peers.CpuMeter) -> Sample:
        client_cpu, server_cpu = meter.stop()
        # A Python client reports the CPU of its timed section (no interpreter start-up,
        # imports or handshake); for ssh, every process it took counts.
        client_cpu = result.get("cpu", client_cpu)
        gb = result["bytes"] / 1e9
        return Sample(result["bytes"] / result["seconds"] / 1e6, client_cpu / gb, server_cpu / gb)

    def setup(self, client: str, server: str, count: int) -> SetupRow:
        """Median latency of ``count`` sequential connections, then cps with 8 in parallel."""
        timeout = 60 + count * 2.0
        srv = self._server(server)
        many = count * 2
        if client == "ssh":
            key = self.user_key.path
            seq = peers.ssh_setup(srv.port, key, self.user, count, 1, timeout)
            meter = peers.CpuMeter(srv)
            par = peers.ssh_setup(srv.port, key, self.user, many, PARALLEL, timeout)
        else:
            base = self._client_argv(client, "setup", srv.port)
            seq = peers.run_json([*base, "--count", str(count), "--parallel", "1"], timeout)
            meter = peers.CpuMeter(srv)
            argv = [*base, "--count", str(many), "--parallel", str(PARALLEL)]
            par = peers.run_json(argv, timeout)
        client_cpu, server_cpu = meter.stop()
        client_cpu = par.get("cpu", client_cpu)
        return SetupRow(
            median_ms=statistics.median(seq["latencies"]) * 1000,
            cps=len(par["latencies"]) / par["wall"],
            client_cpu_ms=client_cpu / many * 1000,
            server_cpu_ms=server_cpu / many * 1000,
        )


def run_all(bench: Bench, args: argparse.Namespace, setup_count: int, deadline: float) -> Results:
    """Every selected row: bulk first (repetitions interleaved), then setup."""
    only = [w for w in args.only.split(",") if w]
    results = Results()

    def wanted(*names: str) -> bool:
        return not only or any(w in n for w in only for n in names)

    def record(key: tuple[str, str, str, str], fn: Callable[[], Sample], rep: int) -> None:
        label = f"bulk {key[0]} -> {key[1]} ({key[2]}, {key[3]})"
        if time.monotonic() > deadline:
            results.bulk.setdefault(key, "skipped: time budget spent")
            return
        try:
            sample = fn()
        except Exception as exc:  # a failed row is reported, the run goes on
            results.bulk[key] = _error(exc)
            print(f"  {label}: {results.bulk[key]}", file=sys.stderr)
            return
        previous = results.bulk.get(key)
        results.bulk[key] = [*(previous if isinstance(previous, list) else []), sample]
        print(
            f"  {label}: {sample.mbps:.0f} MB/s, CPU s/GB {sample.client_cpu:.2f} + "
            f"{sample.server_cpu:.2f} [{rep + 1}]",
            file=sys.stderr,
        )

    for rep in range(args.repeat):
        for suite in SUITES:
            for client, server, view in BULK_PAIRS:
                if wanted(client, server, view, suite[0], "bulk"):
                    record(
                        (client, server, view, suite[0]),
                        lambda: bench.bulk(client, server, view, suite),  # noqa: B023
                        rep,
                    )
        if wanted("floor", "bulk"):
            record((*FLOOR, GCM), bench.floor, rep)

    # Setup rows are repeated as often as bulk rows, interleaved the same way: one
    # pass of 200 connections moves by a third between passes on a shared machine.
    for _ in range(args.repeat):
        for client, server in SETUP_PAIRS:
            key = (client, server)
            if not wanted(client, server, "setup") or isinstance(results.setup.get(key), str):
                continue
            if time.monotonic() > deadline:
                results.setup.setdefault(key, "skipped: time budget spent")
                continue
            try:
                row = bench.setup(client, server, setup_count)
            except Exception as exc:
                results.setup[key] = _error(exc)
                print(f"  setup {client} -> {server}: {results.setup[key]}", file=sys.stderr)
                continue
            previous = results.setup.get(key)
            results.setup[key] = [*(previous if isinstance(previous, list) else []), row]
            print(f"  setup {client} -> {server}: {row}", file=sys.stderr)
    return results


def _without_output(argv: list[str]) -> list[str]:
    """The command line as the report shows it: where the report went does not matter."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--output":
            skip = True
        elif not arg.startswith("--output="):
            out.append(arg)
    return out


def summarize_profiles(directory: pathlib.Path, top: int = 25) -> None:
    """Write the top functions (own CPU time) of every profile to DIR/summary.txt."""
    out = io.StringIO()
    for path in sorted(directory.glob("*.prof")):
        out.write(f"===== {path.name}\n")
        pstats.Stats(str(path), stream=out).sort_stats("tottime").print_stats(top)
    (directory / "summary.txt").write_text(out.getvalue())
    print(f"profiles summarized in {directory / 'summary.txt'}", file=sys.stderr)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default=None, help="bulk bytes per run (default 1G)")
    parser.add_argument("--quick", action="store_true", help="64 MiB runs, fewer connections")
    parser.add_argument("--repeat", type=int, default=1, help="repeat each bulk run N times")
    parser.add_argument("--setup-count", type=int, default=None, help="connections per setup row")
    parser.add_argument("--budget", type=float, default=1800.0, help="seconds for the whole run")
    parser.add_argument(
        "--only", default="", help="comma-separated words; run only rows naming one of them"
    )
    parser.add_argument("--output", default=str(BENCH / "SSH_RESULTS.md"))
    parser.add_argument(
        "--profile",
        metavar="DIR",
        help="cProfile (CPU time) the trioport server and bulk clients into DIR; "
        "throughput is then lower than without",
    )
    args = parser.parse_args()
    profile_dir = pathlib.Path(args.profile).resolve() if args.profile else None
    if profile_dir is not None:
        profile_dir.mkdir(parents=True, exist_ok=True)
    size = parse_size(args.size) if args.size else (64 << 20 if args.quick else 1 << 30)
    setup_count = args.setup_count or (24 if args.quick else 100)
    started = time.monotonic()

    user = peers.BENCH_USER
    problem = peers.ensure_login_account(user)
    if problem is not None:
        user = pwd.getpwuid(os.geteuid()).pw_name
        print(f"! {problem}; logging in as {user} instead", file=sys.stderr)
    machine = benchlib.machine_description()
    machine["login account"] = f"{user} (shell {pwd.getpwnam(user).pw_shell})"

    procs = peers.Processes()
    try:
        with tempfile.TemporaryDirectory(prefix="trioport-bench-") as tmp:
            bench = Bench(procs, pathlib.Path(tmp), size, user, profile_dir)
            bench.start_servers()
            results = run_all(bench, args, setup_count, started + args.budget)
            procs.stop_all()
    finally:
        procs.stop_all()
    machine["load average at end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    info = RunInfo(
        quick=args.quick,
        size=size,
        repeat=args.repeat,
        setup_count=setup_count,
        elapsed=time.monotonic() - started,
        command=shlex.join(["python3", "bench/run.py", *_without_output(sys.argv[1:])]),
        machine=machine,
    )
    if profile_dir is not None:
        summarize_profiles(profile_dir)
    report = render(results, info)
    print(report)
    pathlib.Path(args.output).write_text(report)
    print(f"written to {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
