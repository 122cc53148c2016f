"""The proxy service: its host identity, its link to auth, its SSH and HTTPS ports.

:func:`serve` is the service (``async def serve(config, *, task_status)``, as every
trioport service). In order, it:

1. **gets its host identity.** The proxy is a host of the cluster like a node: it
   joins once with a token for the ``proxy`` role (``teleport.auth_token``, or the
   ``join_token`` argument) and keeps its key, host certificate and the host CA in
   ``DATA_DIR/proxy/`` (``key`` 0600, ``key-cert.pub``, ``known_hosts``, and
   ``host_uuid``; the directory 0700). Later starts reuse them, and ask auth for a
   fresh host certificate naming the proxy's current addresses. When the node
   service of the same data directory has already joined, the proxy joins as the
   same host (the node's key and UUID, a second role): the node name is reserved
   for one host, so two keys could not both use it.
2. **connects to the auth service** (``teleport.auth_servers``, or this process's
   own ``auth_service.listen_addr``) with that identity, and keeps the connection
   up (:class:`~.state.AuthLink`); the user CA comes from there.
3. **opens its SSH port** (``proxy_service.listen_addr``, 3023): users log in with
   their certificates and reach nodes (:mod:`.ssh_proxy`). The port presents the
   proxy's host certificate, signed by the cluster's host CA with the service role
   ``proxy``, so ``tsh`` and OpenSSH (``@cert-authority``) can check it.
4. **opens its HTTPS port** (``proxy_service.web_listen_addr``, 3080) for
   ``tsh login`` (:mod:`.web`), with ``https_cert_file``/``https_key_file`` or a
   self-signed certificate made on first start (:mod:`trioport.tls.certs`).

It then calls ``task_status.started(ProxyAddresses(ssh=..., web=...))`` and runs
until cancelled. While no auth server answers it keeps serving: the connections
it has go on, and new ones are decided from the auth service's last answers for
up to ``stale_seconds`` (5 minutes; :mod:`.router`), while ``/readyz`` says
"auth unreachable since ...". Cancelling it closes both ports and every connection through
them (each user's connection lives in the listener's nursery).

Both ports apply ``teleport.connection_limits``: the SSH port all of them
(:mod:`trioport.ssh.server`), the HTTPS port the open-connection limits (a
connection over them is closed at once) and ``rates`` on the endpoints that take
credentials or tokens.

**Stopping gracefully.** With ``stop`` set, the proxy stops accepting on both
ports (their sockets close, so new connections are refused), disconnects the SSH
connections that relay nothing, and lets the others (sessions relayed to nodes,
HTTPS connections and web terminals) run until they end or
``connection_limits.shutdown_timeout`` passes; then it disconnects the SSH ones
with the reason "the proxy is shutting down", closes the rest, and returns.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import os
import time
from collections.abc import Callable, Iterable

import attrs
import trio

from trioport.authclient import ClientIdentity, join_cluster
from trioport.config import Address, Config, Rate
from trioport.errors import ConfigError, KeyFormatError, TrioportError
from trioport.roles.auth._http import RateLimiter
from trioport.ssh import ServerLimits
from trioport.ssh import serve as serve_ssh
from trioport.ssh.server import CountingListener
from trioport.sshproto import ConnectionConfig, HostKey, Role
from trioport.sshproto.keys import PrivateKey
from trioport.tls import ensure_self_signed, file_fingerprint, server_context

from .router import STALE_SECONDS, NodeRouter
from .ssh_proxy import ProxySSHHandler
from .state import AUTH_WAIT_SECONDS, AuthLink, ProxyState
from .web import WebAPI, serve_web

__all__ = [
    "PROXY_DIR",
    "SHUTDOWN_REASON",
    "ProxyAddresses",
    "RateLimits",
    "load_or_join",
    "proxy_addresses",
    "serve",
]

log = logging.getLogger("trioport.proxy")

#: The proxy's files, under the data directory.
PROXY_DIR = "proxy"
_HOST_UUID = "host_uuid"
_HTTPS_DIR = "https"


@attrs.frozen
class ProxyAddresses:
    """Where a started proxy listens: ``(host, port)`` pairs for each port."""

    ssh: list[tuple[str, int]]
    web: list[tuple[str, int]]


def _auth_addresses(config: Config) -> list[Address]:
    if config.teleport.auth_servers:
        return list(config.teleport.auth_servers)
    if config.auth_service.enabled:
        return [config.auth_service.listen_addr]
    raise ConfigError(
        "required when this process runs no auth_service", key="teleport.auth_servers"
    )


def proxy_addresses(config: Config, extra: Iterable[str] = ()) -> list[str]:
    """The IP addresses the proxy's host certificate names: loopback, and every
    specific address it listens on or is published at."""
    out = ["127.0.0.1", "::1"]
    px = config.proxy_service
    hosts = [px.listen_addr.host, px.web_listen_addr.host, *extra]
    if px.public_addr is not None:
        hosts.append(px.public_addr.host)
    for host in hosts:
        try:
            ip = ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            continue
        if not ip.is_unspecified and str(ip) not in out:
            out.append(str(ip))
    return out


async def load_or_join(
    config: Config,
    folder: str | os.PathLike[str],
    *,
    auth_addresses: list[Address],
    token: str | None,
    addresses: list[str],
    siblings: Iterable[str | os.PathLike[str]] = (),
) -> ClientIdentity:
    """The proxy's host identity from ``folder``, joining the cluster the first time.

    Args:
        config: the configuration (``teleport.nodename`` is the name joined with).
        folder: where the identity is kept.
        auth_addresses: the auth servers, tried in turn.
        token: a join token for the ``proxy`` role (needed only the first time).
        addresses: IP addresses for the host certificate.
        siblings: identity directories of other services of this host (the node's
            ``DATA_DIR/node``); if one holds a joined identity, the proxy joins as
            the same host (its key and UUID), since a name belongs to one host.

    Raises:
        ConfigError: no identity yet and no token to join with.
        AuthenticationFailed: the token was refused.
        AuthServiceUnavailable / HostKeyNotVerifiable: as
            :func:`~trioport.authclient.join_cluster` raises them.
    """
    path = os.fspath(folder)
    try:
        return await trio.to_thread.run_sync(ClientIdentity.load, path)
    except FileNotFoundError:
        pass
    except (OSError, KeyFormatError) as exc:
        raise ConfigError(f"the proxy's identity cannot be read: {exc}", path=path) from None
    if not token:
        raise ConfigError(
            "the proxy has not joined the cluster yet: give a join token for the proxy role"
            " (tctl tokens add --type=proxy)",
            key="teleport.auth_token",
        )
    uuid_path = trio.Path(path) / _HOST_UUID
    try:
        host_id: str | None = (await uuid_path.read_text()).strip() or None
    except FileNotFoundError:
        host_id = None
    key: PrivateKey | None = None
    for other in siblings:
        # This machine already joined as another service (the node, in the same
        # data directory): join as the same host, with its key and UUID, so the
        # names it reserved stay its own.
        try:
            sibling = await trio.to_thread.run_sync(ClientIdentity.load, os.fspath(other))
        except (OSError, KeyFormatError):
            continue
        key, host_id = sibling.key, sibling.username
        log.info("joining as the same host as %s (%s)", other, host_id)
        break
    if key is None:
        key = await trio.to_thread.run_sync(PrivateKey.generate)
    last: TrioportError | None = None
    for addr in auth_addresses:
        try:
            result = await join_cluster(
                addr,
                token=token,
                key=key,
                node_name=config.teleport.nodename,
                role="proxy",
                addresses=addresses,
                host_id=host_id,
            )
            break
        except TrioportError as exc:
            last = exc
    else:
        assert last is not None
        raise last
    identity = result.identity(key)
    await trio.Path(path).mkdir(mode=0o700, parents=True, exist_ok=True)
    await trio.to_thread.run_sync(identity.save, path)
    await uuid_path.write_text(result.host_id + "\n")
    log.info("joined cluster %s as proxy %s", result.cluster_name, result.host_id)
    return identity


#: The DISCONNECT description at the end of a graceful stop.
SHUTDOWN_REASON = "the proxy is shutting down"


def _limits(config: Config) -> ServerLimits:
    limits: ServerLimits = config.teleport.connection_limits.server_limits()
    return limits


class RateLimits:
    """Several per-source token buckets (``connection_limits.rates``); a request
    must fit in every one of them."""

    def __init__(self, rates: Iterable[Rate]) -> None:
        self.limiters = [RateLimiter(per_minute=r.per_minute, burst=r.burst) for r in rates]

    def allow(self, source: str) -> bool:
        """Spend a token of ``source`` in each bucket; False when one is empty."""
        return all([limiter.allow(source) for limiter in self.limiters])


async def _tls_files(config: Config, folder: str) -> tuple[str, str]:
    px = config.proxy_service
    if px.https_cert_file and px.https_key_file:
        fp = await trio.to_thread.run_sync(file_fingerprint, px.https_cert_file)
        log.info("HTTPS certificate %s (%s)", px.https_cert_file, fp)
        return px.https_cert_file, px.https_key_file
    names = [config.teleport.nodename, "localhost", "127.0.0.1", "::1", px.web_listen_addr.host]
    if px.public_addr is not None:
        names.insert(0, px.public_addr.host)
    files = await trio.to_thread.run_sync(
        ensure_self_signed, os.path.join(folder, _HTTPS_DIR), names
    )
    log.info(
        "%s self-signed HTTPS certificate %s (%s)",
        "made a" if files.created else "using the",
        files.cert_file,
        files.fingerprint,
    )
    return files.cert_file, files.key_file


async def _renew(state: ProxyState, addresses: list[str], folder: str) -> None:
    """A fresh host certificate for our key, naming today's addresses."""
    identity = state.identity
    try:
        client = await state.auth()
        cert = await client.renew_host_certificate(identity.key.public, addresses)
    except TrioportError as exc:
        log.warning("could not renew the proxy's host certificate: %s", exc)
        return
    identity = attrs.evolve(
        identity, certificate=cert, host_cas=tuple(state.host_cas) or identity.host_cas
    )
    state.identity = identity
    state.link.identity = identity
    await trio.to_thread.run_sync(identity.save, folder)


