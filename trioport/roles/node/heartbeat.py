"""Heartbeats: the node tells the auth service it is alive, where, and with which labels.

Every :data:`HEARTBEAT_INTERVAL` seconds (and at once when a command label
changes) the node sends a :class:`~trioport.resources.Node`: its UUID
(``metadata.name``), its name (``spec.hostname``), the address its SSH service is
reached at (``spec.addr``, ``ip:port``), its static labels (``metadata.labels``,
from ``ssh_service.labels``) and its command labels (``spec.cmd_labels``).

A **command label** (``ssh_service.commands``) is a label whose value is the
output of a command, run every ``period``: the program and its arguments run
directly (no shell) with :func:`trio.run_process`, and the label's value is what it
printed on stdout, decoded as UTF-8 and stripped of surrounding whitespace. A
command that fails to start or runs longer than its timeout (its period, at most
:data:`MAX_COMMAND_SECONDS`) gives the empty string: a stale value could match a
role's ``node_labels`` it no longer should. Values are cut at
:data:`MAX_LABEL_CHARS`.

A heartbeat that cannot be delivered (the auth service is away) is skipped; the
next one carries the current state. The auth service lists a node as online while
its heartbeats keep coming, and forgets it when they stop for the node TTL.
"""

from __future__ import annotations

import logging
import math
import subprocess
from collections.abc import Callable, Mapping, Sequence

import trio

from trioport.authclient import AuthServiceUnavailable
from trioport.config import CommandLabelConfig
from trioport.errors import TrioportError
from trioport.resources import CommandLabel, Metadata, Node, NodeSpec

from .authlink import AuthLink

__all__ = [
    "HEARTBEAT_INTERVAL",
    "MAX_COMMAND_SECONDS",
    "MAX_LABEL_CHARS",
    "CommandLabels",
    "Heartbeat",
    "run_label_command",
]

log = logging.getLogger("trioport.node.heartbeat")

#: Seconds between heartbeats.
HEARTBEAT_INTERVAL = 10.0
#: The longest a label command may run.
MAX_COMMAND_SECONDS = 30.0
#: The longest label value kept.
MAX_LABEL_CHARS = 1024


async def run_label_command(argv: Sequence[str], limit: float) -> str:
    """Run one label command; its stripped stdout, or ``""`` if it failed to run in ``limit`` s."""
    with trio.move_on_after(limit):
        try:
            done = await trio.run_process(
                list(argv),
                stdin=subprocess.DEVNULL,
                capture_stdout=True,
                stderr=subprocess.DEVNULL,
                check=False,
            )
        except OSError as exc:
            log.warning("label command %r failed to start: %s", argv[0], exc)
            return ""
        if done.returncode != 0:
            log.info("label command %r exited with %d", argv[0], done.returncode)
        return done.stdout.decode("utf-8", "replace").strip()[:MAX_LABEL_CHARS]
    log.warning("label command %r ran longer than %gs; value cleared", argv[0], limit)
    return ""


class CommandLabels:
    """Runs each ``ssh_service.commands`` entry every period; keeps the latest values."""

    def __init__(self, commands: Sequence[CommandLabelConfig]) -> None:
        self.commands = list(commands)
        self.results: dict[str, str] = {}
        #: Set once every command has run once.
        self.ready = trio.Event()
        self._changed = trio.Event()
        if not self.commands:
            self.ready.set()

    def labels(self) -> dict[str, CommandLabel]:
        """The command labels as a heartbeat reports them."""
        return {
            c.name: CommandLabel(
                command=list(c.command), period=c.period, result=self.results.get(c.name, "")
            )
            for c in self.commands
        }

    async def wait_changed(self) -> None:
        """Return when some label's value changes."""
        await self._changed.wait()

    async def run(self) -> None:
        """Run every command forever, each on its own period."""
        async with trio.open_nursery() as nursery:
            for command in self.commands:
                nursery.start_soon(self._loop, command)

    async def _loop(self, command: CommandLabelConfig) -> None:
        period = max(1.0, command.period.total_seconds())
        timeout = min(period, MAX_COMMAND_SECONDS)
        while True:
            value = await run_label_command(command.command, timeout)
            if self.results.get(command.name) != value:
                self.results[command.name] = value
                self._changed.set()
                self._changed = trio.Event()
            if not self.ready.is_set() and all(c.name in self.results for c in self.commands):
                self.ready.set()
            await trio.sleep(period)


class Heartbeat:
    """Sends the node's heartbeat through ``link`` until cancelled.

    Args:
        link: the connection to the auth service.
        host_id: the node's UUID.
        hostname: its registered name.
        addr: ``ip:port`` where its SSH service is reached.
        static_labels: ``ssh_service.labels``.
        command_labels: the command label runner.
        interval: seconds between heartbeats.
    """

    def __init__(
        self,
        link: AuthLink,
        *,
        host_id: str,
        hostname: str,
        addr: str,
        static_labels: Mapping[str, str],
        command_labels: CommandLabels,
        interval: float = HEARTBEAT_INTERVAL,
        clock: Callable[[], float] = trio.current_time,
    ) -> None:
        self.link = link
        self.host_id = host_id
        self.hostname = hostname
        self.addr = addr
        self.static_labels = dict(static_labels)
        self.command_labels = command_labels
        self.interval = interval
        self.clock = clock
        #: How many heartbeats the auth service accepted.
        self.sent = 0
        self._failing = False

    def labels(self) -> dict[str, str]:
        """Static labels overlaid with the command labels' values: what RBAC matches."""
        return self.node().all_labels()

    def node(self) -> Node:
        """The heartbeat as it is now."""
        return Node(
            metadata=Metadata(name=self.host_id, labels=dict(self.static_labels)),  # type: ignore[arg-type]
            spec=NodeSpec(
                hostname=self.hostname, addr=self.addr, cmd_labels=self.command_labels.labels()
            ),
        )

    async def beat(self) -> bool:
        """Send one heartbeat now; False if the auth service could not take it."""
        node = self.node()
        try:
            await self.link.call(lambda c: c.heartbeat(node), within=max(1.0, self.interval))
        except (AuthServiceUnavailable, TrioportError) as exc:
            if not self._failing:
                log.warning("heartbeat not delivered: %s", exc)
            self._failing = True
            return False
        if self._failing:
            log.info("heartbeats delivered again")
        self._failing = False
        self.sent += 1
        return True

    async def run(self) -> None:
        """Heartbeat every interval, and at once when a command label changes."""
        with trio.move_on_after(min(5.0, self.interval)):
            await self.command_labels.ready.wait()
        while True:
            started = self.clock()
            await self.beat()
            with trio.move_on_at(started + self.interval if self.interval > 0 else math.inf):
                await self.command_labels.wait_changed()
