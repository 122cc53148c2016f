"""Shared plumbing for the atheris fuzz targets in this folder.

Each ``fuzz_<name>.py`` defines ``TestOneInput(data: bytes)`` over a real trioport
parser and calls :func:`main`. The invariant every target checks (h11's): the input
parses, or it raises one of *our* errors (a :class:`~trioport.errors.TrioportError`,
such as ``DecodeError`` or ``RemoteProtocolError``); anything else is a bug and
crashes the fuzzer. Inputs are fed whole and, where the parser is incremental,
byte by byte.

``python fuzz/fuzz_wire.py -max_total_time=30`` fuzzes with atheris, starting from
``fuzz/corpus/wire/``; ``tests/test_fuzz_corpora.py`` replays every corpus under
pytest so CI runs every target even where atheris is absent.
"""

from __future__ import annotations

import pathlib
import sys
from collections.abc import Callable

from trioport.errors import TrioportError

CORPUS = pathlib.Path(__file__).resolve().parent / "corpus"

#: What a parser may raise on hostile input. Everything else is a crash.
EXPECTED_ERRORS: tuple[type[BaseException], ...] = (TrioportError,)


def expect_only_our_errors(fn: Callable[[bytes], object], data: bytes) -> None:
    """Run ``fn(data)``; swallow our own errors, let anything else escape."""
    try:
        fn(data)
    except EXPECTED_ERRORS:
        pass


def main(target: Callable[[bytes], None], name: str) -> None:
    """Fuzz ``target`` with atheris, seeded from ``corpus/<name>/``."""
    import atheris  # only needed when fuzzing, not when replaying

    corpus = CORPUS / name
    corpus.mkdir(parents=True, exist_ok=True)
    args = list(sys.argv)
    if not any(not a.startswith("-") for a in args[1:]):
        args.append(str(corpus))
    atheris.instrument_all()  # everything imported so far, trioport included
    atheris.Setup(args, target)
    atheris.Fuzz()
