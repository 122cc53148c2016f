"""The bytes a connection has queued for the wire, sealed in place.

Packet protection writes each packet straight into a reusable arena instead of
building it from fresh ``bytes``: on the bulk path a fresh 128 KiB buffer per
packet (and a joined batch per flush) costs a page fault per 4 KiB written once
the allocator hands the memory back to the kernel, which was most of a client's
CPU time. Two arenas alternate: :meth:`SendQueue.take` hands the driver what was
written so far and switches to the other arena, so the driver can send that view
while new packets are sealed into the other one.
"""

from __future__ import annotations

__all__ = ["SendQueue"]

#: Arena size on first use, and the smallest one we shrink back to.
_MIN_ARENA = 16 * 1024
#: An arena at least this many times larger than the last batch it carried is
#: replaced by a smaller one (a connection that once moved bulk data and went
#: quiet does not keep megabytes).
_SHRINK_FACTOR = 8


class SendQueue:
    """Outgoing wire bytes in two alternating arenas.

    Writers :meth:`reserve` room at the end, fill it, then :meth:`commit` what they
    used; :meth:`append` does both for ready-made bytes. The driver calls
    :meth:`take` and may use the returned view until its next call of :meth:`take`.
    """

    __slots__ = ("_arenas", "_current", "_used")

    def __init__(self) -> None:
        self._arenas = [bytearray(), bytearray()]
        self._current = 0
        self._used = 0

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
        view = memoryview(self._arenas[current])[: self._used]
        batch = self._used
        self._current = 1 - current
        self._used = 0
        following = self._arenas[self._current]
        if len(following) > _MIN_ARENA and len(following) > _SHRINK_FACTOR * batch:
            self._arenas[self._current] = bytearray(max(_MIN_ARENA, 2 * batch))
        return view
