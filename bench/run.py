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

Prints a table and writes it, with the machine description, to bench/RESULTS.md.
This is a benchmark, not a test: nothing is asserted. Every client run has a
timeout, the whole run has a time budget, and every process started here is
stopped before exit (see docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import functools
import json
import os
import pathlib
import pwd
import select
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

BENCH = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import benchlib  # noqa: E402
from benchlib import (  # noqa: E402
    CAT_COMMAND,
    HOST,
    KEX,
    SINK_COMMAND,
    SSH,
    SSHD,
    SUITES,
    TRUE_COMMAND,
    KeyPair,
)

PY = sys.executable
#: The account every client logs in as. sshd runs a command with the account's
#: login shell; root's is bash, which sources ~/.bashrc when started by sshd (and
#: on a developer machine that can cost hundreds of milliseconds: pyenv init), so
#: the benchmark uses its own account whose shell is /bin/sh, as the library
#: servers use. The library servers accept any user name.
BENCH_USER = "trioport-bench"
USER = BENCH_USER

#: (client, server, view) for the bulk rows, in table order.
BULK_PAIRS = [
    ("trioport", "trioport", "cat"),
    ("trioport", "sshd", "cat"),
    ("ssh", "trioport", "cat"),
    ("ssh", "sshd", "cat"),
    ("asyncssh", "asyncssh", "cat"),
    ("trioport", "trioport", "sink"),
    ("ssh", "trioport", "sink"),
    ("asyncssh", "asyncssh", "sink"),
]
SETUP_PAIRS = [
    ("trioport", "trioport"),
    ("trioport", "sshd"),
    ("ssh", "trioport"),
    ("ssh", "sshd"),
    ("asyncssh", "asyncssh"),
]
PARALLEL = 8


def parse_size(text: str) -> int:
    """``1G``, ``64M``, ``512K`` or a plain byte count (binary units)."""
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    text = text.strip().upper().removesuffix("IB").removesuffix("B")
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


def human_size(n: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size and n % size == 0:
            return f"{n // size} {unit}"
    return f"{n} B"


# --- processes ---------------------------------------------------------------------


@dataclass
class Server:
    name: str
    process: subprocess.Popen
    port: int
    log: pathlib.Path


class Processes:
    """Every long-lived process this run started, stopped (by pid) on exit."""

    def __init__(self) -> None:
        self.started: list[subprocess.Popen] = []

    def popen(self, cmd: list[str], **kwargs) -> subprocess.Popen:
        process = subprocess.Popen(cmd, start_new_session=True, **kwargs)
        self.started.append(process)
        return process

    def stop(self, process: subprocess.Popen) -> None:
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        if process.stdout is not None:
            process.stdout.close()

    def stop_all(self) -> None:
        for process in reversed(self.started):
            self.stop(process)


def start_script_server(
    procs: Processes, name: str, argv: list[str], log: pathlib.Path, timeout: float = 30.0
) -> Server:
    """Start a bench script that prints ``{"port": N}`` once it listens."""
    process = procs.popen([PY, *argv], stdout=subprocess.PIPE, stderr=log.open("wb"), cwd=BENCH)
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], timeout)
    line = process.stdout.readline() if ready else b""
    if not line:
        procs.stop(process)
        raise RuntimeError(f"{name} server did not start: {log.read_text()[-2000:]}")
    port = json.loads(line)["port"]
    benchlib.wait_port(port, process)
    return Server(name, process, port, log)


def ensure_login_account(name: str) -> str | None:
    """Make sure ``name`` exists with /bin/sh as its shell; None, or why it could not."""
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        entry = None
    if entry is not None:
        return None if entry.pw_shell == "/bin/sh" else f"{name}'s shell is {entry.pw_shell}"
    if os.geteuid() != 0:
        return "not root: cannot create the login account"
    steps = [
        # A system account without a home directory; "/" so sshd has somewhere to chdir.
        ["useradd", "--system", "--shell", "/bin/sh", "--home-dir", "/", "-M", name],
        # "*": no password can match, and sshd (UsePAM no) does not treat it as locked.
        ["usermod", "-p", "*", name],
    ]
    for cmd in steps:
        out = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if out.returncode != 0:
            return f"{' '.join(cmd)} failed: {out.stderr.strip()}"
    print(f"created the login account {name} (shell /bin/sh) for sshd", file=sys.stderr)
    return None