async def serve(
    config: Config,
    *,
    task_status: trio.TaskStatus[ProxyAddresses] = trio.TASK_STATUS_IGNORED,
    join_token: str | None = None,
    identity: ClientIdentity | None = None,
    stop: trio.Event | None = None,
    shutdown_timeout: float | None = None,
    clock: Callable[[], float] = time.time,
    stale_seconds: float = STALE_SECONDS,
    cache_clock: Callable[[], float] = trio.current_time,
) -> None:
    """Run the proxy service until cancelled (or, with ``stop``, until it has stopped).

    Args:
        config: the configuration (``teleport.data_dir``, ``nodename``,
            ``auth_token``, ``auth_servers``, ``connection_limits`` and
            ``proxy_service.*``).
        task_status: see trio's ``nursery.start``; started with the
            :class:`ProxyAddresses` once both ports listen.
        join_token: a token for the ``proxy`` role, used instead of
            ``teleport.auth_token`` on the first start (``trioport run`` makes one
            when it runs auth in the same process).
        identity: a host identity to use instead of ``DATA_DIR/proxy/``.
        stop: set it to stop gracefully (see the module's docstring).
        shutdown_timeout: seconds sessions may go on after ``stop``; default
            ``teleport.connection_limits.shutdown_timeout``.
        clock: the wall clock, for certificate validity and expiry.
        stale_seconds: how old the auth service's last answers may be and still
            be used while no auth server answers (see :mod:`.router`).
        cache_clock: the clock of those answers' ages (trio's; tests move it on).

    Raises:
        ConfigError: no identity and no token, unreadable files, no auth server.
        AuthenticationFailed: the join token was refused.
        OSError: a port cannot be opened.
    """
    folder = os.path.join(config.teleport.data_dir, PROXY_DIR)
    auth_addresses = _auth_addresses(config)
    addresses = proxy_addresses(config)
    if identity is None:
        identity = await load_or_join(
            config,
            folder,
            auth_addresses=auth_addresses,
            token=join_token or config.teleport.auth_token,
            addresses=addresses,
            siblings=[os.path.join(config.teleport.data_dir, "node")],
        )
    holder: list[ProxyState] = []

    async def on_connect(client: object) -> None:
        await holder[0].refresh_authorities(client)  # type: ignore[arg-type]

    note = (
        f"new connections use the answers it gave in the last {stale_seconds:g} seconds"
        if stale_seconds > 0
        else ""
    )
    link = AuthLink(auth_addresses, identity, on_connect=on_connect, outage_note=note)

    async def current_client(wait: float = AUTH_WAIT_SECONDS) -> object:
        return await link.client(wait)

    lim = config.teleport.connection_limits
    state = ProxyState(
        cluster_name=identity.cluster_name,
        identity=identity,
        link=link,
        router=NodeRouter(
            current_client, identity.cluster_name, clock=cache_clock, stale_seconds=stale_seconds
        ),
        auth_addresses=auth_addresses,
        host_cas=list(identity.host_cas),
        public_addr=config.proxy_service.public_addr,
        clock=clock,
        idle_timeout=lim.client_idle_timeout.total_seconds() or None,
        stale_seconds=stale_seconds,
        cache_clock=cache_clock,
    )
    holder.append(state)
    px = config.proxy_service
    limits = _limits(config)
    if shutdown_timeout is None:
        shutdown_timeout = lim.shutdown_timeout.total_seconds()
    async with trio.open_nursery() as nursery:
        await nursery.start(link.run)
        await _renew(state, addresses, folder)
        cert_file, key_file = await _tls_files(config, folder)
        ssl_context = await trio.to_thread.run_sync(server_context, cert_file, key_file)
        host_key = HostKey(state.identity.key, state.identity.certificate.blob)
        ssh_config = ConnectionConfig(
            role=Role.SERVER,
            host_keys=[host_key],
            auth_methods=("publickey",),
            max_channels=lim.max_channels,
        )
        ssh_listeners = await trio.open_tcp_listeners(
            px.listen_addr.port, host=px.listen_addr.host or None
        )
        web_listeners = [
            CountingListener(listener, limits)
            for listener in await trio.open_tcp_listeners(
                px.web_listen_addr.port, host=px.web_listen_addr.host or None
            )
        ]
        ssh_bound = [tuple(sock.socket.getsockname()[:2]) for sock in ssh_listeners]
        web_bound = [tuple(sock.socket.getsockname()[:2]) for sock in web_listeners]
        state.ssh_addr = Address(px.listen_addr.host, int(ssh_bound[0][1]))
        state.web_addr = Address(px.web_listen_addr.host, int(web_bound[0][1]))
        web_api = WebAPI(state, limiter=RateLimits(lim.rates))  # type: ignore[arg-type]
        web_addrs = await nursery.start(serve_web, web_listeners, ssl_context, web_api)
        async with trio.open_nursery() as ssh_nursery:
            ssh_addrs = await ssh_nursery.start(
                functools.partial(
                    serve_ssh,
                    stop=stop,
                    shutdown_timeout=shutdown_timeout,
                    shutdown_reason=SHUTDOWN_REASON,
                ),
                ssh_listeners,
                ssh_config,
                lambda: ProxySSHHandler(state),
                limits,
            )
            log.info(
                "proxy of %s: SSH on %s, HTTPS on %s", state.cluster_name, ssh_addrs, web_addrs
            )
            task_status.started(ProxyAddresses(ssh=list(ssh_addrs), web=list(web_addrs)))
            if stop is not None:
                await stop.wait()
                log.info("proxy stopping: no new connections on %s or %s", ssh_addrs, web_addrs)
                for listener in web_listeners:
                    listener.stop_accepting()
                # HTTPS requests and web terminals get the same time as SSH sessions.
                with trio.move_on_after(shutdown_timeout):
                    for listener in web_listeners:
                        await listener.wait_all_closed()
        # Both sides have drained (serve_ssh returned): close the rest.
        log.info("proxy stopped")
        nursery.cancel_scope.cancel()
