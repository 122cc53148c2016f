"""The client side of the proxy: what ``tsh`` is built on.

- Over HTTPS (httpx, with the RFC 9325 context of :mod:`trioport.tls`):
  :func:`ping` (cluster name, where the SSH port is) and :func:`login` (password,
  TOTP code and a public key in; a user certificate and the host CA out).
- Over SSH: :func:`connect_proxy` logs in to the proxy's SSH port with the user's
  certificate after checking the proxy's host certificate (:func:`host_verifier`:
  signed by the cluster's host CA, valid, for this cluster, with the service role
  ``proxy``); :func:`list_nodes` asks it for the nodes the user may see; and
  :func:`connect_node` opens the subsystem ``proxy:NODE:PORT`` and runs a second SSH
  connection *inside* that channel, end to end to the node, whose host
  certificate is checked again (service role ``node``, and the name the user asked
  for among its principals). The proxy only ever sees encrypted bytes.

When the proxy refuses a node it says why on the channel's stderr;
:func:`connect_node` raises that text as :class:`ProxyRefused`.

Local port forwarding (``tsh ssh -L``) is :func:`parse_forward` and
:func:`serve_local_forward`: a listener on this machine whose every connection
becomes a ``direct-tcpip`` channel (RFC 4254 §7.2) on the end-to-end connection
to the node, which decides whether the certificate and roles allow it.
"""

from __future__ import annotations

import json
import os
import ssl
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import attrs
import trio

from trioport.config import Address
from trioport.errors import (
    AccessDenied,
    AuthenticationFailed,
    CertificateInvalid,
    ChannelOpenError,
    ConnectionClosedError,
    HostKeyNotVerifiable,
    NotFound,
    ProtocolError,
    TrioportError,
)
from trioport.ssh import (
    ChannelStream,
    KeySigner,
    Signer,
    SSHConnection,
    SSHHandler,
    authenticate,
    connect,
    open_ssh,
)
from trioport.sshproto import ConnectionConfig, Role
from trioport.sshproto import events as ev
from trioport.sshproto.certs import Certificate, CertType, ServiceRole, check_certificate
from trioport.sshproto.keys import PublicKey, parse_public_key

from .router import SUBSYSTEM_NODES, NodeInfo

__all__ = [
    "HTTP_TIMEOUT",
    "LOCKOUT_HINT",
    "Forward",
    "ProxyRefused",
    "ProxyUnavailable",
    "connect_node",
    "connect_proxy",
    "host_verifier",
    "list_nodes",
    "listen_forward",
    "login",
    "parse_forward",
    "ping",
    "serve_local_forward",
]

#: Seconds for each HTTPS request to the proxy.
HTTP_TIMEOUT = 30.0
#: Seconds to reach and log in to the proxy's (or a node's) SSH port.
CONNECT_TIMEOUT = 20.0
#: What a refused login adds, since the auth service says the same for every cause.
LOCKOUT_HINT = (
    "after 5 failed attempts the account is locked for 30 minutes;"
    " an administrator can unlock it with 'tctl users unlock'"
)


class ProxyUnavailable(TrioportError):
    """The proxy cannot be reached, or its HTTPS certificate is not trusted."""


class ProxyRefused(TrioportError):
    """The proxy refused to connect us to a node; the message is its reason."""


# --- HTTPS -----------------------------------------------------------------------------


def _url(addr: Address, path: str) -> str:
    return f"https://{addr}{path}"


