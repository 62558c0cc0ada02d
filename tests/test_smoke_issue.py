"""End-to-end smoke: every profile issued on both backends and accepted by `openssl verify`."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from ca.issuance import IssuanceRequest
from ca.service import CAContext
from tests.conftest import APPLICANTS, jpki_auth_applicant, jpki_sign_applicant, make_csr, openssl


def chain_pem(ctx: CAContext, authority: str) -> tuple[bytes, bytes]:
    """(root PEM, untrusted intermediates PEM) for an authority."""
    certs = []
    record = ctx.store.authority(authority)
    by_id = {r.id: r for r in ctx.store.authorities()}
    while True:
        certs.append(ctx.authorities.get(record.name).certificate.public_bytes(Encoding.PEM))
        if record.parent_id is None:
            break
        record = by_id[record.parent_id]
    return certs[-1], b"".join(certs[:-1])


@pytest.mark.parametrize("profile", ["jpki-sign", "jpki-auth", *APPLICANTS])
def test_every_profile_verifies_with_openssl(
    ca_ctx: CAContext, profile: str, rsa_key, ec_key, tmp_path
) -> None:
    applicant = {"jpki-sign": jpki_sign_applicant(), "jpki-auth": jpki_auth_applicant()}.get(
        profile
    ) or APPLICANTS[profile]
    key = ec_key if profile in ("client", "ocsp-responder", "service-server") else rsa_key
    authority = "lgpki-app" if profile == "ocsp-responder" else None
    issued = ca_ctx.issuer.issue(
        IssuanceRequest(
            profile=profile, csr=make_csr(key), applicant=applicant, authority=authority, actor="test"
        )
    )
    root, intermediates = chain_pem(ca_ctx, issued.authority)
    (tmp_path / "root.pem").write_bytes(root)
    (tmp_path / "leaf.pem").write_text(issued.pem)
    args = ["verify", "-CAfile", str(tmp_path / "root.pem")]
    if intermediates:
        (tmp_path / "untrusted.pem").write_bytes(intermediates)
        args += ["-untrusted", str(tmp_path / "untrusted.pem")]
    result = openssl(*args, str(tmp_path / "leaf.pem"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip().endswith(b": OK")
    assert ca_ctx.store.certificate(issued.authority, issued.serial).status == "issued"
