"""The shipped deployment files are checked by the tools that will read them: the alert rules by
``promtool check rules`` and their unit tests by ``promtool test rules`` (Debian ``prometheus``),
the scrape configuration by ``promtool check config``, the systemd unit by ``systemd-analyze
verify`` (Debian ``systemd``). The Makefile installs both, so ``make test`` runs these."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(
            f"{name} is not installed (Debian package {'prometheus' if name == 'promtool' else 'systemd'})"
        )
    return path


def run(*argv: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=cwd)


def test_alert_rules_pass_promtool_check() -> None:
    rules = sorted(str(p) for p in (DEPLOY / "prometheus").glob("*.rules.yml"))
    assert rules
    result = run(tool("promtool"), "check", "rules", *rules)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_alert_rules_unit_tests_pass() -> None:
    tests = sorted(str(p) for p in (DEPLOY / "prometheus" / "tests").glob("*.yml"))
    assert tests
    result = run(tool("promtool"), "test", "rules", *tests)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout and "FAILED" not in result.stdout


def test_a_wrong_expectation_fails_the_rule_tests(tmp_path: Path) -> None:
    """The unit tests can fail: a certificate alert expected where none fires is reported."""
    source = DEPLOY / "prometheus" / "tests" / "kakuin.rules.test.yml"
    text = source.read_text().replace("../kakuin.rules.yml", str(DEPLOY / "prometheus" / "kakuin.rules.yml"))
    broken = text.replace("expires in 6d 0h 0m 0s", "expires in 5d 0h 0m 0s")
    assert broken != text
    (tmp_path / "broken.yml").write_text(broken)
    result = run(tool("promtool"), "test", "rules", str(tmp_path / "broken.yml"))
    assert result.returncode != 0 and "FAILED" in result.stdout + result.stderr, result.stdout


def test_scrape_configuration_passes_promtool() -> None:
    result = run(
        tool("promtool"), "check", "config", "--syntax-only", str(DEPLOY / "prometheus" / "prometheus.yml")
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _unit_with_this_venv(tmp_path: Path, name: str) -> Path:
    """``systemd-analyze verify`` checks that ExecStart exists: the unit names /opt/kakuin, so
    it is verified with this checkout's ``kakuin`` script in its place (everything else as shipped)."""
    text = (DEPLOY / "systemd" / name).read_text()
    assert "ExecStart=/opt/kakuin/.venv/bin/kakuin up" in text
    here = Path(sys.executable).parent / "kakuin"
    unit = tmp_path / name
    unit.write_text(text.replace("/opt/kakuin/.venv/bin/kakuin", str(here)))
    return unit


def test_systemd_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    units = sorted((DEPLOY / "systemd").glob("*.service"))
    assert units
    for source in units:
        unit = _unit_with_this_venv(tmp_path, source.name)
        result = run(tool("systemd-analyze"), "verify", str(unit))
        assert result.returncode == 0 and result.stderr.strip() == "", (source.name, result.stderr)


def test_an_unknown_directive_is_caught(tmp_path: Path) -> None:
    unit = _unit_with_this_venv(tmp_path, "kakuin.service")
    unit.write_text(unit.read_text().replace("ProtectHome=yes", "ProtectHome=yes\nProtectHom=yes"))
    result = run(tool("systemd-analyze"), "verify", str(unit))
    assert "Unknown key" in result.stderr and "ProtectHom" in result.stderr, result.stderr


def test_the_unit_runs_unprivileged_with_a_private_data_directory() -> None:
    settings = {}
    for line in (DEPLOY / "systemd" / "kakuin.service").read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            settings.setdefault(key, value)
    assert settings["User"] == "kakuin"
    assert settings["StateDirectory"] == "kakuin" and settings["StateDirectoryMode"] == "0700"
    assert settings["Environment"] == "KAKUIN_HOME=/var/lib/kakuin"
    assert settings["NoNewPrivileges"] == "yes" and settings["ProtectSystem"] == "strict"
    assert settings["ProtectHome"] == "yes" and settings["PrivateTmp"] == "yes"
    assert "/var/lib/kakuin" in settings["ReadWritePaths"].split()
    assert set(settings["RestrictAddressFamilies"].split()) == {"AF_UNIX", "AF_INET", "AF_INET6"}
    assert settings["KillMode"] == "mixed"
    # kakuin up gives each server 10 s after SIGTERM: systemd must wait longer than that.
    assert int(settings["TimeoutStopSec"]) > 20
