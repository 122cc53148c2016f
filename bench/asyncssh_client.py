"""The asyncssh client side of the benchmark, in its own process.

``bulk``: one connection, one channel running COMMAND; send SIZE bytes to its
stdin in 1 MiB writes (each followed by ``drain``), send EOF, wait for the exit
status. Prints ``{"seconds": t, "bytes": n}`` where ``t`` runs from just before
the channel is opened to the exit status (the handshake is not included).

``setup``: COUNT connections, PARALLEL at a time, each doing handshake +
publickey auth + ``exec true`` + close. Prints ``{"latencies": [...], "wall": t}``.
"""

from __future__ import annotations

import argparse
import asyncio
import time

import asyncssh
from benchlib import HOST, KEX, TRUE_COMMAND, emit


def _options(args: argparse.Namespace) -> dict:
    opts: dict = {
        "username": args.user,
        "client_keys": [args.key],
        "known_hosts": None,
        "kex_algs": [KEX],
        "server_host_key_algs": ["ssh-ed25519"],
        "compression_algs": None,
        "agent_path": None,
    }
    if args.cipher:
        opts["encryption_algs"] = [args.cipher]
    if args.mac:
        opts["mac_algs"] = [args.mac]
    return opts


async def bulk(args: argparse.Namespace) -> None:
    chunk = bytes(1 << 20)
    async with asyncssh.connect(HOST, args.port, **_options(args)) as conn:
        start = time.perf_counter()
        cpu0 = time.process_time()
        process = await conn.create_process(args.command, encoding=None)
        remaining = args.size
        while remaining > 0:
            n = min(remaining, len(chunk))
            process.stdin.write(chunk if n == len(chunk) else chunk[:n])
            await process.stdin.drain()
            remaining -= n
        process.stdin.write_eof()
        result = await process.wait()
        seconds = time.perf_counter() - start
        cpu = time.process_time() - cpu0
    if result.exit_status != 0:
        raise SystemExit(f"command exited with {result.exit_status}: {result.stderr!r}")
    emit({"seconds": seconds, "bytes": args.size, "cpu": cpu})


async def one_setup(args: argparse.Namespace) -> float:
    start = time.perf_counter()
    async with asyncssh.connect(HOST, args.port, **_options(args)) as conn:
        result = await conn.run(TRUE_COMMAND, encoding=None)
    if result.exit_status != 0:
        raise SystemExit(f"`true` exited with {result.exit_status}")
    return time.perf_counter() - start


async def setup(args: argparse.Namespace) -> None:
    latencies: list[float] = []
    todo = iter(range(args.count))

    async def worker() -> None:
        for _ in todo:
            latencies.append(await one_setup(args))

    start = time.perf_counter()
    cpu0 = time.process_time()
    await asyncio.gather(*(worker() for _ in range(args.parallel)))
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu0
    emit({"latencies": latencies, "wall": wall, "cpu": cpu})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("mode", choices=["bulk", "setup"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--user", default="trioport-bench")
    parser.add_argument("--cipher")
    parser.add_argument("--mac")
    parser.add_argument("--command", default="cat >/dev/null")
    parser.add_argument("--size", type=int, default=64 << 20)
    parser.add_argument("--count", type=int, default=20)
    parser.add_argument("--parallel", type=int, default=1)
    args = parser.parse_args()
    asyncio.run(bulk(args) if args.mode == "bulk" else setup(args))


if __name__ == "__main__":
    main()
