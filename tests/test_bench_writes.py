"""`make bench` leaves the tree as it was: `python -m bench.ra` prints its table and rewrites
docs/performance.md only with --write-docs. The measurement itself (minutes of load) is replaced
by fixed rows here; what is checked is the file a run leaves behind."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

import bench.ra


def fixed_rows(_args: object, database: str, client_counts: list[int]) -> list[list[object]]:
    nan = float("nan")
    return [
        [database, f"RA end to end, {client_counts[0]} clients", 120.0, *([1.0] * 7), 0],
        [database, "peer: Issuer.issue in-process, 1 thread", 240.0, *([nan] * 7), 0],
    ]


@pytest.fixture()
def tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of docs/performance.md in a stand-in checkout."""
    (tmp_path / "docs").mkdir()
    original = (Path(bench.ra.__file__).resolve().parent.parent / "docs" / "performance.md").read_text()
    (tmp_path / "docs" / "performance.md").write_text(original, encoding="utf-8")
    monkeypatch.setattr(bench.ra, "ROOT", tmp_path)
    monkeypatch.setattr(bench.ra, "measure", fixed_rows)
    return tmp_path / "docs" / "performance.md"


def run(monkeypatch: pytest.MonkeyPatch, *args: str) -> None:
    monkeypatch.setattr(sys, "argv", ["python -m bench.ra", "--databases", "sqlite", "--clients", "1", *args])
    bench.ra.main()


def test_a_plain_run_only_prints(
    tree: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    before = tree.read_bytes()
    run(monkeypatch)
    printed = capsys.readouterr().out
    assert "## Registration API" in printed and "sqlite: best 120 applications/s" in printed
    assert "written to" not in printed
    assert tree.read_bytes() == before


def test_write_docs_replaces_the_section(
    tree: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    before = tree.read_text(encoding="utf-8")
    run(monkeypatch, "--write-docs")
    assert f"written to {tree}" in capsys.readouterr().out
    after = tree.read_text(encoding="utf-8")
    assert after.count("## Registration API") == 1
    assert "sqlite: best 120 applications/s" in after
    # The sections before it are untouched.
    assert after.split("## Registration API")[0] == before.split("## Registration API")[0]
