"""A whole cluster as ``trioport run`` starts it, in a subprocess, and the tools around it.

:func:`write_config` writes a configuration file with free loopback ports for the
auth service, the node and both proxy ports (the keys ``docs/config.md``
describes), and :func:`start` runs the installed ``trioport run --config FILE``
console script and waits for its announcement (the lines ending in "Stop with
Ctrl-C."). :meth:`Process.stop` sends SIGTERM (or SIGINT, as Ctrl-C does) and
returns the exit status. ``tctl``, ``tsh`` and OpenSSH's ``ssh`` run as the real
programs too (:func:`run`), each ``tsh`` with its own ``TSH_HOME``.

:class:`Totp` hands out codes the auth service takes once each: it accepts one
step either side of now and refuses a step at or before the last one used, so the
codes move forward a step at a time, waiting only when the window is used up.
"""

from __future__ import annotations

import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pyotp

CLUSTER = "e2e.test"
NODENAME = "e2e-node"
PASSWORD = "correct horse battery staple"
SSH = shutil.which("ssh") or "/usr/bin/ssh"
#: Seconds a started process may take to announce itself.
START_TIMEOUT = 40.0
#: Seconds any one command may take.
COMMAND_TIMEOUT = 60.0


def program(name: str) -> str:
    """The installed console script ``name`` (trioport, tsh, tctl), next to this Python."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    assert found, f"{name} is not installed: run python3 -m pip install -e ."
    return found


def free_ports(count: int) -> list[int]:
    """``count`` distinct loopback ports that were free a moment ago."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


@dataclass
class Ports:
    auth: int
    node: int
    proxy_ssh: int
    web: int


def write_config(path: Path, data_dir: Path, ports: Ports) -> Path:
    """A configuration file for all three services on loopback ports."""
    path.write_text(
        f"""version: v1
teleport:
  nodename: {NODENAME}
  data_dir: {data_dir}
auth_service:
  listen_addr: 127.0.0.1:{ports.auth}
  cluster_name: {CLUSTER}
ssh_service:
  listen_addr: 127.0.0.1:{ports.node}
  labels:
    env: e2e
proxy_service:
  listen_addr: 127.0.0.1:{ports.proxy_ssh}
  web_listen_addr: 127.0.0.1:{ports.web}
"""
    )
    return path


@dataclass
class Process:
    """A running ``trioport run`` and what it printed before it was ready."""

    popen: subprocess.Popen[bytes]
    announcement: str
    stderr_path: Path

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        """Send ``signum``, then its exit status (killed, and a failure, if it hangs)."""
        if self.popen.poll() is None:
            self.popen.send_signal(signum)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
                raise AssertionError(f"trioport run ignored {signum}:\n{self.stderr}") from None
        if self.popen.stdout is not None:
            self.popen.stdout.close()
        return self.popen.returncode


def _read_until(popen: subprocess.Popen[bytes], marker: bytes, timeout: float) -> bytes:
    assert popen.stdout is not None
    fd = popen.stdout.fileno()
    out = b""
    deadline = time.monotonic() + timeout
    while marker not in out:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            break
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        out += chunk
    return out


def start(config: Path, stderr_path: Path, *extra: str) -> Process:
    """Run ``trioport run --config CONFIG`` and wait until it says what to type next."""
    with stderr_path.open("ab") as err:
        popen = subprocess.Popen(
            [program("trioport"), "run", "--config", str(config), *extra],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=err,
            env=base_env(),
        )
    out = _read_until(popen, b"Stop with Ctrl-C.", START_TIMEOUT)
    process = Process(popen, out.decode(errors="replace"), stderr_path)
    if b"Stop with Ctrl-C." not in out:
        process.stop()
        raise AssertionError(
            f"trioport run did not announce itself:\n{out.decode()}\n{process.stderr}"
        )
    return process


def base_env(**extra: str) -> dict[str, str]:
    """This environment without the user's agent and tsh profile, plus ``extra``."""
    drop = ("SSH_AUTH_SOCK", "TSH_HOME", "TELEPORT_USER")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(extra)
    return env


def run(
    argv: list[str], *, env: dict[str, str] | None = None, stdin: str = ""
) -> subprocess.CompletedProcess[str]:
    """Run a program to completion; its exit status and both outputs as text."""
    return subprocess.run(
        argv,
        input=stdin,
        capture_output=True,
        text=True,
        env=env or base_env(),
        timeout=COMMAND_TIMEOUT,
        check=False,
    )


def invite_url(tctl_output: str) -> str:
    """The invite link in what ``tctl users add`` printed."""
    match = re.search(r"^(https://\S+/web/invite/\S+)$", tctl_output, re.MULTILINE)
    assert match, tctl_output
    return match.group(1)


class Totp:
    """Codes for one TOTP secret, each usable once, in the order the auth service wants."""

    def __init__(self, secret: str) -> None:
        self.totp = pyotp.TOTP(secret)
        self.last_step = -1

    def code(self) -> str:
        """The next code the auth service will accept (waits if this window is used up)."""
        while True:
            now = time.time()
            current = int(now // 30)
            step = max(self.last_step + 1, current - 1 if now % 30 < 20 else current)
            if step <= current + 1:
                self.last_step = step
                return self.totp.at(step * 30)
            time.sleep((current + 1) * 30 - now + 0.2)

    def wrong_code(self) -> str:
        """A well-formed code that is valid at no step near now."""
        valid = {self.totp.at(time.time() + 30 * k) for k in range(-2, 4)}
        return next(c for c in ("000000", "111111", "123456", "999999") if c not in valid)
