"""An HA cluster on loopback: three etcd members, auth services as real processes.

:class:`EtcdCluster` runs three members of one etcd cluster (Debian's
``/usr/bin/etcd``) on fixed free ports, so a member can be killed and started
again with the same identity and data. :class:`AuthProcess` runs
``trioport run --roles=auth`` on a configuration that points at every member;
killing it is ``SIGKILL``, as a crashed machine would be. Nodes and proxies run
in the test's own trio loop (their links to auth are what is under test).

Every wait is bounded: members must answer within :data:`START_TIMEOUT` seconds,
auth services must announce themselves within the e2e helpers' timeout.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.e2e.cluster import START_TIMEOUT as ANNOUNCE_TIMEOUT
from tests.e2e.cluster import Process, _read_until, base_env, free_ports, program

ETCD = shutil.which("etcd") or "/usr/bin/etcd"
CLUSTER = "ha.test"
#: Seconds a member (or the whole cluster) may take to become healthy.
START_TIMEOUT = 30.0
#: The static join token the auth services accept from nodes and proxies.
JOIN_TOKEN = "ha-static-join-token-" + "0123456789abcdef"


@dataclass
class Member:
    """One etcd member: its name, ports, data directory and (while running) process."""

    name: str
    client_port: int
    peer_port: int
    data_dir: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def client_url(self) -> str:
        return f"http://127.0.0.1:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"


@dataclass
class EtcdCluster:
    """Three etcd members forming one cluster."""

    root: Path
    members: list[Member] = field(default_factory=list)
    token: str = field(default_factory=lambda: uuid.uuid4().hex)

    @classmethod
    def create(cls, root: Path, size: int = 3) -> EtcdCluster:
        ports = free_ports(2 * size)
        cluster = cls(root)
        for i in range(size):
            cluster.members.append(
                Member(f"m{i}", ports[2 * i], ports[2 * i + 1], root / f"m{i}.etcd")
            )
        return cluster

    @property
    def peers(self) -> list[str]:
        """Client URLs of every member, in order (what ``storage.peers`` lists)."""
        return [m.client_url for m in self.members]

    def start(self, member: Member) -> None:
        initial = ",".join(f"{m.name}={m.peer_url}" for m in self.members)
        log = (self.root / f"{member.name}.log").open("ab")
        member.process = subprocess.Popen(
            [
                ETCD,
                f"--name={member.name}",
                f"--data-dir={member.data_dir}",
                f"--listen-client-urls={member.client_url}",
                f"--advertise-client-urls={member.client_url}",
                f"--listen-peer-urls={member.peer_url}",
                f"--initial-advertise-peer-urls={member.peer_url}",
                f"--initial-cluster={initial}",
                "--initial-cluster-state=new",
                f"--initial-cluster-token={self.token}",
                # Short enough that an election after a kill takes about a second,
                # long enough not to flap on a busy two-core machine.
                "--heartbeat-interval=100",
                "--election-timeout=1000",
                "--log-level=warn",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()

    def start_all(self) -> None:
        """Start every member that is not running and wait until all are healthy."""
        self.root.mkdir(parents=True, exist_ok=True)
        for member in self.members:
            if member.process is None or member.process.poll() is not None:
                self.start(member)
        self.wait_healthy(self.members)

    def wait_healthy(self, members: list[Member]) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        waiting = list(members)
        while waiting and time.monotonic() < deadline:
            member = waiting[0]
            assert member.process is not None and member.process.poll() is None, self.logs()
            try:
                reply = httpx.get(member.client_url + "/health", timeout=1)
                if reply.json().get("health") == "true":
                    waiting.pop(0)
                    continue
            except (httpx.HTTPError, ValueError):
                pass
            time.sleep(0.1)
        assert not waiting, f"etcd members {[m.name for m in waiting]} not healthy\n{self.logs()}"

    def kill(self, member: Member) -> None:
        """SIGKILL one member (a crashed machine) and reap it."""
        assert member.process is not None
        member.process.send_signal(signal.SIGKILL)
        member.process.wait(timeout=10)
        member.process = None

    def stop_all(self, *, graceful: bool = True) -> None:
        """SIGTERM every member (SIGKILL when not ``graceful``) and reap them."""
        for member in self.members:
            if member.process is not None and member.process.poll() is None:
                member.process.send_signal(signal.SIGTERM if graceful else signal.SIGKILL)
        for member in self.members:
            if member.process is not None:
                try:
                    member.process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    member.process.kill()
                    member.process.wait()
                member.process = None

    def status(self, member: Member) -> dict[str, object]:
        reply = httpx.post(member.client_url + "/v3/maintenance/status", json={}, timeout=5)
        reply.raise_for_status()
        result: dict[str, object] = reply.json()
        return result

    def leader(self) -> Member:
        """The member that is the leader now."""
        for member in self.members:
            if member.process is None:
                continue
            status = self.status(member)
            if status.get("leader") == status.get("header", {}).get("member_id"):  # type: ignore[union-attr]
                return member
        raise AssertionError("no etcd member says it is the leader")

    def make_leader(self, member: Member) -> None:
        """Move the leadership to ``member`` (etcd's MoveLeader), and wait until it holds."""
        target = self.status(member)["header"]["member_id"]  # type: ignore[index]
        deadline = time.monotonic() + START_TIMEOUT
        while self.leader() is not member:
            assert time.monotonic() < deadline, "the leadership did not move"
            httpx.post(
                self.leader().client_url + "/v3/maintenance/transfer-leadership",
                json={"targetID": target},
                timeout=10,
            )
            time.sleep(0.1)

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-1500:]}"
            for p in sorted(self.root.glob("*.log"))
        )


def auth_config(path: Path, data_dir: Path, port: int, peers: list[str], prefix: str) -> Path:
    """A configuration file for an auth service on ``port`` that keeps state in etcd."""
    peer_list = ", ".join(peers)
    path.write_text(
        f"""version: v1
teleport:
  nodename: {data_dir.name}
  data_dir: {data_dir}
  storage:
    type: etcd
    peers: [{peer_list}]
    prefix: {prefix}
auth_service:
  listen_addr: 127.0.0.1:{port}
  cluster_name: {CLUSTER}
  tokens:
    - node,proxy:{JOIN_TOKEN}
"""
    )
    return path


@dataclass
class AuthProcess:
    """One ``trioport run --roles=auth`` of the HA cluster."""

    name: str
    port: int
    config: Path
    data_dir: Path
    process: Process | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def spawn(self) -> None:
        """Start the process; :meth:`wait_started` waits for it (so several start at once)."""
        stderr_path = self.data_dir.parent / f"{self.name}.stderr"
        with stderr_path.open("ab") as err:
            popen = subprocess.Popen(
                [program("trioport"), "run", "--config", str(self.config), "--roles=auth"],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=err,
                env=base_env(),
            )
        self.process = Process(popen, "", stderr_path)

    def wait_started(self) -> None:
        assert self.process is not None
        out = _read_until(self.process.popen, b"Stop with Ctrl-C.", ANNOUNCE_TIMEOUT)
        self.process.announcement = out.decode(errors="replace")
        if b"Stop with Ctrl-C." not in out:
            stderr = self.process.stderr
            self.process.stop(signal.SIGKILL)
            raise AssertionError(f"auth {self.name} did not start:\n{out.decode()}\n{stderr}")

    def start(self) -> None:
        self.spawn()
        self.wait_started()

    def kill(self) -> None:
        """SIGKILL: no goodbye to the clients, as when its machine dies."""
        assert self.process is not None
        self.process.stop(signal.SIGKILL)
        self.process = None

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
            self.process = None
