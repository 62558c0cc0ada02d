"""Fuzzing in the suite (quality.md; issue 15, item 4).

Every file of every corpus (``tests/fuzz/corpus/TARGET``: the seeds of make_seeds.py and every
input that once crashed) replays through its target, then atheris fuzzes each target briefly in a
child process (``python -m tests.fuzz.run TARGET --seconds N``), two at a time: about 20 s for all
of them on a 2-core machine (``KAKUIN_FUZZ_SECONDS``, default 1 per target; 0 skips it). A crash
fails the test with the exception and the saved input (``tests/fuzz/crashes/``, gitignored):
tests/fuzz/README.md says how it becomes a corpus entry and a regression test.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.fuzz.run import CORPUS, CRASHES, run_one
from tests.fuzz.targets import TARGETS

SECONDS = int(os.environ.get("KAKUIN_FUZZ_SECONDS", "1"))
CASES = [(name, path) for name in sorted(TARGETS) for path in sorted((CORPUS / name).glob("*"))]


@pytest.mark.parametrize(("target", "path"), CASES, ids=[f"{name}/{path.name}" for name, path in CASES])
def test_the_corpus_replays(target: str, path: Path) -> None:
    TARGETS[target](path.read_bytes())


def test_every_target_has_seeds() -> None:
    for name in TARGETS:
        assert any((CORPUS / name).glob("seed-*")), (
            f"no seeds for {name}: run python -m tests.fuzz.make_seeds"
        )
    assert {p.name for p in CORPUS.iterdir() if p.is_dir()} == set(TARGETS)


@pytest.fixture(scope="module")
def brief() -> dict[str, tuple[bool, int, str]]:
    if SECONDS <= 0:
        pytest.skip("KAKUIN_FUZZ_SECONDS=0")
    names = sorted(TARGETS)
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = pool.map(lambda name: run_one(name, SECONDS, None, CRASHES), names)
        return dict(zip(names, results, strict=True))


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_fuzzing_finds_no_crash(brief: dict[str, tuple[bool, int, str]], target: str) -> None:
    passed, runs, said = brief[target]
    assert passed, said
    assert runs > 0, said
