"""Dual control of CA key operations (issue 14, item 5), through the real ``kakuin`` command: with
``KAKUIN_DUAL_CONTROL=true`` a rollover, termination or new authority is a request one named
operator makes and a second approves; nothing else changes until then. Checked as an operator
sees it: ``kakuin ca show``, the token's keys (``kakuin hsm keys``), ``kakuin audit``,
``kakuin ca ceremony``, one error line and the exit status."""

from __future__ import annotations

import getpass
import re
import sqlite3
import subprocess
import uuid
from pathlib import Path

import pytest

from tests.test_cli import Cli, cli_env, one_error_line

ON = {"KAKUIN_DUAL_CONTROL": "true"}


@pytest.fixture(scope="module")
def home(softhsm: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Cli:
    """A Kakuin whose first `kakuin init` runs with dual control on: the bootstrap is exempt (there
    is no authority yet, so nobody to approve), and the hierarchy is created at once."""
    path = tmp_path_factory.mktemp("dual-control")
    cli = Cli(path, cli_env(path, f"dc-{uuid.uuid4().hex[:10]}"))
    result = cli.run("init", env={**cli.env, **ON})
    assert result.returncode == 0, result.stderr
    assert "created authorities: jpki-sign" in result.stdout
    return cli


def run(
    cli: Cli, *args: str, operator: str | None = None, dual: bool = True
) -> subprocess.CompletedProcess[str]:
    env = {**cli.env, **(ON if dual else {})}
    if operator is not None:
        env["KAKUIN_OPERATOR"] = operator
    return cli.run(*args, env=env)


def ok(
    cli: Cli, *args: str, operator: str | None = None, dual: bool = True
) -> subprocess.CompletedProcess[str]:
    result = run(cli, *args, operator=operator, dual=dual)
    assert result.returncode == 0, (args, result.stderr)
    return result


def generations(cli: Cli, name: str) -> list[str]:
    shown = ok(cli, "ca", "show", name).stdout
    return re.findall(r"^key (g\d+):", shown, re.M)


def token_labels(cli: Cli) -> set[str]:
    return {line.split("\t")[0] for line in ok(cli, "hsm", "keys").stdout.splitlines()}


def request_id(result: subprocess.CompletedProcess[str]) -> int:
    match = re.match(r"request #(\d+): ", result.stdout)
    assert match, result.stdout
    return int(match.group(1))


def approval(cli: Cli, number: int) -> tuple[object, ...]:
    return cli.rows(f"SELECT state, requested_by, approved_by FROM ca_approvals WHERE id = {number}")[0]


def events(cli: Cli, action: str) -> list[tuple[object, ...]]:
    return cli.rows(
        f"SELECT actor, authority, detail FROM audit_events WHERE action = '{action}' ORDER BY id"
    )


def test_dual_control_off_acts_at_once(home: Cli) -> None:
    before = len(home.rows("SELECT id FROM ca_approvals"))
    result = ok(home, "ca", "rollover", "jpki-auth", dual=False)
    assert result.stdout.startswith("rolled over jpki-auth: generation 1 -> 2")
    assert generations(home, "jpki-auth") == ["g1", "g2"]
    assert "jpki-auth-g2" in token_labels(home)
    assert len(home.rows("SELECT id FROM ca_approvals")) == before
    assert [e[0] for e in events(home, "authority.rollover") if e[1] == "jpki-auth"] == [
        f"cli:{getpass.getuser()}"
    ]


def test_a_key_operation_needs_a_named_operator(home: Cli) -> None:
    line = one_error_line(run(home, "ca", "rollover", "lgpki-app"), 1)
    assert "dual control is on" in line and "--operator" in line
    assert generations(home, "lgpki-app") == ["g1"]
    assert home.rows("SELECT id FROM ca_approvals WHERE authority = 'lgpki-app'") == []


def test_rollover_is_requested_then_approved_by_a_second_operator(home: Cli) -> None:
    request = ok(home, "--operator", "alice", "ca", "rollover", "lgpki-org")
    number = request_id(request)
    assert f"kakuin --operator NAME approval approve {number}" in request.stdout
    assert len(request.stdout.strip().splitlines()) == 1
    # Nothing but the request: no key in the token, no generation, no certificate.
    assert generations(home, "lgpki-org") == ["g1"]
    assert "lgpki-org-g2" not in token_labels(home)
    assert approval(home, number) == ("pending", "cli:alice", None)
    assert [e[0] for e in events(home, "approval.request") if f'"approval": {number}' in str(e[2])] == [
        "cli:alice"
    ]
    listed = ok(home, "approval", "list").stdout
    assert re.search(rf"#{number}\s+pending\s+authority.rollover\s+lgpki-org\s+cli:alice", listed)

    # The requester cannot approve, not even spelt otherwise.
    for same in ("alice", "ALICE"):
        line = one_error_line(run(home, "approval", "approve", str(number), operator=same), 1)
        assert "a second operator must decide it" in line and "nothing changed" in line
    assert approval(home, number) == ("pending", "cli:alice", None)
    assert generations(home, "lgpki-org") == ["g1"]
    assert "lgpki-org-g2" not in token_labels(home)
    assert not [e for e in events(home, "approval.approve") if f'"approval": {number}' in str(e[2])]

    done = ok(home, "approval", "approve", str(number), operator="bob")
    assert "rolled over lgpki-org: generation 1 -> 2" in done.stdout
    assert generations(home, "lgpki-org") == ["g1", "g2"]
    assert "lgpki-org-g2" in token_labels(home)
    assert approval(home, number) == ("executed", "cli:alice", "cli:bob")
    approved = [e for e in events(home, "approval.approve") if f'"approval": {number}' in str(e[2])]
    assert approved and approved[0][0] == "cli:bob" and '"requested_by": "cli:alice"' in str(approved[0][2])
    both = f"cli:bob approving #{number} of cli:alice"
    assert [e[0] for e in events(home, "authority.rollover") if e[1] == "lgpki-org"] == [both]
    assert [e[0] for e in events(home, "authority.key_generation") if e[1] == "lgpki-org"][-1] == both
    ceremony = ok(home, "ca", "ceremony", "lgpki-org").stdout
    g2 = ceremony[ceremony.index("lgpki-org g2") :]
    assert f"by {both}; present: alice, bob" in g2
    # Decided once: a second approval is refused.
    line = one_error_line(run(home, "approval", "approve", str(number), operator="carol"), 1)
    assert "is executed by cli:bob" in line


def test_a_rejected_request_never_runs(home: Cli) -> None:
    number = request_id(ok(home, "ca", "rollover", "lgpki-bridge", operator="alice"))
    result = ok(home, "approval", "reject", str(number), "--reason", "not this year", operator="bob")
    assert f"rejected request #{number}" in result.stdout
    assert approval(home, number) == ("rejected", "cli:alice", "cli:bob")
    line = one_error_line(run(home, "approval", "approve", str(number), operator="carol"), 1)
    assert "is rejected" in line
    assert generations(home, "lgpki-bridge") == ["g1"]
    assert "lgpki-bridge-g2" not in token_labels(home)
    rejected = [e for e in events(home, "approval.reject") if f'"approval": {number}' in str(e[2])]
    assert rejected[0][0] == "cli:bob" and "not this year" in str(rejected[0][2])


def test_an_expired_request_is_refused(home: Cli) -> None:
    number = request_id(ok(home, "ca", "rollover", "operator", operator="alice"))
    with sqlite3.connect(home.home / "kakuin.db") as db:
        db.execute(f"UPDATE ca_approvals SET expires_at = '2000-01-01 00:00:00.000000' WHERE id = {number}")
    assert re.search(rf"#{number}\s+expired", ok(home, "approval", "list").stdout)
    line = one_error_line(run(home, "approval", "approve", str(number), operator="bob"), 1)
    assert f"request #{number} is expired" in line
    assert generations(home, "operator") == ["g1"]
    assert "operator-g2" not in token_labels(home)
    # The next request marks it expired for good (and may be made: the old one no longer waits).
    again = request_id(ok(home, "ca", "rollover", "operator", operator="alice"))
    assert approval(home, number)[0] == "expired"
    assert [e for e in events(home, "approval.expire") if f'"approval": {number}' in str(e[2])]
    ok(home, "approval", "reject", str(again), "--reason", "test over", operator="alice")  # withdrawn


def test_an_operation_that_became_impossible_is_refused_at_approval(home: Cli) -> None:
    number = request_id(ok(home, "ca", "terminate", "lgpki-app", "--yes", "--reason", "x", operator="alice"))
    assert "state:         active" in ok(home, "ca", "show", "lgpki-app").stdout
    ok(home, "ca", "terminate", "lgpki-app", "--yes", dual=False)  # meanwhile, without dual control
    audit_before = home.rows("SELECT count(*) FROM audit_events")[0]
    line = one_error_line(run(home, "approval", "approve", str(number), operator="bob"), 1)
    assert "cannot run now" in line and "already terminated" in line and "nothing changed" in line
    assert approval(home, number) == ("pending", "cli:alice", None)
    assert home.rows("SELECT count(*) FROM audit_events")[0] == audit_before


def test_a_new_authority_after_the_first_run_is_a_request(home: Cli, tmp_path: Path) -> None:
    hierarchy = Path(__file__).resolve().parents[1] / "config" / "hierarchy.toml"
    extended = tmp_path / "hierarchy.toml"
    extended.write_text(
        hierarchy.read_text(encoding="utf-8")
        + """
[authorities.pref-test]
title = "A prefectural test CA"
subject = [["C", "JP"], ["O", "Kakuin"], ["CN", "Prefectural Test CA"]]
string_type = "utf8"
parent = ""
key = "ec-p256"
validity_years = 5
restricted = false
partitioning = "shards:1"
""",
        encoding="utf-8",
    )
    cli = Cli(home.home, {**home.env, "KAKUIN_HIERARCHY": str(extended)})
    result = ok(cli, "init", "--witness", "Sato Taro", operator="alice")
    number = request_id(result)
    assert "authority.create" in result.stdout and "already initialized" not in result.stdout
    assert "pref-test-g1" not in token_labels(cli)
    assert "pref-test" not in ok(cli, "ca", "list").stdout
    ok(cli, "approval", "approve", str(number), operator="bob")
    assert "pref-test" in ok(cli, "ca", "list").stdout
    ceremony = ok(cli, "ca", "ceremony", "pref-test").stdout
    assert f"by cli:bob approving #{number} of cli:alice; present: alice, bob, Sato Taro" in ceremony


def test_a_wrong_setting_is_one_line(home: Cli) -> None:
    result = home.run("ca", "rollover", "lgpki-app", env={**home.env, "KAKUIN_DUAL_CONTROL": "maybe"})
    line = one_error_line(result, 2)
    assert "ca.dual_control" in line and "KAKUIN_DUAL_CONTROL" in line
