"""Operations on a legacy CA whose key stayed outside the token that Kakuin cannot complete are
refused before anything is written: one line, exit status 1, every table as it was."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from ca.service import CAContext
from hsm import TokenError
from tests.lifecycle.conftest import run_cli
from tests.lifecycle.oldca import make_old_ca
from tests.unchanged import snapshot

NAME = "pref-chiba"
TABLES = ("authorities", "key_generations", "certificates", "crl_scopes", "crl_published")


@pytest.fixture(scope="module")
def external(small_ctx: Callable[[], CAContext], tmp_path_factory: pytest.TempPathFactory) -> CAContext:
    """A small CA with a legacy authority imported without its key, its own CRL served."""
    ctx = small_ctx()
    old = make_old_ca(tmp_path_factory.mktemp("old") / "ca", "Chiba Prefectural CA")
    old.issue("good")
    old.gencrl()
    result = run_cli(
        ctx, "import-legacy", "--authority", NAME, "--ca-cert", str(old.ca_pem),
        "--index", str(old.index), "--crl", str(old.crl),
    )  # fmt: skip
    assert result.exit_code == 0 and "key outside the token" in result.stdout, result.output
    return ctx


def _one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("kakuin: error:")]
    assert len(lines) == 1, stderr
    return lines[0]


def test_terminating_an_authority_whose_key_is_outside_the_token_is_refused(
    external: CAContext, tmp_path: Path
) -> None:
    before = snapshot(external.engine, *TABLES)
    result = run_cli(external, "ca", "terminate", NAME, "--yes")
    assert result.exit_code == 1, result.output
    error = _one_error_line(result.stderr)
    assert f"{NAME}'s CA key is outside the token" in error and "import-legacy --crl" in error, error
    assert "terminated" not in result.stdout
    assert snapshot(external.engine, *TABLES) == before
    assert external.store.authority(NAME).state == "legacy"


def test_terminating_an_authority_whose_key_the_token_lost_is_refused(
    small_ctx: Callable[[], CAContext],
) -> None:
    ctx = small_ctx()
    ctx.token.destroy(ctx.authorities.get("lgpki-org").generation.key_label)
    before = snapshot(ctx.engine, *TABLES)
    result = run_cli(ctx, "ca", "terminate", "lgpki-org", "--yes")
    assert result.exit_code == 3, result.output
    assert "key labelled 'lgpki-org-g1'" in _one_error_line(result.stderr), result.stderr
    assert "terminated" not in result.stdout
    assert snapshot(ctx.engine, *TABLES) == before


def _blocked(tmp_path: Path) -> Path:
    """A path under a plain file: nothing can be written there."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    return blocker / "out"


def test_a_rollover_whose_files_cannot_be_written_is_not_started(
    small_ctx: Callable[[], CAContext], tmp_path: Path
) -> None:
    ctx = small_ctx()
    out = _blocked(tmp_path)
    before = snapshot(ctx.engine, *TABLES, "key_ceremonies")
    result = run_cli(ctx, "ca", "rollover", "lgpki-org", "--out-dir", str(out))
    assert result.exit_code == 2, result.output
    assert str(out.parent) in _one_error_line(result.stderr), result.stderr
    assert "rolled over" not in result.stdout
    assert snapshot(ctx.engine, *TABLES, "key_ceremonies") == before
    with pytest.raises(TokenError):  # no key of a second generation either
        ctx.token.public_info("lgpki-org-g2")


def test_cross_certification_files_that_cannot_be_written_change_nothing(
    lgpki: CAContext, tmp_path: Path
) -> None:
    out = _blocked(tmp_path)
    before = snapshot(lgpki.engine, *TABLES, "cross_certificates")
    for args in (
        ("cross-certify", "issue", "bridge-to-org", "--out", str(out)),
        ("cross-certify", "csr", "--authority", "lgpki-bridge", "--out", str(out)),
    ):
        result = run_cli(lgpki, *args)
        assert result.exit_code == 2, (args, result.output)
        assert str(out.parent) in _one_error_line(result.stderr), result.stderr
        assert result.stdout == ""
    assert snapshot(lgpki.engine, *TABLES, "cross_certificates") == before