def start_sshd(
    procs: Processes, workdir: pathlib.Path, host_key: KeyPair, authorized: pathlib.Path
) -> Server:
    """Debian's sshd on a free loopback port, its own config, host key and authorized_keys."""
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # privilege-separation directory
    port = benchlib.free_port()
    conf = {
        "ListenAddress": f"{HOST}:{port}",
        "HostKey": str(host_key.path),
        "AuthorizedKeysFile": str(authorized),
        "PidFile": "none",
        "UsePAM": "no",
        "StrictModes": "no",
        "PermitRootLogin": "prohibit-password",
        "AllowUsers": USER,
        "PasswordAuthentication": "no",
        "KbdInteractiveAuthentication": "no",
        "PrintMotd": "no",
        "PrintLastLog": "no",
        "UseDNS": "no",
        "LogLevel": "ERROR",
        "MaxStartups": "100:30:200",
        "Ciphers": ",".join(c for c, _ in SUITES),
        "MACs": ",".join(sorted({m for _, m in SUITES if m})),
    }
    path = workdir / "sshd_config"
    path.write_text("".join(f"{k} {v}\n" for k, v in conf.items()))
    log = workdir / "sshd.log"
    process = procs.popen(
        [SSHD, "-D", "-e", "-f", str(path)], stdout=subprocess.DEVNULL, stderr=log.open("wb")
    )
    benchlib.wait_port(port, process)
    return Server("sshd", process, port, log)


def run_json(argv: list[str], timeout: float) -> dict:
    """Run a bench client script; return the JSON line it printed."""
    try:
        out = subprocess.run(
            [PY, *argv], capture_output=True, timeout=timeout, cwd=BENCH, check=False
        )
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"timed out after {timeout:.0f} s") from None
    if out.returncode != 0:
        tail = out.stderr.decode(errors="replace").strip().splitlines()[-3:]
        raise RuntimeError(f"exit {out.returncode}: " + " | ".join(tail))
    return json.loads(out.stdout.decode().strip().splitlines()[-1])


# --- OpenSSH's client ----------------------------------------------------------------


