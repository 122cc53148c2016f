"""A small SFTP version 3 client over an SSH connection: enough for ``tsh scp``.

:func:`open_sftp` starts the ``sftp`` subsystem on a new session channel and yields
an :class:`SFTPClient`. One reader task matches responses to requests by id, so
any number of requests may be in flight; :meth:`SFTPClient.get` and
:meth:`SFTPClient.put` keep several reads or writes outstanding at once (as
OpenSSH's sftp does), which hides the round trip. Local file I/O goes through
worker threads. The protocol itself is :mod:`trioport.sshproto.sftp`.

A request the server refuses raises :class:`SFTPError` carrying its status code and
the server's message; a broken session raises trio's ``BrokenResourceError``.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import trio

from ..errors import ChannelOpenError, ChannelOpenFailureReason, DecodeError, TrioportError
from ..sshproto import events as ev
from ..sshproto import sftp
from ..sshproto.sftp import Attrs, NameEntry, OpenFlags, StatusCode

if TYPE_CHECKING:
    from .channel import ChannelStream
    from .connection import SSHConnection

__all__ = ["SFTPClient", "SFTPError", "open_sftp"]

#: Bytes per READ or WRITE (below the server's 255 KiB; capped by limits@openssh.com).
CHUNK = 128 * 1024
#: Reads or writes in flight at once during get and put.
IN_FLIGHT = 16


class SFTPError(TrioportError):
    """The server answered a request with a failure status."""

    def __init__(self, code: int, message: str, path: bytes | None = None) -> None:
        what = f"{os.fsdecode(path)}: " if path is not None else ""
        super().__init__(f"{what}{message or StatusCode(code).name.lower()}")
        self.code = code
        self.message = message
        self.path = path


class SFTPClient:
    """Requests over one SFTP session. Build it with :func:`open_sftp`."""

    def __init__(self, chan: ChannelStream) -> None:
        self._chan = chan
        self._session = sftp.ClientSession()
        self._pending: dict[int, tuple[trio.Event, list[sftp.Response]]] = {}
        self._send_lock = trio.StrictFIFOLock()
        self._broken: BaseException | None = None
        self.limits = sftp.LimitsReply()

    @property
    def extensions(self) -> dict[bytes, bytes]:
        """The extensions the server advertised, by name."""
        return self._session.server_extensions

    async def _start(self, nursery: trio.Nursery) -> None:
        await self._chan.send_all(self._session.start())
        version = await self._next_response()
        if not isinstance(version, sftp.Version):
            raise trio.BrokenResourceError("the server did not answer INIT")
        nursery.start_soon(self._reader)
        if b"limits@openssh.com" in self.extensions:
            try:
                reply = await self._request(lambda i: sftp.Limits(i), None)
                if isinstance(reply, sftp.ExtendedReply):
                    self.limits = sftp.LimitsReply.decode(reply.data)
            except (SFTPError, DecodeError):
                pass  # keep the defaults: OpenSSH's own limits

    async def _next_response(self) -> sftp.Response:
        while (response := self._session.next_response()) is None:
            data = await self._chan.receive_some(65536)
            if not data:
                raise trio.BrokenResourceError("the SFTP session ended")
            self._session.receive_data(data)
        return response

    async def _reader(self) -> None:
        try:
            while True:
                response = await self._next_response()
                waiter = self._pending.pop(getattr(response, "id", -1), None)
                if waiter is not None:
                    waiter[1].append(response)
                    waiter[0].set()
        except (TrioportError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self._broken = exc
            for event, _ in self._pending.values():
                event.set()
            self._pending.clear()

    async def _request(
        self, make: Callable[[int], sftp.Request], path: bytes | None
    ) -> sftp.Response:
        """Send one request and wait for its response; STATUS failures raise."""
        if self._broken is not None:
            raise trio.BrokenResourceError("the SFTP session ended") from self._broken
        id_ = self._session.next_id()
        event, box = trio.Event(), []
        self._pending[id_] = (event, box)
        async with self._send_lock:
            await self._chan.send_all(self._session.send(make(id_)))
        await event.wait()
        if not box:
            raise trio.BrokenResourceError("the SFTP session ended") from self._broken
        response = box[0]
        if isinstance(response, sftp.Status) and response.code != StatusCode.OK:
            raise SFTPError(response.code, response.message, path)
        return response

    async def _status(self, make: Callable[[int], sftp.Request], path: bytes) -> None:
        await self._request(make, path)

    async def _name(self, make: Callable[[int], sftp.Request], path: bytes) -> bytes:
        reply = await self._request(make, path)
        if not isinstance(reply, sftp.Name) or len(reply.entries) != 1:
            raise SFTPError(StatusCode.BAD_MESSAGE, "unexpected reply", path)
        return reply.entries[0].filename

    async def _attrs(self, make: Callable[[int], sftp.Request], path: bytes) -> Attrs:
        reply = await self._request(make, path)
        if not isinstance(reply, sftp.StatReply):
            raise SFTPError(StatusCode.BAD_MESSAGE, "unexpected reply", path)
        return reply.attrs

    # --- paths ----------------------------------------------------------------------

    async def realpath(self, path: bytes | str = b".") -> bytes:
        """The server's canonical form of ``path``."""
        p = os.fsencode(path)
        return await self._name(lambda i: sftp.Realpath(i, p), p)

    async def stat(self, path: bytes | str) -> Attrs:
        """Attributes of ``path``, following symlinks."""
        p = os.fsencode(path)
        return await self._attrs(lambda i: sftp.Stat(i, p), p)

    async def lstat(self, path: bytes | str) -> Attrs:
        """Attributes of ``path`` itself."""
        p = os.fsencode(path)
        return await self._attrs(lambda i: sftp.Lstat(i, p), p)

    async def listdir(self, path: bytes | str = b".") -> list[NameEntry]:
        """Every entry of a directory except ``.`` and ``..``."""
        p = os.fsencode(path)
        handle = await self._handle(lambda i: sftp.Opendir(i, p), p)
        entries: list[NameEntry] = []
        try:
            while True:
                try:
                    reply = await self._request(lambda i: sftp.Readdir(i, handle), p)
                except SFTPError as exc:
                    if exc.code == StatusCode.EOF:
                        break
                    raise
                if isinstance(reply, sftp.Name):
                    entries += [e for e in reply.entries if e.filename not in (b".", b"..")]
        finally:
            await self._close(handle, p)
        return entries

    async def mkdir(self, path: bytes | str, mode: int = 0o777) -> None:
        """Create a directory."""
        p = os.fsencode(path)
        await self._status(lambda i: sftp.Mkdir(i, p, Attrs(permissions=mode)), p)

    async def rmdir(self, path: bytes | str) -> None:
        """Remove an empty directory."""
        p = os.fsencode(path)
        await self._status(lambda i: sftp.Rmdir(i, p), p)

    async def remove(self, path: bytes | str) -> None:
        """Remove a file."""
        p = os.fsencode(path)
        await self._status(lambda i: sftp.Remove(i, p), p)

    async def rename(self, old: bytes | str, new: bytes | str) -> None:
        """Rename, replacing ``new`` when the server has posix-rename@openssh.com."""
        o, n = os.fsencode(old), os.fsencode(new)
        if b"posix-rename@openssh.com" in self.extensions:
            await self._status(lambda i: sftp.PosixRename(i, o, n), o)
        else:
            await self._status(lambda i: sftp.Rename(i, o, n), o)

    async def chmod(self, path: bytes | str, mode: int) -> None:
        """Change permission bits."""
        p = os.fsencode(path)
        await self._status(lambda i: sftp.Setstat(i, p, Attrs(permissions=mode)), p)

    async def symlink(self, target: bytes | str, link: bytes | str) -> None:
        """Create ``link`` pointing at ``target``."""
        t, lk = os.fsencode(target), os.fsencode(link)
        await self._status(lambda i: sftp.Symlink(i, t, lk), lk)

    async def readlink(self, path: bytes | str) -> bytes:
        """The target of a symlink."""
        p = os.fsencode(path)
        return await self._name(lambda i: sftp.Readlink(i, p), p)

    # --- files ------------------------------------------------------------------------

    async def _handle(self, make: Callable[[int], sftp.Request], path: bytes) -> bytes:
        reply = await self._request(make, path)
        if not isinstance(reply, sftp.Handle):
            raise SFTPError(StatusCode.BAD_MESSAGE, "unexpected reply", path)
        return reply.handle

    async def _close(self, handle: bytes, path: bytes) -> None:
        with trio.CancelScope(shield=True):
            try:
                await self._status(lambda i: sftp.Close(i, handle), path)
            except (SFTPError, trio.BrokenResourceError, trio.ClosedResourceError):
                pass

    def _chunk(self, limit: int) -> int:
        return min(CHUNK, limit or CHUNK, sftp.MAX_READ)

    async def get(
        self,
        remote: bytes | str,
        local: str | os.PathLike[str],
        *,
        on_bytes: Callable[[int], object] | None = None,
    ) -> int:
        """Download ``remote`` to ``local``; returns the number of bytes.

        ``on_bytes`` hears the size of each piece once it is written locally.

        Raises:
            SFTPError: the server refused to open or read the file.
            OSError: the local file could not be written.
        """
        r = os.fsencode(remote)
        handle = await self._handle(lambda i: sftp.Open(i, r, OpenFlags.READ), r)
        chunk = self._chunk(self.limits.max_read_length)
        fd = await trio.to_thread.run_sync(
            os.open, local, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o666
        )
        state = {"next": 0, "eof": None}

        async def worker() -> None:
            while state["eof"] is None or state["next"] < state["eof"]:
                start = state["next"]
                state["next"] += chunk
                pos = start
                while pos < start + chunk:
                    want = start + chunk - pos
                    try:
                        reply = await self._request(
                            lambda i, at=pos, n=want: sftp.Read(i, handle, at, n), r
                        )
                    except SFTPError as exc:
                        if exc.code != StatusCode.EOF:
                            raise
                        state["eof"] = pos if state["eof"] is None else min(state["eof"], pos)
                        return
                    data = reply.data  # type: ignore[union-attr]
                    await trio.to_thread.run_sync(os.pwrite, fd, data, pos)
                    pos += len(data)
                    if on_bytes is not None:
                        on_bytes(len(data))

        try:
            await _run_workers(worker)
            size = state["eof"] or 0
            await trio.to_thread.run_sync(os.ftruncate, fd, size)
        finally:
            os.close(fd)
            await self._close(handle, r)
        return size

    async def put(
        self,
        local: str | os.PathLike[str],
        remote: bytes | str,
        *,
        on_bytes: Callable[[int], object] | None = None,
    ) -> int:
        """Upload ``local`` to ``remote`` (created or truncated); returns the bytes sent.

        ``on_bytes`` hears the size of each piece once the server confirmed its write.

        Raises:
            SFTPError: the server refused to create or write the file.
            OSError: the local file could not be read.
        """
        r = os.fsencode(remote)
        fd = await trio.to_thread.run_sync(os.open, local, os.O_RDONLY | os.O_CLOEXEC)
        try:
            st = os.fstat(fd)
            flags = OpenFlags.WRITE | OpenFlags.CREAT | OpenFlags.TRUNC
            mode = Attrs(permissions=st.st_mode & 0o777)
            handle = await self._handle(lambda i: sftp.Open(i, r, flags, mode), r)
            chunk = self._chunk(self.limits.max_write_length)
            state = {"next": 0}

            async def worker() -> None:
                while state["next"] < st.st_size:
                    offset = state["next"]
                    state["next"] += chunk
                    data = await trio.to_thread.run_sync(os.pread, fd, chunk, offset)
                    await self._status(lambda i, at=offset, d=data: sftp.Write(i, handle, at, d), r)
                    if on_bytes is not None:
                        on_bytes(len(data))

            try:
                await _run_workers(worker)
            finally:
                await self._close(handle, r)
        finally:
            os.close(fd)
        return st.st_size


