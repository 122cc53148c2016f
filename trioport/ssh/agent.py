"""The ssh-agent over trio: a client for ``SSH_AUTH_SOCK``, an agent, and forwarding.

The protocol itself (messages, framing, the keyring and its rules) is sans-IO in
:mod:`trioport.sshproto.agent`; this module moves its frames over trio streams.

- :class:`AgentClient` / :func:`open_agent` talk to any agent (OpenSSH's
  ``ssh-agent``, ours, a forwarded one): list, sign, add (with a certificate and
  a lifetime), remove, lock. :class:`AgentSigner` makes an agent-held key usable
  by :func:`trioport.ssh.client.authenticate`, so the private key never enters
  this process.
- :class:`AgentServer` holds keys in memory and serves them on a UNIX socket in a
  private (0700) directory, the socket itself 0600, and checks each peer's uid with
  ``SO_PEERCRED`` (draft-miller-ssh-agent §7: the socket is the only access control
  an agent has). Lifetimes run on trio's clock; a key with the *confirm* constraint
  signs only if a confirmation hook says yes.
- Forwarding (OpenSSH PROTOCOL §2.1, ``auth-agent@openssh.com``) in both directions.
  The client half, :class:`AgentForwardingHandler`, answers the agent channels a
  server opens after ``auth-agent-req@openssh.com``; the server half,
  :func:`session_agent_forwarding`, makes a per-session socket whose connections
  become agent channels back to the client. Either way a forwarded agent only lists
  and signs (:func:`relay_forwarded_agent`): add, remove, lock, PKCS#11 and
  extension requests get FAILURE and never reach the real agent (the lesson of
  OpenSSH CVE-2023-38408).
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import socket
import struct
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from contextlib import asynccontextmanager

import trio

from ..errors import (
    AuthError,
    ChannelOpenError,
    ChannelOpenFailureReason,
    ConfigError,
    DecodeError,
    TrioportError,
)
from ..sshproto import agent as proto
from ..sshproto import events as ev
from ..sshproto.certs import Certificate
from ..sshproto.keys import CERT_SUFFIX, PrivateKey, PublicKey, parse_public_key
from ..sshproto.keys import signature_algorithm_for as _signature_algorithm_for
from .channel import ChannelStream
from .connection import CompletedCommand, SSHConnection, SSHHandler

__all__ = [
    "AGENT_CHANNEL",
    "AgentClient",
    "AgentForwardingHandler",
    "AgentServer",
    "AgentSigner",
    "agent_signers",
    "open_agent",
    "peer_uid",
    "relay_forwarded_agent",
    "run_with_agent_forwarding",
    "session_agent_forwarding",
]

log = logging.getLogger("trioport.ssh.agent")

#: The channel type a forwarded agent connection travels in (OpenSSH PROTOCOL §2.1).
AGENT_CHANNEL = "auth-agent@openssh.com"
#: Bytes read from an agent stream at a time.
_READ_SIZE = 64 * 1024
#: OpenSSH's ssh-agent waits 0.1 s per failed UNLOCK (up to 10 s) against guessing.
_UNLOCK_DELAY, _UNLOCK_DELAY_MAX = 0.1, 10.0

#: ``confirm(entry, request) -> approved``: asks the user before a confirm-key signs.
ConfirmHook = Callable[[proto.AgentKey, proto.SignRequest], Awaitable[bool]]


async def _read_payload(stream: trio.abc.ReceiveStream, framer: proto.AgentFramer) -> bytes | None:
    """The next whole payload from ``stream``, or ``None`` at a clean end of stream.

    Raises:
        DecodeError: a bad frame length, or the stream ended inside a frame.
    """
    while (payload := framer.next_payload()) is None:
        data = await stream.receive_some(_READ_SIZE)
        if not data:
            if framer.buffered:
                raise DecodeError("agent stream ended inside a message")
            return None
        framer.receive_data(data)
    return payload


# --- the client --------------------------------------------------------------------------


class AgentClient:
    """One connection to an ssh-agent: requests go one at a time, each with its answer.

    Refusals raise :class:`~trioport.errors.AuthError` (the agent says only
    FAILURE, never why); a malformed answer raises
    :class:`~trioport.errors.DecodeError`; a lost connection raises
    :class:`trio.BrokenResourceError`. A request cancelled half-way leaves the
    stream out of step, so the client then refuses further use.
    """

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self._framer = proto.AgentFramer()
        self._lock = trio.Lock()
        self._broken = False

    async def request(self, message: proto.Request) -> proto.Response:
        """Send one request and return the agent's decoded response."""
        async with self._lock:
            if self._broken:
                raise trio.BrokenResourceError("an earlier agent request was interrupted")
            self._broken = True  # until the answer is fully read
            await self.stream.send_all(proto.frame(message))
            payload = await _read_payload(self.stream, self._framer)
            if payload is None:
                raise trio.BrokenResourceError("the agent closed the connection")
            response = proto.decode_response(payload)
            self._broken = False
            return response

    async def list_identities(self) -> list[proto.Identity]:
        """The keys and certificates the agent offers (blob and comment each)."""
        response = await self.request(proto.RequestIdentities())
        if not isinstance(response, proto.IdentitiesAnswer):
            raise AuthError("the agent refused to list its keys")
        return list(response.identities)

    async def sign(self, key_blob: bytes, data: bytes, *, flags: int = 0) -> bytes:
        """Have the agent sign ``data`` with the key listed as ``key_blob``.

        Args:
            key_blob: a blob from :meth:`list_identities`.
            data: the bytes to sign.
            flags: ``SIGN_RSA_SHA2_256`` / ``SIGN_RSA_SHA2_512`` for RSA keys.

        Returns:
            The SSH signature blob.
        """
        response = await self.request(proto.SignRequest(key_blob, data, flags))
        if not isinstance(response, proto.SignResponse):
            raise AuthError("the agent refused to sign")
        return response.signature

    async def add_identity(
        self,
        key: PrivateKey,
        *,
        comment: str = "",
        certificate: Certificate | None = None,
        lifetime: int | None = None,
        confirm: bool = False,
    ) -> None:
        """Give the agent a private key, optionally with its certificate.

        Args:
            key: the private key.
            comment: shown by ``ssh-add -l``.
            certificate: the key's certificate; the agent then lists the certificate.
            lifetime: seconds until the agent forgets the key.
            confirm: the agent asks its user before each signature.
        """
        constraints: list[proto.Constraint] = []
        if lifetime is not None:
            constraints.append(proto.Lifetime(int(lifetime)))
        if confirm:
            constraints.append(proto.Confirm())
        message = proto.AddIdentity(key, comment, certificate, tuple(constraints))
        self._expect_success(await self.request(message), "add the key")

    async def remove_identity(self, key: PublicKey | bytes) -> None:
        """Remove one key (or certificate) by its public key or blob."""
        blob = key.blob if isinstance(key, PublicKey) else key
        self._expect_success(await self.request(proto.RemoveIdentity(blob)), "remove the key")

    async def remove_all_identities(self) -> None:
        """Remove every key."""
        self._expect_success(await self.request(proto.RemoveAllIdentities()), "remove all keys")

    async def lock(self, passphrase: bytes | str) -> None:
        """Lock the agent: it lists and signs nothing until unlocked."""
        self._expect_success(await self.request(proto.Lock(_bytes(passphrase))), "lock")

    async def unlock(self, passphrase: bytes | str) -> None:
        """Unlock the agent with the passphrase it was locked with."""
        self._expect_success(await self.request(proto.Unlock(_bytes(passphrase))), "unlock")

    async def aclose(self) -> None:
        """Close the connection to the agent."""
        await self.stream.aclose()

    async def __aenter__(self) -> AgentClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    @staticmethod
    def _expect_success(response: proto.Response, what: str) -> None:
        if not isinstance(response, proto.Success):
            raise AuthError(f"the agent refused to {what}")


