"""Key rollover: a new key under the same DN, link certificates both ways, issuance moving to the
new key, and certificates of both generations validating with `openssl verify` whichever root
generation the relying party trusts."""

from __future__ import annotations

from pathlib import Path

import pytest
from asn1crypto import x509 as ax
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from pyhanko_certvalidator import CertificateValidator, ValidationContext

from ca.lifecycle_store import LifecycleStore
from ca.rollover import LINK_PROFILE, live_generations, rollover
from ca.service import CAContext
from hsm import KeySpec
from tests.conftest import openssl
from tests.lifecycle.conftest import issue_org_user, pem, run_cli, run_coroutine


def _ski(certificate: x509.Certificate) -> bytes:
    return certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest


def _aki(certificate: x509.Certificate) -> bytes | None:
    return certificate.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier


def verify(
    directory: Path, anchor: x509.Certificate, untrusted: list[x509.Certificate], leaf: x509.Certificate
) -> str:
    (directory / "anchor.pem").write_bytes(pem(anchor))
    (directory / "leaf.pem").write_bytes(pem(leaf))
    args = ["verify", "-x509_strict", "-CAfile", str(directory / "anchor.pem")]
    if untrusted:
        (directory / "untrusted.pem").write_bytes(pem(*untrusted))
        args += ["-untrusted", str(directory / "untrusted.pem")]
    result = openssl(*args, str(directory / "leaf.pem"))
    return (result.stdout + result.stderr).decode().strip() if result.returncode else "OK"


def test_root_and_subordinate_rollover(small: CAContext, rsa_key: rsa.RSAPrivateKey, tmp_path: Path) -> None:
    ctx = small
    root_g1 = ctx.authorities.get("lgpki-root").certificate
    org_g1 = ctx.authorities.get("lgpki-org").certificate
    before = issue_org_user(ctx, rsa_key, "Before Rollover").certificate

    result = run_cli(ctx, "ca", "rollover", "lgpki-root", "--out-dir", str(tmp_path / "root"))
    assert result.exit_code == 0, result.output
    assert "rolled over lgpki-root: generation 1 -> 2" in result.stdout
    # The new generation's CRLs and OCSP responder exist at once (docs/lifecycle.md).
    base = ctx.settings.crl_base_url
    assert f"CRL {base}/lgpki-root/g2.crl #1" in result.stdout, result.output
    assert f"CRL {base}/lgpki-root/g2/arl.crl #1" in result.stdout, result.output
    assert "for lgpki-root g2" in result.stdout and "warning" not in result.stderr, result.output
    root_g2 = x509.load_pem_x509_certificate((tmp_path / "root" / "lgpki-root-g2.pem").read_bytes())
    root_new_with_old = x509.load_pem_x509_certificate(
        (tmp_path / "root" / "lgpki-root-g2-new-with-old.pem").read_bytes()
    )
    root_old_with_new = x509.load_pem_x509_certificate(
        (tmp_path / "root" / "lgpki-root-g2-old-with-new.pem").read_bytes()
    )

    # Same DN, new key, self-signed; the links cross the two keys.
    assert root_g2.subject == root_g2.issuer == root_g1.subject
    assert _ski(root_g2) != _ski(root_g1) and _aki(root_g2) == _ski(root_g2)
    assert root_new_with_old.public_key() == root_g2.public_key() and _aki(root_new_with_old) == _ski(root_g1)
    assert root_old_with_new.public_key() == root_g1.public_key() and _aki(root_old_with_new) == _ski(root_g2)
    assert verify(tmp_path, root_g1, [], root_new_with_old) == "OK"  # old key signs new
    assert verify(tmp_path, root_g2, [], root_old_with_new) == "OK"  # new key signs old
    links = LifecycleStore(ctx.engine).certificates_by_profile("lgpki-root", LINK_PROFILE)
    assert {r.partition for r in links} == {"arl"} and len(links) == 2

    # The organization CA rolls over too: its new certificate comes from the root's new key.
    ctx.authorities.forget()
    result = run_cli(ctx, "ca", "rollover", "lgpki-org", "--out-dir", str(tmp_path / "org"))
    assert result.exit_code == 0, result.output
    org_g2 = x509.load_pem_x509_certificate((tmp_path / "org" / "lgpki-org-g2.pem").read_bytes())
    assert org_g2.subject == org_g1.subject and _aki(org_g2) == _ski(root_g2)
    assert ctx.store.certificate("lgpki-root", org_g2.serial_number).profile == "ca-subordinate"

    ctx.authorities.forget()
    after = issue_org_user(ctx, rsa_key, "After Rollover")
    assert _aki(after.certificate) == _ski(org_g2)  # new issuance names the new key
    org = ctx.authorities.get("lgpki-org")
    assert ctx.store.certificate("lgpki-org", after.serial).key_generation_id == org.generation.id
    assert [a.generation.generation for a in live_generations(ctx.authorities, "lgpki-org")] == [1, 2]

    # Whichever root generation a relying party trusts, certificates of both generations validate.
    assert verify(tmp_path, root_g1, [org_g1], before) == "OK"
    assert verify(tmp_path, root_g2, [org_g1, root_old_with_new], before) == "OK"
    assert verify(tmp_path, root_g2, [org_g2], after.certificate) == "OK"
    assert verify(tmp_path, root_g1, [org_g2, root_new_with_old], after.certificate) == "OK"
    # Without the link the other generation's certificates do not validate: the links are load-bearing.
    assert "unable to get" in verify(tmp_path, root_g2, [org_g1], before)
    # pyhanko-certvalidator builds the path through the link by itself, from all candidates.
    context = ValidationContext(trust_roots=[ax.Certificate.load(root_g2.public_bytes(Encoding.DER))])
    validator = CertificateValidator(
        ax.Certificate.load(before.public_bytes(Encoding.DER)),
        intermediate_certs=[
            ax.Certificate.load(c.public_bytes(Encoding.DER))
            for c in (org_g1, org_g2, root_old_with_new, root_new_with_old, root_g1)
        ],
        validation_context=context,
    )
    path = run_coroutine(validator.async_validate_path())
    assert len(path) == 4

    # `kakuin ca show` lists both generations live; `kakuin ca links` gives the link certificates.
    shown = run_cli(ctx, "ca", "show", "lgpki-org").stdout
    assert "key g1:" in shown and "key g2:" in shown and "retired" not in shown
    linked = x509.load_pem_x509_certificates(run_cli(ctx, "ca", "links", "lgpki-root").stdout.encode())
    assert {c.serial_number for c in linked} == {
        root_new_with_old.serial_number,
        root_old_with_new.serial_number,
    }


