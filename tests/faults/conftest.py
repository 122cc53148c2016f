"""Fault tests: the node tests' in-process cluster (auth + nodes) and a disk that fills up.

The ``cluster`` and ``os_users`` fixtures are the node tests' own
(:mod:`tests.roles.node.conftest`). :func:`tiny_disk` mounts a small tmpfs (we run
as root, as the node tests do: sessions run as other OS accounts) that a test
fills to make every further write fail with ENOSPC, a real disk error.
"""

from __future__ import annotations

import contextlib
import errno
import os
import pathlib
import subprocess
from collections.abc import Iterator

from tests.roles.node.conftest import cluster, os_users

__all__ = ["TinyDisk", "cluster", "os_users", "tiny_disk"]


class TinyDisk:
    """A mounted tmpfs of a few pages; :meth:`fill` uses up every byte of it."""

    def __init__(self, path: pathlib.Path) -> None:
        self.path = path
        self.filler = path / "filler"

    def fill(self) -> None:
        """Write a file until the disk is full (ENOSPC): no further write can succeed."""
        fd = os.open(self.filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            for _ in range(100_000):
                try:
                    os.write(fd, b"\0" * 4096)
                except OSError as exc:
                    if exc.errno == errno.ENOSPC:
                        break
                    raise
            for _ in range(4096):  # the last partial page, byte by byte
                try:
                    os.write(fd, b"\0")
                except OSError as exc:
                    if exc.errno == errno.ENOSPC:
                        return
                    raise
        finally:
            os.close(fd)
        raise AssertionError(f"{self.path} never filled up")

    def free(self) -> None:
        self.filler.unlink(missing_ok=True)


@contextlib.contextmanager
def tiny_disk(path: pathlib.Path, size: str = "256k") -> Iterator[TinyDisk]:
    """Mount a ``size`` tmpfs on ``path`` (created) for the duration of the block."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)],
        check=True,
        capture_output=True,
    )
    try:
        yield TinyDisk(path)
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False, capture_output=True)
