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
"""

from __future__ import annotations

import json
import ssl
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import httpx
import trio

from trioport.config import Address
from trioport.errors import (
    AccessDenied,
    AuthenticationFailed,
    CertificateInvalid,
    ConnectionClosedError,
    HostKeyNotVerifiable,
    NotFound,
    ProtocolError,
    TrioportError,
)
from trioport.ssh import (
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

from .router import NodeInfo
from .ssh_proxy import SUBSYSTEM_NODES

__all__ = [
    "HTTP_TIMEOUT",
    "LOCKOUT_HINT",
    "ProxyRefused",
    "ProxyUnavailable",
    "connect_node",
    "connect_proxy",
    "host_verifier",
    "list_nodes",
    "login",
    "ping",
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
        raise ProxyUnavailable(f"cannot reach the proxy at https://{addr}: {exc}") from None
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
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else "no answer"
        raise ProxyUnavailable(f"cannot reach the proxy's SSH port at {addr}: {why}") from None
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
            f"the proxy at {addr} refused your certificate (expired, or from another"
            " cluster?): run tsh login"
        ) from None
    except (ConnectionClosedError, ProtocolError, trio.BrokenResourceError) as exc:
        if established:
            raise
        raise ProxyUnavailable(f"lost the connection to the proxy at {addr}: {exc}") from None


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
    # The proxy explains a refusal on stderr; collect it in the proxy connection's
    # nursery (it ends when the channel does).
    stderr = bytearray()
    drained = trio.Event()

    async def drain() -> None:
        try:
            while chunk := await chan.stderr.receive_some():
                if len(stderr) < 64 * 1024:
                    stderr.extend(chunk)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            drained.set()

    proxy.start_soon(drain)
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
        raise AuthenticationFailed(
            f"node {node!r} refused login {login!r} with your certificate"
            " (is the login among those your roles allow? see tsh status)"
        ) from None
    except (ConnectionClosedError, ProtocolError, trio.BrokenResourceError) as exc:
        if established:
            raise
        with trio.move_on_after(1):
            await drained.wait()
        why = stderr.decode("utf-8", "replace").strip().removeprefix("error: ")
        if why:
            raise ProxyRefused(why) from None
        raise ProxyRefused(
            f"the connection to node {node!r} through the proxy ended: {exc}"
        ) from None
    finally:
        with trio.CancelScope(shield=True):
            await trio.aclose_forcefully(chan)


def signers_for(profile: Any) -> list[Signer]:
    """The profile's key, presented with its certificate."""
    return [KeySigner(profile.key, certificate=profile.certificate.blob)]
