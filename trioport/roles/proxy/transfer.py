"""``tsh scp``: copy files to and from nodes over SFTP, through the proxy.

Like OpenSSH 9's ``scp``, this speaks SFTP (the node's ``sftp`` subsystem, with
:mod:`trioport.ssh.sftp_client`), never the legacy scp protocol, so no remote
shell ever parses a file name. A location is local (``path``) or remote
(``[LOGIN@]NODE:path``; an empty remote path is the login's home directory). One
call copies one way: every source is remote and the destination local
(download), or every source local and the destination remote (upload).

The rules for the destination are scp's: when it is an existing directory, each
source lands inside it under its own name; otherwise there must be exactly one
source, copied to that name. Directories are copied only with ``recursive``
(``-r``), keeping the permission bits of files and directories; symbolic links
are followed on upload and copied as what they point to on download, as scp does.

Progress: a ``progress`` callback hears about each file when it starts, every
:data:`PROGRESS_INTERVAL` seconds while it is copied, and when it is done. The
bytes so far are those already landed: each write the node confirmed on upload,
each read written to the local file on download. :func:`format_progress` makes
the line ``tsh scp`` shows on a terminal.
"""

from __future__ import annotations

import os
import posixpath
import re
import stat
from collections.abc import Awaitable, Callable
from typing import Protocol

import attrs
import trio

from trioport.errors import TrioportError
from trioport.ssh.sftp_client import SFTPClient, SFTPError

__all__ = [
    "PROGRESS_INTERVAL",
    "Location",
    "Progress",
    "TransferError",
    "download",
    "format_progress",
    "human_size",
    "parse_location",
    "upload",
]

#: ``[login@]host:path``; a host may be ``[v6]``. Anything with a ``/`` before the
#: first ``:`` is a local path, as in scp.
_REMOTE = re.compile(r"^(?:(?P<login>[^@/:]+)@)?(?P<host>\[[^\]]+\]|[^@/:\[\]]+):(?P<path>.*)$")

#: Seconds between progress reports while a file is copied.
PROGRESS_INTERVAL = 0.25


class Progress(Protocol):
    """Told about one file: where it goes, bytes so far, its size, and whether it is done."""

    def __call__(self, path: str, done: int, total: int, finished: bool) -> None: ...


class TransferError(TrioportError):
    """A copy that cannot be done as asked (the message says why)."""


@attrs.frozen
class Location:
    """A local path, or a path on a node (``host`` set)."""

    path: str
    host: str | None = None
    login: str | None = None

    @property
    def remote(self) -> bool:
        return self.host is not None


def parse_location(text: str) -> Location:
    """Read ``path`` or ``[LOGIN@]NODE:path`` as scp does."""
    match = _REMOTE.match(text)
    if match is None or text.startswith(("/", "./", "../")):
        return Location(text)
    host = match["host"].strip("[]")
    return Location(match["path"], host, match["login"])


async def _remote_is_dir(sftp: SFTPClient, path: str) -> bool:
    try:
        attrs_ = await sftp.stat(path or ".")
    except SFTPError:
        return False
    return attrs_.permissions is not None and stat.S_ISDIR(attrs_.permissions)


async def upload(
    sftp: SFTPClient,
    sources: list[str],
    target: str,
    *,
    recursive: bool = False,
    progress: Progress | None = None,
) -> int:
    """Copy local ``sources`` to ``target`` on the node; returns the bytes sent.

    Raises:
        TransferError: several sources to something that is not a directory, or a
            directory without ``recursive``.
        SFTPError / OSError: the node or the local file system refused.
    """
    target = target or "."
    into_dir = await _remote_is_dir(sftp, target)
    if len(sources) > 1 and not into_dir:
        raise TransferError(f"{target}: not a directory on the node (copying several files)")
    total = 0
    for source in sources:
        dest = posixpath.join(target, os.path.basename(source.rstrip("/"))) if into_dir else target
        total += await _upload_one(sftp, source, dest, recursive, progress)
    return total


