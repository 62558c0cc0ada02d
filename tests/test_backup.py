"""``kakuin backup`` and ``kakuin restore`` as an operator runs them: real SoftHSM2 token directory
in the data directory (PIN files made by ``kakuin init``), SQLite and PostgreSQL, CRLs checked by
their parsed numbers. A refused restore is one line and writes nothing."""

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
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from tests.conftest import APPLICANTS, make_csr
from tests.mirror import Mirror

KAKUIN = Path(sys.executable).parent / "kakuin"


@dataclass
class Home:
    path: Path
    env: dict[str, str]

    def run(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(KAKUIN), *args], env=self.env, capture_output=True, text=True, timeout=timeout
        )

    def ok(self, *args: str) -> subprocess.CompletedProcess[str]:
        result = self.run(*args)
        assert result.returncode == 0, f"kakuin {' '.join(args)}: {result.stderr}"
        return result


def home_env(path: Path, label: str, database_url: str | None = None, **extra: str) -> dict[str, str]:
    """A data directory with its own SoftHSM2 token directory and PIN files, as `make run` makes:
    no SOFTHSM2_CONF and no PIN in the environment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KAKUIN_") and k not in ("SOFTHSM2_CONF",)}
    env.update(
        KAKUIN_HOME=str(path),
        KAKUIN_TOKEN_LABEL=label,
        KAKUIN_DATABASE_URL=database_url or f"sqlite:///{path / 'kakuin.db'}",
        **extra,
    )
    return env


def init_home(base: Path, database_url: str | None = None, **extra: str) -> Home:
    path = base / "home"
    home = Home(path, home_env(path, f"bk-{uuid.uuid4().hex[:10]}", database_url, **extra))
    home.ok("init")
    return home


def restored_home(
    source: Home, path: Path, database_url: str | None = None, pin: str | None = None, **extra: str
) -> Home:
    env = home_env(path, source.env["KAKUIN_TOKEN_LABEL"], database_url, **extra)
    # The restored token keeps its PINs; the operator brings them (never in the backup).
    env["KAKUIN_TOKEN_PIN"] = pin or (source.path / "token.pin").read_text().strip()
    return Home(path, env)


def issue_clients(home: Home, directory: Path, count: int, tag: str) -> list[str]:
    csr = make_csr(ec.generate_private_key(ec.SECP256R1())).decode()
    batch = directory / f"{tag}.jsonl"
    batch.write_text(
        "".join(
            json.dumps(
                {"profile": "client", "csr": csr, "applicant": APPLICANTS["client"], "id": f"{tag}-{i}"}
            )
            + "\n"
            for i in range(count)
        )
    )
    out = directory / f"{tag}.pem"
    home.ok("issue", "--batch", str(batch), "--out", str(out), "--workers", "1")
    return [format(c.serial_number, "x") for c in x509.load_pem_x509_certificates(out.read_bytes())]


def crl_numbers(directory: Path) -> dict[str, int]:
    """The highest parsed number of each CRL series under a CRL directory."""
    found: dict[str, int] = {}
    for path in directory.rglob("*.crl"):
        crl = x509.load_der_x509_crl(path.read_bytes())
        number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
        key = str(path.parent.relative_to(directory))
        found[key] = max(found.get(key, 0), number)
    return found


def tree(path: Path) -> dict[str, tuple[int, int]]:
    if not path.exists():
        return {}
    return {str(p.relative_to(path)): (p.stat().st_mtime_ns, p.stat().st_size) for p in path.rglob("*")}


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode != 0, result.stdout
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("kakuin: error: ")
    return lines[0]


@dataclass
class Backed:
    home: Home
    backup: Path
    revoked: list[str]
    kept: list[str]
    numbers_at_backup: dict[str, int]
    after: dict[str, int]


@pytest.fixture(scope="module")
def backed(softhsm: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Backed:
    """A SQLite home with certificates, one revoked, CRLs published; backed up; then one more CRL."""
    base = tmp_path_factory.mktemp("backup-sqlite")
    home = init_home(base)
    serials = issue_clients(home, base, 3, "first")
    home.ok("revoke", "--authority", "operator", serials[0], "--reason", "key-compromise")
    home.ok("crl", "publish", "--authority", "operator")
    numbers = crl_numbers(home.path / "crl")
    backup = base / "backup"
    home.ok("backup", str(backup))
    home.ok("crl", "publish", "--authority", "operator")  # published after the backup
    return Backed(home, backup, serials[:1], serials[1:], numbers, crl_numbers(home.path / "crl"))


def test_backup_holds_every_part_with_a_manifest(backed: Backed) -> None:
    manifest = json.loads((backed.backup / "manifest.json").read_text())
    assert manifest["backend"] == "sqlite"
    assert manifest["kakuin_version"]
    assert manifest["schema_revisions"]
    assert re.fullmatch(r"[0-9a-f]{16}", manifest["token"]["serial"])
    assert "operator-g1" in manifest["token"]["key_labels"]
    assert "kakuin-audit" in manifest["token"]["key_labels"]
    listed = {entry["path"]: entry for entry in manifest["files"]}
    on_disk = {str(p.relative_to(backed.backup)) for p in backed.backup.rglob("*") if p.is_file()}
    assert on_disk - {"manifest.json"} == set(listed)
    for name, entry in listed.items():
        data = (backed.backup / name).read_bytes()
        assert len(data) == entry["size"]
        assert hashlib.sha256(data).hexdigest() == entry["sha256"]
    assert "database/kakuin.db" in listed
    assert "audit/checkpoints.jsonl" in listed
    assert "settings/hierarchy.toml" in listed and "settings/profiles.toml" in listed
    assert any(name.startswith("crl/operator/0/") and name.endswith("-full.crl") for name in listed)
    assert any(name.startswith("tokens/") and name.endswith("token.object") for name in listed)
    assert not any(Path(name).name in ("token.pin", "token.so.pin") for name in listed)
    # a backup's database is one self-contained file (no -wal beside it)
    assert not any(name.endswith(("-wal", "-shm")) for name in listed)


def test_backup_never_contains_a_pin_and_is_private(backed: Backed) -> None:
    pins = [(backed.home.path / name).read_bytes().strip() for name in ("token.pin", "token.so.pin")]
    assert all(len(pin) >= 16 for pin in pins)
    for path in [backed.backup, *backed.backup.rglob("*")]:
        mode = stat.S_IMODE(path.stat().st_mode)
        if path.is_dir():
            assert mode == 0o700, (path, oct(mode))
        else:
            assert mode == 0o600, (path, oct(mode))
            data = path.read_bytes()
            for pin in pins:
                assert pin not in data, f"a PIN is in {path}"


def test_restore_moves_crl_numbers_past_everything_and_keeps_revocations(
    backed: Backed, tmp_path: Path
) -> None:
    target = restored_home(backed.home, tmp_path / "restored")
    result = target.ok("restore", str(backed.backup))
    assert "operator 0: highest" in result.stdout
    assert "128 random bits" in result.stdout
    next_number = int(re.search(r"^  operator 0: highest \d+ .* -> next (\d+)$", result.stdout, re.M)[1])  # type: ignore[index]
    assert next_number > backed.numbers_at_backup["operator/0"] + 1000
    shown = target.ok("cert", "show", backed.revoked[0])
    assert re.search(r"^status:\s+revoked", shown.stdout, re.M), shown.stdout
    assert re.search(r"^status:\s+issued", target.ok("cert", "show", backed.kept[0]).stdout, re.M)
    target.ok("crl", "publish", "--authority", "operator")
    after = crl_numbers(target.path / "crl")
    # the next CRL is above the backup's and above the one published after it
    assert after["operator/0"] == next_number > backed.after["operator/0"]
    crl = x509.load_der_x509_crl(max((target.path / "crl/operator/0").glob("*-full.crl")).read_bytes())
    assert {format(entry.serial_number, "x") for entry in crl} == set(backed.revoked)
    for path in [target.path, *target.path.rglob("*")]:
        if path.is_symlink() or "run" in path.relative_to(target.path).parts:
            continue
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode & 0o077 == 0, (path, oct(mode))
    assert not (target.path / "token.pin").exists()
    assert "audit log verified" in target.ok("audit", "verify").stdout


def test_a_tampered_backup_is_refused_and_nothing_written(backed: Backed, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(backed.backup, copy)
    crl_file = next((copy / "crl/operator/0").glob("*-full.crl"))
    data = bytearray(crl_file.read_bytes())
    data[-1] ^= 1
    crl_file.write_bytes(bytes(data))
    target = restored_home(backed.home, tmp_path / "restored")
    line = one_error_line(target.run("restore", str(copy)))
    assert "does not verify" in line and str(crl_file.relative_to(copy)) in line
    assert not target.path.exists()

    crl_file.write_bytes(bytes(data[:-1]) + bytes([data[-1] ^ 1]))  # as it was
    (copy / "crl/extra.crl").write_bytes(b"0")
    line = one_error_line(target.run("restore", str(copy)))
    assert "crl/extra.crl is not in its manifest" in line
    (copy / "crl/extra.crl").unlink()
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["files"] = [e for e in manifest["files"] if not e["path"].startswith("database/")]
    (copy / "manifest.json").write_text(json.dumps(manifest))
    line = one_error_line(target.run("restore", str(copy)))
    assert "database/kakuin.db is not in its manifest" in line
    assert not target.path.exists()


def test_a_non_empty_target_is_refused(backed: Backed, tmp_path: Path) -> None:
    target = restored_home(backed.home, tmp_path / "restored")
    target.path.mkdir()
    (target.path / "notes.txt").write_text("mine")
    before = tree(target.path)
    line = one_error_line(target.run("restore", str(backed.backup)))
    assert f"the data directory {target.path} is not empty" in line
    assert tree(target.path) == before
    # and a backup is never written into a non-empty directory either
    line = one_error_line(backed.home.run("backup", str(target.path)))
    assert "is not empty" in line
    assert tree(target.path) == before


def test_restore_checks_the_published_urls(backed: Backed, tmp_path: Path) -> None:
    """With --crl-url-check the live CRL at the URL (here newer than anything in the backup)
    counts; with margin 0 the next number is exactly one above it."""
    newest = max((backed.home.path / "crl/operator/0").glob("*-full.crl")).read_bytes()
    mirror = Mirror({"/crl/operator/0.crl": newest})
    try:
        target = restored_home(
            backed.home, tmp_path / "restored", KAKUIN_CRL_URL=f"http://127.0.0.1:{mirror.port}/crl"
        )
        result = target.ok("restore", str(backed.backup), "--crl-url-check", "--crl-margin", "0")
    finally:
        mirror.close()
    url = f"http://127.0.0.1:{mirror.port}/crl/operator/0.crl"
    assert (
        f"operator 0: highest {backed.after['operator/0']} ({url}) -> next {backed.after['operator/0'] + 1}"
        in (result.stdout)
    )


# -- PostgreSQL -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pg_backed(
    softhsm: dict[str, str], postgres: Callable[[], str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Backed, Callable[[], str]]]:
    base = tmp_path_factory.mktemp("backup-pg")
    home = init_home(base, postgres())
    serials = issue_clients(home, base, 2, "pg")
    home.ok("revoke", "--authority", "operator", serials[0], "--reason", "superseded")
    home.ok("crl", "publish", "--authority", "operator")
    numbers = crl_numbers(home.path / "crl")
    backup = base / "backup"
    result = home.ok("backup", str(backup))
    assert "backup of postgresql database" in result.stdout
    yield Backed(home, backup, serials[:1], serials[1:], numbers, numbers), postgres


def test_postgresql_backup_and_restore(pg_backed: tuple[Backed, Callable[[], str]], tmp_path: Path) -> None:
    backed, postgres = pg_backed
    manifest = json.loads((backed.backup / "manifest.json").read_text())
    assert manifest["backend"] == "postgresql"
    assert re.search(r"/usr/lib/postgresql/\d+/bin/pg_dump$", manifest["database"]["taken_with"])
    assert (backed.backup / "database/kakuin.pgdump").read_bytes()[:5] == b"PGDMP"
    target = restored_home(backed.home, tmp_path / "restored", postgres())
    result = target.ok("restore", str(backed.backup))
    next_number = int(re.search(r"^  operator 0: highest \d+ .* -> next (\d+)$", result.stdout, re.M)[1])  # type: ignore[index]
    assert next_number == backed.numbers_at_backup["operator/0"] + 1001
    assert re.search(r"^status:\s+revoked", target.ok("cert", "show", backed.revoked[0]).stdout, re.M)
    target.ok("crl", "publish", "--authority", "operator")
    assert crl_numbers(target.path / "crl")["operator/0"] == next_number

    # the same database again: not empty, refused, nothing written in the new home
    again = restored_home(backed.home, tmp_path / "again", target.env["KAKUIN_DATABASE_URL"])
    line = one_error_line(again.run("restore", str(backed.backup)))
    assert "database of database.url is not empty" in line
    assert not again.path.exists()
    # a PostgreSQL backup is not restored into SQLite
    line = one_error_line(restored_home(backed.home, tmp_path / "sqlite").run("restore", str(backed.backup)))
    assert "backup is of a postgresql database" in line
