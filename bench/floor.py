"""The floor: the same bytes in 32 KiB AES-GCM frames over trio TCP, no SSH at all.

What a Python SSH implementation on trio cannot beat: the sender encrypts each
32 KiB chunk with cryptography's ``AESGCM`` (128-bit key, 12-byte counter nonce,
the 4-byte length prefix as associated data, as aes128-gcm@openssh.com does) and
writes ``length || ciphertext || tag`` with one ``send_all`` per frame; the
receiver (another process) reads what the socket has, splits frames, decrypts
and discards each. A zero-length frame ends the run; the receiver answers one
byte, so the sender's clock stops only when every frame was decrypted.

``python3 bench/floor.py serve`` prints ``{"port": N}`` and serves runs until
terminated; ``python3 bench/floor.py send --port N --size BYTES`` prints
``{"seconds": t, "bytes": n}``.
"""

from __future__ import annotations

import argparse
import struct
import time

import trio
from benchlib import HOST, emit
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

FRAME = 32 * 1024
#: A fixed key: this measures cost, not secrecy, and both processes must agree.
KEY = bytes(range(16))
_LEN = struct.Struct(">I")
_TAG = 16


def _nonce(counter: int) -> bytes:
    return counter.to_bytes(12, "big")


async def receive_run(stream: trio.SocketStream) -> None:
    aead = AESGCM(KEY)
    buf = bytearray()
    counter = 0
    while True:
        data = await stream.receive_some(262144)
        if not data:
            return
        buf += data
        view = memoryview(buf)
        pos = 0
        end = len(buf)
        done = False
        while end - pos >= 4:
            (length,) = _LEN.unpack_from(view, pos)
            if length == 0:
                done = True
                pos += 4
                break
            if end - pos < 4 + length:
                break
            aead.decrypt(_nonce(counter), view[pos + 4 : pos + 4 + length], view[pos : pos + 4])
            counter += 1
            pos += 4 + length
        view.release()
        del buf[:pos]
        if done:
            await stream.send_all(b"k")
            return


async def serve(port: int) -> None:
    async def one(stream: trio.SocketStream) -> None:
        async with stream:
            await receive_run(stream)

    listeners = await trio.open_tcp_listeners(port, host=HOST)
    emit({"port": listeners[0].socket.getsockname()[1]})
    await trio.serve_listeners(one, listeners)


async def send(port: int, size: int) -> None:
    aead = AESGCM(KEY)
    chunk = bytes(FRAME)
    async with await trio.open_tcp_stream(HOST, port) as stream:
        start = time.perf_counter()
        cpu0 = time.process_time()
        counter = 0
        remaining = size
        while remaining > 0:
            n = min(FRAME, remaining)
            plain = chunk if n == FRAME else chunk[:n]
            header = _LEN.pack(n + _TAG)
            await stream.send_all(header + aead.encrypt(_nonce(counter), plain, header))
            counter += 1
            remaining -= n
        await stream.send_all(_LEN.pack(0))
        ack = await stream.receive_some(1)
        seconds = time.perf_counter() - start
        cpu = time.process_time() - cpu0
    if ack != b"k":
        raise SystemExit("receiver did not confirm the run")
    emit({"seconds": seconds, "bytes": size, "cpu": cpu})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("mode", choices=["serve", "send"])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--size", type=int, default=64 << 20)
    args = parser.parse_args()
    if args.mode == "serve":
        trio.run(serve, args.port)
    else:
        trio.run(send, args.port, args.size)


if __name__ == "__main__":
    main()
