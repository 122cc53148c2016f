"""The trioport client side of the benchmark, in its own process.

``bulk``: one connection, one session channel running COMMAND; ``send_all`` SIZE
bytes in 1 MiB calls, ``send_eof``, wait until the server closes the channel
(after the exit status). Prints ``{"seconds": t, "bytes": n}`` where ``t`` runs
from just before the channel is opened (the handshake is not included).

``setup``: COUNT connections, PARALLEL at a time, each doing handshake +
publickey auth + ``exec true`` + close. Prints ``{"latencies": [...], "wall": t}``.
"""

from __future__ import annotations

import argparse
import cProfile
import time

import trio
from benchlib import HOST, KEX, TRUE_COMMAND, emit
from trioport_common import load_key

from trioport.ssh import connect
from trioport.sshproto import ConnectionConfig, Role
from trioport.sshproto import events as ev


def _config(args: argparse.Namespace) -> ConnectionConfig:
    kwargs: dict = {
        "role": Role.CLIENT,
        "kex_algorithms": [KEX],
        "host_key_algorithms": ["ssh-ed25519"],
        "verify_host_key": None,
    }
    if args.cipher:
        kwargs["ciphers"] = [args.cipher]
    if args.mac:
        kwargs["macs"] = [args.mac]
    return ConnectionConfig(**kwargs)


async def bulk(args: argparse.Namespace) -> None:
    key = load_key(args.key)
    chunk = bytes(1 << 20)
    async with connect(
        HOST, args.port, username=args.user, signers=[key], config=_config(args)
    ) as conn:
        start = time.perf_counter()
        cpu0 = time.process_time()
        chan = await conn.open_session()
        if not await chan.request(ev.Exec(command=args.command.encode())):
            raise SystemExit("the server refused the command")
        remaining = args.size
        while remaining > 0:
            n = min(remaining, len(chunk))
            await chan.send_all(chunk if n == len(chunk) else chunk[:n])
            remaining -= n
        await chan.send_eof()
        await chan.wait_closed()
        seconds = time.perf_counter() - start
        cpu = time.process_time() - cpu0
        status = chan.exit_status
    if status != 0:
        raise SystemExit(f"command exited with {status}")
    emit({"seconds": seconds, "bytes": args.size, "cpu": cpu, "negotiated": conn.negotiated})


async def one_setup(args: argparse.Namespace, key, config: ConnectionConfig) -> float:
    start = time.perf_counter()
    async with connect(HOST, args.port, username=args.user, signers=[key], config=config) as conn:
        result = await conn.run(TRUE_COMMAND)
    if result.exit_status != 0:
        raise SystemExit(f"`true` exited with {result.exit_status}")
    return time.perf_counter() - start


async def setup(args: argparse.Namespace) -> None:
    key = load_key(args.key)
    config = _config(args)
    latencies: list[float] = []
    todo = iter(range(args.count))

    async def worker() -> None:
        for _ in todo:
            latencies.append(await one_setup(args, key, config))

    start = time.perf_counter()
    cpu0 = time.process_time()
    async with trio.open_nursery() as nursery:
        for _ in range(args.parallel):
            nursery.start_soon(worker)
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
    parser.add_argument("--profile", help="write cProfile stats of the run here")
    args = parser.parse_args()
    profile = cProfile.Profile(time.process_time) if args.profile else None
    if profile is not None:
        profile.enable()
    try:
        trio.run(bulk if args.mode == "bulk" else setup, args)
    finally:
        if profile is not None:
            profile.disable()
            profile.dump_stats(args.profile)


if __name__ == "__main__":
    main()