def _request(
    method: str,
    addr: Address,
    path: str,
    ssl_context: ssl.SSLContext,
    body: dict[str, Any] | None = None,
) -> dict[str, Any]:
    import httpx  # here, not at the top: only login and ping speak HTTP (tsh ssh starts sooner)

    try:
        with httpx.Client(verify=ssl_context, timeout=HTTP_TIMEOUT, trust_env=False) as http:
            reply = http.request(method, _url(addr, path), json=body)
    except httpx.ConnectError as exc:
        cause = exc.__cause__ or exc.__context__
        while cause is not None and not isinstance(cause, ssl.SSLCertVerificationError):
            cause = cause.__cause__ or cause.__context__
        if isinstance(cause, ssl.SSLCertVerificationError):
            raise ProxyUnavailable(
                f"the proxy at https://{addr} presented a certificate that is not trusted"
                f" ({cause.verify_message}); if it is a self-signed certificate you expect,"
                " log in with --insecure, or trust it with SSL_CERT_FILE"
            ) from None
        why = _connect_failure(exc)
        raise ProxyUnavailable(
            f"cannot reach the proxy at https://{addr}: {exc if why == 'no answer' else why}"
        ) from None
    except httpx.HTTPError as exc:
        raise ProxyUnavailable(f"the proxy at https://{addr} failed: {exc}") from None
    try:
        data = reply.json()
    except ValueError:
        raise ProxyUnavailable(
            f"https://{addr}{path} answered HTTP {reply.status_code} without JSON:"
            " is this a trioport proxy?"
        ) from None
    if reply.status_code >= 400:
        error = data.get("error") if isinstance(data, dict) else None
        message = str(error.get("message")) if isinstance(error, dict) else reply.text[:200]
        kind = str(error.get("kind")) if isinstance(error, dict) else ""
        if kind == "authentication_failed":
            raise AuthenticationFailed(message)
        if kind == "access_denied":
            raise AccessDenied(message)
        if kind == "not_found":
            raise NotFound(message)
        raise TrioportError(f"the proxy refused the request (HTTP {reply.status_code}): {message}")
    if not isinstance(data, dict):
        raise ProxyUnavailable(f"https://{addr}{path} answered with something other than JSON")
    return data


def ping(addr: Address, ssl_context: ssl.SSLContext) -> dict[str, Any]:
    """``GET /v1/webapi/ping``: the cluster's name and the proxy's SSH address.

    Raises:
        ProxyUnavailable: nothing answers, or the certificate is not trusted.
    """
    return _request("GET", addr, "/v1/webapi/ping", ssl_context)


def ssh_address(answer: dict[str, Any], proxy_host: str) -> Address:
    """Where to reach the proxy's SSH port, from a :func:`ping` answer.

    The published address if there is one, else the host ``tsh`` was given with
    the port the proxy listens on.
    """
    ssh = (answer.get("proxy") or {}).get("ssh") or {}
    for key in ("public_addr", "listen_addr"):
        text = ssh.get(key)
        if not text:
            continue
        host, _, port = str(text).rpartition(":")
        host = host.strip("[]")
        if key == "listen_addr" or host in ("", "0.0.0.0", "::"):  # noqa: S104
            host = proxy_host
        return Address(host, int(port))
    return Address(proxy_host, 3023)


def login(
    addr: Address,
    ssl_context: ssl.SSLContext,
    *,
    user: str,
    password: str,
    totp_code: str,
    public_key: PublicKey,
    ttl: float | None = None,
) -> dict[str, Any]:
    """``POST /v1/webapi/ssh/certs``: a user certificate for ``public_key``.

    Returns the answer (``cert``, ``host_ca``, ``username``, ``principals``,
    ``valid_before``, ``roles``, ``cluster_name``).

    Raises:
        AuthenticationFailed: wrong name, password or code, or a locked account
            (one message for all, with :data:`LOCKOUT_HINT`).
        ProxyUnavailable: the proxy cannot be reached or is not trusted.
        TrioportError: another refusal (rate limited, auth service down).
    """
    body = {
        "user": user,
        "password": password,
        "otp_token": totp_code,
        "pub_key": public_key.openssh_line(),
        "ttl": ttl,
    }
    try:
        return _request("POST", addr, "/v1/webapi/ssh/certs", ssl_context, body)
    except AuthenticationFailed as exc:
        raise AuthenticationFailed(f"{exc} ({LOCKOUT_HINT})") from None


# --- SSH -----------------------------------------------------------------------------------


