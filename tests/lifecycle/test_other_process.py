"""A long-running service (the RA under `kakuin up`) keeps its authorities loaded; an operator
rolls one over or terminates it with `kakuin` in another process. The next issuance must use the
new key generation, and after termination must be refused — never signed with what was cached."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import text

from ca.errors import Forbidden
from ca.service import CAContext
from tests.conftest import openssl
from tests.lifecycle.conftest import issue_org_user, pem, run_cli


def _key_id(certificate: x509.Certificate, kind: type[x509.ExtensionType]) -> bytes | None:
    value = certificate.extensions.get_extension_for_class(kind).value
    return value.digest if isinstance(value, x509.SubjectKeyIdentifier) else value.key_identifier  # type: ignore[attr-defined]


def _generations(ctx: CAContext, name: str) -> list[x509.Certificate]:
    record = ctx.store.authority(name)
    return [x509.load_der_x509_certificate(g.certificate_der) for g in ctx.store.key_generations(record.id)]


def test_issuance_follows_a_rollover_and_a_termination_done_by_another_process(
    small: CAContext, ec_key: ec.EllipticCurvePrivateKey, tmp_path: Path
) -> None:
    before = issue_org_user(small, ec_key).certificate  # loads and caches lgpki-org, generation 1
    [g1] = _generations(small, "lgpki-org")
    assert _key_id(before, x509.AuthorityKeyIdentifier) == _key_id(g1, x509.SubjectKeyIdentifier)

    rolled = run_cli(small, "ca", "rollover", "lgpki-org")
    assert rolled.exit_code == 0, rolled.output

    after = issue_org_user(small, ec_key, "Taro Suzuki").certificate  # same process, same cache
    g1, g2 = _generations(small, "lgpki-org")
    assert _key_id(after, x509.AuthorityKeyIdentifier) == _key_id(g2, x509.SubjectKeyIdentifier)
    root = _generations(small, "lgpki-root")[-1]
    (tmp_path / "root.pem").write_bytes(pem(root))
    (tmp_path / "g2.pem").write_bytes(pem(g2))
    (tmp_path / "leaf.pem").write_bytes(pem(after))
    verified = openssl(
        "verify", "-CAfile", str(tmp_path / "root.pem"), "-untrusted", str(tmp_path / "g2.pem"),
        str(tmp_path / "leaf.pem"),
    )  # fmt: skip
    assert verified.returncode == 0 and b"leaf.pem: OK" in verified.stdout, verified.stderr

    terminated = run_cli(small, "ca", "terminate", "lgpki-org", "--yes")
    assert terminated.exit_code == 0, terminated.output
    with pytest.raises(Forbidden, match="authority lgpki-org is terminated and issues no more"):
        issue_org_user(small, ec_key, "Too Late")

    with small.engine.connect() as conn:
        statuses = dict(conn.execute(text("SELECT status, count(*) FROM certificates GROUP BY status")).all())
    assert "signing" not in statuses and "failed" not in statuses, statuses
    names = [c.subject.rfc4514_string() for c in (before, after)]
    assert all("Too Late" not in n for n in names)
