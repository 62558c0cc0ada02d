"""What a CRL lists: exactly the revoked and held certificates of its partition that have not
expired (a property, checked on random histories), expired entries kept on one CRL past expiry and
then dropped, and a full CRL plus its delta giving the state of the database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ca.service import CAContext
from ca.timeutil import utcnow
from crl.publisher import Publisher
from tests.crl.conftest import add_rows, make_publisher, unique_partition

# (stored reason, RFC 5280 reason or None when the extension must be absent)
REASONS = [
    ("keyCompromise", x509.ReasonFlags.key_compromise),
    ("affiliationChanged", x509.ReasonFlags.affiliation_changed),
    ("superseded", x509.ReasonFlags.superseded),
    ("cessationOfOperation", x509.ReasonFlags.cessation_of_operation),
    ("unspecified", None),
]
Entry = tuple[x509.ReasonFlags | None, datetime | None]


def entries(crl: x509.CertificateRevocationList) -> dict[int, Entry]:
    found: dict[int, Entry] = {}
    for entry in crl:
        try:
            reason: x509.ReasonFlags | None = entry.extensions.get_extension_for_class(
                x509.CRLReason
            ).value.reason
        except x509.ExtensionNotFound:
            reason = None
        try:
            invalidity = entry.extensions.get_extension_for_class(
                x509.InvalidityDate
            ).value.invalidity_date_utc
        except x509.ExtensionNotFound:
            invalidity = None
        found[entry.serial_number] = (reason, invalidity)
    return found


def load(publisher: Publisher, outcome: object) -> x509.CertificateRevocationList:
    record = outcome.record  # type: ignore[attr-defined]
    assert record is not None
    return x509.load_der_x509_crl((publisher.settings.directory / record.path).read_bytes())


# One certificate's history: expiry (days from now, never 0) and what happens to it before the full
# CRL and between the full and the delta CRL.
actions = st.sampled_from(["none", "revoke", "hold", "hold-release", "hold-revoke"])
certificate = st.tuples(
    st.integers(-40, 40).filter(lambda d: d != 0),
    actions,
    st.sampled_from(range(len(REASONS))),
    st.booleans(),
    st.sampled_from(["none", "revoke", "hold", "release"]),
)


def apply(ctx: CAContext, serial: str, action: str, reason: str, invalidity: datetime | None) -> None:
    store = ctx.store
    if action in ("revoke",):
        store.revoke(
            authority="lgpki-app", serial=serial, reason=reason, actor="test", invalidity_date=invalidity
        )
    elif action.startswith("hold"):
        store.revoke(authority="lgpki-app", serial=serial, reason="certificateHold", actor="test")
        if action == "hold-release":
            store.release_hold(authority="lgpki-app", serial=serial, actor="test")
        elif action == "hold-revoke":
            store.revoke(
                authority="lgpki-app", serial=serial, reason=reason, actor="test", invalidity_date=invalidity
            )


def expected(ctx: CAContext, serials: list[str], this_update: datetime) -> dict[int, Entry]:
    """From the database, independently of the CRL code: every revoked or held certificate of the
    list that expires at or after thisUpdate, with the reason and invalidity date it should show."""
    by_stored = {stored: flag for stored, flag in REASONS}
    result: dict[int, Entry] = {}
    for serial in serials:
        record = ctx.store.certificate("lgpki-app", serial)
        if record.status not in ("revoked", "on_hold") or record.not_after < this_update:
            continue
        reason = (
            x509.ReasonFlags.certificate_hold
            if record.status == "on_hold"
            else by_stored[record.revocation_reason or ""]
        )
        result[int(serial, 16)] = (reason, record.invalidity_date)
    return result


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(history=st.lists(certificate, min_size=0, max_size=10))
def test_partition_crl_lists_exactly_its_revoked_unexpired_certificates(
    ca_ctx: CAContext,
    tmp_path_factory: pytest.TempPathFactory,
    history: list[tuple[int, str, int, bool, str]],
) -> None:
    publisher = make_publisher(ca_ctx, tmp_path_factory.mktemp("prop"))
    partition = unique_partition("h")
    now = utcnow()
    serials = add_rows(ca_ctx, "lgpki-app", partition, [now + timedelta(days=d) for d, *_ in history])
    # Another partition's revoked certificate must never show up.
    stranger = add_rows(ca_ctx, "lgpki-app", unique_partition("x"), [now + timedelta(days=30)])[0]
    ca_ctx.store.revoke(authority="lgpki-app", serial=stranger, reason="keyCompromise", actor="test")
    for serial, (_, action, reason, with_date, _) in zip(serials, history, strict=True):
        invalidity = (now - timedelta(days=3)) if with_date else None
        apply(ca_ctx, serial, action, REASONS[reason][0], invalidity)

    full = publisher.publish_full("lgpki-app", partition)
    assert full.record is not None
    full_crl = load(publisher, full)
    assert entries(full_crl) == expected(ca_ctx, serials, full.record.this_update)
    assert full.record.entries == len(full_crl)

    # Then more changes, and a delta: the full CRL with the delta applied is the state now.
    for serial, (_, _, reason, _, later) in zip(serials, history, strict=True):
        status = ca_ctx.store.certificate("lgpki-app", serial).status
        if later == "revoke" and status in ("issued", "on_hold"):
            apply(ca_ctx, serial, "revoke", REASONS[reason][0], None)
        elif later == "hold" and status == "issued":
            apply(ca_ctx, serial, "hold", "certificateHold", None)
        elif later == "release" and status == "on_hold":
            ca_ctx.store.release_hold(authority="lgpki-app", serial=serial, actor="test")
    delta = publisher.publish_delta("lgpki-app", partition)
    assert delta.record is not None and delta.record.base_number == full.record.number
    merged = entries(full_crl)
    for serial, entry in entries(load(publisher, delta)).items():
        if entry[0] == x509.ReasonFlags.remove_from_crl:
            merged.pop(serial, None)
        else:
            merged[serial] = entry
    assert merged == expected(ca_ctx, serials, full.record.this_update)


def test_expired_entries_stay_on_one_crl_past_expiry_then_drop_off(ca_ctx: CAContext, tmp_path: Path) -> None:
    """RFC 5280 §3.3: an entry is removed only after it appeared on one regularly scheduled CRL
    issued beyond the certificate's validity period."""
    t0 = utcnow()
    clock = [t0]
    publisher = Publisher(
        ca_ctx, make_publisher(ca_ctx, tmp_path / "crl").settings, clock=lambda: clock[0], actor="test"
    )
    partition = unique_partition()
    soon, later, gone = add_rows(
        ca_ctx,
        "lgpki-app",
        partition,
        [t0 + timedelta(hours=1), t0 + timedelta(days=10), t0 - timedelta(hours=1)],
    )
    for serial in (soon, later, gone):
        ca_ctx.store.revoke(authority="lgpki-app", serial=serial, reason="superseded", actor="test")

    def listed_at(offset: timedelta) -> set[int]:
        clock[0] = t0 + offset
        outcome = publisher.publish_full("lgpki-app", partition)
        assert outcome.record is not None and outcome.record.this_update == t0 + offset
        return set(entries(load(publisher, outcome)))

    assert listed_at(timedelta(0)) == {int(soon, 16), int(later, 16)}  # `gone` expired before any CRL
    assert listed_at(timedelta(hours=2)) == {int(soon, 16), int(later, 16)}  # first CRL past its expiry
    assert listed_at(timedelta(hours=4)) == {int(later, 16)}  # then it drops off
    assert listed_at(timedelta(hours=6)) == {int(later, 16)}


