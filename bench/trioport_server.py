"""The trioport side of the benchmark: an SSH server in its own process.

Run by ``run.py``; prints ``{"port": N}`` once it listens on 127.0.0.1 and serves
until it is terminated. Publickey auth against the keys of one authorized_keys
file. An exec'd command runs as ``/bin/sh -c COMMAND`` through trioport's own
:func:`~trioport.ssh.session.run_process_on_channel` (what ``serve_session`` does
for ``exec``); the command ``bench-sink`` is instead served in process: read the
channel to EOF, discard, report exit status 0 (the "in-process sink" rows).
"""

from __future__ import annotations

import argparse
import base64
import cProfile
import pathlib
import signal
import time

import trio
from benchlib import HOST, SINK_COMMAND, emit
from trioport_common import load_key

from trioport.ssh import SSHConnection, SSHHandler, serve
from trioport.ssh.channel import ChannelStream
from trioport.ssh.server import ServerLimits
from trioport.ssh.session import SessionPolicy, run_process_on_channel
from trioport.sshproto import ConnectionConfig, HostKey, Role
from trioport.sshproto import events as ev

POLICY = SessionPolicy()


async def sink(chan: ChannelStream) -> None:
    while await chan.receive_some(1 << 20):
        pass
    await chan.request(ev.ExitStatus(status=0), want_reply=False)
    await chan.send_eof()


async def serve_exec(chan: ChannelStream) -> None:
    while (req := await chan.next_request()) is not None:
        if not isinstance(req.request, ev.Exec):
            await chan.reply(req, False)
            continue
        await chan.reply(req, True)
        command = req.request.command.decode("utf-8", "surrogateescape")
        if command == SINK_COMMAND:
            await sink(chan)
        else:
            await run_process_on_channel(chan, command, POLICY, {}, None)
        return


class BenchHandler(SSHHandler):
    def __init__(self, authorized: set[bytes]) -> None:
        self.authorized = authorized

    async def auth(self, conn: SSHConnection, request: ev.UserauthRequest) -> bool:
        return request.method == "publickey" and request.public_key in self.authorized

    async def channel_open(self, conn: SSHConnection, request: ev.ChannelOpen):
        if request.kind == "session":
            return serve_exec
        return await super().channel_open(conn, request)


async def serve_forever(port: int, config: ConnectionConfig, handler: BenchHandler) -> None:
    async with trio.open_nursery() as nursery:
        addresses = await nursery.start(
            lambda task_status: serve(
                port, config, lambda: handler, ServerLimits(), host=HOST, task_status=task_status
            )
        )
        emit({"port": addresses[0][1]})
        # SIGTERM/SIGINT end the run cleanly, so a --profile gets written.
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for _ in signals:
                nursery.cancel_scope.cancel()
                break


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host-key", required=True)
    parser.add_argument("--authorized-keys", required=True)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--profile", help="write cProfile stats here when stopped by SIGINT")
    args = parser.parse_args()
    authorized = {
        base64.b64decode(line.split()[1])
        for line in pathlib.Path(args.authorized_keys).read_text().splitlines()
        if line.strip()
    }
    config = ConnectionConfig(role=Role.SERVER, host_keys=[HostKey(load_key(args.host_key))])
    profile = cProfile.Profile(time.process_time) if args.profile else None
    if profile is not None:
        profile.enable()
    try:
        trio.run(serve_forever, args.port, config, BenchHandler(authorized))
    except KeyboardInterrupt:
        pass
    finally:
        if profile is not None:
            profile.disable()
            profile.dump_stats(args.profile)


if __name__ == "__main__":
    main()
