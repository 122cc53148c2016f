"""The bytes a connection has queued for the wire, sealed in place.

Packet protection writes each packet straight into a reusable arena instead of
building it from fresh ``bytes``: on the bulk path a fresh 128 KiB buffer per
packet (and a joined batch per flush) costs a page fault per 4 KiB written once
the allocator hands the memory back to the kernel, which was most of a client's
CPU time. Two arenas alternate: :meth:`SendQueue.take` hands the driver what was
written so far and switches to the other arena, so the driver can send that view
while new packets are sealed into the other one. A connection that goes quiet
after a bulk transfer gives the arenas' memory back.
"""

from __future__ import annotations

__all__ = ["SendQueue"]

#: Arena size on first use, and what a quiet connection's arenas shrink back to.
_MIN_ARENA = 16 * 1024
#: A batch smaller than this is "quiet" traffic (keystrokes, keepalives, window
#: adjustments); after _QUIET_RUN of them in a row the arenas shrink. One quiet batch
#: is not enough: a bulk sender interleaves window adjustments with its data.
_QUIET_BATCH = 8 * 1024
_QUIET_RUN = 4


class SendQueue:
    """Outgoing wire bytes in two alternating arenas.

    Writers :meth:`reserve` room at the end, fill it, then :meth:`commit` what they
    used; :meth:`append` does both for ready-made bytes. The driver calls
    :meth:`take` and may use the returned view until its next call of :meth:`take`.
    """

    __slots__ = ("_arenas", "_current", "_quiet", "_used")

    def __init__(self) -> None:
        self._arenas = [bytearray(), bytearray()]
        self._current = 0
        self._used = 0
        self._quiet = 0  # quiet batches in a row

    def __len__(self) -> int:
        return self._used

    def __bool__(self) -> bool:
        return self._used > 0

    def reserve(self, size: int) -> memoryview:
        """A writable view of ``size`` bytes after everything queued; not queued yet."""
        used = self._used
        arena = self._arenas[self._current]
        if used + size > len(arena):
            # A new arena rather than a resize: the driver may still hold a view of
            # this one, and a bytearray with views cannot change size.
            grown = bytearray(max(2 * len(arena), used + size, _MIN_ARENA))
            grown[:used] = arena[:used]
            self._arenas[self._current] = arena = grown
        return memoryview(arena)[used : used + size]

    def commit(self, size: int) -> None:
        """Queue the first ``size`` bytes of the last :meth:`reserve`."""
        self._used += size

    def append(self, data: bytes | bytearray | memoryview) -> None:
        """Queue ready-made bytes."""
        size = len(data)
        self.reserve(size)[:] = data
        self.commit(size)

    def take(self) -> memoryview:
        """Everything queued, as a view valid until the next :meth:`take`; then empty."""
        current = self._current
        batch = self._used
        view = memoryview(self._arenas[current])[:batch]
        self._current = 1 - current
        self._used = 0
        self._quiet = self._quiet + 1 if batch < _QUIET_BATCH else 0
        if self._quiet >= _QUIET_RUN:
            # The bulk transfer is over: give its megabytes back. Replacing the arena
            # just taken is safe too, the returned view keeps it alive.
            self._arenas = [a if len(a) <= _MIN_ARENA else bytearray() for a in self._arenas]
        return view
