"""The node service: this machine's SSH server for the cluster's users.

:func:`serve` is the service (``async def serve(config, *, task_status)``, as every
trioport service). In order, it:

1. works out the address other hosts reach it at (:func:`.identity.advertise_address`);
2. loads its identity from ``DATA_DIR/node/``, or joins the cluster with the
   configured token on its first start (:mod:`.identity`);
3. keeps a connection to the auth service open, re-made with backoff when lost
   (:class:`.authlink.AuthLink`);
4. listens for SSH (``ssh_service.listen_addr``, port 3022), presenting its host
   certificate and accepting only user certificates (:mod:`.handler`), and calls
   ``task_status.started(addresses)``. A connection from the proxy may start with
   the proxy's signed line naming the client's address (:mod:`.proxyline`,
   read by :mod:`.proxied`); the node's audit events then name the client, not
   the proxy;
5. heartbeats with its labels (:mod:`.heartbeat`), uploads recordings
   (:mod:`.recorder`) and delivers audit events and session reports
   (:mod:`.sessions`) in the background.

While the auth service is away, running sessions carry on; new logins are
decided from recent answers (:mod:`.access`) and everything owed to the auth
service waits for it.

**Stopping.** Cancelling :func:`serve` ends every session at once. For a graceful
stop pass ``stop``, a :class:`trio.Event`: once it is set the node closes its
port (new connections are refused) and refuses new logins, waits up to
``shutdown_grace`` seconds (``connection_limits.shutdown_timeout``) for running
sessions to end, disconnects what is left with the reason "the node is shutting
down", gives the recordings a few seconds to finish uploading, and returns.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import logging
import os
import time
from collections.abc import Callable

import trio

from trioport.config import Address, Config
from trioport.errors import DisconnectReason
from trioport.roles.auth import audit_log
from trioport.ssh import ServerLimits
from trioport.ssh import serve as serve_ssh
from trioport.sshproto import ConnectionConfig, Role

from .access import FRESH_SECONDS, AccessChecker
from .authlink import AuthLink
from .context import NodeContext
from .handler import NodeSSHHandler
from .heartbeat import HEARTBEAT_INTERVAL, CommandLabels, Heartbeat
from .identity import advertise_address, auth_servers, load_or_join
from .journal import SessionJournal, recover
from .proxied import ProxyLineListener
from .proxyline import ReplayGuard, node_software_version, parse, verify
from .recorder import FLUSH_SECONDS, RecordingUploader
from .sessions import Reporter, SessionRegistry

__all__ = ["serve"]

log = logging.getLogger("trioport.node")

#: The DISCONNECT description at a graceful stop.
SHUTDOWN_REASON = "the node is shutting down"
#: Seconds the recordings get to finish uploading at a graceful stop.
UPLOAD_GRACE = 10.0
#: Under the data directory: the journal of running sessions (see :mod:`.journal`).
JOURNAL_DIR = "sessions"


def _limits(config: Config) -> ServerLimits:
    limits: ServerLimits = config.teleport.connection_limits.server_limits()
    return limits


async def serve(
    config: Config,
    *,
    task_status: trio.TaskStatus[list[tuple[str, int]]] = trio.TASK_STATUS_IGNORED,
    stop: trio.Event | None = None,
    shutdown_grace: float | None = None,
    heartbeat_interval: float = HEARTBEAT_INTERVAL,
    access_cache_seconds: float = FRESH_SECONDS,
    recording_flush_seconds: float = FLUSH_SECONDS,
    reconnect_max_delay: float = 30.0,
    clock: Callable[[], float] = time.time,
) -> None:
    """Run the node service until cancelled (or, with ``stop``, until it has stopped).

    Calls ``task_status.started(addresses)`` with the ``(host, port)`` pairs its SSH
    server listens on, once it has its identity and the port is open.

    Args:
        config: the configuration (``teleport.nodename``, ``data_dir``,
            ``auth_token``, ``auth_servers``; ``ssh_service.listen_addr``,
            ``labels``, ``commands``; ``teleport.connection_limits``). Without
            ``auth_servers`` a node in the same process as the auth service uses
            ``auth_service.listen_addr``.
        task_status: see trio's ``nursery.start``.
        stop: set it to stop gracefully (see the module's docstring).
        shutdown_grace: seconds running sessions get to end after ``stop``
            (default ``teleport.connection_limits.shutdown_timeout``).
        heartbeat_interval: seconds between heartbeats.
        access_cache_seconds: seconds an access answer from auth is reused.
        recording_flush_seconds: the longest recorded output waits before upload.
        reconnect_max_delay: the longest wait between reconnects to auth.
        clock: the wall clock, for certificate validity and expiry.

    Raises:
        ConfigError: no join token on the first start, no auth server, bad name.
        AuthenticationFailed: the join token was refused.
        AccessDenied: the node name belongs to another host.
        KeyFormatError: the identity in the data directory is damaged.
        OSError: the port cannot be opened.
    """
    servers = auth_servers(config)
    advertise = await trio.to_thread.run_sync(advertise_address, config, servers[0])
    identity = await load_or_join(config, addresses=[advertise], servers=servers)
    listen = config.ssh_service.listen_addr
    sockets = await trio.open_tcp_listeners(listen.port, host=listen.host or None)
    replay = ReplayGuard()

    def check_proxy_line(line: bytes) -> str:
        return verify(
            parse(line),
            host_cas=identity.client.host_cas,
            cluster=identity.cluster_name,
            node_id=identity.host_id,
            now=clock(),
            replay=replay,
        )

    port = sockets[0].socket.getsockname()[1]
    addr = str(Address(advertise, port))
    link = AuthLink(servers, identity.client, backoff_max=reconnect_max_delay)
    async with trio.open_nursery() as nursery:
        await nursery.start(link.run)
        command_labels = CommandLabels(config.ssh_service.commands)
        heartbeat = Heartbeat(
            link,
            host_id=identity.host_id,
            hostname=config.teleport.nodename,
            addr=addr,
            static_labels=config.ssh_service.labels,
            command_labels=command_labels,
            interval=heartbeat_interval,
        )
        reporter = Reporter(link)

        def proxy_line_refused(peer: str, reason: str) -> None:
            reporter.emit(
                audit_log.AUTH_ATTEMPT_FAILURE,
                addr_remote=peer,
                addr_local=addr,
                success=False,
                error=f"refused the proxy line: {reason}",
                method="proxy-line",
                service="node",
                server_hostname=config.teleport.nodename,
            )

        listeners = [
            ProxyLineListener(sock, check_proxy_line, proxy_line_refused) for sock in sockets
        ]
        uploader = RecordingUploader(link, nursery, flush_seconds=recording_flush_seconds)
        node = NodeContext(
            host_id=identity.host_id,
            hostname=config.teleport.nodename,
            cluster_name=identity.cluster_name,
            user_cas=identity.user_cas,
            access=AccessChecker(link, fresh=access_cache_seconds),
            labels=heartbeat.labels,
            registry=SessionRegistry(),
            reporter=reporter,
            uploader=uploader,
            clock=clock,
            idle_timeout=config.teleport.connection_limits.client_idle_timeout.total_seconds()
            or None,
            journal=SessionJournal(os.path.join(config.teleport.data_dir, JOURNAL_DIR)),
        )
        assert node.journal is not None
        recover(node.journal, reporter, now=lambda: dt.datetime.now(dt.UTC))
        nursery.start_soon(command_labels.run)
        nursery.start_soon(heartbeat.run)
        nursery.start_soon(reporter.run)
        ssh_config = ConnectionConfig(
            role=Role.SERVER,
            host_keys=[identity.host_key],
            auth_methods=("publickey",),
            max_channels=config.teleport.connection_limits.max_channels,
        )
        # Announce that proxy lines are understood here (see .proxyline).
        ssh_config = dataclasses.replace(
            ssh_config, software_version=node_software_version(ssh_config.software_version)
        )
        if shutdown_grace is None:
            shutdown_grace = config.teleport.connection_limits.shutdown_timeout.total_seconds()
        async with trio.open_nursery() as ssh_nursery:
            # At a graceful stop the SSH server closes its port and tells the
            # connections with nothing open to go; _drain deals with the sessions.
            addresses = await ssh_nursery.start(
                functools.partial(
                    serve_ssh,
                    stop=stop,
                    shutdown_timeout=shutdown_grace,
                    shutdown_reason=SHUTDOWN_REASON,
                ),
                listeners,
                ssh_config,
                lambda: NodeSSHHandler(node),
                _limits(config),
            )
            log.info(
                "node %s (%s) of %s listening on %s, reachable at %s",
                config.teleport.nodename,
                identity.host_id,
                identity.cluster_name,
                addresses,
                addr,
            )
            task_status.started(addresses)
            if stop is None:
                await trio.sleep_forever()
            await stop.wait()
            await _drain(node, shutdown_grace)
            ssh_nursery.cancel_scope.cancel()
        with trio.move_on_after(UPLOAD_GRACE):
            await reporter.wait_idle()
            for recording in list(uploader.active.values()):
                await recording.done.wait()
        nursery.cancel_scope.cancel()


async def _drain(node: NodeContext, grace: float) -> None:
    """Refuse new logins, let sessions end for ``grace`` seconds, then disconnect."""
    node.draining = True
    log.info("node stopping: waiting up to %gs for %d sessions", grace, len(node.registry.sessions))
    with trio.move_on_after(grace):
        await node.registry.wait_empty()
    for conn in list(node.connections):
        await conn.disconnect(DisconnectReason.BY_APPLICATION, SHUTDOWN_REASON)
    with trio.move_on_after(5):
        await node.registry.wait_empty()