def host_verifier(
    host_cas: Sequence[PublicKey],
    cluster: str,
    role: ServiceRole,
    *,
    principal: str | None = None,
    clock: Callable[[], float] = time.time,
    reasons: list[str] | None = None,
) -> Callable[[bytes, str], bool]:
    """A ``verify_host_key`` policy for the cluster's proxy or one of its nodes.

    The host must present a certificate signed by one of ``host_cas``, valid now,
    for ``cluster``, with the service role ``role`` and (for a node) ``principal``
    among its principals. Why a key was refused is appended to ``reasons``.
    """

    def verify(blob: bytes, _algorithm: str) -> bool:
        try:
            key = parse_public_key(blob)
            if not isinstance(key, Certificate):
                raise CertificateInvalid("it presented a plain host key, not a host certificate")
            if not host_cas:
                raise CertificateInvalid("no host CA is known for this cluster: run tsh login")
            result = check_certificate(
                key,
                cert_type=CertType.HOST,
                trusted_cas=host_cas,
                principal=principal.lower() if principal else None,
                now=clock(),
            )
            if result.cluster != cluster:
                raise CertificateInvalid(
                    f"its certificate is for cluster {result.cluster!r}, not {cluster!r}"
                )
            if result.service_role is not role:
                got = result.service_role.value if result.service_role else "none"
                raise CertificateInvalid(
                    f"its certificate is a {got} certificate, not a {role.value} certificate"
                )
            return True
        except TrioportError as exc:
            if reasons is not None:
                reasons.append(str(exc))
            return False

    return verify


@asynccontextmanager
async def connect_proxy(
    addr: Address,
    *,
    login: str,
    signers: Sequence[Signer],
    host_cas: Sequence[PublicKey],
    cluster: str,
    connect_timeout: float = CONNECT_TIMEOUT,
) -> AsyncIterator[SSHConnection]:
    """Log in to the proxy's SSH port as ``login`` and yield the connection.

    Raises:
        ProxyUnavailable: nothing answers there.
        HostKeyNotVerifiable: it is not the cluster's proxy (the message says why).
        AuthenticationFailed: the proxy refused the certificate.
    """
    reasons: list[str] = []
    config = ConnectionConfig(
        role=Role.CLIENT,
        verify_host_key=host_verifier(host_cas, cluster, ServiceRole.PROXY, reasons=reasons),
    )
    try:
        with trio.fail_after(connect_timeout):
            stream = await trio.open_tcp_stream(addr.host, addr.port)
    except (OSError, trio.TooSlowError) as exc:
        raise ProxyUnavailable(
            f"cannot reach the proxy's SSH port at {addr}: {_connect_failure(exc)}"
        ) from None
    established = False
    try:
        async with connect(
            addr.host,
            addr.port,
            username=login,
            signers=signers,
            config=config,
            stream=stream,
            connect_timeout=connect_timeout,
        ) as conn:
            established = True
            yield conn
    except HostKeyNotVerifiable as exc:
        if established:
            raise
        why = reasons[-1] if reasons else exc.description
        raise HostKeyNotVerifiable(
            f"the proxy at {addr} is not the proxy of cluster {cluster!r}: {why}"
        ) from None
    except AuthenticationFailed:
        if established:
            raise  # from the caller's block (a node refusing), not the proxy
        raise AuthenticationFailed(
            f"the proxy at {addr} refused your certificate: cluster {cluster!r} did not issue"
            " it, or no longer accepts it (expired, or your user was deleted or locked):"
            " run tsh login"
        ) from None
    except (ConnectionClosedError, ProtocolError, trio.BrokenResourceError) as exc:
        if established:
            raise
        raise ProxyUnavailable(f"lost the connection to the proxy at {addr}: {exc}") from None