async def _run_workers(worker: Callable[[], Awaitable[None]]) -> None:
    """Run :data:`IN_FLIGHT` copies of ``worker``; the first failure stops them all.

    Raises the failing worker's own exception (not an ExceptionGroup), so callers
    catch :class:`SFTPError` and ``OSError`` as documented.
    """
    try:
        async with trio.open_nursery() as nursery:
            for _ in range(IN_FLIGHT):
                nursery.start_soon(worker)
    except BaseExceptionGroup as group:
        leaves = list(_leaves(group))
        if leaves and all(isinstance(e, Exception) for e in leaves):
            raise leaves[0] from None
        raise


def _leaves(group: BaseExceptionGroup) -> Iterator[BaseException]:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            yield from _leaves(exc)
        else:
            yield exc


@asynccontextmanager
async def open_sftp(conn: SSHConnection) -> AsyncIterator[SFTPClient]:
    """Start the ``sftp`` subsystem on a new session channel of ``conn``.

    Raises:
        ChannelOpenError: the server refused the channel or the subsystem.
        trio.BrokenResourceError: the session ended before VERSION.
    """
    chan = await conn.open_session()
    async with chan:
        if not await chan.request(ev.Subsystem(name="sftp")):
            raise ChannelOpenError(
                ChannelOpenFailureReason.ADMINISTRATIVELY_PROHIBITED,
                "the server refused the sftp subsystem",
            )
        async with trio.open_nursery() as nursery:
            client = SFTPClient(chan)
            await client._start(nursery)
            yield client
            nursery.cancel_scope.cancel()
