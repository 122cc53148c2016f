"""Connect to a node for a client, telling the node who the client is.

:func:`dial_node` opens the TCP connection to a routed node, reads the node's SSH
identification (a server speaks first, RFC 4253 §4.2), and, when the node
announces that it understands it, writes the proxy's signed line naming the
client's address (:mod:`trioport.roles.node.proxyline`) before anything of the
client's. The identification and whatever else was read come back first from the
returned stream, so the client sees exactly what the node sent. Both the SSH
port's ``ssh -J``/ProxyCommand pipes and the web terminal use it.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable

import trio

from trioport.errors import TrioportError
from trioport.roles.node import proxyline
from trioport.ssh.prefixed import PrefixedStream
from trioport.sshproto.keys import PrivateKey

from .router import Route

__all__ = ["IDENT_MAX", "DialFailed", "PrefixedStream", "dial_node"]

log = logging.getLogger("trioport.proxy.dial")

#: The longest identification line read (RFC 4253 §4.2: 255 bytes with CR LF).
IDENT_MAX = 255


class DialFailed(TrioportError):
    """The node did not accept the proxy's connection, or did not greet it."""


def os_reason(exc: BaseException) -> str:
    """A failed connect's reason in a few words (``Connection refused``)."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.rsplit(": ", 1)[-1]
    return str(exc) or type(exc).__name__


async def dial_node(
    route: Route,
    *,
    client_addr: str | None,
    key: PrivateKey,
    certificate: bytes,
    clock: Callable[[], float],
    timeout: float,  # noqa: ASYNC109 - one bound for connect and greeting together
) -> PrefixedStream:
    """Connect to ``route``'s node on behalf of a client at ``client_addr``.

    Args:
        route: where the router sent the client.
        client_addr: the client's ``IP:PORT`` (None: unknown, no line is sent).
        key: the proxy's host key.
        certificate: the proxy's host certificate blob (service role ``proxy``).
        clock: the wall clock (the line's time).
        timeout: seconds for connecting and for the node's identification.

    Raises:
        DialFailed: no connection, or no identification within ``timeout``.
    """
    name, where = route.node.hostname, route.dial
    try:
        with trio.fail_after(timeout):
            stream = await trio.open_tcp_stream(where.host, where.port)
    except (OSError, trio.TooSlowError) as exc:
        why = "no answer" if isinstance(exc, trio.TooSlowError) else os_reason(exc)
        raise DialFailed(f"cannot reach node {name!r} at {where}: {why}") from None
    try:
        greeting = b""
        with trio.move_on_after(timeout) as scope:
            while b"\n" not in greeting and len(greeting) < IDENT_MAX:
                data = await stream.receive_some(4096)
                if not data:
                    break
                greeting += data
        if scope.cancelled_caught or not greeting:
            why = "it sent no SSH identification" if scope.cancelled_caught else "it hung up"
            raise DialFailed(f"node {name!r} at {where} did not greet the proxy: {why}")
        first_line = greeting.split(b"\n", 1)[0]
        if client_addr is not None and proxyline.accepts_proxy_line(first_line):
            try:
                line = proxyline.encode(
                    key=key,
                    certificate=certificate,
                    client_addr=client_addr,
                    node_id=route.node.host_id,
                    now=clock(),
                    nonce=secrets.token_bytes(proxyline.NONCE_BYTES),
                )
            except ValueError as exc:
                log.warning("no proxy line for %s to %s: %s", client_addr, name, exc)
            else:
                await stream.send_all(line)
    except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
        await trio.aclose_forcefully(stream)
        raise DialFailed(f"node {name!r} at {where} hung up: {os_reason(exc)}") from None
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise
    return PrefixedStream(stream, greeting)