def test_interrupted_rollover_resumes(small_ctx, tmp_path: Path) -> None:
    """A key generated but never recorded is reused; a generation recorded without its links gets
    them on the next run instead of yet another generation."""
    ctx = small_ctx()
    store = LifecycleStore(ctx.engine)
    spare = ctx.token.generate("lgpki-org-g2", KeySpec.parse("ec-p256"))
    first = rollover(ctx.authorities, store, ctx.urls, "lgpki-org", "test")
    assert first.new_generation == 2 and not first.resumed
    assert (
        first.certificate.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
        == spare.spki_der
    )

    # Crash simulation: the links of generation 2 -> 3 were never made.
    ctx.token.generate("lgpki-org-g3", KeySpec.parse("ec-p256"))
    app = ctx.authorities.get("lgpki-org")
    info = ctx.token.public_info("lgpki-org-g3")
    from ca.authorities import ca_certificate_builder, ca_not_after, random_serial, sign_recorded
    from ca.timeutil import utcnow
    from hsm import key_for

    key = key_for(ctx.token, info)
    root = ctx.authorities.get("lgpki-root")
    now = utcnow()
    serial = random_serial()
    certificate = sign_recorded(
        store,
        root,
        ca_certificate_builder(app.config, key.public_key(), root, ctx.urls, now, serial),
        serial=serial,
        subject=app.config.subject,
        not_before=now,
        not_after=ca_not_after(app.config, root, now),
        profile="ca-subordinate",
        actor="test",
    )
    store.add_key_generation(
        authority_id=app.record.id,
        authority_name="lgpki-org",
        key_label="lgpki-org-g3",
        key_spec="ec-p256",
        key_identifier=_ski(certificate),
        certificate_der=certificate.public_bytes(Encoding.DER),
        serial=format(serial, "x"),
        not_before=certificate.not_valid_before_utc,
        not_after=certificate.not_valid_after_utc,
        actor="test",
    )
    resumed = rollover(ctx.authorities, store, ctx.urls, "lgpki-org", "test")
    assert resumed.resumed and (resumed.old_generation, resumed.new_generation) == (2, 3)
    assert [g.generation for g in store.key_generations(app.record.id)] == [1, 2, 3]
    assert len(store.certificates_by_profile("lgpki-org", LINK_PROFILE)) == 4


def test_rollover_refusals(small_ctx) -> None:
    ctx = small_ctx()
    result = run_cli(ctx, "ca", "rollover", "no-such-ca")
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == ["kakuin: error: authority: no authority named 'no-such-ca'"]
    assert ctx.token.labels() == sorted(ctx.token.labels())  # nothing generated
    assert not any(label.startswith("no-such-ca") for label in ctx.token.labels())


@pytest.mark.parametrize("name", ["lgpki-root"])
def test_ec_authority_rolls_over(small_ctx, name: str, tmp_path: Path) -> None:
    """Rollover called from Python: the link certificates verify with openssl (EC P-256 keys)."""
    ctx = small_ctx()
    result = rollover(ctx.authorities, LifecycleStore(ctx.engine), ctx.urls, name, "test")
    old = x509.load_der_x509_certificate(
        ctx.store.key_generations(ctx.store.authority(name).id)[0].certificate_der
    )
    assert verify(tmp_path, old, [], result.new_with_old) == "OK"
    assert verify(tmp_path, result.certificate, [], result.old_with_new) == "OK"
