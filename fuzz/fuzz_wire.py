"""Fuzz the SSH data-type reader (RFC 4251 §5) with every read sequence."""

from __future__ import annotations

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from _harness import expect_only_our_errors, main

from trioport.sshproto.wire import Reader

_READS = ("byte", "boolean", "uint32", "uint64", "string", "text", "mpint", "name_list")


def _parse(data: bytes) -> None:
    if not data:
        return
    # The first byte picks a sequence of reads, so the fuzzer explores them all.
    plan = data[0]
    r = Reader(data[1:])
    for i in range(8):
        getattr(r, _READS[(plan >> i) % len(_READS)])()
    r.end()


def TestOneInput(data: bytes) -> None:
    expect_only_our_errors(_parse, data)


if __name__ == "__main__":
    main(TestOneInput, "wire", instrument=("trioport",))