def _bytes(value: bytes | str) -> bytes:
    return value.encode("utf-8") if isinstance(value, str) else value


@asynccontextmanager
async def open_agent(path: str | os.PathLike[str] | None = None) -> AsyncIterator[AgentClient]:
    """Connect to the agent at ``path`` (default: ``$SSH_AUTH_SOCK``).

    Raises:
        ConfigError: no path given and ``SSH_AUTH_SOCK`` is not set.
        OSError: the socket cannot be reached.
    """
    if path is None:
        path = os.environ.get("SSH_AUTH_SOCK") or None
        if path is None:
            raise ConfigError("is not set: there is no ssh-agent to use", key="SSH_AUTH_SOCK")
    stream = await trio.open_unix_socket(os.fspath(path))
    client = AgentClient(stream)
    try:
        yield client
    finally:
        await trio.aclose_forcefully(stream)


class AgentSigner:
    """A key held by an agent, as a :class:`~trioport.ssh.client.Signer`.

    Args:
        agent: a connected :class:`AgentClient`.
        identity: an entry of :meth:`AgentClient.list_identities` (or its blob).
        algorithm: the publickey algorithm to offer; by default the key's best
            (``rsa-sha2-512`` for RSA), with the certificate suffix for a certificate.

    Raises:
        DecodeError: the agent lists a key type trioport does not support.
    """

    def __init__(
        self,
        agent: AgentClient,
        identity: proto.Identity | bytes,
        *,
        algorithm: str | None = None,
    ) -> None:
        blob = identity.key_blob if isinstance(identity, proto.Identity) else identity
        self.agent = agent
        self.comment = identity.comment if isinstance(identity, proto.Identity) else ""
        self.key = parse_public_key(blob)
        self.public_blob = blob
        if algorithm is None:
            plain = self.key.key if isinstance(self.key, Certificate) else self.key
            algorithm = plain.signature_algorithms()[0]
            if isinstance(self.key, Certificate):
                algorithm += CERT_SUFFIX
        self.algorithm = algorithm
        # §4.5.1: RSA keys sign with SHA-2 only when the flags ask for it.
        self.flags = {
            "rsa-sha2-256": proto.SIGN_RSA_SHA2_256,
            "rsa-sha2-512": proto.SIGN_RSA_SHA2_512,
        }.get(_signature_algorithm_for(algorithm), 0)

    async def sign(self, data: bytes) -> bytes:
        """Have the agent sign ``data``."""
        return await self.agent.sign(self.public_blob, data, flags=self.flags)

    def __repr__(self) -> str:
        return f"<AgentSigner {self.algorithm} {self.key.fingerprint()} {self.comment!r}>"


