"""Revocation: every RFC 5280 reason, hold and release, the errors that change nothing, the audit
trail, races between revokers, and the pre-signed OCSP answers that must die with the commit."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from sqlalchemy import func, insert, select, text
from sqlalchemy.exc import DBAPIError

from ca.db import make_engine
from ca.errors import AlreadyRevoked, BadRequest, Conflict, KakuinError, NotFound
from ca.issuance import IssuanceRequest, IssuedCertificate
from ca.models import AuditEvent, Certificate, Revocation, SignedStatus
from ca.revocation import REASONS, parse_reason
from ca.service import CAContext
from ca.timeutil import utcnow
from tests.conftest import APPLICANTS, make_csr

# RFC 5280 §5.3.1 names, as CRLs, OCSP and cryptography's ReasonFlags spell them.
RFC5280_NAMES = {
    "unspecified": "unspecified",
    "key-compromise": "keyCompromise",
    "ca-compromise": "cACompromise",
    "affiliation-changed": "affiliationChanged",
    "superseded": "superseded",
    "cessation-of-operation": "cessationOfOperation",
    "certificate-hold": "certificateHold",
    "privilege-withdrawn": "privilegeWithdrawn",
    "aa-compromise": "aACompromise",
}


def issue(
    ctx: CAContext, key: ec.EllipticCurvePrivateKey, actor: str = "test:revocation"
) -> IssuedCertificate:
    return ctx.issuer.issue(
        IssuanceRequest(profile="client", csr=make_csr(key), applicant=APPLICANTS["client"], actor=actor)
    )


def table_rows(ctx: CAContext, table: Any, **where: Any) -> list[dict[str, Any]]:
    query = select(table.__table__).order_by(table.__table__.c.id)  # the order things happened
    for column, value in where.items():
        query = query.where(getattr(table.__table__.c, column) == value)
    with ctx.engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(query)]


def count(ctx: CAContext, table: Any) -> int:
    with ctx.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table.__table__)).scalar_one())


def snapshot(ctx: CAContext) -> tuple[int, int, int]:
    return count(ctx, Certificate), count(ctx, Revocation), count(ctx, AuditEvent)


def add_ocsp_answer(ctx: CAContext, issued: IssuedCertificate, status: str = "good") -> None:
    """What the OCSP pre-signer would store: a signed 'good' answer for the certificate."""
    record = ctx.store.certificate(issued.authority, issued.serial)
    now = utcnow()
    with ctx.engine.begin() as conn:
        for algorithm in ("sha1", "sha256"):
            conn.execute(
                insert(SignedStatus.__table__).values(
                    certificate_id=record.id,
                    authority_id=ctx.store.authority(issued.authority).id,
                    serial=record.serial,
                    hash_algorithm=algorithm,
                    cert_status=status,
                    der=b"\x30\x03\x0a\x01\x00",
                    this_update=now,
                    next_update=now + timedelta(hours=1),
                    produced_at=now,
                )
            )


def ocsp_answers(ctx: CAContext, issued: IssuedCertificate) -> int:
    record = ctx.store.certificate(issued.authority, issued.serial)
    return len(table_rows(ctx, SignedStatus, certificate_id=record.id))


# -- reasons -------------------------------------------------------------------------------------


@pytest.mark.parametrize("reason", list(REASONS))
def test_revoke_with_each_reason(ca_ctx: CAContext, ec_key: ec.EllipticCurvePrivateKey, reason: str) -> None:
    issued = issue(ca_ctx, ec_key)
    stored = parse_reason(reason)
    assert stored == RFC5280_NAMES[reason]
    record = ca_ctx.store.revoke(
        authority=issued.authority, serial=issued.serial, reason=stored, actor="test:op"
    )
    hold = reason == "certificate-hold"
    assert record.status == ("on_hold" if hold else "revoked")
    assert record.revocation_reason == stored
    assert record.revoked_at is not None and abs(record.revoked_at - utcnow()) < timedelta(minutes=5)
    history = ca_ctx.store.revocation_history(record.id)
    assert [(h["action"], h["reason"], h["actor"]) for h in history] == [
        ("hold" if hold else "revoke", stored, "test:op")
    ]
    # The stored name maps back onto the RFC 5280 reason CRL and OCSP builders need.
    assert x509.ReasonFlags(stored).value == RFC5280_NAMES[reason]


@pytest.mark.parametrize(
    ("typed", "stored"),
    [
        ("keyCompromise", "keyCompromise"),
        ("key_compromise", "keyCompromise"),
        ("cACompromise", "cACompromise"),
        ("caCompromise", "cACompromise"),
        ("aACompromise", "aACompromise"),
        ("certificateHold", "certificateHold"),
        (" superseded ", "superseded"),
    ],
)
def test_reason_spellings(typed: str, stored: str) -> None:
    assert parse_reason(typed) == stored


@pytest.mark.parametrize("typed", ["stolen", "removeFromCRL", "", "key compromise"])
def test_unknown_reason(typed: str) -> None:
    with pytest.raises(BadRequest) as caught:
        parse_reason(typed)
    assert caught.value.field == "reason"
    assert "key-compromise" in caught.value.detail  # the message lists what is accepted


def test_invalidity_date_is_kept(ca_ctx: CAContext, ec_key: ec.EllipticCurvePrivateKey) -> None:
    issued = issue(ca_ctx, ec_key)
    when = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
    record = ca_ctx.store.revoke(
        authority=issued.authority,
        serial=issued.serial,
        reason="keyCompromise",
        actor="test:op",
        invalidity_date=when,
    )
    assert record.invalidity_date == when


def test_revocation_is_committed_before_it_returns(
    ca_ctx: CAContext, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    issued = issue(ca_ctx, ec_key)
    ca_ctx.store.revoke(
        authority=issued.authority, serial=issued.serial, reason="superseded", actor="test:op"
    )
    other = make_engine(ca_ctx.settings.database_url)  # another connection pool, as another process
    try:
        with other.connect() as conn:
            status = conn.execute(
                select(Certificate.__table__.c.status).where(Certificate.__table__.c.serial == issued.serial)
            ).scalar_one()
    finally:
        other.dispose()
    assert status == "revoked"


# -- refusals change nothing ---------------------------------------------------------------------


def test_revoking_twice(ca_ctx: CAContext, ec_key: ec.EllipticCurvePrivateKey) -> None:
    issued = issue(ca_ctx, ec_key)
    first = ca_ctx.store.revoke(
        authority=issued.authority, serial=issued.serial, reason="keyCompromise", actor="a"
    )
    before = snapshot(ca_ctx)
    with pytest.raises(AlreadyRevoked) as caught:
        ca_ctx.store.revoke(authority=issued.authority, serial=issued.serial, reason="superseded", actor="b")
    assert caught.value.field == "serial"
    assert "already revoked" in caught.value.detail
    assert "keyCompromise" in caught.value.detail
    assert caught.value.http_status == 409
    assert snapshot(ca_ctx) == before
    after = ca_ctx.store.certificate(issued.authority, issued.serial)
    assert (after.revocation_reason, after.revoked_at) == (first.revocation_reason, first.revoked_at)


def test_unknown_serial(ca_ctx: CAContext) -> None:
    before = snapshot(ca_ctx)
    with pytest.raises(NotFound) as caught:
        ca_ctx.store.revoke(
            authority="operator", serial="7fffffffffffffffffffffffffffff01", reason="unspecified", actor="a"
        )
    assert caught.value.field == "serial"
    assert "7fffffffffffffffffffffffffffff01" in caught.value.detail
    assert snapshot(ca_ctx) == before


def test_serial_of_another_issuer(
    ca_ctx: CAContext, rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    issued = ca_ctx.issuer.issue(
        IssuanceRequest(
            profile="lgpki-code-signing", csr=make_csr(rsa_key), applicant=APPLICANTS["lgpki-code-signing"]
        )
    )
    assert issued.authority == "lgpki-app"
    before = snapshot(ca_ctx)
    for wrong in ("lgpki-org", "lgpki-root", "operator"):
        with pytest.raises(NotFound) as caught:
            ca_ctx.store.revoke(authority=wrong, serial=issued.serial, reason="keyCompromise", actor="a")
        assert caught.value.field == "serial"
        assert wrong in caught.value.detail
    assert snapshot(ca_ctx) == before
    assert ca_ctx.store.certificate("lgpki-app", issued.serial).status == "issued"


def test_unknown_authority(ca_ctx: CAContext, ec_key: ec.EllipticCurvePrivateKey) -> None:
    issued = issue(ca_ctx, ec_key)
    with pytest.raises(NotFound) as caught:
        ca_ctx.store.revoke(authority="no-such-ca", serial=issued.serial, reason="keyCompromise", actor="a")
    assert "no-such-ca" in caught.value.detail
    assert ca_ctx.store.certificate(issued.authority, issued.serial).status == "issued"


@pytest.mark.parametrize("serial", ["not-hex", "0", "00", "g1", "1" * 41])
def test_malformed_serial(ca_ctx: CAContext, serial: str) -> None:
    before = snapshot(ca_ctx)
    with pytest.raises((KakuinError, ValueError)) as caught:
        ca_ctx.store.revoke(authority="operator", serial=serial, reason="keyCompromise", actor="a")
    assert "serial" in str(caught.value)
    assert snapshot(ca_ctx) == before


def test_serial_spellings_find_the_same_certificate(
    ca_ctx: CAContext, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    issued = issue(ca_ctx, ec_key)
    number = issued.certificate.serial_number
    colons = ":".join(f"{number:040x}"[i : i + 2] for i in range(0, 40, 2)).upper()
    for spelling in (issued.serial.upper(), f"0x{issued.serial}", colons, number):
        assert ca_ctx.store.certificate(issued.authority, spelling).serial == issued.serial


# -- hold and release ----------------------------------------------------------------------------


def test_hold_then_release(ca_ctx: CAContext, ec_key: ec.EllipticCurvePrivateKey) -> None:
    issued = issue(ca_ctx, ec_key)
    held = ca_ctx.store.revoke(
        authority=issued.authority, serial=issued.serial, reason="certificateHold", actor="op1"
    )
    assert held.status == "on_hold"
    assert held.revocation_reason == "certificateHold"
    add_ocsp_answer(ca_ctx, issued, status="revoked")
    released = ca_ctx.store.release_hold(authority=issued.authority, serial=issued.serial, actor="op2")
    assert released.status == "issued"
    assert released.revoked_at is None and released.revocation_reason is None
    history = ca_ctx.store.revocation_history(released.id)
    assert [(h["action"], h["reason"], h["actor"]) for h in history] == [
        ("hold", "certificateHold", "op1"),
        ("release", "removeFromCRL", "op2"),
    ]
    assert ocsp_answers(ca_ctx, issued) == 0, "a stored 'on hold' answer outlived the release"
    actions = [e["action"] for e in table_rows(ca_ctx, AuditEvent, serial=issued.serial)]
    assert actions == ["certificate.issue", "certificate.hold", "certificate.release"]


def test_hold_then_permanent_revocation(ca_ctx: CAContext, ec_key: ec.EllipticCurvePrivateKey) -> None:
    issued = issue(ca_ctx, ec_key)
    ca_ctx.store.revoke(
        authority=issued.authority, serial=issued.serial, reason="certificateHold", actor="op"
    )
    record = ca_ctx.store.revoke(
        authority=issued.authority, serial=issued.serial, reason="keyCompromise", actor="op"
    )
    assert record.status == "revoked"
    assert record.revocation_reason == "keyCompromise"
    assert [h["action"] for h in ca_ctx.store.revocation_history(record.id)] == ["hold", "revoke"]
    with pytest.raises(Conflict):
        ca_ctx.store.release_hold(authority=issued.authority, serial=issued.serial, actor="op")


def test_hold_twice(ca_ctx: CAContext, ec_key: ec.EllipticCurvePrivateKey) -> None:
    issued = issue(ca_ctx, ec_key)
    ca_ctx.store.revoke(
        authority=issued.authority, serial=issued.serial, reason="certificateHold", actor="op"
    )
    before = snapshot(ca_ctx)
    with pytest.raises(AlreadyRevoked) as caught:
        ca_ctx.store.revoke(
            authority=issued.authority, serial=issued.serial, reason="certificateHold", actor="op"
        )
    assert "on hold" in caught.value.detail
    assert snapshot(ca_ctx) == before


def test_release_of_a_certificate_not_on_hold(ca_ctx: CAContext, ec_key: ec.EllipticCurvePrivateKey) -> None:
    issued = issue(ca_ctx, ec_key)
    before = snapshot(ca_ctx)
    with pytest.raises(Conflict) as caught:
        ca_ctx.store.release_hold(authority=issued.authority, serial=issued.serial, actor="op")
    assert "not on hold" in caught.value.detail and "issued" in caught.value.detail
    assert snapshot(ca_ctx) == before


# -- audit ---------------------------------------------------------------------------------------


def test_audit_events_name_the_actor(ca_ctx: CAContext, ec_key: ec.EllipticCurvePrivateKey) -> None:
    issued = issue(ca_ctx, ec_key, actor="ra:clerk-0042")
    ca_ctx.store.revoke(
        authority=issued.authority, serial=issued.serial, reason="affiliationChanged", actor="cli:alice"
    )
    events = table_rows(ca_ctx, AuditEvent, serial=issued.serial)
    assert [(e["action"], e["actor"], e["authority"]) for e in events] == [
        ("certificate.issue", "ra:clerk-0042", "operator"),
        ("certificate.revoke", "cli:alice", "operator"),
    ]
    for event in events:
        assert abs(event["at"] - utcnow()) < timedelta(minutes=5)
    newest = ca_ctx.store.audit_events(limit=5, action="certificate.revoke")
    assert any(e.serial == issued.serial and e.detail == {"reason": "affiliationChanged"} for e in newest)
    issue_event = next(
        e
        for e in ca_ctx.store.audit_events(limit=50, action="certificate.issue")
        if e.serial == issued.serial
    )
    assert issue_event.detail["profile"] == "client"


# -- races ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("threads", [8])
def test_concurrent_revocation_exactly_one_wins(
    ca_ctx: CAContext, ec_key: ec.EllipticCurvePrivateKey, threads: int
) -> None:
    issued = issue(ca_ctx, ec_key)
    barrier = threading.Barrier(threads)
    outcomes: list[str] = []
    lock = threading.Lock()

    def revoke(n: int) -> None:
        barrier.wait()
        try:
            ca_ctx.store.revoke(
                authority=issued.authority, serial=issued.serial, reason="keyCompromise", actor=f"thread-{n}"
            )
            result = "ok"
        except AlreadyRevoked:
            result = "already"
        except Exception as exc:  # anything else is a failure of the test
            result = f"{type(exc).__name__}: {exc}"
        with lock:
            outcomes.append(result)

    workers = [threading.Thread(target=revoke, args=(n,)) for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
    assert sorted(outcomes) == ["already"] * (threads - 1) + ["ok"], outcomes
    record = ca_ctx.store.certificate(issued.authority, issued.serial)
    history = ca_ctx.store.revocation_history(record.id)
    assert len(history) == 1
    revoke_events = [
        e for e in table_rows(ca_ctx, AuditEvent, serial=issued.serial) if e["action"] == "certificate.revoke"
    ]
    assert len(revoke_events) == 1
    assert revoke_events[0]["actor"] == history[0]["actor"]


# -- pre-signed OCSP answers ---------------------------------------------------------------------


def test_revocation_deletes_presigned_answers(ca_ctx: CAContext, ec_key: ec.EllipticCurvePrivateKey) -> None:
    issued = issue(ca_ctx, ec_key)
    bystander = issue(ca_ctx, ec_key)
    add_ocsp_answer(ca_ctx, issued)
    add_ocsp_answer(ca_ctx, bystander)
    assert ocsp_answers(ca_ctx, issued) == 2
    ca_ctx.store.revoke(authority=issued.authority, serial=issued.serial, reason="keyCompromise", actor="op")
    assert ocsp_answers(ca_ctx, issued) == 0
    assert ocsp_answers(ca_ctx, bystander) == 2, "only the revoked certificate's answers go"


def test_refused_revocation_keeps_presigned_answers(
    ca_ctx: CAContext, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    issued = issue(ca_ctx, ec_key)
    ca_ctx.store.revoke(authority=issued.authority, serial=issued.serial, reason="keyCompromise", actor="op")
    add_ocsp_answer(ca_ctx, issued, status="revoked")
    with pytest.raises(AlreadyRevoked):
        ca_ctx.store.revoke(authority=issued.authority, serial=issued.serial, reason="superseded", actor="op")
    assert ocsp_answers(ca_ctx, issued) == 2


def _install_failing_trigger(ctx: CAContext, certificate_id: int) -> list[str]:
    """A real database fault: inserting the history row of this one certificate fails."""
    if ctx.engine.dialect.name == "sqlite":
        statements = [
            f"CREATE TRIGGER test_fail_{certificate_id} BEFORE INSERT ON revocations "
            f"WHEN NEW.certificate_id = {certificate_id} "
            "BEGIN SELECT RAISE(ABORT, 'injected failure'); END"
        ]
        undo = [f"DROP TRIGGER test_fail_{certificate_id}"]
    else:
        statements = [
            f"CREATE FUNCTION test_fail_{certificate_id}() RETURNS trigger AS $$ BEGIN "
            f"IF NEW.certificate_id = {certificate_id} THEN RAISE EXCEPTION 'injected failure'; END IF; "
            "RETURN NEW; END $$ LANGUAGE plpgsql",
            f"CREATE TRIGGER test_fail_{certificate_id} BEFORE INSERT ON revocations "
            f"FOR EACH ROW EXECUTE FUNCTION test_fail_{certificate_id}()",
        ]
        undo = [
            f"DROP TRIGGER test_fail_{certificate_id} ON revocations",
            f"DROP FUNCTION test_fail_{certificate_id}()",
        ]
    with ctx.engine.begin() as conn:
        for statement in statements:
            conn.execute(text(statement))
    return undo


def test_deletion_and_revocation_are_one_transaction(
    ca_ctx: CAContext, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    """If any part of the revocation fails, the pre-signed answers are still there and the
    certificate is still issued: the delete was not committed on its own."""
    issued = issue(ca_ctx, ec_key)
    add_ocsp_answer(ca_ctx, issued)
    record = ca_ctx.store.certificate(issued.authority, issued.serial)
    undo = _install_failing_trigger(ca_ctx, record.id)
    try:
        before = snapshot(ca_ctx)
        with pytest.raises(DBAPIError, match="injected failure"):
            ca_ctx.store.revoke(
                authority=issued.authority, serial=issued.serial, reason="keyCompromise", actor="op"
            )
        assert snapshot(ca_ctx) == before
        assert ocsp_answers(ca_ctx, issued) == 2
        assert ca_ctx.store.certificate(issued.authority, issued.serial).status == "issued"
    finally:
        with ca_ctx.engine.begin() as conn:
            for statement in undo:
                conn.execute(text(statement))
    # With the fault gone the same revocation goes through and takes the answers with it.
    ca_ctx.store.revoke(authority=issued.authority, serial=issued.serial, reason="keyCompromise", actor="op")
    assert ocsp_answers(ca_ctx, issued) == 0
