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

Known bugs. A crash a target found is recorded, not fixed here: its input goes to
``crashes/<target>/`` and a :class:`KnownBug` in :data:`KNOWN_BUGS` names the
exception and the function that raised it. ``TestOneInput`` (built by
:func:`tolerate_known_bugs`) lets exactly that crash pass, so fuzzing can go on
past it and CI stays green, while ``tests/test_fuzz_corpora.py`` replays each
recorded crash through the unfiltered ``check`` as an ``xfail(strict=True)`` test:
once the library is fixed that test passes, fails the build, and the entry (and
the filter with it) must be removed.
"""

from __future__ import annotations

import gc
import pathlib
import sys
import types
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from trioport.errors import TrioportError

CORPUS = pathlib.Path(__file__).resolve().parent / "corpus"
CRASHES = pathlib.Path(__file__).resolve().parent / "crashes"
DICTS = pathlib.Path(__file__).resolve().parent / "dicts"

#: What a parser may raise on hostile input. Everything else is a crash.
EXPECTED_ERRORS: tuple[type[BaseException], ...] = (TrioportError,)


def expect_only_our_errors(fn: Callable[[bytes], object], data: bytes) -> None:
    """Run ``fn(data)``; swallow our own errors, let anything else escape."""
    try:
        fn(data)
    except EXPECTED_ERRORS:
        pass


def main(
    target: Callable[[bytes], None], name: str, *, instrument: tuple[str, ...] | None = None
) -> None:
    """Fuzz ``target`` with atheris, seeded from ``corpus/<name>/``.

    Args:
        target: ``TestOneInput``.
        name: the corpus (and dictionary) name.
        instrument: module name prefixes to instrument for coverage (say
            ``("trioport",)``); ``None`` instruments everything imported, which
            costs about 17 s at start-up.
    """
    import atheris  # only needed when fuzzing, not when replaying

    corpus = CORPUS / name
    corpus.mkdir(parents=True, exist_ok=True)
    args = list(sys.argv)
    if not any(not a.startswith("-") for a in args[1:]):
        args.append(str(corpus))
    dictionary = DICTS / f"{name}.dict"
    if dictionary.is_file() and not any(a.startswith("-dict=") for a in args):
        args.insert(1, f"-dict={dictionary}")
    if instrument is None:
        atheris.instrument_all()  # everything imported so far, trioport included
    else:
        _instrument_modules(atheris, instrument)
    atheris.Setup(args, target)
    atheris.Fuzz()


def _instrument_modules(atheris: Any, prefixes: tuple[str, ...]) -> None:
    """Instrument every loaded function whose module name starts with a prefix."""
    files: set[str] = set()
    folders: list[str] = []
    for module_name, module in list(sys.modules.items()):
        path = getattr(module, "__file__", None)
        if path and any(module_name == p or module_name.startswith(p + ".") for p in prefixes):
            files.add(path)
            if path.endswith("__init__.py"):
                folders.append(str(pathlib.Path(path).parent) + "/")
    patched: dict[types.CodeType, types.CodeType] = {}  # original -> instrumented
    done: set[types.CodeType] = set()
    for obj in gc.get_objects():
        if not isinstance(obj, types.FunctionType) or obj.__code__ in done:
            continue
        code = obj.__code__
        if code.co_filename in files or code.co_filename.startswith(tuple(folders)):
            if code not in patched:
                atheris.instrument_func(obj)
                patched[code] = obj.__code__
                done.add(obj.__code__)
            else:
                obj.__code__ = patched[code]
    sys.stderr.write(f"INFO: instrumented {len(patched)} functions of {', '.join(prefixes)}\n")


@dataclass(frozen=True)
class KnownBug:
    """A crash found by a target and recorded in ``crashes/<target>/<crash>``."""

    target: str
    crash: str
    #: The exception class, and ``"file.py:function"`` of the frame that raised it.
    exception: type[BaseException]
    where: str
    reason: str
    #: For a hang: the CPU seconds the replay gets before it counts as still hanging
    #: (``exception`` is then ``TimeoutError``, which nothing raises in-process).
    cpu_seconds: float | None = None


#: Bugs found and not yet fixed in the library (see the module docstring).
KNOWN_BUGS: tuple[KnownBug, ...] = (
    # Fixed and kept as seeds in corpus/<target>/fixed-*: authfiles marker_without_hosts
    # and tunnel_superscript_digit; keyfiles pkcs8_scrypt_unallocatable,
    # pkcs8_pbkdf2_2e31_iterations and rsa_negative_iqmp; agent add_rsa_negative_iqmp.
)


def _raised_at(exc: BaseException) -> str:
    tb = exc.__traceback__
    if tb is None:
        return ""
    while tb.tb_next is not None:
        tb = tb.tb_next
    code = tb.tb_frame.f_code
    return f"{pathlib.Path(code.co_filename).name}:{code.co_name}"


def known_bug(target: str, exc: BaseException) -> KnownBug | None:
    """The recorded bug ``exc`` is an instance of, if any."""
    for bug in KNOWN_BUGS:
        if bug.target == target and type(exc) is bug.exception and _raised_at(exc) == bug.where:
            return bug
    return None


def tolerate_known_bugs(target: str, check: Callable[[bytes], None]) -> Callable[[bytes], None]:
    """``TestOneInput`` for ``check``: everything escapes except a known, recorded bug."""

    def TestOneInput(data: bytes) -> None:
        try:
            check(data)
        except Exception as exc:
            if known_bug(target, exc) is None:
                raise

    return TestOneInput
