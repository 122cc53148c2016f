"""Starting, driving and stopping the benchmark's peers: servers, clients, OpenSSH.

Used by ``run.py`` only. Every long-lived process goes through :class:`Processes`,
which starts it in its own process group and stops it (by pid) at the end. Every
client run has a timeout. CPU time is read from the kernel: ``getrusage`` of our
waited-for children (the clients) and ``/proc/PID/stat`` of a server, counting the
children it reaped (``cat``, sshd's per-connection processes).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import os
import pathlib
import pwd
import resource
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import benchlib
from benchlib import HOST, SSH, SSHD, SUITES, TRUE_COMMAND, KeyPair

BENCH = pathlib.Path(__file__).resolve().parent
PY = sys.executable
#: The account every client logs in as. sshd runs a command with the account's
#: login shell; root's is bash, which sources ~/.bashrc when started by sshd (on a
#: developer machine that can cost hundreds of milliseconds: pyenv init), so the
#: benchmark uses its own account whose shell is /bin/sh, the shell the library
#: servers use. The library servers accept any user name.
BENCH_USER = "trioport-bench"


@dataclass
class Server:
    name: str
    process: subprocess.Popen
    port: int
    log: pathlib.Path
    #: Processes whose CPU time (their own and their reaped children's) is the server's.
    cpu_pids: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        self.cpu_pids = self.cpu_pids or (self.process.pid,)


class Processes:
    """Every long-lived process this run started, stopped (by pid) on exit."""

    def __init__(self) -> None:
        self.started: list[subprocess.Popen] = []

    def popen(self, cmd: list[str], **kwargs) -> subprocess.Popen:
        process = subprocess.Popen(cmd, start_new_session=True, **kwargs)
        self.started.append(process)
        return process

    def stop(self, process: subprocess.Popen) -> None:
        """SIGTERM the process group we created for it; SIGKILL after 5 s."""
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        for pipe in (process.stdout, process.stderr):
            if pipe is not None:
                pipe.close()

    def stop_all(self) -> None:
        for process in reversed(self.started):
            self.stop(process)
        self.started.clear()


# --- CPU accounting ------------------------------------------------------------------

_TICK = os.sysconf("SC_CLK_TCK")


def children_cpu() -> float:
    """CPU seconds of every child this process has waited for."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def tree_cpu(pid: int) -> float:
    """CPU seconds of ``pid`` plus the children it has reaped (``/proc/PID/stat``)."""
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # Fields 14-17 of proc(5): utime, stime, cutime, cstime; [0] here is field 3.
    return sum(int(x) for x in fields[11:15]) / _TICK


def _parents() -> dict[int, int]:
    """pid -> parent pid, for every process (zombies included)."""
    parents = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                stat = pathlib.Path(entry.path, "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    return parents


class CpuMeter:
    """CPU used by our clients and by one server while a measurement ran."""

    def __init__(self, server: Server) -> None:
        self.pids = server.cpu_pids
        self.client0 = children_cpu()
        self.server0 = self._server_cpu()

    def _server_cpu(self) -> float:
        return sum(tree_cpu(pid) for pid in self.pids)

    def _busy(self) -> bool:
        return any(ppid in self.pids and pid not in self.pids for pid, ppid in _parents().items())

    def stop(self) -> tuple[float, float]:
        """(client seconds, server seconds), once the server has reaped its children.

        A finished connection's processes are reaped asynchronously, and only then
        does their CPU time count in the reaper's (see reaper.py).
        """
        deadline = time.monotonic() + 3.0
        while self._busy() and time.monotonic() < deadline:
            time.sleep(0.02)
        return children_cpu() - self.client0, self._server_cpu() - self.server0


# --- servers ---------------------------------------------------------------------------


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
    procs: Processes,
    workdir: pathlib.Path,
    host_key: KeyPair,
    authorized: pathlib.Path,
    user: str,
) -> Server:
    """Debian's sshd on a free loopback port, its own config, host key and authorized_keys."""
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # privilege-separation directory
    port = benchlib.free_port()
    conf = {
        "ListenAddress": f"{HOST}:{port}",
        "HostKey": str(host_key.path),
        "AuthorizedKeysFile": str(authorized),
        "AllowUsers": user,
        "PidFile": "none",
        "UsePAM": "no",
        "StrictModes": "no",
        "PermitRootLogin": "prohibit-password",
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
    reaper = [PY, "reaper.py", SSHD, "-D", "-e", "-f", str(path)]
    process = procs.popen(reaper, stdout=subprocess.PIPE, stderr=log.open("wb"), cwd=BENCH)
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], 15)
    line = process.stdout.readline() if ready else b""
    if not line:
        procs.stop(process)
        raise RuntimeError(f"sshd did not start: {log.read_text()[-2000:]}")
    benchlib.wait_port(port, process)
    return Server("sshd", process, port, log, (process.pid, json.loads(line)["pid"]))


# --- clients ---------------------------------------------------------------------------


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


@contextlib.contextmanager
def ssh_master(
    procs: Processes,
    port: int,
    key: pathlib.Path,
    user: str,
    cipher: str,
    mac: str | None,
    sock: str,
) -> Iterator[list[str]]:
    """One authenticated OpenSSH connection (ControlMaster) with ``cipher``/``mac``.

    Yields the argv prefix of an ``ssh`` that runs a command as a new channel of
    that connection, so a bulk timing does not include the handshake: the mux
    client hands its stdin descriptor to the master, which reads it directly.
    """
    base = [SSH, *benchlib.ssh_options(key, cipher, mac), "-p", str(port), "-S", sock]
    master = procs.popen(
        [*base, "-M", "-N", "-o", "ControlPersist=no", f"{user}@{HOST}"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            check = subprocess.run(
                [*base, "-O", "check", f"{user}@{HOST}"], capture_output=True, check=False
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
            [*base, "-O", "exit", f"{user}@{HOST}"], capture_output=True, check=False, timeout=10
        )
        procs.stop(master)
        with contextlib.suppress(ValueError):
            procs.started.remove(master)


def ssh_bulk(
    procs: Processes,
    port: int,
    key: pathlib.Path,
    user: str,
    suite: tuple[str, str | None],
    command: str,
    source: pathlib.Path,
    timeout: float,
    sock: str,
) -> dict:
    """Time ``ssh HOST COMMAND < source`` over an already authenticated connection."""
    cipher, mac = suite
    with ssh_master(procs, port, key, user, cipher, mac, sock) as base:
        with source.open("rb") as stdin:
            start = time.perf_counter()
            try:
                out = subprocess.run(
                    [*base, f"{user}@{HOST}", command],
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
    return {"seconds": seconds, "bytes": source.stat().st_size}


def ssh_setup(
    port: int, key: pathlib.Path, user: str, count: int, parallel: int, timeout: float
) -> dict:
    """``count`` runs of ``ssh HOST true``, ``parallel`` at a time."""
    argv = [SSH, *benchlib.ssh_options(key), "-p", str(port), f"{user}@{HOST}", TRUE_COMMAND]

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