async def _upload_one(
    sftp: SFTPClient, source: str, dest: str, recursive: bool, progress: Progress | None
) -> int:
    info = await trio.to_thread.run_sync(os.stat, source)
    if stat.S_ISDIR(info.st_mode):
        if not recursive:
            raise TransferError(f"{source}: is a directory (use -r)")
        if not await _remote_is_dir(sftp, dest):
            await sftp.mkdir(dest, info.st_mode & 0o7777)
        total = 0
        for name in sorted(await trio.to_thread.run_sync(os.listdir, source)):
            total += await _upload_one(
                sftp, os.path.join(source, name), posixpath.join(dest, name), recursive, progress
            )
        return total
    if not stat.S_ISREG(info.st_mode):
        raise TransferError(f"{source}: not a regular file")

    size = await _watched(
        lambda on_bytes: sftp.put(source, dest, on_bytes=on_bytes), dest, info.st_size, progress
    )
    await sftp.chmod(dest, info.st_mode & 0o7777)
    return size


async def download(
    sftp: SFTPClient,
    sources: list[str],
    target: str,
    *,
    recursive: bool = False,
    progress: Progress | None = None,
) -> int:
    """Copy ``sources`` on the node to the local ``target``; returns the bytes received.

    Raises:
        TransferError: several sources to something that is not a directory, or a
            directory without ``recursive``.
        SFTPError / OSError: the node or the local file system refused.
    """
    into_dir = await trio.Path(target).is_dir()
    if len(sources) > 1 and not into_dir:
        raise TransferError(f"{target}: not a directory (copying several files)")
    total = 0
    for source in sources:
        name = posixpath.basename(source.rstrip("/")) or posixpath.basename(
            os.fsdecode(await sftp.realpath(source or "."))
        )
        dest = os.path.join(target, name) if into_dir else target
        total += await _download_one(sftp, source or ".", dest, recursive, progress)
    return total


async def _download_one(
    sftp: SFTPClient, source: str, dest: str, recursive: bool, progress: Progress | None
) -> int:
    info = await sftp.stat(source)
    mode = info.permissions or 0o644
    if stat.S_ISDIR(mode):
        if not recursive:
            raise TransferError(f"{source}: is a directory (use -r)")
        await trio.to_thread.run_sync(lambda: os.makedirs(dest, exist_ok=True))
        total = 0
        for entry in sorted(await sftp.listdir(source), key=lambda e: e.filename):
            name = os.fsdecode(entry.filename)
            if name in (".", "..") or "/" in name:
                continue  # never let a server's name climb out of the target
            total += await _download_one(
                sftp, posixpath.join(source, name), os.path.join(dest, name), recursive, progress
            )
        await trio.to_thread.run_sync(os.chmod, dest, mode & 0o7777)
        return total
    if not stat.S_ISREG(mode):
        raise TransferError(f"{source}: not a regular file on the node")

    size = await _watched(
        lambda on_bytes: sftp.get(source, dest, on_bytes=on_bytes), dest, info.size or 0, progress
    )
    await trio.to_thread.run_sync(os.chmod, dest, mode & 0o7777)
    return size


async def _watched(
    copy: Callable[[Callable[[int], object] | None], Awaitable[int]],
    path: str,
    total: int,
    progress: Progress | None,
) -> int:
    """Run ``copy`` (given a callback for the bytes landed), reporting to ``progress``."""
    if progress is None:
        return await copy(None)
    progress(path, 0, total, False)
    landed = 0

    def count(n: int) -> None:
        nonlocal landed
        landed += n

    async def watch() -> None:
        while True:
            await trio.sleep(PROGRESS_INTERVAL)
            progress(path, min(landed, total), total, False)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch)
        size = await copy(count)
        nursery.cancel_scope.cancel()
    progress(path, size, size, True)
    return size


_UNITS = ("B", "KiB", "MiB", "GiB", "TiB")


def human_size(n: float) -> str:
    """``n`` bytes in binary units: ``512 B``, ``3.0 MiB``."""
    for unit in _UNITS:
        if n < 1024 or unit == _UNITS[-1]:
            return f"{int(n)} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def format_progress(name: str, done: int, total: int, elapsed: float, width: int = 80) -> str:
    """One progress line: ``name  45%  1.4 MiB / 3.0 MiB  2.1 MiB/s``, fitted to ``width``.

    The name is shortened from the left (keeping its end) when the line is too long.
    """
    percent = 100 if total <= 0 else min(100, done * 100 // total)
    rate = done / elapsed if elapsed > 0 else 0.0
    right = f"{percent:3d}%  {human_size(done)} / {human_size(total)}  {human_size(rate)}/s"
    room = max(8, width - len(right) - 3)
    if len(name) > room:
        name = "..." + name[-(room - 3) :]
    return f"{name.ljust(room)}  {right}"