def _connect_failure(exc: BaseException) -> str:
    """Why a connection attempt failed, in the system's words ("Connection refused").

    trio's ``open_tcp_stream`` wraps each attempt's error in a group; the first
    attempt's reason is the one to show.
    """
    seen: list[BaseException] = [exc]
    while seen:
        current = seen.pop(0)
        if isinstance(current, OSError) and current.errno:
            # trio's own text names the address again; the system's is enough.
            return os.strerror(current.errno) if current.errno > 0 else str(current.strerror)
        if isinstance(current, BaseExceptionGroup):
            seen.extend(current.exceptions)
        cause = current.__cause__ or current.__context__
        if cause is not None and len(seen) < 16:
            seen.append(cause)
    return "no answer"


async def _read_all(stream: trio.abc.ReceiveStream, limit: int = 16 * 1024 * 1024) -> bytes:
    out = bytearray()
    while chunk := await stream.receive_some():
        out += chunk
        if len(out) > limit:
            raise ProxyRefused("the proxy sent too much")
    return bytes(out)


async def _stderr_text(chan: Any, wait: float = 2.0) -> str:
    with trio.move_on_after(wait):
        try:
            data = await _read_all(chan.stderr, 64 * 1024)
        except (trio.BrokenResourceError, trio.ClosedResourceError, TrioportError):
            data = b""
        text = data.decode("utf-8", "replace").strip()
        return text.removeprefix("error: ")
    return ""


class ProxyReason:
    """What the proxy writes on a subsystem channel's stderr: its reason for a refusal.

    :meth:`collect` runs in the proxy connection's nursery (it ends with the
    channel) and keeps the first 64 KiB; :meth:`text` waits briefly for the end.
    """

    def __init__(self, chan: ChannelStream) -> None:
        self._chan = chan
        self._data = bytearray()
        self._done = trio.Event()

    async def collect(self) -> None:
        try:
            while chunk := await self._chan.stderr.receive_some():
                if len(self._data) < 64 * 1024:
                    self._data.extend(chunk)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            self._done.set()

    async def text(self, wait: float = 1.0) -> str:
        """The reason (without an ``error:`` prefix), or "" if none came in ``wait`` s."""
        with trio.move_on_after(wait):
            await self._done.wait()
        return self._data.decode("utf-8", "replace").strip().removeprefix("error: ")


async def list_nodes(proxy: SSHConnection) -> tuple[str, list[NodeInfo]]:
    """The cluster's name and the nodes the logged-in user may see.

    Raises:
        ProxyRefused: the proxy would not list them (why, in the message).
    """
    chan = await proxy.open_session()
    async with chan:
        if not await chan.request(ev.Subsystem(name=SUBSYSTEM_NODES)):
            raise ProxyRefused("the proxy does not list nodes (is it a trioport proxy?)")
        data = await _read_all(chan)
        await chan.wait_closed()
        if chan.exit_status != 0:
            raise ProxyRefused(await _stderr_text(chan) or "the proxy would not list nodes")
    try:
        doc = json.loads(data)
        nodes = [NodeInfo.from_listing(n) for n in doc["nodes"]]
        return str(doc["cluster_name"]), nodes
    except (ValueError, KeyError, TypeError) as exc:
        raise ProxyRefused(f"the proxy's node list is malformed: {exc}") from None


