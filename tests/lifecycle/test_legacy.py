"""Legacy migration: an old CA made with `openssl ca` (index.txt, newcerts, revocations, a CRL)
imported with `kakuin import-legacy`; nothing revoked becomes good, conflicts stop the import
with nothing changed, re-running is harmless."""

from __future__ import annotations

import os
import subprocess
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from ca.errors import Forbidden
from ca.lifecycle_store import LifecycleStore
from ca.service import CAContext
from ca.store import normalize_serial
from ca.timeutil import utcnow
from tests.lifecycle.conftest import run_cli
from tests.lifecycle.oldca import OldCA, make_old_ca


def softhsm_import(ctx: CAContext, key: Path, label: str) -> None:
    """The operator puts the old CA's key into the token with the token's own tool."""
    subprocess.run(
        [
            "softhsm2-util", "--import", str(key), "--token", ctx.settings.token_label,
            "--label", label, "--id", "c0ffee", "--pin", os.environ["KAKUIN_TOKEN_PIN"],
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip


def statuses(ctx: CAContext, authority: str) -> dict[str, tuple[str, str | None]]:
    """The imported certificates' statuses (not the OCSP responder certificates the legacy
    authority gets once its key is in the token)."""
    return {
        r.serial: (r.status, r.revocation_reason)
        for r in ctx.store.certificates(authority=authority, limit=1000)
        if r.profile == "legacy"
    }


@pytest.fixture(scope="module")
def old(tmp_path_factory: pytest.TempPathFactory) -> OldCA:
    ca = make_old_ca(tmp_path_factory.mktemp("oldca") / "tokyo")
    issued = [ca.issue(f"resident-{i}") for i in range(6)]
    ca.issue("expired-resident", expired=True)
    ca.revoke(issued[0], "-crl_reason", "keyCompromise")
    ca.revoke(issued[1], "-crl_reason", "superseded")
    ca.revoke(issued[2], "-crl_hold", "1.2.840.10040.2.2")
    ca.gencrl()
    return ca


def import_args(old: OldCA, authority: str, *extra: str) -> list[str]:
    return [
        "import-legacy", "--authority", authority, "--ca-cert", str(old.ca_pem),
        "--index", str(old.index), "--crl", str(old.crl), *extra,
    ]  # fmt: skip


def test_import_index_and_crl(small: CAContext, old: OldCA) -> None:
    softhsm_import(small, old.key, "pref-tokyo-g1")
    result = run_cli(
        small, *import_args(old, "pref-tokyo", "--key-label", "pref-tokyo-g1", "--title", "Tokyo (FY2015)")
    )
    assert result.exit_code == 0, result.output
    assert "importing" in result.stderr  # the progress bar
    assert "imported into pref-tokyo (legacy, key in the token): new 7, new revoked 3" in result.stdout
    # With its key in the token, Kakuin answers for it at once: a responder certificate and a CRL.
    assert "OCSP responder g1 for pref-tokyo" in result.stdout
    assert "/pref-tokyo.crl #1 (3 entries)" in result.stdout

    # Every status as the old CA had it; the hold stays a hold.
    lines = [line.split("\t") for line in old.index.read_text().splitlines()]
    expected = {}
    for status, _expiry, revocation, serial, _file, _subject in lines:
        reason = revocation.split(",")[1] if status == "R" else None
        stored = {"keyCompromise": ("revoked", "keyCompromise"), "superseded": ("revoked", "superseded")}
        expected[normalize_serial(serial)] = (
            ("issued", None) if reason is None else stored.get(reason, ("on_hold", "certificateHold"))
        )
    assert statuses(small, "pref-tokyo") == expected
    record = small.store.certificate("pref-tokyo", next(iter(expected)))
    assert record.der is not None and record.profile == "legacy"

    # The authority is registered, with the old key in the token; it issues nothing.
    authority = small.authorities.get("pref-tokyo")
    assert authority.record.state == "legacy"
    assert authority.certificate == old.certificate
    assert authority.key.public_key() == old.certificate.public_key()
    # It issues nothing but its own OCSP responder certificates (any other "*" profile is refused).
    responder = small.profiles["ocsp-responder"]
    other = replace(responder, name="other", extended_key_usage=(ExtendedKeyUsageOID.CLIENT_AUTH,))
    with pytest.raises(Forbidden, match="pref-tokyo is legacy and issues no more"):
        small.issuer.authority_for(other, "pref-tokyo")
    assert small.issuer.authority_for(responder, "pref-tokyo").name == "pref-tokyo"
    assert "pref-tokyo" in run_cli(small, "ca", "list").stdout
    assert small.store.audit_events(action="authority.import_legacy")[0].authority == "pref-tokyo"

    # Re-running changes nothing.
    again = run_cli(small, *import_args(old, "pref-tokyo"))
    assert again.exit_code == 0, again.output
    assert "nothing to change" in again.stdout
    assert statuses(small, "pref-tokyo") == expected
    assert len(LifecycleStore(small.engine).legacy_imports("pref-tokyo")) == 1


def test_later_runs_follow_the_old_ca_and_keep_kakuin_revocations(small_ctx, tmp_path: Path) -> None:
    ctx = small_ctx()
    ca = make_old_ca(tmp_path / "osaka", "Osaka Prefectural CA")
    a, b, c = (ca.issue(f"r{i}") for i in range(3))
    ca.gencrl()
    first = run_cli(ctx, *import_args(ca, "pref-osaka"))
    assert first.exit_code == 0, first.output
    assert "key outside the token" in first.stdout
    # The old CA revokes b afterwards; Kakuin's operator revokes c (its old CA still says valid).
    ca.revoke(b, "-crl_reason", "affiliationChanged")
    ca.gencrl()
    revoked = run_cli(
        ctx, "revoke", format(c.serial_number, "x"), "--authority", "pref-osaka", "--reason", "key-compromise"
    )
    assert revoked.exit_code == 0, revoked.output
    second = run_cli(ctx, *import_args(ca, "pref-osaka"))
    assert second.exit_code == 0, second.output
    assert "revoked now 1" in second.stdout and "kept revoked in kakuin 1" in second.stdout
    assert statuses(ctx, "pref-osaka") == {
        normalize_serial(a.serial_number): ("issued", None),
        normalize_serial(b.serial_number): ("revoked", "affiliationChanged"),
        normalize_serial(c.serial_number): ("revoked", "keyCompromise"),
    }
    assert len(LifecycleStore(ctx.engine).legacy_imports("pref-osaka")) == 2


def test_conflicts_stop_the_import_and_change_nothing(small_ctx, tmp_path: Path) -> None:
    ctx = small_ctx()
    ca = make_old_ca(tmp_path / "kyoto", "Kyoto Prefectural CA")
    a, b, _c = (ca.issue(f"r{i}") for i in range(3))
    ca.gencrl()
    ca.revoke(a, "-crl_reason", "keyCompromise")  # revoked in index.txt after the CRL was made
    # A CRL (signed by the old CA's key) that lists b, which index.txt says is valid.
    key = serialization.load_pem_private_key(ca.key.read_bytes(), None)
    crl = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.certificate.subject)
        .last_update(utcnow())
        .next_update(utcnow() + timedelta(days=1))
        .add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(b.serial_number).revocation_date(utcnow()).build()
        )
        .sign(key, hashes.SHA256())  # type: ignore[arg-type]
    )
    (tmp_path / "odd.crl").write_bytes(crl.public_bytes(serialization.Encoding.DER))
    args = [
        "import-legacy", "--authority", "pref-kyoto", "--ca-cert", str(ca.ca_pem),
        "--index", str(ca.index), "--crl", str(tmp_path / "odd.crl"),
    ]  # fmt: skip
    result = run_cli(ctx, *args)
    assert result.exit_code == 1
    conflicts = [line for line in result.stderr.splitlines() if line.startswith("conflict:")]
    assert len(conflicts) == 2, result.stderr
    assert any(normalize_serial(a.serial_number) in line and "not on the CRL" in line for line in conflicts)
    assert any(
        normalize_serial(b.serial_number) in line and "valid in index.txt" in line for line in conflicts
    )
    assert result.stderr.strip().splitlines()[-1] == (
        "kakuin: error: 2 conflict(s) between the old CA's sources; nothing was imported"
    )
    assert "pref-kyoto" not in [r.name for r in ctx.store.authorities()]
    # A CRL from another CA is refused, naming the option.
    other = make_old_ca(tmp_path / "nara", "Nara Prefectural CA")
    other.gencrl()
    args[-1] = str(other.crl)
    result = run_cli(ctx, *args)
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines()[-1].startswith("kakuin: error: crl: the CRL was issued by")
    # With a fresh CRL the sources agree and the import goes through.
    ca.gencrl()
    args[-1] = str(ca.crl)
    result = run_cli(ctx, *args)
    assert result.exit_code == 0, result.output
    assert statuses(ctx, "pref-kyoto")[normalize_serial(a.serial_number)] == ("revoked", "keyCompromise")


def test_directory_import_keeps_crl_only_revocations(small_ctx, tmp_path: Path) -> None:
    """From a directory of certificate files (one revoked file lost): the CRL's revocation is kept
    as a stub record, never dropped; the key stays outside, and signing for it says so."""
    ctx = small_ctx()
    ca = make_old_ca(tmp_path / "hokkaido", "Hokkaido Prefectural CA")
    kept, lost = ca.issue("kept"), ca.issue("lost")
    ca.revoke(lost, "-crl_reason", "keyCompromise")
    ca.gencrl()
    files = tmp_path / "files"
    files.mkdir()
    (files / "kept.der").write_bytes(kept.public_bytes(serialization.Encoding.DER))
    (files / "ca.pem").write_bytes(ca.ca_pem.read_bytes())  # the CA's own certificate is skipped
    (files / "README").write_text("not a certificate")
    result = run_cli(
        ctx, "import-legacy", "--authority", "pref-hokkaido", "--ca-cert", str(ca.ca_pem),
        "--certs", str(files), "--crl", str(ca.crl),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "skipped README: not an X.509 certificate" in result.stderr
    assert "crl only stubs 1" in result.stdout
    stub = ctx.store.certificate("pref-hokkaido", lost.serial_number)
    assert (stub.status, stub.revocation_reason, stub.der) == ("revoked", "keyCompromise", None)
    assert stub.not_after == ca.certificate.not_valid_after_utc  # listed until the old CA ends
    # Signing as this authority needs its key, which stayed outside the token.
    csr = run_cli(ctx, "cross-certify", "csr", "--authority", "pref-hokkaido")
    assert csr.exit_code == 3
    assert "no private key labelled 'external:pref-hokkaido'" in csr.stderr


def test_bad_key_label_and_taken_names_change_nothing(small_ctx, tmp_path: Path) -> None:
    ctx = small_ctx()
    ca = make_old_ca(tmp_path / "aichi", "Aichi Prefectural CA")
    ca.issue("r")
    ca.gencrl()
    for args, message in (
        (
            import_args(ca, "pref-aichi", "--key-label", "lgpki-org-g1"),
            "key_label: the token's key 'lgpki-org-g1' is not the old CA's key",
        ),
        (import_args(ca, "lgpki-org"), "authority: authority lgpki-org exists and is not this legacy CA"),
    ):
        result = run_cli(ctx, *args)
        assert result.exit_code == 1, result.output
        assert message in result.stderr.strip().splitlines()[-1]
    assert "pref-aichi" not in [r.name for r in ctx.store.authorities()]