def test_complete_crl_spans_partitions_and_the_arl_only_ca_certificates(
    ca_ctx: CAContext, publisher: Publisher
) -> None:
    future = utcnow() + timedelta(days=30)
    user = add_rows(ca_ctx, "lgpki-bridge", unique_partition(), [future])[0]
    cross = add_rows(ca_ctx, "lgpki-bridge", "arl", [future])[0]
    for serial in (user, cross):
        ca_ctx.store.revoke(authority="lgpki-bridge", serial=serial, reason="cACompromise", actor="test")
    assert "arl" in publisher.scopes("lgpki-bridge")
    complete = load(publisher, publisher.publish_full("lgpki-bridge", ""))
    arl = load(publisher, publisher.publish_full("lgpki-bridge", "arl"))
    assert {int(user, 16), int(cross, 16)} <= set(entries(complete))
    assert int(cross, 16) in entries(arl) and int(user, 16) not in entries(arl)
    assert entries(arl)[int(cross, 16)][0] == x509.ReasonFlags.ca_compromise
    idp = arl.extensions.get_extension_for_class(x509.IssuingDistributionPoint).value
    assert idp.only_contains_ca_certs
    assert x509.UniformResourceIdentifier("http://127.0.0.1:8082/crl/lgpki-bridge/arl.crl") in (
        idp.full_name or []
    )
    with pytest.raises(x509.ExtensionNotFound):
        arl.extensions.get_extension_for_class(x509.FreshestCRL)  # ARLs get no deltas
    freshest = complete.extensions.get_extension_for_class(x509.FreshestCRL).value
    assert freshest[0].full_name == [
        x509.UniformResourceIdentifier("http://127.0.0.1:8082/crl/lgpki-bridge-delta.crl")
    ]


def test_scopes_follow_the_partitioning(ca_ctx: CAContext, publisher: Publisher) -> None:
    assert publisher.scopes("lgpki-app")[:5] == ["", "0", "1", "2", "3"]
    assert "arl" not in publisher.scopes("operator") or ca_ctx.store.authority("operator").parent_id is None
    assert "arl" in publisher.scopes("lgpki-root")  # it certified lgpki-org and lgpki-app
    code = "99001"
    add_rows(ca_ctx, "jpki-auth", code, [datetime(2099, 1, 1, tzinfo=UTC)])
    assert code in publisher.scopes("jpki-auth")