@contextlib.contextmanager
def ssh_master(
    procs: Processes, port: int, key: pathlib.Path, cipher: str, mac: str | None, sock: str
) -> Iterator[list[str]]:
    """One authenticated OpenSSH connection (ControlMaster) with ``cipher``/``mac``.

    Yields the argv prefix of an ``ssh`` that runs a command as a new channel of
    that connection, so a bulk timing does not include the handshake: the mux
    client hands its stdin descriptor to the master, which reads it directly.
    """
    base = [SSH, *benchlib.ssh_options(key, cipher, mac), "-p", str(port), "-S", sock]
    master = procs.popen(
        [*base, "-M", "-N", "-o", "ControlPersist=no", f"{USER}@{HOST}"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            check = subprocess.run(
                [*base, "-O", "check", f"{USER}@{HOST}"], capture_output=True, check=False
            )
            if check.returncode == 0:
                break
            if master.poll() is not None or time.monotonic() > deadline:
                err = master.stderr.read().decode(errors="replace") if master.stderr else ""
                raise RuntimeError(f"ssh master did not come up: {err.strip()[-300:]}")
            time.sleep(0.05)
        yield base
    finally:
        subprocess.run(
            [*base, "-O", "exit", f"{USER}@{HOST}"], capture_output=True, check=False, timeout=10
        )
        procs.stop(master)
        if master.stderr is not None:
            master.stderr.close()


def ssh_bulk(
    procs: Processes,
    port: int,
    key: pathlib.Path,
    cipher: str,
    mac: str | None,
    command: str,
    source: pathlib.Path,
    size: int,
    timeout: float,
    sock: str,
) -> dict:
    with ssh_master(procs, port, key, cipher, mac, sock) as base:
        with source.open("rb") as stdin:
            start = time.perf_counter()
            try:
                out = subprocess.run(
                    [*base, f"{USER}@{HOST}", command],
                    stdin=stdin,
                    capture_output=True,
                    timeout=timeout,
                    check=False,
                )
            except subprocess.TimeoutExpired:
                raise RuntimeError(f"timed out after {timeout:.0f} s") from None
            seconds = time.perf_counter() - start
    if out.returncode != 0:
        raise RuntimeError(f"ssh exit {out.returncode}: {out.stderr.decode(errors='replace')}")
    return {"seconds": seconds, "bytes": size}


def ssh_setup(port: int, key: pathlib.Path, count: int, parallel: int, timeout: float) -> dict:
    argv = [SSH, *benchlib.ssh_options(key), "-p", str(port), f"{USER}@{HOST}", TRUE_COMMAND]

    def one(_: int) -> float:
        start = time.perf_counter()
        out = subprocess.run(
            argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout, check=False
        )
        if out.returncode != 0:
            raise RuntimeError(f"ssh exit {out.returncode}: {out.stderr.decode(errors='replace')}")
        return time.perf_counter() - start

    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(parallel) as pool:
        latencies = list(pool.map(one, range(count)))
    return {"latencies": latencies, "wall": time.perf_counter() - start}


# --- the run -----------------------------------------------------------------------


@dataclass
class Results:
    #: (client, server, view, cipher) -> list of MB/s, or an error string.
    bulk: dict[tuple[str, str, str, str], list[float] | str] = field(default_factory=dict)
    floor: list[float] | str = field(default_factory=list)
    #: (client, server) -> {"median_ms": .., "cps": ..} or an error string.
    setup: dict[tuple[str, str], dict[str, float] | str] = field(default_factory=dict)


def measure(fn: Callable[[], dict]) -> tuple[float | None, str | None]:
    """Run one bulk measurement; MB/s, or the error that stopped it (a row, not the run)."""
    try:
        result = fn()
    except Exception as exc:
        return None, f"{type(exc).__name__}: {exc}"[:300]
    return result["bytes"] / result["seconds"] / 1e6, None


class Bench:
    """The servers of one run and the measurements made against them."""

    def __init__(self, procs: Processes, work: pathlib.Path, size: int) -> None:
        self.procs = procs
        self.work = work
        self.size = size
        self.timeout = 30 + size / 4e6
        self.host = benchlib.generate_ed25519(work / "host_ed25519", "bench-host")
        self.user = benchlib.generate_ed25519(work / "user_ed25519", "bench-user")
        self.authorized = work / "authorized_keys"
        self.authorized.write_text(self.user.public_line + "\n")
        # sshd reads authorized_keys with the login account's privileges.
        work.chmod(0o755)
        self.authorized.chmod(0o644)
        self.source = work / "zeros"
        with self.source.open("wb") as f:
            f.truncate(size)  # sparse: ssh reads it with no producer process
        self.servers: dict[str, Server | str] = {}

    def start_servers(self) -> None:
        keys = ["--host-key", str(self.host.path), "--authorized-keys", str(self.authorized)]
        starters: dict[str, Callable[[], Server]] = {
            "sshd": lambda: start_sshd(self.procs, self.work, self.host, self.authorized),
            "asyncssh": lambda: self._script("asyncssh", ["asyncssh_server.py", *keys]),
            "trioport": lambda: self._script("trioport", ["trioport_server.py", *keys]),
            "floor": lambda: self._script("floor", ["floor.py", "serve"]),
        }
        for name, start in starters.items():
            try:
                self.servers[name] = start()
            except Exception as exc:
                self.servers[name] = f"{type(exc).__name__}: {exc}"[:300]
                print(f"! {name} server: {self.servers[name]}", file=sys.stderr)

    def _script(self, name: str, argv: list[str]) -> Server:
        return start_script_server(self.procs, name, argv, self.work / f"{name}.log")

    def _server(self, name: str) -> Server:
        srv = self.servers[name]
        if isinstance(srv, str):
            raise RuntimeError(f"{name} server unavailable: {srv}")
        return srv

    def bulk(self, client: str, server: str, view: str, cipher: str, mac: str | None) -> dict:
        port = self._server(server).port
        command = CAT_COMMAND if view == "cat" else SINK_COMMAND
        if client == "ssh":
            return ssh_bulk(
                self.procs,
                port,
                self.user.path,
                cipher,
                mac,
                command,
                self.source,
                self.size,
                self.timeout,
                str(self.work / "mux"),
            )
        argv = [f"{client}_client.py", "bulk", "--port", str(port), "--user", USER]
        argv += ["--key", str(self.user.path)]
        argv += ["--cipher", cipher, "--command", command, "--size", str(self.size)]
        if mac:
            argv += ["--mac", mac]
        return run_json(argv, self.timeout)

    def floor(self) -> dict:
        port = self._server("floor").port
        return run_json(
            ["floor.py", "send", "--port", str(port), "--size", str(self.size)], self.timeout
        )

    def setup(self, client: str, server: str, count: int) -> dict[str, float] | str:
        """Median latency of ``count`` sequential connections, then cps with 8 in parallel."""
        timeout = 60 + count * 2.0
        key = self.user.path
        try:
            port = self._server(server).port
            if client == "ssh":
                seq = ssh_setup(port, key, count, 1, timeout)
                par = ssh_setup(port, key, count * 2, PARALLEL, timeout)
            else:
                base = [f"{client}_client.py", "setup", "--port", str(port), "--user", USER]
                base += ["--key", str(key)]
                seq = run_json([*base, "--count", str(count), "--parallel", "1"], timeout)
                many = ["--count", str(count * 2), "--parallel", str(PARALLEL)]
                par = run_json([*base, *many], timeout)
        except Exception as exc:
            return f"{type(exc).__name__}: {exc}"[:300]
        return {
            "median_ms": statistics.median(seq["latencies"]) * 1000,
            "cps": len(par["latencies"]) / par["wall"],
        }


def run_all(bench: Bench, args: argparse.Namespace, setup_count: int, deadline: float) -> Results:
    """Every selected row, bulk first (repetitions interleaved), then setup."""
    only = [w for w in args.only.split(",") if w]
    results = Results()

    def wanted(*names: str) -> bool:
        return not only or any(w in n for w in only for n in names)

    def record(key: object, store: dict, label: str, fn: Callable[[], dict], rep: int) -> None:
        if time.monotonic() > deadline:
            store.setdefault(key, "skipped: time budget spent")
            return
        mbps, err = measure(fn)
        if err is not None:
            store[key] = err
            print(f"  {label}: {err}", file=sys.stderr)
            return
        previous = store.get(key)
        store[key] = [*(previous if isinstance(previous, list) else []), mbps]
        print(f"  {label}: {mbps:.0f} MB/s [{rep + 1}]", file=sys.stderr)

    floor_store: dict[str, list[float] | str] = {}
    for rep in range(args.repeat):
        for cipher, mac in SUITES:
            for client, server, view in BULK_PAIRS:
                if not wanted(client, server, view, cipher, "bulk"):
                    continue
                label = f"bulk {client} -> {server} ({view}, {cipher})"
                fn = functools.partial(bench.bulk, client, server, view, cipher, mac)
                record((client, server, view, cipher), results.bulk, label, fn, rep)
        if wanted("floor", "bulk"):
            record("floor", floor_store, "floor", bench.floor, rep)
    results.floor = floor_store.get("floor", [])

    for client, server in SETUP_PAIRS:
        if not wanted(client, server, "setup"):
            continue
        if time.monotonic() > deadline:
            results.setup[(client, server)] = "skipped: time budget spent"
            continue
        row = bench.setup(client, server, setup_count)
        results.setup[(client, server)] = row
        print(f"  setup {client} -> {server}: {row}", file=sys.stderr)
    return results


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
    parser.add_argument("--output", default=str(BENCH / "RESULTS.md"))
    args = parser.parse_args()
    size = parse_size(args.size) if args.size else (64 << 20 if args.quick else 1 << 30)
    setup_count = args.setup_count or (24 if args.quick else 100)
    started = time.monotonic()
    deadline = started + args.budget

    global USER
    problem = ensure_login_account(BENCH_USER)
    if problem is not None:
        USER = pwd.getpwuid(os.geteuid()).pw_name
        print(f"! {problem}; logging in to sshd as {USER} instead", file=sys.stderr)
    machine = benchlib.machine_description()
    machine["login account"] = f"{USER} (shell {pwd.getpwnam(USER).pw_shell})"
    procs = Processes()
    try:
        with tempfile.TemporaryDirectory(prefix="trioport-bench-") as tmp:
            bench = Bench(procs, pathlib.Path(tmp), size)
            bench.start_servers()
            results = run_all(bench, args, setup_count, deadline)
            procs.stop_all()
    finally:
        procs.stop_all()
    machine["load average at end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    report = render(results, machine, size, args, setup_count, time.monotonic() - started)
    print(report)
    pathlib.Path(args.output).write_text(report)
    print(f"written to {args.output}", file=sys.stderr)
    return 0


# --- the report ----------------------------------------------------------------------

NAMES = {
    "trioport": "trioport",
    "sshd": "OpenSSH sshd",
    "ssh": "OpenSSH ssh",
    "asyncssh": "asyncssh",
}
SHORT = {
    "aes128-gcm@openssh.com": "aes128-gcm",
    "chacha20-poly1305@openssh.com": "chacha20-poly1305",
    "aes128-ctr": "aes128-ctr + hmac-sha2-256-etm",
}


def _median(value: list[float] | str | None) -> float | None:
    return statistics.median(value) if isinstance(value, list) and value else None


def _cell(value: list[float] | str | None) -> str:
    if value is None:
        return "not run"
    if isinstance(value, str):
        return "error" if not value.startswith("skipped") else "skipped"
    if not value:
        return "not run"
    text = f"{statistics.median(value):.0f}"
    if len(value) > 1:
        text += f" ({min(value):.0f} to {max(value):.0f})"
    return text


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a and b else "n/a"


def render(
    results: Results,
    machine: dict[str, str],
    size: int,
    args: argparse.Namespace,
    setup_count: int,
    elapsed: float,
) -> str:
    out: list[str] = []
    kind = "QUICK run (--quick)" if args.quick else "full run"
    out.append("# trioport SSH benchmark results\n")
    out.append(
        f"{kind}: {human_size(size)} per bulk run, {args.repeat} repetition(s); setup: "
        f"{setup_count} sequential connections, then {setup_count * 2} with {PARALLEL} in "
        f"parallel. Key exchange pinned to {KEX}, host and user keys Ed25519. "
        f"Took {elapsed:.0f} s. Produced by `python3 bench/run.py"
        f"{' --quick' if args.quick else ''}"
        f"{f' --size {args.size}' if args.size else ''}"
        f"{f' --repeat {args.repeat}' if args.repeat != 1 else ''}"
        f"{f' --only {args.only}' if args.only else ''}`; see docs/benchmarks.md.\n"
    )
    if args.quick:
        out.append(
            "> A quick run moves 64 MiB per row: fixed costs (channel open, the server "
            "spawning `cat`, OpenSSH's mux client) weigh more than in a 1 GiB run, and "
            "the machine is shared, so treat these numbers as indicative.\n"
        )
    out.append("## Machine\n")
    out.append("| | |\n|---|---|")
    out.extend(f"| {k} | {v} |" for k, v in machine.items())
    out.append("")

    out.append("## Bulk throughput (MB/s, 10^6 bytes per second; median, range if repeated)\n")
    header = "| client → server | disposal | " + " | ".join(SHORT[c] for c, _ in SUITES) + " |"
    out.append(header)
    out.append("|---|---|" + "---:|" * len(SUITES))
    errors: list[str] = []
    for client, server, view in BULK_PAIRS:
        cells = []
        for cipher, _ in SUITES:
            value = results.bulk.get((client, server, view, cipher))
            cells.append(_cell(value))
            if isinstance(value, str) and not value.startswith("skipped"):
                errors.append(f"- bulk {client} → {server} ({view}, {SHORT[cipher]}): {value}")
        disposal = "`cat >/dev/null`" if view == "cat" else "in-process sink"
        out.append(
            f"| {NAMES[client]} → {NAMES[server]} | {disposal} | " + " | ".join(cells) + " |"
        )
    floor_cells = [_cell(results.floor)] + ["—"] * (len(SUITES) - 1)
    out.append(
        "| floor: AES-GCM frames over trio TCP, no SSH | decrypt and drop | "
        + " | ".join(floor_cells)
        + " |"
    )
    if isinstance(results.floor, str) and not results.floor.startswith("skipped"):
        errors.append(f"- floor: {results.floor}")
    out.append("")

    out.append("## Connection setup (handshake + publickey auth + `exec true`)\n")
    out.append(
        "| client → server | median latency (ms), sequential | "
        f"connections/s, {PARALLEL} in parallel |"
    )
    out.append("|---|---:|---:|")
    for client, server in SETUP_PAIRS:
        row = results.setup.get((client, server))
        if isinstance(row, dict):
            cells = [f"{row['median_ms']:.1f}", f"{row['cps']:.0f}"]
        else:
            cells = ["not run" if row is None else "error"] * 2
            if isinstance(row, str) and not row.startswith("skipped"):
                errors.append(f"- setup {client} → {server}: {row}")
        out.append(f"| {NAMES[client]} → {NAMES[server]} | " + " | ".join(cells) + " |")
    out.append("")

    out.append("## Ratios against the issue's targets (from this run; nothing is asserted)\n")
    out.append("| ratio | " + " | ".join(SHORT[c] for c, _ in SUITES) + " | target |")
    out.append("|---|" + "---:|" * len(SUITES) + "---|")

    def bulk(client: str, server: str, cipher: str) -> float | None:
        return _median(results.bulk.get((client, server, "cat", cipher)))

    rows = [
        ("trioport→trioport / asyncssh→asyncssh", ("asyncssh", "asyncssh"), "≥ 1.3x"),
        ("trioport→trioport / ssh→sshd", ("ssh", "sshd"), "≥ 1.0x"),
    ]
    for label, (c2, s2), target in rows:
        cells = [_ratio(bulk("trioport", "trioport", c), bulk(c2, s2, c)) for c, _ in SUITES]
        out.append(f"| {label} | " + " | ".join(cells) + f" | {target} |")
    floor = _median(results.floor)
    gcm = SUITES[0][0]
    out.append(
        "| trioport→trioport / floor | "
        + _ratio(bulk("trioport", "trioport", gcm), floor)
        + " | — | — | ≥ 0.80x |"
    )
    out.append(
        "| trioport→trioport (sink) / floor | "
        + _ratio(_median(results.bulk.get(("trioport", "trioport", "sink", gcm))), floor)
        + " | — | — | (second view) |"
    )
    tt = results.setup.get(("trioport", "trioport"))
    aa = results.setup.get(("asyncssh", "asyncssh"))
    cps = _ratio(
        tt["cps"] if isinstance(tt, dict) else None, aa["cps"] if isinstance(aa, dict) else None
    )
    out.append(f"| setup cps: trioport→trioport / asyncssh→asyncssh | {cps} | | | ≥ 1.5x |")
    out.append("")
    if errors:
        out.append("## Errors\n")
        out.extend(errors)
        out.append("")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
