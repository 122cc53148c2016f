"""The send queue: packets written in place, handed out as views, arenas reused."""

from __future__ import annotations

from trioport.sshproto.sendqueue import SendQueue


def test_queued_bytes_come_out_in_order_and_the_queue_empties() -> None:
    queue = SendQueue()
    assert not queue
    queue.append(b"SSH-2.0-x\r\n")
    view = queue.reserve(5)
    view[:] = b"abcde"
    queue.commit(3)  # only what was committed is queued
    assert len(queue) == 14
    assert bytes(queue.take()) == b"SSH-2.0-x\r\nabc"
    assert not queue
    assert bytes(queue.take()) == b""


def test_a_taken_batch_stays_intact_while_the_next_one_is_written() -> None:
    """The driver sends one batch while packets for the next are sealed."""
    queue = SendQueue()
    queue.append(b"first batch")
    sending = queue.take()
    for _ in range(1000):  # enough to grow the other arena several times
        queue.append(b"x" * 100)
    assert bytes(sending) == b"first batch"
    second = queue.take()
    assert bytes(second) == b"x" * 100_000
    # The first arena is reused only now that the driver asked again.
    queue.append(b"third")
    assert bytes(queue.take()) == b"third"
    assert bytes(second) == b"x" * 100_000


def test_growing_while_the_driver_still_holds_a_view_of_the_arena() -> None:
    queue = SendQueue()
    queue.append(b"a" * 10)
    held = queue.take()
    queue.take()  # back to the first arena, whose old view the driver still holds
    queue.append(b"b" * 100_000)  # needs a bigger arena: a new one, not a resize
    assert bytes(queue.take()) == b"b" * 100_000
    assert bytes(held) == b"a" * 10


def test_a_quiet_connection_gives_back_the_memory_of_its_bulk_batches() -> None:
    queue = SendQueue()
    for _ in range(2):
        queue.append(bytes(4 << 20))
        queue.take()
    arenas_after_bulk = sum(len(a) for a in queue._arenas)
    assert arenas_after_bulk >= 8 << 20
    for _ in range(4):
        queue.append(b"keepalive")
        queue.take()
    assert sum(len(a) for a in queue._arenas) <= 64 * 1024
