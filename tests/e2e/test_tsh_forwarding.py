"""``tsh ssh -L`` and ``-A`` on a real cluster, driven through the tsh CLI.

The cluster (auth, proxy and a node service) runs in the test's trio loop
(:mod:`tests.roles.proxy.cluster`); ``tsh`` is a subprocess. A TCP echo server on
loopback stands for the service a user forwards a port to: bytes sent into the
local end of ``-L`` must come back through the node.
"""

from __future__ import annotations

import functools
import re
import signal
import subprocess
from pathlib import Path

import pytest
import trio

from tests.e2e.cluster import free_ports
from tests.roles.proxy.cluster import LOGIN, Cluster, open_cluster, tsh_env
from tests.test_tsh import TSH, login, text, tsh
from trioport.roles.proxy.client import Forward, parse_forward

NO_FORWARDING = {
    "kind": "role",
    "metadata": {"name": "no-forwarding"},
    "spec": {
        "allow": {"logins": [LOGIN], "node_labels": {"*": "*"}, "rules": []},
        "options": {"port_forwarding": False, "forward_agent": False},
    },
}


@pytest.mark.parametrize(
    ("spec", "forward"),
    [
        ("8080:db:5432", Forward("127.0.0.1", 8080, "db", 5432)),
        ("0.0.0.0:8080:localhost:80", Forward("0.0.0.0", 8080, "localhost", 80)),
        ("*:8080:10.0.0.5:80", Forward("0.0.0.0", 8080, "10.0.0.5", 80)),
        ("[::1]:8080:[fd00::5]:443", Forward("::1", 8080, "fd00::5", 443)),
        ("8080:[fd00::5]:443", Forward("127.0.0.1", 8080, "fd00::5", 443)),
    ],
)
def test_forward_specs_read_as_openssh_reads_them(spec: str, forward: Forward) -> None:
    assert parse_forward(spec) == forward
    assert parse_forward(str(forward)) == forward  # printed back in the same shape


@pytest.mark.parametrize(
    ("spec", "why"),
    [
        ("8080:db", "expected [BIND:]PORT:HOST:HOSTPORT"),
        ("a:b:c:d:e", "expected [BIND:]PORT:HOST:HOSTPORT"),
        ("http:db:80", "PORT is not a port number"),
        ("8080:db:70000", "HOSTPORT is not a port number"),
        ("8080::80", "expected a host"),
    ],
)
def test_malformed_forward_specs_say_what_is_wrong(spec: str, why: str) -> None:
    with pytest.raises(ValueError, match=re.escape(why)):
        parse_forward(spec)


async def echo_server(nursery: trio.Nursery) -> int:
    """A TCP echo server on loopback; its port."""

    async def echo(stream: trio.SocketStream) -> None:
        async with stream:
            try:
                while data := await stream.receive_some(65536):
                    await stream.send_all(data)
            except trio.BrokenResourceError:
                pass

    listeners = await nursery.start(functools.partial(trio.serve_tcp, echo, 0, host="127.0.0.1"))
    return int(listeners[0].socket.getsockname()[1])


class Tsh:
    """A running ``tsh`` with pipes, for commands that last while the test works."""

    def __init__(self, process: trio.Process) -> None:
        self.process = process
        self.stdout = b""

    async def read_until(self, marker: bytes) -> None:
        assert self.process.stdout is not None
        with trio.fail_after(30):
            while marker not in self.stdout:
                chunk = await self.process.stdout.receive_some()
                assert chunk, f"tsh ended before {marker!r}: {self.stdout!r}"
                self.stdout += chunk

    async def finish(self) -> tuple[int, str]:
        """Close stdin, then the exit status and everything on stderr."""
        assert self.process.stdin is not None and self.process.stderr is not None
        await self.process.stdin.aclose()
        err = b""
        with trio.fail_after(30):
            while chunk := await self.process.stderr.receive_some():
                err += chunk
            status = await self.process.wait()
        return status, err.decode()