@asynccontextmanager
async def connect_node(
    proxy: SSHConnection,
    node: str,
    port: int,
    *,
    login: str,
    signers: Sequence[Signer],
    host_cas: Sequence[PublicKey],
    cluster: str,
    principal: str | None = None,
    handler: SSHHandler | None = None,
    connect_timeout: float = CONNECT_TIMEOUT,
    logins: Sequence[str] | None = None,
) -> AsyncIterator[SSHConnection]:
    """An SSH connection to ``node`` as ``login``, end to end inside the proxy.

    Args:
        proxy: a connection from :func:`connect_proxy`.
        node: the node as the user named it (name, ``name.cluster``, UUID, address).
        port: the node's port as the user gave it (the proxy dials the one the
            node reports).
        principal: the name the node's host certificate must carry (default:
            ``node`` without the ``.cluster`` suffix).
        handler: what to do with channels the node opens (agent forwarding).
        logins: the certificate's logins (its principals), to say why a refused
            login was refused.

    Raises:
        ProxyRefused: the proxy would not connect us (no such node, access denied,
            node unreachable), with its reason.
        HostKeyNotVerifiable: the node's host certificate is not right for it.
        AuthenticationFailed: the node refused the login.
    """
    name = node.removesuffix("." + cluster) if node.lower() != cluster.lower() else node
    reasons: list[str] = []
    verify = host_verifier(
        host_cas, cluster, ServiceRole.NODE, principal=principal or name, reasons=reasons
    )
    chan = await proxy.open_session()
    host = f"[{node}]" if ":" in node else node
    if not await chan.request(ev.Subsystem(name=f"proxy:{host}:{port}")):
        await chan.aclose()
        raise ProxyRefused("the proxy refused the proxy subsystem (is it a trioport proxy?)")
    # The proxy explains a refusal on stderr.
    reason = ProxyReason(chan)
    proxy.start_soon(reason.collect)
    config = ConnectionConfig(role=Role.CLIENT, verify_host_key=verify)
    established = False
    try:
        async with open_ssh(chan, config, handler) as conn:
            with trio.fail_after(connect_timeout):
                await authenticate(conn, login, signers=signers)
            established = True
            yield conn
    except HostKeyNotVerifiable as exc:
        if established:
            raise
        why = reasons[-1] if reasons else exc.description
        raise HostKeyNotVerifiable(f"node {node!r} is not trusted: {why}") from None
    except AuthenticationFailed:
        if established:
            raise
        raise AuthenticationFailed(_login_refusal(node, login, logins)) from None
    except (ConnectionClosedError, ProtocolError, trio.BrokenResourceError) as exc:
        if established:
            raise
        why = await reason.text()
        if why:
            raise ProxyRefused(why) from None
        raise ProxyRefused(
            f"the connection to node {node!r} through the proxy ended: {exc}"
        ) from None
    finally:
        with trio.CancelScope(shield=True):
            await trio.aclose_forcefully(chan)


def _login_refusal(node: str, login: str, logins: Sequence[str] | None) -> str:
    """Why a node refused ``login``, as far as the certificate tells."""
    if logins is None:
        return (
            f"node {node!r} refused login {login!r} with your certificate"
            " (is the login among those your roles allow? see tsh status)"
        )
    allowed = [p for p in logins if not p.startswith("-")]
    if login not in allowed:
        return (
            f"node {node!r} refused login {login!r}: it is not among your certificate's"
            f" logins ({', '.join(allowed) or 'none'}), so no role of yours allows it"
        )
    return (
        f"node {node!r} refused login {login!r}: your certificate has it, but no role of"
        " yours allows it on a node with this node's labels (or a role denies it)"
    )


def signers_for(profile: Any) -> list[Signer]:
    """The profile's key, presented with its certificate."""
    return [KeySigner(profile.key, certificate=profile.certificate.blob)]


# --- local port forwarding (tsh ssh -L) ----------------------------------------------------


@attrs.frozen
class Forward:
    """One ``-L [BIND:]PORT:HOST:HOSTPORT``: listen on ``bind:port``, connect to ``host:host_port``.

    ``host`` is resolved by the node, as OpenSSH's ``-L`` does: ``localhost``
    there means the node itself.
    """

    bind: str
    port: int
    host: str
    host_port: int

    def __str__(self) -> str:
        bind = f"[{self.bind}]" if ":" in self.bind else self.bind
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{bind}:{self.port}:{host}:{self.host_port}"


def _forward_fields(text: str) -> list[str]:
    """Split on ``:`` outside brackets (``[::1]:8080:[fd00::5]:80``)."""
    fields: list[str] = []
    current = ""
    depth = 0
    for char in text:
        if char == "[":
            depth += 1
        elif char == "]":
            depth -= 1
        if char == ":" and depth == 0:
            fields.append(current)
            current = ""
        else:
            current += char
    fields.append(current)
    return [f[1:-1] if f.startswith("[") and f.endswith("]") else f for f in fields]


