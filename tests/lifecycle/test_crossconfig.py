"""`[cross.NAME]` agreements are validated with the hierarchy at start-up: a wrong value names its
key and the file, before anything touches the token or the database."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from ca.hierarchy import load_hierarchy
from config import ConfigError
from tests.conftest import KAKUIN_SCRIPT, ROOT

DEFAULT = (ROOT / "config" / "hierarchy.toml").read_text(encoding="utf-8")


def load_with(tmp_path: Path, table: str) -> object:
    path = tmp_path / "hierarchy.toml"
    path.write_text(DEFAULT + "\n" + table, encoding="utf-8")
    return load_hierarchy(path)


def test_default_agreements_load() -> None:
    hierarchy = load_hierarchy(ROOT / "config" / "hierarchy.toml")
    assert set(hierarchy.cross) == {"bridge-to-org", "bridge-to-app", "root-to-bridge"}
    assert hierarchy.cross["bridge-to-org"].issuer == "lgpki-bridge"
    assert hierarchy.cross["bridge-to-org"].subject_authority == "lgpki-org"
    assert hierarchy.cross["bridge-to-org"].path_length == 0


@pytest.mark.parametrize(
    ("table", "key", "problem"),
    [
        ('[cross.x]\nissuer = "nope"\n', "cross.x.issuer", "no authority named 'nope'"),
        ('[cross.x]\nissuer = "lgpki-bridge"\ncolour = 1\n', "cross.x.colour", "unknown setting"),
        (
            '[cross.x]\nissuer = "lgpki-bridge"\nsubject_authority = "lgpki-bridge"\n',
            "cross.x.subject_authority",
            "does not cross-certify itself",
        ),
        (
            '[cross.x]\nissuer = "lgpki-bridge"\npolicy_mappings = [["2.5.29.32.0", "1.2.3"]]\n',
            "cross.x.policy_mappings[0]",
            "anyPolicy may not be mapped",
        ),
        (
            '[cross.x]\nissuer = "lgpki-bridge"\npolicies = ["1.2.3"]\npolicy_mappings = [["1.2.4", "1.2.5"]]\n',
            "cross.x.policy_mappings[0]",
            "not among the asserted policies",
        ),
        (
            '[cross.x]\nissuer = "lgpki-bridge"\nsubject_authority = "lgpki-org"\n'
            'policy_mappings = [["1.2.4", "1.2.5"]]\n',
            "cross.x.policy_mappings",
            "one policy domain",
        ),
        (
            '[cross.x]\nissuer = "lgpki-bridge"\npolicies = ["not-an-oid"]\n',
            "cross.x.policies",
            "not a dotted",
        ),
        ('[cross.x]\nissuer = "lgpki-bridge"\npath_length = -1\n', "cross.x.path_length", "non-negative"),
        (
            '[cross.x]\nissuer = "lgpki-bridge"\npermitted_subtrees = [[["Q", "x"]]]\n',
            "cross.x.permitted_subtrees[0]",
            "unknown name attribute",
        ),
        (
            '[cross.x]\nissuer = "lgpki-bridge"\ninhibit_policy_mapping = true\n',
            "cross.x.inhibit_policy_mapping",
            "integer from 0 to 64",
        ),
    ],
)
def test_bad_agreements_name_key_and_file(tmp_path: Path, table: str, key: str, problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_with(tmp_path, table)
    assert caught.value.key == key
    assert caught.value.source == str(tmp_path / "hierarchy.toml")
    assert problem in caught.value.problem


def test_the_cli_stops_with_one_line(tmp_path: Path, softhsm: dict[str, str]) -> None:
    path = tmp_path / "hierarchy.toml"
    path.write_text(DEFAULT + '\n[cross.x]\nissuer = "nope"\n', encoding="utf-8")
    env = {**os.environ, "KAKUIN_HOME": str(tmp_path), "KAKUIN_HIERARCHY": str(path)}
    env.pop("KAKUIN_CONFIG", None)
    result = subprocess.run(
        [str(KAKUIN_SCRIPT), "cross-certify", "list"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"kakuin: error: configuration error: cross.x.issuer in {path}: no authority named 'nope'"
    ]
    assert not (tmp_path / "kakuin.db").exists()  # nothing was touched
