"""One trioport process: the selected services in one nursery, started in order.

``run(config)`` starts auth, then node, then proxy, each with ``nursery.start`` so
the next starts only once the previous listens (Teleport's "AuthTLSReady"). A
service that crashes cancels the whole process: there is no half-running cluster.

When auth runs in this process and no auth server is configured, the proxy and the
node reach it on loopback and join with a local token: a random static token kept
in the data directory (mode 0600), so ``trioport run`` with no arguments is a whole
cluster and a restart finds the same one.
"""

from __future__ import annotations

import functools
import logging
import os
import secrets
import signal
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
import trio

from .config import Address, Config, StaticToken
from .errors import ConfigError

__all__ = ["local_join_token", "prepare", "run", "serve_until_signalled"]

log = logging.getLogger("trioport.process")

Service = Callable[..., Awaitable[Any]]


def _service(name: str) -> Service:
    """The ``serve`` of a service, imported only when it runs."""
    if name == "auth":
        from .roles.auth.service import serve
    elif name == "proxy":
        from .roles.proxy.service import serve
    else:
        from .roles.node.service import serve
    return serve


def local_join_token(data_dir: str) -> str:
    """This data directory's local join token, made on first use."""
    path = os.path.join(data_dir, "auth", "local-join-token")
    try:
        with open(path) as f:
            token = f.read().strip()
        if token:
            return token
    except FileNotFoundError:
        pass
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    token = secrets.token_hex(16)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return token


def prepare(config: Config) -> Config:
    """Give in-process services a local join token when auth runs here too."""
    enabled = config.enabled_services()
    if "auth" not in enabled:
        if not config.teleport.auth_servers:
            raise ConfigError("proxy and node need an auth server", key="teleport.auth_servers")
        return config
    g = config.teleport
    if not {"proxy", "node"} & set(enabled) or g.auth_token is not None:
        return config
    token = local_join_token(g.data_dir)
    tokens = [*config.auth_service.tokens, StaticToken(roles=("node", "proxy"), token=token)]
    return attrs.evolve(
        config,
        teleport=attrs.evolve(g, auth_token=token),
        auth_service=attrs.evolve(config.auth_service, tokens=tokens),
    )


def _with_local_auth(config: Config, addresses: list[tuple[str, int]]) -> Config:
    """Point proxy and node at the auth service this process just started."""
    if config.teleport.auth_servers or not addresses:
        return config
    host, port = addresses[0][:2]
    if host in ("", "0.0.0.0"):  # noqa: S104 - a listen address, turned into a dial one
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return attrs.evolve(
        config, teleport=attrs.evolve(config.teleport, auth_servers=[Address(host, port)])
    )


async def run(
    config: Config,
    *,
    stop: trio.Event | None = None,
    task_status: trio.TaskStatus[dict[str, Any]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the enabled services until cancelled; ``started`` gets their addresses.

    With ``stop``, setting it stops the node and the proxy gracefully: the proxy
    stops accepting, the node refuses new logins, and both give running sessions
    up to ``teleport.connection_limits.shutdown_timeout``, then disconnect them with
    a reason. ``run`` returns once both have stopped, cancelling the other services
    (the auth service last of all, so the node's recordings reach it).
    """
    config = prepare(config)
    started: dict[str, Any] = {}
    enabled = config.enabled_services()
    ready = dict.fromkeys(enabled, False)
    # The node before the proxy: a host name belongs to one host, and a proxy that
    # finds this machine already joined as a node joins as that same host.
    order = [name for name in ("auth", "node", "proxy") if name in enabled]
    async with trio.open_nursery() as nursery:
        diag = config.teleport.diag_addr
        if diag is not None:
            from .diag import serve_diag

            started["diag"] = await nursery.start(
                serve_diag, diag.host, diag.port, lambda: dict(ready)
            )
        stopped: list[trio.Event] = []
        for name in order:
            if name != "auth" and "auth" in started:
                config = _with_local_auth(config, started["auth"])
            service = _service(name)
            if name in ("node", "proxy") and stop is not None:
                done = trio.Event()
                stopped.append(done)
                service = functools.partial(_run_then_signal, service, done, stop=stop)
            started[name] = await nursery.start(service, config)
            ready[name] = True
            log.info("%s service ready: %s", name, started[name])
        task_status.started(started)
        if stop is not None:
            await stop.wait()
            for done in stopped:
                await done.wait()
            nursery.cancel_scope.cancel()


async def _run_then_signal(
    service: Service,
    done: trio.Event,
    config: Config,
    *,
    stop: trio.Event,
    task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED,
) -> None:
    try:
        await service(config, stop=stop, task_status=task_status)
    finally:
        done.set()


async def serve_until_signalled(
    config: Config, on_started: Callable[[Config, dict[str, Any]], None] | None = None
) -> None:
    """Run until SIGINT or SIGTERM, then stop: gracefully first, at once on a second signal."""
    stop = trio.Event()
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as outer:

            async def watch_signals() -> None:
                async for signum in signals:
                    name = signal.Signals(signum).name
                    if not stop.is_set():
                        log.info("%s: stopping (send it again to stop at once)", name)
                        stop.set()
                    else:
                        log.info("%s: stopping now", name)
                        outer.cancel_scope.cancel()

            outer.start_soon(watch_signals)
            async with trio.open_nursery() as services:
                started = await services.start(functools.partial(run, config, stop=stop))
                if on_started is not None:
                    on_started(config, started)
            # run() has returned: the graceful stop is over.
            outer.cancel_scope.cancel()
