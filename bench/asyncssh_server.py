"""The asyncssh side of the benchmark: an SSH server in its own process.

Run by ``run.py``; prints ``{"port": N}`` once it listens on 127.0.0.1 and serves
until it is terminated. Publickey auth against one authorized_keys file. An exec'd
command runs as ``/bin/sh -c COMMAND`` with its stdin/stdout/stderr redirected to
the channel (asyncssh's own ``redirect``), as sshd would run it; the command
``bench-sink`` is instead served in process: read the channel to EOF, discard,
exit 0 (the "in-process sink" rows).
"""

from __future__ import annotations

import argparse
import asyncio

import asyncssh
from benchlib import HOST, SINK_COMMAND, emit


async def serve_process(process: asyncssh.SSHServerProcess) -> None:
    command = process.command or ""
    if command == SINK_COMMAND:
        while await process.stdin.read(1 << 20):
            pass
        process.exit(0)
        return
    child = await asyncio.create_subprocess_exec(
        "/bin/sh",
        "-c",
        command,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    await process.redirect(stdin=child.stdin, stdout=child.stdout, stderr=child.stderr)
    process.exit(await child.wait())


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host-key", required=True)
    parser.add_argument("--authorized-keys", required=True)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    server = await asyncssh.listen(
        HOST,
        args.port,
        server_host_keys=[args.host_key],
        authorized_client_keys=args.authorized_keys,
        process_factory=serve_process,
        encoding=None,
        allow_scp=False,
        agent_forwarding=False,
        x11_forwarding=False,
    )
    port = server.sockets[0].getsockname()[1]
    emit({"port": port})
    await server.wait_closed()


if __name__ == "__main__":
    asyncio.run(main())