async def agent_signers(agent: AgentClient) -> list[AgentSigner]:
    """A signer for each key the agent lists, skipping key types trioport cannot use."""
    signers = []
    for identity in await agent.list_identities():
        try:
            signers.append(AgentSigner(agent, identity))
        except DecodeError as exc:
            log.debug("skipping agent key %r: %s", identity.comment, exc)
    return signers


# --- the agent server ----------------------------------------------------------------------


def peer_uid(sock: trio.socket.SocketType) -> int:
    """The uid of the process at the other end of a connected UNIX socket (SO_PEERCRED)."""
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return uid


def _default_uids() -> frozenset[int]:
    # As OpenSSH's ssh-agent: the agent's own user, and root.
    return frozenset({os.geteuid(), 0})


def _check_private_directory(directory: str) -> None:
    st = os.stat(directory)
    if st.st_uid != os.geteuid() or st.st_mode & 0o077:
        raise ConfigError(
            "the agent socket's directory must belong to us with mode 0700", path=directory
        )


def _socket_path(path: str | os.PathLike[str] | None) -> tuple[str, str | None]:
    """Where the socket goes, and the private directory made for it (if any)."""
    if path is None:
        created = tempfile.mkdtemp(prefix="trioport-agent-")  # mode 0700
        return os.path.join(created, "agent.sock"), created
    sock_path = os.path.abspath(os.fspath(path))
    _check_private_directory(os.path.dirname(sock_path))
    return sock_path, None