async def start_tsh(cluster: Cluster, home: Path, *args: str) -> Tsh:
    env = tsh_env(home, SSL_CERT_FILE=str(cluster.https_cert))
    process = await trio.lowlevel.open_process(
        [*TSH, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    return Tsh(process)


async def round_trip(port: int, payload: bytes) -> bytes:
    """Send ``payload`` to 127.0.0.1:``port``, half-close, read until it closes."""
    with trio.fail_after(30):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        back = b""
        async with stream:
            try:
                await stream.send_all(payload)
                await stream.send_eof()
                while chunk := await stream.receive_some():
                    back += chunk
            except trio.BrokenResourceError:
                pass  # closed with our bytes unread: a reset
    return back


async def test_local_forwarding_reaches_a_tcp_service_through_the_node(tmp_path: Path) -> None:
    async with open_cluster(tmp_path) as cluster:
        echo_port = await echo_server(cluster.nursery)
        await cluster.add_node("web1")
        alice = await cluster.add_user("alice")
        home = tmp_path / "tsh"
        await login(cluster, home, alice)
        first, second = free_ports(2)
        running = await start_tsh(
            cluster,
            home,
            *("ssh", "-L", f"{first}:127.0.0.1:{echo_port}"),
            *("-L", f"127.0.0.1:{second}:localhost:{echo_port}"),
            *("web1", "echo ready; cat >/dev/null"),
        )
        await running.read_until(b"ready\n")
        # The listeners exist before the command runs: both forwards work, twice each.
        payload = bytes(range(256)) * 512
        assert await round_trip(first, payload) == payload
        assert await round_trip(second, b"second forward\n") == b"second forward\n"
        assert await round_trip(first, b"again\n") == b"again\n"
        status, err = await running.finish()
        assert status == 0, err
        events = await cluster.events("port")
        done = [e for e in events if e.get("user") == "alice" and e.get("success")]
        assert len(done) >= 3
        assert all(e.get("addr", "").endswith(f":{echo_port}") for e in done)

        # -N: nothing runs on the node; forwarding lasts until Ctrl-C.
        (port,) = free_ports(1)
        forwarding = await start_tsh(
            cluster, home, "ssh", "-N", "-L", f"{port}:127.0.0.1:{echo_port}", "web1"
        )
        with trio.fail_after(30):
            while True:  # until tsh listens
                try:
                    back = await round_trip(port, b"with -N\n")
                except OSError:
                    await trio.sleep(0.1)
                    continue
                break
        assert back == b"with -N\n"
        forwarding.process.send_signal(signal.SIGINT)
        status, err = await forwarding.finish()
        assert status == 130, err

        # A port that is already taken is a clear error before anything runs.
        with trio.socket.socket() as taken:
            await taken.bind(("127.0.0.1", 0))
            taken.listen()
            busy = taken.getsockname()[1]
            done_ = await tsh(
                cluster, home, "ssh", "-L", f"{busy}:127.0.0.1:{echo_port}", "web1", "true"
            )
        assert done_.returncode == 255
        assert f"cannot listen on 127.0.0.1:{busy}" in text(done_)
        bad = await tsh(cluster, home, "ssh", "-L", "80:web", "web1", "true")
        assert bad.returncode == 255
        assert "expected [BIND:]PORT:HOST:HOSTPORT" in text(bad)


async def test_forwarding_the_roles_forbid_is_refused_with_a_reason(tmp_path: Path) -> None:
    async with open_cluster(tmp_path) as cluster:
        echo_port = await echo_server(cluster.nursery)
        await cluster.add_role(NO_FORWARDING)
        await cluster.add_node("web1")
        bob = await cluster.add_user("bob", roles=["no-forwarding"])
        home = tmp_path / "tsh"
        await login(cluster, home, bob)
        (port,) = free_ports(1)
        running = await start_tsh(
            cluster,
            home,
            *("ssh", "-L", f"{port}:127.0.0.1:{echo_port}", "web1", "echo ready; cat >/dev/null"),
        )
        await running.read_until(b"ready\n")
        # The node refuses the channel: the local connection closes, nothing echoed.
        assert await round_trip(port, b"let me through\n") == b""
        status, err = await running.finish()
        assert status == 0  # the command itself ran
        assert (
            f"the node refused to forward to 127.0.0.1:{echo_port}:"
            " your certificate does not permit port forwarding"
        ) in err
        events = await cluster.events("port")
        assert any(
            e.get("user") == "bob"
            and e.get("success") is False
            and "does not permit port forwarding" in str(e.get("error"))
            for e in events
        )

        # -A: the command runs, and tsh says why there is no agent on the node.
        done = await tsh(
            cluster,
            home,
            *("ssh", "-A", "web1", "echo agent=${SSH_AUTH_SOCK:-none}"),
            env={"SSH_AUTH_SOCK": str(tmp_path / "agent.sock")},
        )
        assert done.returncode == 0, text(done)
        assert done.stdout == b"agent=none\n"
        assert "agent forwarding (-A) is not allowed" in text(done)
        assert "your certificate does not permit it" in text(done)
