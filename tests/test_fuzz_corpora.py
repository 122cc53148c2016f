"""Replay every fuzz target's seed corpus, plus deterministic junk, under pytest.

So CI runs every target on every change even without a fuzzing budget. The
invariant is the harness's: our errors only, never another exception.
"""

from __future__ import annotations

import importlib.util
import pathlib
import random
import sys

import pytest

FUZZ = pathlib.Path(__file__).resolve().parent.parent / "fuzz"
TARGETS = sorted(p for p in FUZZ.glob("fuzz_*.py"))


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