async def _listen_private(
    path: str | os.PathLike[str] | None, owner: int | None = None
) -> tuple[trio.SocketListener, str, str | None]:
    """Listen on a UNIX socket only its owner can reach: 0600 in a 0700 directory.

    Returns the listener, the socket path, and the directory if we created it.
    """
    sock_path, created = _socket_path(path)
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        await sock.bind(sock_path)
        os.chmod(sock_path, 0o600)
        if owner is not None and created is not None:
            os.chown(created, owner, -1)
            os.chown(sock_path, owner, -1)
        sock.listen(socket.SOMAXCONN)
    except BaseException:
        sock.close()
        _remove_socket(sock_path, created)
        raise
    return trio.SocketListener(sock), sock_path, created


def _remove_socket(path: str, directory: str | None) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
    if directory is not None:
        shutil.rmtree(directory, ignore_errors=True)


class AgentServer:
    """An ssh-agent in this process: keys in memory, served on a private UNIX socket.

    Args:
        keyring: the keys (a new, empty one by default); shared by every connection.
        confirm: asked before a key added with the confirm constraint signs; with
            no hook such signatures are refused.
        allowed_uids: peer uids allowed to connect; by default our own and root.
    """

    def __init__(
        self,
        keyring: proto.Keyring | None = None,
        *,
        confirm: ConfirmHook | None = None,
        allowed_uids: Collection[int] | None = None,
    ) -> None:
        self.keyring = keyring if keyring is not None else proto.Keyring()
        self.confirm = confirm
        self.allowed_uids = frozenset(allowed_uids) if allowed_uids is not None else None
        #: The socket path while :meth:`serve` runs.
        self.path: str | None = None
        self._changed = trio.Event()

    def add_key(
        self,
        key: PrivateKey,
        *,
        comment: str = "",
        certificate: Certificate | None = None,
        lifetime: float | None = None,
        confirm: bool = False,
    ) -> None:
        """Add a key directly (what ``ssh-add`` does over the socket).

        Must be called from inside trio (lifetimes run on trio's clock).
        """
        if lifetime is None:
            lifetime = self.keyring.default_lifetime
        expires_at = trio.current_time() + lifetime if lifetime is not None else None
        self.keyring.add(proto.AgentKey(key, comment, certificate, expires_at, confirm))
        self._changed.set()

    async def serve(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve on a UNIX socket until cancelled; ``task_status.started(path)``.

        Args:
            path: where to put the socket; its directory must be ours and 0700. By
                default a new private directory is made (and removed afterwards).

        Raises:
            ConfigError: ``path``'s directory is not private.
            OSError: the socket cannot be created (for example, it exists).
        """
        listener, sock_path, created = await _listen_private(path)
        self.path = sock_path
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self.expire_keys)
                await nursery.start(trio.serve_listeners, self._serve_peer, [listener])
                task_status.started(sock_path)
        finally:
            self.path = None
            _remove_socket(sock_path, created)

    async def _serve_peer(self, stream: trio.SocketStream) -> None:
        uid = peer_uid(stream.socket)
        allowed = self.allowed_uids if self.allowed_uids is not None else _default_uids()
        if uid not in allowed:
            log.warning("agent: refused a connection from uid %d", uid)
            await trio.aclose_forcefully(stream)
            return
        await self.serve_stream(stream)

    async def serve_stream(self, stream: trio.abc.Stream, *, forwarded: bool = False) -> None:
        """Answer agent requests on one stream until it ends, then close it.

        Args:
            stream: a socket connection, or an ``auth-agent@openssh.com`` channel.
            forwarded: the stream arrived through agent forwarding: list and sign only.
        """
        state = proto.AgentState(self.keyring, forwarded=forwarded)
        framer = proto.AgentFramer()
        try:
            while (payload := await _read_payload(stream, framer)) is not None:
                response = await self._answer(state, payload)
                await stream.send_all(proto.frame(response))
        except TrioportError as exc:
            # A frame over the limits either way (say, a listing of more than
            # 256 KiB): this connection ends, the agent serves on.
            log.info("agent: closing a connection: %s", exc)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            await trio.aclose_forcefully(stream)

    async def _answer(self, state: proto.AgentState, payload: bytes) -> proto.Response:
        failures = self.keyring.unlock_failures
        response = state.handle(payload, now=trio.current_time())
        if isinstance(response, proto.ConfirmationRequired):
            approved = False
            if self.confirm is not None:
                try:
                    approved = await self.confirm(response.entry, response.request)
                except Exception:
                    log.exception("agent: the confirmation hook failed; refusing to sign")
            response = state.complete_confirmation(response, approved, now=trio.current_time())
        elif self.keyring.unlock_failures > failures:
            await trio.sleep(min(_UNLOCK_DELAY * self.keyring.unlock_failures, _UNLOCK_DELAY_MAX))
        self._changed.set()  # keys may have come or gone: re-arm the expiry timer
        return response

    async def expire_keys(self) -> None:
        """Forget keys the moment their lifetimes end, not at the next request.

        :meth:`serve` runs this; run it yourself (in a nursery) when you only use
        :meth:`serve_stream`.
        """
        while True:
            self._changed = trio.Event()
            deadline = self.keyring.next_expiry()
            with trio.move_on_at(math.inf if deadline is None else deadline):
                await self._changed.wait()
            self.keyring.expire(trio.current_time())


# --- forwarding ---------------------------------------------------------------------------


async def relay_forwarded_agent(downstream: trio.abc.Stream, upstream: trio.abc.Stream) -> None:
    """Pass a forwarded agent's list and sign requests to ``upstream``; refuse the rest.

    ``downstream`` is where requests come from (the far side of the forwarding),
    ``upstream`` the real agent. Requests other than list and sign are answered
    with FAILURE here and never reach the agent. Both streams are closed at the end.
    """
    from_down = proto.AgentFramer()
    from_up = proto.AgentFramer()
    try:
        while (payload := await _read_payload(downstream, from_down)) is not None:
            if proto.forwarded_request_allowed(payload):
                await upstream.send_all(proto.frame(payload))
                answer = await _read_payload(upstream, from_up)
                if answer is None:
                    break
                reply = proto.frame(answer)
            else:
                log.info("agent: refused request type %d from a forwarded agent", payload[0])
                reply = proto.frame(proto.Failure())
            await downstream.send_all(reply)
    except TrioportError as exc:
        log.info("agent: closing a forwarded agent connection: %s", exc)
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        pass
    finally:
        try:
            await trio.aclose_forcefully(downstream)
        finally:
            await trio.aclose_forcefully(upstream)


class AgentForwardingHandler(SSHHandler):
    """Client side: forward an agent to the server, serving its agent channels.

    The agent is a socket path (OpenSSH's agent, say) or an in-process
    :class:`AgentServer`. Agent channels are accepted only after :meth:`request`
    asked for forwarding, so use one handler per connection; anything else goes
    to ``inner``.

    Args:
        agent: where the keys are.
        inner: the handler for everything that is not an agent channel.
    """

    def __init__(
        self, agent: str | os.PathLike[str] | AgentServer, inner: SSHHandler | None = None
    ) -> None:
        self.agent = agent
        self.inner = inner or SSHHandler()
        #: Set once forwarding was requested on some session of this connection.
        self.requested = False

    async def request(self, chan: ChannelStream) -> bool:
        """Ask the server to forward the agent on session ``chan`` (before exec/shell)."""
        self.requested = True
        return await chan.request(ev.AgentForwarding())

    async def channel_open(
        self, conn: SSHConnection, request: ev.ChannelOpen
    ) -> Callable[[ChannelStream], Awaitable[None]]:
        if request.kind != AGENT_CHANNEL:
            return await self.inner.channel_open(conn, request)
        if not self.requested:
            # A server may not reach our agent unless we asked (OpenSSH does the same).
            raise ChannelOpenError(
                ChannelOpenFailureReason.ADMINISTRATIVELY_PROHIBITED,
                "agent forwarding was not requested",
            )
        agent = self.agent
        if isinstance(agent, AgentServer):
            return lambda chan: agent.serve_stream(chan, forwarded=True)
        try:
            upstream = await trio.open_unix_socket(os.fspath(agent))
        except OSError as exc:
            raise ChannelOpenError(
                ChannelOpenFailureReason.CONNECT_FAILED, f"cannot reach the agent: {exc}"
            ) from None
        return lambda chan: relay_forwarded_agent(chan, upstream)

    async def global_request(
        self, conn: SSHConnection, request: ev.GlobalRequest
    ) -> ev.GlobalRequestReply:
        return await self.inner.global_request(conn, request)

    def auth_banner(self, conn: SSHConnection, banner: ev.UserauthBanner) -> None:
        self.inner.auth_banner(conn, banner)


async def run_with_agent_forwarding(
    conn: SSHConnection, handler: AgentForwardingHandler, command: str | bytes
) -> CompletedCommand:
    """Run ``command`` in a session that forwards ``handler``'s agent.

    Raises:
        ChannelOpenError: the server refused agent forwarding or the command.
    """
    if isinstance(command, str):
        command = command.encode()
    chan = await conn.open_session()
    async with chan:
        if not await handler.request(chan):
            raise ChannelOpenError(
                ChannelOpenFailureReason.ADMINISTRATIVELY_PROHIBITED,
                "the server refused agent forwarding",
            )
        if not await chan.request(ev.Exec(command=command)):
            raise ChannelOpenError(
                ChannelOpenFailureReason.ADMINISTRATIVELY_PROHIBITED,
                "the server refused to run the command",
            )
        out = bytearray()
        err = bytearray()

        async def read(stream: trio.abc.ReceiveStream, into: bytearray) -> None:
            while chunk := await stream.receive_some():
                into += chunk

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read, chan, out)
            nursery.start_soon(read, chan.stderr, err)
            await chan.send_eof()
        await chan.wait_closed()
    return CompletedCommand(chan.exit_status, bytes(out), bytes(err), chan.exit_signal)


def session_agent_forwarding(
    conn: SSHConnection, *, uid: int | None = None
) -> Callable[[ChannelStream], Awaitable[str | None]]:
    """Server side: the ``SessionPolicy.agent_forwarding`` hook for one connection.

    On ``auth-agent-req@openssh.com`` the hook makes a private directory and socket
    for the session (owned by ``uid`` when the session runs as another user) and
    returns its path for ``SSH_AUTH_SOCK``. Each connection to it becomes an
    ``auth-agent@openssh.com`` channel to the client, relayed with
    :func:`relay_forwarded_agent`. The socket disappears when the session channel
    closes or the connection ends.

    Args:
        conn: the connection whose client holds the agent.
        uid: the session's user; that uid (and ours, and root) may connect.
    """
    allowed = set(_default_uids())
    if uid is not None:
        allowed.add(uid)

    async def hook(chan: ChannelStream) -> str | None:
        try:
            listener, path, directory = await _listen_private(None, owner=uid)
        except OSError as exc:
            log.warning("agent forwarding: cannot make a socket: %s", exc)
            return None
        try:
            conn.start_soon(_serve_session_socket, conn, chan, listener, path, directory, allowed)
        except RuntimeError:  # the connection is already gone
            await trio.aclose_forcefully(listener)
            _remove_socket(path, directory)
            return None
        return path

    return hook


async def _serve_session_socket(
    conn: SSHConnection,
    chan: ChannelStream,
    listener: trio.SocketListener,
    path: str,
    directory: str | None,
    allowed: Collection[int],
) -> None:
    async def one(stream: trio.SocketStream) -> None:
        uid = peer_uid(stream.socket)
        if uid not in allowed:
            log.warning("agent forwarding: refused a connection from uid %d", uid)
            await trio.aclose_forcefully(stream)
            return
        try:
            agent_chan = await conn.open_channel(AGENT_CHANNEL)
        except (ChannelOpenError, trio.BrokenResourceError) as exc:
            log.info("agent forwarding: the client refused an agent channel: %s", exc)
            await trio.aclose_forcefully(stream)
            return
        await relay_forwarded_agent(stream, agent_chan)

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.serve_listeners, one, [listener])
            await chan.wait_closed()
            nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            await trio.aclose_forcefully(listener)
        _remove_socket(path, directory)
