"""Key ceremony records (issue 14, item 5): every CA key generation gets a record of who was
present, the token, the key's attributes read back from it and the hashes of the public key and
certificate, signed by the audit key. Checked against tools Kakuin does not use: openssl for the
hashes and the signature, OpenSC's pkcs11-tool for the token's serial number."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.conftest import openssl

KAKUIN = Path(sys.executable).parent / "kakuin"


class Home:
    def __init__(self, home: Path, env: dict[str, str]) -> None:
        self.home = home
        self.env = env

    def run(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(KAKUIN), *args],
            env=env or self.env,
            cwd=self.home,
            capture_output=True,
            text=True,
            timeout=300,
        )

    def ok(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        result = self.run(*args, env=env)
        assert result.returncode == 0, (args, result.stderr)
        return result

    def sql(self, statement: str) -> None:
        import sqlite3

        with sqlite3.connect(self.home / "kakuin.db") as db:
            db.execute(statement)


@pytest.fixture(scope="module")
def initialized(softhsm: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Home:
    home = tmp_path_factory.mktemp("ceremony-home")
    env = {k: v for k, v in os.environ.items() if not k.startswith("KAKUIN_")}
    env.update(
        KAKUIN_HOME=str(home),
        KAKUIN_TOKEN_LABEL=f"cer-{uuid.uuid4().hex[:10]}",
        KAKUIN_DATABASE_URL=f"sqlite:///{home / 'kakuin.db'}",
        KAKUIN_TOKEN_PIN=softhsm["pin"],
        KAKUIN_TOKEN_SO_PIN=softhsm["so_pin"],
        SOFTHSM2_CONF=softhsm["conf"],
    )
    cli = Home(home, env)
    result = cli.ok("init", "--witness", "山田 花子", "--witness", "Sato Taro")
    assert "recorded 7 key ceremonies (present: 山田 花子, Sato Taro)" in result.stderr
    return cli


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_init_records_a_ceremony_per_key(initialized: Home, tmp_path: Path) -> None:
    shown = initialized.ok("ca", "ceremony", "lgpki-app").stdout
    assert shown.startswith("lgpki-app g1  key lgpki-app-g1 (")
    assert re.search(r"recorded:     \S+Z by cli:\S+; present: 山田 花子, Sato Taro", shown)
    assert (
        "key:          always_sensitive=yes extractable=no local=yes never_extractable=yes sensitive=yes"
        in shown
    )
    assert "signature:    valid (audit key " in shown
    # The hashes, recomputed by openssl from the CA certificate Kakuin serves.
    pem = initialized.ok("ca", "cert", "lgpki-app").stdout.encode()
    der = openssl("x509", "-outform", "DER", input=pem, check=True).stdout
    spki = openssl("x509", "-noout", "-pubkey", input=pem, check=True).stdout
    spki_der = openssl("pkey", "-pubin", "-outform", "DER", input=spki, check=True).stdout
    assert f"certificate:  sha256 {sha256(der)}, serial " in shown
    assert f"public key:   sha256 {sha256(spki_der)}" in shown
    # The ceremonies' events were sealed and signed at once: the log verifies with no sealer running.
    assert re.search(r"audit event:  #\d+ \(id \d+, authority\.key_ceremony\)", shown)
    verified = initialized.ok("audit", "verify").stdout
    assert "unsealed:     none" in verified and verified.endswith("audit log verified\n")


def test_token_serial_is_the_one_pkcs11_tool_reads(initialized: Home) -> None:
    tool = shutil.which("pkcs11-tool")
    if tool is None:
        pytest.skip("pkcs11-tool (Debian opensc) is not installed; make test installs it")
    from config import load_settings

    slots = subprocess.run(
        [tool, "--module", load_settings(environ={}).pkcs11_module, "--list-token-slots"],
        env=initialized.env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    label = initialized.env["KAKUIN_TOKEN_LABEL"]
    block = slots[slots.index(f"token label        : {label}") :]
    serial = re.search(r"serial num\s*:\s*(\S+)", block)
    assert serial is not None
    shown = initialized.ok("ca", "ceremony", "jpki-sign").stdout
    assert f"token:        {label} (SoftHSM project SoftHSM v2, serial {serial.group(1)})" in shown


def test_record_verifies_with_openssl_and_a_changed_one_does_not(initialized: Home, tmp_path: Path) -> None:
    key = tmp_path / "audit.pem"
    initialized.ok("audit", "key", "--out", str(key))
    lines = initialized.ok("ca", "ceremony", "operator", "--json").stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith('{"type":"ceremony","signature":"')
    match = re.fullmatch(r'\{"type":"ceremony","signature":"([A-Za-z0-9+/=]+)","ceremony":(.*)\}', lines[0])
    assert match is not None
    (tmp_path / "record").write_bytes(match.group(2).encode())
    (tmp_path / "sig.b64").write_text(match.group(1))
    openssl("base64", "-d", "-A", "-in", str(tmp_path / "sig.b64"), "-out", str(tmp_path / "sig"), check=True)
    verified = openssl(
        "dgst", "-sha256", "-verify", str(key), "-signature", str(tmp_path / "sig"), str(tmp_path / "record")
    )
    assert verified.returncode == 0 and b"Verified OK" in verified.stdout
    assert json.loads(match.group(2))["witnesses"] == ["山田 花子", "Sato Taro"]

    # Someone with the database adds a witness who was not there.
    initialized.sql(
        "UPDATE key_ceremonies SET record = replace(record, 'Sato Taro', 'Sato Jiro') WHERE authority = 'operator'"
    )
    for path in [initialized.home, *initialized.home.rglob("*")]:
        path.chmod(stat.S_IMODE(path.stat().st_mode) & ~0o077)
    result = initialized.run("ca", "ceremony", "operator")
    assert result.returncode == 1
    assert "signature:    INVALID for the audit key" in result.stdout
    assert result.stderr.strip().startswith(
        "kakuin: error: ceremony record of operator g1: its signature does not verify with the audit key"
    )


def test_a_ceremony_whose_audit_event_was_deleted_is_refused(initialized: Home) -> None:
    initialized.sql(
        "DELETE FROM audit_events WHERE action = 'authority.key_ceremony' AND authority = 'lgpki-bridge'"
    )
    for path in [initialized.home, *initialized.home.rglob("*")]:
        path.chmod(stat.S_IMODE(path.stat().st_mode) & ~0o077)
    result = initialized.run("ca", "ceremony", "lgpki-bridge")
    assert result.returncode == 1
    assert "audit event:  MISSING" in result.stdout
    assert "its audit event authority.key_ceremony is missing" in result.stderr


def test_rollover_records_the_new_generation(initialized: Home) -> None:
    env = {**initialized.env, "KAKUIN_WITNESSES": "Suzuki Ichiro, 田中 一郎"}
    result = initialized.ok("ca", "rollover", "lgpki-org", env=env)
    assert "recorded 1 key ceremony (present: Suzuki Ichiro, 田中 一郎)" in result.stderr
    shown = initialized.ok("ca", "ceremony", "lgpki-org").stdout
    assert shown.count("signature:    valid (audit key ") == 2
    g2 = shown[shown.index("lgpki-org g2  key lgpki-org-g2") :]
    assert "present: Suzuki Ichiro, 田中 一郎" in g2
