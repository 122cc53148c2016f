"""Replay every fuzz target's seed corpus, plus deterministic junk, under pytest.

So CI runs every target on every change even without a fuzzing budget. The
invariant is the harness's: our errors only, never another exception.

Crashes the fuzzers found are recorded in ``fuzz/crashes/<target>/`` with a
``KnownBug`` entry in ``fuzz/_harness.py``; each is replayed here, unfiltered, as
``xfail(strict=True)``: it must still crash with the recorded exception, and once
the library is fixed the test fails so the entry is removed.
"""

from __future__ import annotations

import importlib.util
import math
import pathlib
import random
import resource
import signal
import subprocess
import sys

import pytest

FUZZ = pathlib.Path(__file__).resolve().parent.parent / "fuzz"
TARGETS = sorted(p for p in FUZZ.glob("fuzz_*.py"))
CRASHES = sorted(p for p in FUZZ.glob("crashes/*/*") if p.is_file())


def _load(path: pathlib.Path):
    sys.path.insert(0, str(FUZZ))
    try:
        spec = importlib.util.spec_from_file_location(f"fuzz_target_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(FUZZ))


def test_every_target_has_a_seed_corpus() -> None:
    assert TARGETS
    for path in TARGETS:
        corpus = FUZZ / "corpus" / path.stem.removeprefix("fuzz_")
        assert corpus.is_dir() and any(corpus.iterdir()), f"{path.name} has no seeds"


@pytest.mark.parametrize("path", TARGETS, ids=lambda p: p.stem)
def test_target_survives_its_corpus_and_junk(path: pathlib.Path) -> None:
    module = _load(path)
    corpus = FUZZ / "corpus" / path.stem.removeprefix("fuzz_")
    inputs = [p.read_bytes() for p in sorted(corpus.iterdir()) if p.is_file()]
    rng = random.Random(path.stem)
    for seed in list(inputs):
        # Truncations and single-byte flips of each seed.
        for cut in range(0, len(seed), max(1, len(seed) // 16)):
            inputs.append(seed[:cut])
        for _ in range(32):
            if seed:
                i = rng.randrange(len(seed))
                inputs.append(seed[:i] + bytes([seed[i] ^ (1 << rng.randrange(8))]) + seed[i + 1 :])
    inputs += [rng.randbytes(rng.randrange(200)) for _ in range(200)]
    for data in inputs:
        module.TestOneInput(data)


def _known_bugs():  # type: ignore[no-untyped-def]
    sys.path.insert(0, str(FUZZ))
    try:
        import _harness

        return _harness.KNOWN_BUGS
    finally:
        sys.path.remove(str(FUZZ))


def test_every_recorded_crash_is_a_known_bug_and_back() -> None:
    recorded = {(p.parent.name, p.name) for p in CRASHES}
    known = {(bug.target, bug.crash) for bug in _known_bugs()}
    assert recorded == known


def _crash_params() -> list[object]:
    bugs = {(bug.target, bug.crash): bug for bug in _known_bugs()}
    params = []
    for path in CRASHES:
        bug = bugs.get((path.parent.name, path.name))
        if bug is None:
            continue  # the test above fails
        mark = pytest.mark.xfail(strict=True, raises=bug.exception, reason=bug.reason)
        params.append(pytest.param(path, marks=mark, id=f"{bug.target}/{bug.crash}"))
    return params


def _replay_with_cpu_limit(path: pathlib.Path, seconds: float) -> None:
    """Replay a recorded hang in a child limited to ``seconds`` of CPU.

    Raises:
        TimeoutError: the child used up its CPU and was killed: still hanging.
    """

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_CPU, (math.ceil(seconds), math.ceil(seconds) + 1))

    code = (
        "import importlib, sys; sys.path.insert(0, sys.argv[1]);"
        " target = importlib.import_module('fuzz_' + sys.argv[2]);"
        " target.check(open(sys.argv[3], 'rb').read())"
    )
    child = subprocess.run(
        [sys.executable, "-c", code, str(FUZZ), path.parent.name, str(path)],
        preexec_fn=limit,
        capture_output=True,
        check=False,
    )
    if child.returncode in (-signal.SIGXCPU, -signal.SIGKILL):
        raise TimeoutError(f"{path.name} still runs past {seconds} s of CPU")
    assert child.returncode == 0, child.stderr.decode()[-2000:]


if CRASHES:  # an empty parametrize would be reported as a skip

    @pytest.mark.parametrize("path", _crash_params())
    def test_recorded_crash_still_crashes(path: pathlib.Path) -> None:
        bug = {(b.target, b.crash): b for b in _known_bugs()}[(path.parent.name, path.name)]
        if bug.cpu_seconds is not None:
            _replay_with_cpu_limit(path, bug.cpu_seconds)
            return
        module = _load(FUZZ / f"fuzz_{path.parent.name}.py")
        module.check(path.read_bytes())
