"""Helpers shared by the benchmark's driver and its server/client scripts.

The scripts in ``bench/`` run as separate processes (``python3 bench/x.py``), so
this module is imported by file name, not through a package. Everything here is
loopback-only and dependency-free beyond ``cryptography``: keys are generated with
it (not with trioport), so the asyncssh, OpenSSH and floor rows work even while
trioport itself is being changed.

Protocol between the driver (``run.py``) and a script: a server prints one JSON
line ``{"port": N}`` on stdout once it listens; a client prints one JSON line with
its measurements and exits 0.
"""

from __future__ import annotations

import json
import os
import pathlib
import platform
import re
import shutil
import socket
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

HOST = "127.0.0.1"
SSH = shutil.which("ssh") or "/usr/bin/ssh"
SSHD = shutil.which("sshd") or "/usr/sbin/sshd"

#: The key exchange every pair is pinned to, so setup latency compares like with
#: like: OpenSSH 9.2 lacks mlkem768x25519, asyncssh lacks sntrup761 without extras.
KEX = "curve25519-sha256"

#: The three cipher suites of the issue: (cipher, MAC or None for AEADs).
SUITES: list[tuple[str, str | None]] = [
    ("aes128-gcm@openssh.com", None),
    ("chacha20-poly1305@openssh.com", None),
    ("aes128-ctr", "hmac-sha2-256-etm@openssh.com"),
]

#: The exec'd command of the bulk rows (what sshd runs for a plain ``cat`` sink).
CAT_COMMAND = "cat >/dev/null"
#: The exec'd command that asks a library server for its in-process sink instead.
SINK_COMMAND = "bench-sink"
#: The exec'd command of the setup rows.
TRUE_COMMAND = "true"


def emit(obj: object) -> None:
    """Print one JSON line for the driver and flush it."""
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


@dataclass
class KeyPair:
    """An Ed25519 key in OpenSSH private-key format, with its ``.pub`` beside it."""

    path: pathlib.Path
    public_line: str


def generate_ed25519(path: pathlib.Path, comment: str = "bench") -> KeyPair:
    """Write a fresh unencrypted Ed25519 key to ``path`` (mode 0600) and ``path.pub``."""
    key = ed25519.Ed25519PrivateKey.generate()
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    line = public.decode() + " " + comment
    path.with_name(path.name + ".pub").write_text(line + "\n")
    return KeyPair(path, line)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def wait_port(port: int, process: subprocess.Popen | None = None, timeout: float = 15.0) -> None:
    """Wait until something accepts TCP connections on ``127.0.0.1:port``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection((HOST, port), timeout=1).close()
            return
        except OSError:
            if process is not None and process.poll() is not None:
                raise RuntimeError(f"server exited with {process.returncode}") from None
            if time.monotonic() > deadline:
                raise RuntimeError(f"nothing listens on port {port}") from None
            time.sleep(0.02)


def ssh_options(key: pathlib.Path, cipher: str | None = None, mac: str | None = None) -> list[str]:
    """``ssh`` arguments: no config files, no host-key prompts, one key, pinned kex."""
    opts = {
        "StrictHostKeyChecking": "no",
        "UserKnownHostsFile": "/dev/null",
        "GlobalKnownHostsFile": "/dev/null",
        "BatchMode": "yes",
        "IdentitiesOnly": "yes",
        "LogLevel": "ERROR",
        "ConnectTimeout": "20",
        "KexAlgorithms": KEX,
        "HostKeyAlgorithms": "ssh-ed25519",
        "Compression": "no",
    }
    if cipher is not None:
        opts["Ciphers"] = cipher
    if mac is not None:
        opts["MACs"] = mac
    args = ["-F", "/dev/null", "-i", str(key)]
    for k, v in opts.items():
        args += ["-o", f"{k}={v}"]
    return args


def _first_line(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=False)
    except OSError as exc:
        return f"unavailable ({exc})"
    return (out.stdout + out.stderr).strip().splitlines()[0] if (out.stdout + out.stderr) else ""


def trioport_revision() -> str:
    """The git commit the benchmarked trioport code is at, and whether it has local edits."""
    root = pathlib.Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--", "trioport"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown (not a git checkout)"
    return head + (" with uncommitted changes under trioport/" if dirty else "")


def machine_description() -> dict[str, str]:
    """What the numbers were measured on: CPU, cores, load, and every component's version."""
    cpu = "unknown"
    flags: set[str] = set()
    try:
        text = pathlib.Path("/proc/cpuinfo").read_text()
        if m := re.search(r"^model name\s*:\s*(.+)$", text, re.M):
            cpu = m.group(1).strip()
        if m := re.search(r"^flags\s*:\s*(.+)$", text, re.M):
            flags = set(m.group(1).split())
    except OSError:
        pass
    import cryptography
    from cryptography.hazmat.backends.openssl.backend import backend

    try:
        import asyncssh

        asyncssh_version = asyncssh.__version__
    except ImportError:
        asyncssh_version = "not installed"
    import trio

    accel = [f for f in ("aes", "pclmulqdq", "avx2", "avx512f", "vaes", "sha_ni") if f in flags]
    return {
        "CPU": cpu,
        "CPU features": " ".join(accel) or "none listed",
        "cores (os.cpu_count)": str(os.cpu_count()),
        "kernel": platform.release(),
        "Python": sys.version.split()[0] + f" ({platform.python_implementation()})",
        "cryptography": f"{cryptography.__version__} on {backend.openssl_version_text()}",
        "Python ssl module": ssl.OPENSSL_VERSION,
        "trio": trio.__version__,
        "asyncssh": asyncssh_version,
        "OpenSSH": _first_line([SSH, "-V"]),
        "trioport commit": trioport_revision(),
        "load average at start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }
