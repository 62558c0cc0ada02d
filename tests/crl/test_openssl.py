"""Interop: the CRLs as the openssl CLI and pkilint see them, per partition, with deltas, and with
the ARL under ``-crl_check_all``; on SQLite and PostgreSQL."""

from __future__ import annotations

import subprocess
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa

from ca.issuance import IssuanceRequest, IssuedCertificate
from ca.service import CAContext
from crl.publisher import Outcome, Publisher
from tests.conftest import APPLICANTS, VENV_BIN, jpki_sign_applicant, make_csr, openssl
from tests.crl.conftest import ca_pem, municipality

ROOT = Path(__file__).resolve().parents[2]
LINT_CRL = VENV_BIN / "lint_crl"


def issue_jpki(ctx: CAContext, key: rsa.RSAPrivateKey, code: str, count: int) -> list[IssuedCertificate]:
    applicant = jpki_sign_applicant(
        municipality_code=code,
        municipality=f"Town {code}",
        municipality_romaji=f"Town{code}",
        prefecture="Tokyo-to",
    )
    return [
        ctx.issuer.issue(
            IssuanceRequest(profile="jpki-sign", csr=make_csr(key), applicant=applicant, actor="test")
        )
        for _ in range(count)
    ]


def crl_file(publisher: Publisher, outcome: Outcome, tmp: Path) -> Path:
    """The published CRL as PEM (converted by openssl itself), for -CRLfile."""
    assert outcome.record is not None, outcome.note
    der_path = publisher.settings.directory / outcome.record.path
    pem = tmp / f"{outcome.partition or 'complete'}-{outcome.kind}-{outcome.record.number}.pem"
    openssl("crl", "-inform", "DER", "-in", str(der_path), "-outform", "PEM", "-out", str(pem), check=True)
    return pem


def write(tmp: Path, name: str, data: bytes | str) -> Path:
    path = tmp / name
    path.write_bytes(data if isinstance(data, bytes) else data.encode())
    return path


def verify(
    ca: Path, cert: Path, *crls: Path, extra: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[bytes]:
    args = ["verify", "-crl_check", *extra, "-CAfile", str(ca)]
    for crl in crls:
        args += ["-CRLfile", str(crl)]
    return openssl(*args, str(cert))


def lint(path: Path, kind: str = "CRL") -> str:
    result = subprocess.run(
        [
            str(LINT_CRL),
            "lint",
            "-t",
            kind,
            "-p",
            "PKIX",
            "-s",
            "WARNING",
            "--document-format",
            "PEM",
            str(path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    return (result.stdout + result.stderr).strip()


def test_partition_crls_verify_and_decide_per_partition(
    ca_ctx: CAContext, publisher: Publisher, rsa_key: rsa.RSAPrivateKey, tmp_path: Path
) -> None:
    a, b = municipality(), municipality()
    certs_a = issue_jpki(ca_ctx, rsa_key, a, 2)
    certs_b = issue_jpki(ca_ctx, rsa_key, b, 2)
    ca_ctx.store.revoke(authority="jpki-sign", serial=certs_a[0].serial, reason="keyCompromise", actor="test")
    ca_ctx.store.revoke(
        authority="jpki-sign", serial=certs_b[1].serial, reason="certificateHold", actor="test"
    )
    ca = write(tmp_path, "ca.pem", ca_pem(ca_ctx, "jpki-sign"))
    crl_a = crl_file(publisher, publisher.publish_full("jpki-sign", a), tmp_path)
    crl_b = crl_file(publisher, publisher.publish_full("jpki-sign", b), tmp_path)

    for crl in (crl_a, crl_b):
        checked = openssl("crl", "-in", str(crl), "-CAfile", str(ca), "-noout")
        assert b"verify OK" in checked.stdout + checked.stderr, checked.stderr
        assert lint(crl) == ""

    leaf = [write(tmp_path, f"a{i}.pem", c.pem) for i, c in enumerate(certs_a)]
    leaf += [write(tmp_path, f"b{i}.pem", c.pem) for i, c in enumerate(certs_b)]
    revoked_a = verify(ca, leaf[0], crl_a)
    assert revoked_a.returncode != 0 and b"certificate revoked" in revoked_a.stdout + revoked_a.stderr
    assert verify(ca, leaf[1], crl_a).returncode == 0
    held_b = verify(ca, leaf[3], crl_b)
    assert held_b.returncode != 0 and b"certificate revoked" in held_b.stdout + held_b.stderr
    assert verify(ca, leaf[2], crl_b).returncode == 0
    # A partition's CRL does not speak for another partition's certificates (IDP ≠ CRL DP).
    wrong = verify(ca, leaf[1], crl_b)
    assert wrong.returncode != 0 and b"different CRL scope" in wrong.stdout + wrong.stderr

    # The IDP names the partition as the certificates do: the municipality's directoryName and URI.
    idp = x509.load_pem_x509_crl(crl_a.read_bytes()).extensions.get_extension_for_class(
        x509.IssuingDistributionPoint
    )
    assert idp.critical
    dp = certs_a[0].certificate.extensions.get_extension_for_class(x509.CRLDistributionPoints).value[0]
    assert set(idp.value.full_name or []) == set(dp.full_name or [])


def test_delta_crl_with_use_deltas(
    ca_ctx: CAContext, publisher: Publisher, rsa_key: rsa.RSAPrivateKey, tmp_path: Path
) -> None:
    code = municipality()
    certs = issue_jpki(ca_ctx, rsa_key, code, 4)
    store = ca_ctx.store
    store.revoke(authority="jpki-sign", serial=certs[0].serial, reason="keyCompromise", actor="test")
    store.revoke(authority="jpki-sign", serial=certs[1].serial, reason="certificateHold", actor="test")
    full = publisher.publish_full("jpki-sign", code)
    store.revoke(authority="jpki-sign", serial=certs[2].serial, reason="superseded", actor="test")
    store.release_hold(authority="jpki-sign", serial=certs[1].serial, actor="test")
    delta = publisher.publish_delta("jpki-sign", code)
    assert full.record is not None and delta.record is not None
    assert delta.record.base_number == full.record.number < delta.record.number

    ca = write(tmp_path, "ca.pem", ca_pem(ca_ctx, "jpki-sign"))
    full_pem, delta_pem = crl_file(publisher, full, tmp_path), crl_file(publisher, delta, tmp_path)
    assert lint(full_pem) == "" and lint(delta_pem) == ""
    parsed = x509.load_pem_x509_crl(delta_pem.read_bytes())
    assert (
        parsed.extensions.get_extension_for_class(x509.DeltaCRLIndicator).value.crl_number
        == full.record.number
    )
    reasons = {
        e.serial_number: e.extensions.get_extension_for_class(x509.CRLReason).value.reason for e in parsed
    }
    assert reasons[certs[1].certificate.serial_number] == x509.ReasonFlags.remove_from_crl
    assert reasons[certs[2].certificate.serial_number] == x509.ReasonFlags.superseded

    leaf = [write(tmp_path, f"c{i}.pem", c.pem) for i, c in enumerate(certs)]
    deltas = ("-use_deltas",)
    outcome = [verify(ca, cert, full_pem, delta_pem, extra=deltas) for cert in leaf]
    assert [r.returncode == 0 for r in outcome] == [False, True, False, True], [r.stdout for r in outcome]
    assert b"certificate revoked" in outcome[2].stdout + outcome[2].stderr
    # Without the delta, the base alone: still on hold, not yet revoked.
    base_only = [verify(ca, cert, full_pem).returncode == 0 for cert in leaf]
    assert base_only == [False, False, True, True]


def test_crl_check_all_through_the_arl(
    ca_ctx: CAContext, publisher: Publisher, rsa_key: rsa.RSAPrivateKey, tmp_path: Path
) -> None:
    leaf = ca_ctx.issuer.issue(
        IssuanceRequest(
            profile="lgpki-server", csr=make_csr(rsa_key), applicant=APPLICANTS["lgpki-server"], actor="test"
        )
    )
    record = ca_ctx.store.certificate("lgpki-app", leaf.serial)
    root = write(tmp_path, "root.pem", ca_pem(ca_ctx, "lgpki-root"))
    app = write(tmp_path, "app.pem", ca_pem(ca_ctx, "lgpki-app"))
    leaf_pem = write(tmp_path, "leaf.pem", leaf.pem)
    assert "arl" in publisher.scopes("lgpki-root")
    arl = crl_file(publisher, publisher.publish_full("lgpki-root", "arl"), tmp_path)
    assert lint(arl, "ARL") == ""
    idp = x509.load_pem_x509_crl(arl.read_bytes()).extensions.get_extension_for_class(
        x509.IssuingDistributionPoint
    )
    assert idp.value.only_contains_ca_certs

    # The ARL speaks for the subordinate CA's certificate (its CRL DP names the ARL).
    assert verify(root, app, arl).returncode == 0, verify(root, app, arl).stdout
    # -crl_check_all also wants a CRL covering the root itself: only an unpartitioned one does
    # (OpenSSL matches a certificate without CRL DP to a CRL without IDP): the complete CRL.
    complete = crl_file(publisher, publisher.publish_full("lgpki-root", ""), tmp_path)
    assert lint(complete) == ""

    def check(*crls: Path) -> subprocess.CompletedProcess[bytes]:
        args = ["verify", "-crl_check_all", "-CAfile", str(root), "-untrusted", str(app)]
        for crl in crls:
            args += ["-CRLfile", str(crl)]
        return openssl(*args, str(leaf_pem))

    good = crl_file(publisher, publisher.publish_full("lgpki-app", record.partition), tmp_path)
    assert check(complete, arl, good).returncode == 0, check(complete, arl, good).stdout
    missing = check(complete, arl)  # no CRL of the leaf's partition
    assert missing.returncode != 0 and b"unable to get certificate CRL" in missing.stdout + missing.stderr
    ca_ctx.store.revoke(
        authority="lgpki-app", serial=leaf.serial, reason="cessationOfOperation", actor="test"
    )
    revoked = crl_file(publisher, publisher.publish_full("lgpki-app", record.partition), tmp_path)
    result = check(complete, arl, revoked)
    assert result.returncode != 0 and b"certificate revoked" in result.stdout + result.stderr


def test_lint_crl_reports_a_defective_crl(tmp_path: Path) -> None:
    """The lint step can fail: a v2 CRL without authorityKeyIdentifier and cRLNumber is flagged."""
    from datetime import UTC, datetime, timedelta

    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.serialization import Encoding

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = datetime.now(UTC)
    bare = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "bare")]))
        .last_update(now)
        .next_update(now + timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    path = write(tmp_path, "bare.pem", bare.public_bytes(Encoding.PEM))
    assert "ERROR" in lint(path)
