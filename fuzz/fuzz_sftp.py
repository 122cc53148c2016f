"""Fuzz SFTP v3 (draft-ietf-secsh-filexfer-02 + OpenSSH extensions): framing, codecs, order.

The first byte selects: bit 0 puts a valid INIT (or, for the client side, a
VERSION) in front of the rest, so the fuzzer starts past the version exchange;
bit 1 plays the client side (the input is what a server sent) instead of the
server side. The rest is the peer's byte stream, fed to ``ServerSession`` or
``ClientSession`` whole and, for short inputs, byte by byte: both must yield the
same messages and fail the same way.

Invariant: only our errors (``RemoteProtocolError``/``DecodeError``) escape; a
session that raised is in ``ERROR``; every message decoded re-encodes to bytes
that decode to the same message; extension reply bodies parse or raise
``DecodeError``.

``python3 fuzz/fuzz_sftp.py --make-seeds`` rewrites ``corpus/sftp/`` from our
own encoders.
"""

from __future__ import annotations

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from _harness import CORPUS, expect_only_our_errors, main

from trioport.errors import DecodeError, RemoteProtocolError
from trioport.sshproto import sftp

BYTEWISE_LIMIT = 512
INIT = sftp.frame(sftp.Init(3, ((b"client@example.com", b"1"),)))
VERSION = sftp.frame(sftp.Version(3, sftp.SERVER_EXTENSIONS))


def _run(session, chunks: list[bytes]) -> tuple[list, type | None]:  # type: ignore[no-untyped-def]
    out = []
    pull = (
        session.next_request if isinstance(session, sftp.ServerSession) else session.next_response
    )
    try:
        for chunk in chunks:
            session.receive_data(chunk)
            while (message := pull()) is not None:
                out.append(message)
    except RemoteProtocolError as exc:
        if session.state is not sftp.SessionState.ERROR:
            raise AssertionError("a session that raised is not in ERROR") from exc
        return out, type(exc)
    return out, None


def _stable(message, decode) -> None:  # type: ignore[no-untyped-def]
    if decode(sftp.encode(message)) != message:
        raise AssertionError(f"{message!r} does not survive a round trip")


def _reply_bodies(message: sftp.Response) -> None:
    if isinstance(message, sftp.ExtendedReply):
        for parse in (sftp.LimitsReply, sftp.StatvfsReply, sftp.UsersGroupsReply):
            try:
                body = parse.decode(message.data)
            except DecodeError:
                continue
            if parse.decode(body.encode()) != body:
                raise AssertionError(f"{body!r} does not survive a round trip")


def check(data: bytes) -> None:
    if not data:
        return
    selector, stream = data[0], data[1:]
    client_side = bool(selector & 2)
    if selector & 1:
        stream = (VERSION if client_side else INIT) + stream
    make = sftp.ClientSession if client_side else sftp.ServerSession
    decode = sftp.decode_response if client_side else sftp.decode_request
    messages, error = _run(make(), [stream])
    if len(stream) <= BYTEWISE_LIMIT:
        again = _run(make(), [stream[i : i + 1] for i in range(len(stream))])
        if again != (messages, error):
            raise AssertionError("byte-by-byte feeding changed the outcome")
    for message in messages:
        _stable(message, decode)
        if client_side:
            _reply_bodies(message)
    # The stateless decoders on the raw stream too, frame by frame.
    framer = sftp.Framer()
    framer.receive_data(stream)
    for payload in framer.payloads():
        for fn in (sftp.decode_request, sftp.decode_response):
            try:
                fn(payload)
            except DecodeError:
                pass


def TestOneInput(data: bytes) -> None:
    expect_only_our_errors(check, data)


def seeds() -> dict[str, bytes]:
    """Valid sessions (both sides) and a few famous bad ones."""
    a = sftp.Attrs(1, 2, 3, 0o100644, 5, 6, ((b"ext@example.com", b"v"),))
    requests = [
        sftp.Open(1, b"/tmp/f", 0x1A, a),
        sftp.Read(2, b"\x00\x00\x00\x01", 0, 32768),
        sftp.Write(3, b"\x00\x00\x00\x01", 0, b"data"),
        sftp.Close(4, b"\x00\x00\x00\x01"),
        sftp.Lstat(5, b"l"),
        sftp.Fstat(6, b"h"),
        sftp.Setstat(7, b"p", sftp.Attrs(permissions=0o600)),
        sftp.Fsetstat(8, b"h", sftp.Attrs(atime=1, mtime=2)),
        sftp.Opendir(9, b"."),
        sftp.Readdir(10, b"h"),
        sftp.Remove(11, b"f"),
        sftp.Mkdir(12, b"d", sftp.Attrs(permissions=0o755)),
        sftp.Rmdir(13, b"d"),
        sftp.Realpath(14, b".."),
        sftp.Stat(15, b"/"),
        sftp.Rename(16, b"a", b"b"),
        sftp.Readlink(17, b"l"),
        sftp.Symlink(18, b"target", b"link"),
        sftp.PosixRename(19, b"a", b"b"),
        sftp.Statvfs(20, b"/"),
        sftp.Fstatvfs(21, b"h"),
        sftp.Hardlink(22, b"a", b"b"),
        sftp.Fsync(23, b"h"),
        sftp.Lsetstat(24, b"l", sftp.Attrs(uid=0, gid=0)),
        sftp.Limits(25),
        sftp.ExpandPath(26, b"~/x"),
        sftp.CopyData(27, b"h", 0, 0, b"g", 0),
        sftp.HomeDirectory(28, b"root"),
        sftp.UsersGroupsById(29, b"\x00\x00\x00\x00", b"\x00\x00\x00\x00"),
        sftp.ExtendedRequest(30, b"vendor@example.com", b"x"),
        sftp.UnknownRequest(99, 31),
    ]
    responses = [
        sftp.Status(1, 0, "Success", ""),
        sftp.Handle(2, b"\x00\x00\x00\x01"),
        sftp.Data(3, b"data"),
        sftp.Name(4, (sftp.NameEntry(b"f", b"-rw-r--r-- 1 u g 0 Jan 1 00:00 f", a),)),
        sftp.StatReply(5, a),
        sftp.ExtendedReply(6, sftp.LimitsReply().encode()),
        sftp.ExtendedReply(7, sftp.StatvfsReply(*range(11)).encode()),
        sftp.ExtendedReply(8, sftp.UsersGroupsReply((b"root",), (b"root",)).encode()),
    ]
    out = {
        "server_session": b"\x00" + INIT + b"".join(map(sftp.frame, requests)),
        "client_session": b"\x02" + VERSION + b"".join(map(sftp.frame, responses)),
        "server_too_long": b"\x01" + (sftp.MAX_MESSAGE + 1).to_bytes(4, "big") + b"\x06",
        "server_before_init": b"\x00" + sftp.frame(requests[0]),
        "server_init_twice": b"\x01" + INIT,
    }
    for i, request in enumerate(requests):
        out[f"request_{i:02d}"] = b"\x01" + sftp.frame(request)
    for i, response in enumerate(responses):
        out[f"response_{i:02d}"] = b"\x03" + sftp.frame(response)
    return out


if __name__ == "__main__":
    if sys.argv[1:] == ["--make-seeds"]:
        corpus = CORPUS / "sftp"
        corpus.mkdir(parents=True, exist_ok=True)
        for name, seed in seeds().items():
            TestOneInput(seed)
            (corpus / name).write_bytes(seed)
    else:
        main(TestOneInput, "sftp")