def _port(text: str, what: str, spec: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError(f"-L {spec}: {what} is not a port number: {text[:16]!r}")
    return int(text)


def parse_forward(text: str, default_bind: str = "127.0.0.1") -> Forward:
    """Read ``[BIND:]PORT:HOST:HOSTPORT`` as OpenSSH's ``ssh -L`` does.

    Without BIND the listener is on ``default_bind`` (loopback: other machines
    cannot use it, as with OpenSSH's default ``GatewayPorts no``); ``*`` or an
    empty BIND means every interface. IPv6 addresses go in brackets.

    Raises:
        ValueError: not in that shape, with what is wrong.
    """
    fields = _forward_fields(text)
    if len(fields) == 3:
        fields.insert(0, default_bind)
    if len(fields) != 4:
        raise ValueError(f"-L {text}: expected [BIND:]PORT:HOST:HOSTPORT")
    bind, port, host, host_port = fields
    if bind in ("", "*"):
        bind = "0.0.0.0"  # noqa: S104 - the user asked for every interface
    if not host:
        raise ValueError(f"-L {text}: expected a host to connect to")
    return Forward(bind, _port(port, "PORT", text), host, _port(host_port, "HOSTPORT", text))


async def listen_forward(forward: Forward) -> list[trio.SocketListener]:
    """The listeners for ``forward``, bound now (so a taken port fails before anything runs).

    Raises:
        TrioportError: the address cannot be listened on (in use, not ours), saying which.
    """
    try:
        return await trio.open_tcp_listeners(forward.port, host=forward.bind)
    except OSError as exc:
        why = exc.strerror or str(exc)
        raise TrioportError(
            f"-L {forward}: cannot listen on {forward.bind}:{forward.port}: {why}"
        ) from None


async def _relay(chan: ChannelStream, sock: trio.SocketStream) -> None:
    """Copy bytes both ways; each side's EOF is passed on; done when both are."""

    async def to_node() -> None:
        try:
            while data := await sock.receive_some(32 * 1024):
                await chan.send_all(data)
            await chan.send_eof()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass

    async def to_local() -> None:
        try:
            while data := await chan.receive_some():
                await sock.send_all(data)
            await sock.send_eof()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass

    async with trio.open_nursery() as nursery:
        nursery.start_soon(to_node)
        nursery.start_soon(to_local)


async def serve_local_forward(
    conn: SSHConnection,
    forward: Forward,
    listeners: Sequence[trio.SocketListener],
    *,
    on_error: Callable[[str], None],
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Accept connections on ``listeners``, each a ``direct-tcpip`` channel on ``conn``.

    Runs until cancelled. A connection the node refuses (forwarding not allowed,
    target unreachable) is closed, and ``on_error`` gets one line saying why.
    """

    async def handle(sock: trio.SocketStream) -> None:
        async with sock:
            try:
                origin_host, origin_port = sock.socket.getpeername()[:2]
            except OSError:
                origin_host, origin_port = "127.0.0.1", 0
            try:
                chan = await conn.open_channel(
                    "direct-tcpip",
                    host=forward.host,
                    port=forward.host_port,
                    originator_address=str(origin_host),
                    originator_port=int(origin_port),
                )
            except ChannelOpenError as exc:
                on_error(
                    f"-L {forward}: the node refused to forward to"
                    f" {forward.host}:{forward.host_port}: {exc.description or exc}"
                )
                return
            except (trio.BrokenResourceError, trio.ClosedResourceError, TrioportError) as exc:
                on_error(f"-L {forward}: the connection to the node is gone: {exc}")
                return
            async with chan:
                await _relay(chan, sock)

    async with trio.open_nursery() as nursery:
        for listener in listeners:
            nursery.start_soon(trio.serve_listeners, handle, [listener])
        task_status.started()
