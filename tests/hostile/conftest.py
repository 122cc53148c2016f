"""A real trioport SSH server on loopback, a well-behaved witness, and hostile peers.

``hostile_server(limits=..., config=...)`` starts :func:`trioport.ssh.serve` on a free
127.0.0.1 port in the test's nursery and returns a :class:`Bed`:

- ``bed.witness`` is a trioport client, logged in as ``witness`` before any attack,
  that has already run one command; :meth:`Bed.witness_works` runs another, so a
  test proves the attack ended only the offending connection;
- ``bed.handler`` records every login and every channel the server's handler was
  asked to open, so a test proves nothing ran for the attacker;
- ``bed.peer()`` connects a :class:`~tests.hostile.peer.HostilePeer`;
- ``bed.marker`` is a path a pre-auth ``touch`` would create.

The attacker's user name is ``mallory``; her key is authorized too, so post-auth
attacks come from an authenticated user.
"""

from __future__ import annotations

import pathlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import pytest
import trio

from trioport.errors import ChannelOpenError, ChannelOpenFailureReason
from trioport.ssh import SSHConnection, SSHHandler, connect, serve
from trioport.ssh.server import ServerLimits
from trioport.ssh.session import serve_session
from trioport.sshproto import ConnectionConfig, HostKey, Role
from trioport.sshproto import events as ev
from trioport.sshproto.keys import PrivateKey

from .peer import HostilePeer

#: Bound for every test body (trio.fail_after); generous, the tests take far less.
TIMEOUT = 30


class RecordingHandler(SSHHandler):
    """Publickey auth against known keys, session channels; records what it allowed."""

    def __init__(self, authorized: set[bytes]) -> None:
        self.authorized = authorized
        #: User names that logged in, in order.
        self.logins: list[str] = []
        #: The server side of each logged-in connection, by user name.
        self.connections: dict[str, list[SSHConnection]] = {}
        #: (user name or None, channel kind) for every channel the server considered.
        self.opens: list[tuple[str | None, str]] = []

    async def auth(self, conn: SSHConnection, request: ev.UserauthRequest) -> bool:
        ok = request.method == "publickey" and request.public_key in self.authorized
        if ok and request.signature_ok:
            self.logins.append(request.username)
            self.connections.setdefault(request.username, []).append(conn)
        return ok

    async def channel_open(self, conn: SSHConnection, request: ev.ChannelOpen):
        self.opens.append((conn.username, request.kind))
        if request.kind == "session" and conn.authenticated.is_set():
            return serve_session
        raise ChannelOpenError(ChannelOpenFailureReason.ADMINISTRATIVELY_PROHIBITED, "no")

    def opens_by(self, username: str | None) -> list[str]:
        return [kind for user, kind in self.opens if user == username]


@dataclass
class Keys:
    host: PrivateKey
    witness: PrivateKey
    mallory: PrivateKey


@pytest.fixture(scope="session")
def keys() -> Keys:
    return Keys(*(PrivateKey.generate("ssh-ed25519") for _ in range(3)))


@dataclass
class Bed:
    port: int
    keys: Keys
    handler: RecordingHandler
    witness: SSHConnection
    marker: pathlib.Path
    nursery: trio.Nursery
    witness_runs: int = field(default=0)
    peers: list[HostilePeer] = field(default_factory=list)

    async def witness_works(self) -> None:
        """The witness, connected before the attack, still runs commands."""
        self.witness_runs += 1
        result = await self.witness.run(f"echo alive {self.witness_runs}")
        assert (result.exit_status, result.stdout) == (0, f"alive {self.witness_runs}\n".encode())

    async def peer(self, **kwargs: object) -> HostilePeer:
        peer = await HostilePeer.connect(self.port, **kwargs)  # type: ignore[arg-type]
        self.peers.append(peer)
        return peer

    async def client(self, username: str = "witness", *, local_address: str | None = None):
        """A fresh trioport client connection, logged in; lives until the test ends."""
        key = self.keys.witness if username == "witness" else self.keys.mallory

        async def run(task_status: trio.TaskStatus[SSHConnection]) -> None:
            stream = await trio.open_tcp_stream("127.0.0.1", self.port, local_address=local_address)
            async with connect(
                "127.0.0.1", self.port, username=username, signers=[key], stream=stream
            ) as conn:
                task_status.started(conn)
                await trio.sleep_forever()

        return await self.nursery.start(run)

    def nothing_ran(self, *, logged_in: bool = False, sessions: int = 0) -> None:
        """Nothing happened for mallory beyond what the test did legitimately.

        She never logged in (unless ``logged_in``), the handler was asked for no
        channel by an unauthenticated connection and for exactly ``sessions``
        channels by her, and the marker a hostile exec would create does not exist.
        """
        assert ("mallory" in self.handler.logins) is logged_in
        assert self.handler.opens_by(None) == []
        assert self.handler.opens_by("mallory") == ["session"] * sessions
        assert not self.marker.exists()


@pytest.fixture
async def hostile_server(
    nursery: trio.Nursery, keys: Keys, tmp_path: pathlib.Path
) -> AsyncIterator[Callable[..., Awaitable[Bed]]]:
    beds: list[Bed] = []

    async def start(
        limits: ServerLimits | None = None, config: ConnectionConfig | None = None
    ) -> Bed:
        cfg = config or ConnectionConfig(role=Role.SERVER, host_keys=[HostKey(keys.host)])
        handler = RecordingHandler({keys.witness.public.blob, keys.mallory.public.blob})
        addresses = await nursery.start(
            lambda task_status: serve(
                0,
                cfg,
                lambda: handler,
                limits or ServerLimits(),
                host="127.0.0.1",
                task_status=task_status,
            )
        )
        port = addresses[0][1]
        bed = Bed(port, keys, handler, None, tmp_path / "MARKER", nursery)  # type: ignore[arg-type]
        bed.witness = await bed.client()
        await bed.witness_works()
        beds.append(bed)
        return bed

    yield start
    for bed in beds:
        for peer in bed.peers:
            await peer.aclose()
