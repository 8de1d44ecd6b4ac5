"""The short fuzz run in `make test`: every target replays its corpus, then reads a
bounded number of fresh inputs made by its structure-aware mutator (a fixed seed, so a
failure reproduces). The long run is `make fuzz` (tests/fuzz/__main__.py, atheris).

FUZZ_SHORT_INPUTS sets the fresh inputs per target (FUZZ_SEED the seed)."""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Iterator

import pytest

from tests.fuzz.mutators import Mutation
from tests.fuzz.seeds import CORPUS
from tests.fuzz.targets import (
    Target,
    corpus_files,
    enter_sandbox,
    names,
    sandbox,
    targets,
)

FRESH_INPUTS = int(os.environ.get("FUZZ_SHORT_INPUTS", "400"))
SEED = int(os.environ.get("FUZZ_SEED", "12"))
MAX_SIZE = 1 << 16


@pytest.fixture
def quiet() -> Iterator[None]:
    """Rejections log; a run of thousands needs none of it."""
    logging.disable(logging.CRITICAL)
    yield
    logging.disable(logging.NOTSET)


def _target(name: str, monkeypatch: pytest.MonkeyPatch) -> Target:
    target = targets()[name]
    if target.setup is enter_sandbox:
        monkeypatch.chdir(sandbox())
    return target


def _run(target: Target, data: bytes, origin: str) -> None:
    try:
        target.run(data)
    except BaseException as exc:
        raise AssertionError(
            f"{target.name}: {origin} raised {type(exc).__name__}: {exc}\n"
            f"input ({len(data)} bytes): {data[:4096].hex()}"
        ) from exc


@pytest.mark.parametrize("name", names())
def test_the_corpus_replays(name: str, monkeypatch: pytest.MonkeyPatch, quiet: None) -> None:
    files = list(corpus_files(CORPUS / name))
    assert files, f"no corpus for {name}: python -m tests.fuzz seed"
    target = _target(name, monkeypatch)
    for path in files:
        _run(target, path.read_bytes(), f"corpus file {path.name}")


@pytest.mark.parametrize("name", names())
def test_fresh_inputs(name: str, monkeypatch: pytest.MonkeyPatch, quiet: None) -> None:
    target = _target(name, monkeypatch)
    rng = random.Random(f"{SEED}:{name}")
    pool = [path.read_bytes() for path in corpus_files(CORPUS / name)]
    seeds = len(pool)
    for number in range(FRESH_INPUTS):
        child = target.mutate(rng.choice(pool), Mutation(rng, MAX_SIZE))
        _run(target, child, f"fresh input {number} (FUZZ_SEED={SEED})")
        if rng.random() < 0.25:  # mutations build on mutations, as in the long run
            pool.append(child)
            if len(pool) > seeds + 64:
                del pool[rng.randrange(seeds, len(pool))]
