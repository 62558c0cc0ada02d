"""Faults during issuance: the token fails midway, its key vanishes, the worker dies between
recording the intent and storing the certificate, or is killed outright in the middle of a batch.

Afterwards no certificate is half-issued: every row is ``issued`` with its DER, ``failed`` (never
signed, with an audit event saying so), or still ``signing`` and then listed by
``Store.signing_rows()`` so an operator can revoke it. The faults are real: a session closed and a
PIN file removed, a key destroyed in the token, a process that exits or is SIGKILLed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from pkcs11 import Mechanism
from sqlalchemy import func, select

from ca.authorities import AuthorityRegistry
from ca.errors import Conflict
from ca.issuance import IssuanceRequest, Issuer, PreparedIssuance
from ca.models import AuditEvent, Certificate
from ca.service import CAContext
from config import ConfigError
from config.settings import PinSource
from hsm import Token, TokenError
from tests.conftest import APPLICANTS, make_csr

ROOT = Path(__file__).resolve().parent.parent


def all_rows(ctx: CAContext, after_id: int = 0) -> list[dict[str, Any]]:
    """Certificate rows in the order they were reserved (ids increase), newer than ``after_id``."""
    table = Certificate.__table__
    query = select(table).where(table.c.id > after_id).order_by(table.c.id)
    with ctx.engine.connect() as conn:
        return [dict(r) for r in conn.execute(query).mappings()]


def last_id(ctx: CAContext) -> int:
    with ctx.engine.connect() as conn:
        return int(conn.execute(select(func.max(Certificate.__table__.c.id))).scalar() or 0)


def failure_events(ctx: CAContext, actor: str) -> list[dict[str, Any]]:
    table = AuditEvent.__table__
    with ctx.engine.connect() as conn:
        query = select(table).where(table.c.action == "certificate.issue_failed", table.c.actor == actor)
        return [dict(r) for r in conn.execute(query).mappings()]


def prepare_many(
    issuer: Issuer, key: ec.EllipticCurvePrivateKey, count: int, actor: str
) -> list[PreparedIssuance]:
    csr = make_csr(key)
    return [
        issuer.prepare(
            IssuanceRequest(profile="client", csr=csr, applicant=APPLICANTS["client"], actor=actor)
        )
        for _ in range(count)
    ]


def signing_serials(ctx: CAContext) -> set[str]:
    return {record.serial for record in ctx.store.signing_rows()}


class BreaksAfter(Token):
    """A real token connection that, after ``good`` signatures, loses its session and its PIN
    file, as when the HSM is reset while an operator has removed the PIN: the next signature
    fails in the real reopen path, not in a stand-in."""

    def __init__(self, module: str, label: str, pin_file: Path, good: int) -> None:
        super().__init__(module, label, PinSource(env="KAKUIN_TEST_NO_SUCH_PIN_VARIABLE", file=pin_file).read)
        self.pin_file = pin_file
        self.good = good

    def sign(self, label: str, data: bytes, mechanism: Mechanism) -> bytes:
        if self.good == 0:
            self.close()
            self.pin_file.unlink(missing_ok=True)
        self.good -= 1
        return super().sign(label, data, mechanism)


def test_token_fails_midway_through_a_batch(
    ca_ctx: CAContext, ec_key: ec.EllipticCurvePrivateKey, tmp_path: Path
) -> None:
    pin_file = tmp_path / "token.pin"
    pin_file.write_text(os.environ["KAKUIN_TOKEN_PIN"] + "\n")
    pin_file.chmod(0o600)
    token = BreaksAfter(ca_ctx.settings.pkcs11_module, ca_ctx.settings.token_label, pin_file, good=3)
    try:
        issuer = Issuer(
            AuthorityRegistry(ca_ctx.store, token, ca_ctx.hierarchy), ca_ctx.profiles, ca_ctx.urls
        )
        actor = f"test:midway:{os.getpid()}:{id(token)}"
        prepared = prepare_many(issuer, ec_key, 8, actor)
        before = last_id(ca_ctx)
        with pytest.raises(ConfigError) as caught:
            issuer.issue_prepared(prepared)
        assert caught.value.key == "token.pin_file"
    finally:
        token.close()

    rows = all_rows(ca_ctx, after_id=before)
    assert len(rows) == 8
    statuses = [row["status"] for row in rows]
    assert statuses.count("issued") == 3 and statuses.count("failed") == 5
    for row in rows:
        if row["status"] == "issued":
            cert = x509.load_der_x509_certificate(row["der"])
            assert format(cert.serial_number, "x") == row["serial"]
            cert.verify_directly_issued_by(ca_ctx.authorities.get("operator").certificate)
        else:
            assert row["der"] is None and row["fingerprint"] is None
    assert not signing_serials(ca_ctx) & {row["serial"] for row in rows}, "no row may stay 'signing'"
    (event,) = failure_events(ca_ctx, actor)
    assert event["authority"] == "operator"
    assert '"count": 5' in event["detail"] and "ConfigError" in event["detail"]


def test_key_destroyed_in_the_token(fresh_ctx: CAContext, ec_key: ec.EllipticCurvePrivateKey) -> None:
    """Between review and signing the CA key disappears (deleted by another process)."""
    actor = "test:destroyed-key"
    prepared = prepare_many(fresh_ctx.issuer, ec_key, 4, actor)
    label = fresh_ctx.authorities.get("operator").generation.key_label
    other = Token(
        fresh_ctx.settings.pkcs11_module, fresh_ctx.settings.token_label, fresh_ctx.settings.pin.read
    )
    try:
        other.destroy(label)
    finally:
        other.close()
    with pytest.raises(TokenError, match=f"no private key labelled '{label}'"):
        fresh_ctx.issuer.issue_prepared(prepared)
    rows = all_rows(fresh_ctx)
    mine = [row for row in rows if row["profile"] == "client"]
    assert [row["status"] for row in mine] == ["failed"] * 4
    assert all(row["der"] is None for row in mine)
    assert list(fresh_ctx.store.signing_rows()) == []
    (event,) = failure_events(fresh_ctx, actor)
    assert '"count": 4' in event["detail"] and "TokenError" in event["detail"]
    # A row that was never signed cannot be revoked: there is nothing to revoke.
    with pytest.raises(Conflict, match="never signed"):
        fresh_ctx.store.revoke(
            authority="operator", serial=mine[0]["serial"], reason="superseded", actor="op"
        )


# -- the worker dies -----------------------------------------------------------------------------

_DIES_WHILE_SIGNING = textwrap.dedent(
    """
    import os, sys
    from ca.authorities import AuthorityRegistry
    from ca.issuance import IssuanceRequest, Issuer
    from ca.service import CAContext
    from config import load_settings
    from hsm import Token

    ctx = CAContext(load_settings())
    opened = []

    def pin():
        # The second time the worker needs the token it dies: after the intent is recorded,
        # while signing, before anything is stored.
        if opened:
            print("dying", flush=True)
            os._exit(1)
        opened.append(True)
        return os.environ["KAKUIN_TOKEN_PIN"]

    token = Token(ctx.settings.pkcs11_module, ctx.settings.token_label, pin)
    issuer = Issuer(AuthorityRegistry(ctx.store, token, ctx.hierarchy), ctx.profiles, ctx.urls)
    csr = open(sys.argv[1], "rb").read()
    prepared = [
        issuer.prepare(IssuanceRequest(profile="client", csr=csr, applicant={"common_name": "doomed"}, actor="worker"))
        for _ in range(3)
    ]
    token.close()
    issuer.issue_prepared(prepared)
    print("survived", flush=True)
    """
)


def worker_env(ctx: CAContext) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KAKUIN_")}
    env.update(
        KAKUIN_HOME=str(ctx.settings.home),
        KAKUIN_DATABASE_URL=ctx.settings.database_url,
        KAKUIN_TOKEN_LABEL=ctx.settings.token_label,
        KAKUIN_TOKEN_PIN=os.environ["KAKUIN_TOKEN_PIN"],
        SOFTHSM2_CONF=os.environ["SOFTHSM2_CONF"],
        PYTHONPATH=str(ROOT),
    )
    return env


def test_worker_dies_between_reserve_and_complete(
    ca_ctx: CAContext, ec_key: ec.EllipticCurvePrivateKey, tmp_path: Path
) -> None:
    csr = tmp_path / "req.pem"
    csr.write_bytes(make_csr(ec_key))
    before = signing_serials(ca_ctx)
    result = subprocess.run(
        [sys.executable, "-c", _DIES_WHILE_SIGNING, str(csr)],
        env=worker_env(ca_ctx),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stdout.strip() == "dying"

    left = [r for r in ca_ctx.store.signing_rows() if r.serial not in before]
    assert len(left) == 3, "the intent rows of the dead worker are found"
    for record in left:
        assert (record.authority, record.profile, record.status) == ("operator", "client", "signing")
        assert record.der is None
        assert "CN=doomed" in record.subject

    # The operator revokes them: a certificate that may exist somewhere is revoked all the same.
    revoked = ca_ctx.store.revoke(
        authority="operator", serial=left[0].serial, reason="cessationOfOperation", actor="op"
    )
    assert revoked.status == "revoked"
    assert [h["action"] for h in ca_ctx.store.revocation_history(revoked.id)] == ["revoke"]
    held = ca_ctx.store.revoke(
        authority="operator", serial=left[1].serial, reason="certificateHold", actor="op"
    )
    assert held.status == "on_hold"
    assert left[0].serial not in signing_serials(ca_ctx)
    assert left[1].serial not in signing_serials(ca_ctx)
    assert left[2].serial in signing_serials(ca_ctx)
    ca_ctx.store.revoke(authority="operator", serial=left[2].serial, reason="superseded", actor="op")


_BULK_LOOP = textwrap.dedent(
    """
    import sys
    from ca.issuance import IssuanceRequest
    from ca.service import CAContext
    from config import load_settings

    ctx = CAContext(load_settings())
    csr = open(sys.argv[1], "rb").read()
    for batch in range(10_000):
        prepared = [
            ctx.issuer.prepare(
                IssuanceRequest(profile="client", csr=csr, applicant={"common_name": f"bulk-{batch}"}, actor="bulk")
            )
            for _ in range(10)
        ]
        ctx.issuer.issue_prepared(prepared)
        print(f"batch {batch}", flush=True)
    """
)


def test_sigkill_in_the_middle_of_bulk_issuance(
    fresh_ctx: CAContext, ec_key: ec.EllipticCurvePrivateKey, tmp_path: Path
) -> None:
    csr = tmp_path / "req.pem"
    csr.write_bytes(make_csr(ec_key))
    process = subprocess.Popen(
        [sys.executable, "-c", _BULK_LOOP, str(csr)],
        env=worker_env(fresh_ctx),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        first = process.stdout.readline()
        assert first.startswith("batch 0"), process.stderr.read() if process.stderr else first
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.kill()
        process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL

    ca_cert = fresh_ctx.authorities.get("operator").certificate
    rows = [row for row in all_rows(fresh_ctx) if row["profile"] == "client"]
    assert len(rows) >= 10
    statuses = {row["status"] for row in rows}
    assert statuses <= {"issued", "signing"}, statuses
    for row in rows:
        if row["status"] == "issued":
            certificate = x509.load_der_x509_certificate(row["der"])
            certificate.verify_directly_issued_by(ca_cert)
            assert format(certificate.serial_number, "x") == row["serial"]
        else:
            assert row["der"] is None
    assert signing_serials(fresh_ctx) == {row["serial"] for row in rows if row["status"] == "signing"}
    for serial in signing_serials(fresh_ctx):
        assert (
            fresh_ctx.store.revoke(
                authority="operator", serial=serial, reason="superseded", actor="op"
            ).status
            == "revoked"
        )
    assert list(fresh_ctx.store.signing_rows()) == []


# -- a revocation that overtakes the signature ---------------------------------------------------


class RevokesWhileSigning(Token):
    """The operator revokes the reserved row while the token is still signing it."""

    def __init__(self, ctx: CAContext) -> None:
        super().__init__(ctx.settings.pkcs11_module, ctx.settings.token_label, ctx.settings.pin.read)
        self.ctx = ctx
        self.revoked: list[str] = []

    def sign(self, label: str, data: bytes, mechanism: Mechanism) -> bytes:
        if not self.revoked:
            for record in self.ctx.store.signing_rows():
                if record.authority == "operator" and "CN=overtaken" in record.subject:
                    self.ctx.store.revoke(
                        authority="operator", serial=record.serial, reason="keyCompromise", actor="op:fast"
                    )
                    self.revoked.append(record.serial)
        return super().sign(label, data, mechanism)


def test_revoked_while_signing_keeps_its_status_and_its_der(
    ca_ctx: CAContext, rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    token = RevokesWhileSigning(ca_ctx)
    try:
        issuer = Issuer(
            AuthorityRegistry(ca_ctx.store, token, ca_ctx.hierarchy), ca_ctx.profiles, ca_ctx.urls
        )
        issued = issuer.issue(
            IssuanceRequest(
                profile="client", csr=make_csr(ec_key), applicant={"common_name": "overtaken"}, actor="t"
            )
        )
    finally:
        token.close()
    assert token.revoked == [issued.serial]
    record = ca_ctx.store.certificate("operator", issued.serial)
    assert record.status == "revoked", "completing the signature must not un-revoke"
    assert record.revocation_reason == "keyCompromise"
    assert record.der == issued.der, "the certificate exists: the CA keeps its copy"
    assert record.fingerprint is not None
