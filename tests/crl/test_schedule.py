"""The publishing schedule `kakuin up` runs: full CRLs every full_interval, a delta right after
each full, again every delta_interval, and soon after a revocation (only where it happened)."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa

from ca.issuance import IssuanceRequest
from ca.service import CAContext
from ca.timeutil import utcnow
from crl.config import load_crl_settings
from crl.publisher import Outcome, Publisher
from tests.conftest import APPLICANTS, make_csr


def _done(outcomes: list[Outcome]) -> set[tuple[str, str, str]]:
    return {(o.authority, o.partition, o.kind) for o in outcomes if o.record is not None}


def test_schedule(fresh_ctx: CAContext, rsa_key: rsa.RSAPrivateKey, tmp_path: Path) -> None:
    settings = replace(
        load_crl_settings(fresh_ctx.settings),
        directory=tmp_path / "crl",
        full_interval=3600,
        full_validity=7200,
        delta_interval=600,
        delta_validity=1200,
        delta_after_revocation=30,
    )
    t0 = utcnow()
    clock = [t0]
    publisher = Publisher(fresh_ctx, settings, clock=lambda: clock[0], actor="schedule test")

    first = _done(publisher.run_due())
    assert {("lgpki-app", p, k) for p in ("", "0", "1", "2", "3") for k in ("full", "delta")} <= first
    assert ("lgpki-root", "arl", "full") in first and ("lgpki-root", "arl", "delta") not in first
    assert ("lgpki-org", "arl", "full") not in first  # it certifies no CA
    scopes = {(a, p) for a, p, k in first if k == "full"}
    assert len(first) == 2 * len(scopes) - sum(1 for _, p in scopes if p == "arl")

    clock[0] = t0 + timedelta(seconds=10)
    assert _done(publisher.run_due()) == set()  # nothing due

    issued = fresh_ctx.issuer.issue(
        IssuanceRequest(profile="lgpki-server", csr=make_csr(rsa_key), applicant=APPLICANTS["lgpki-server"])
    )
    partition = fresh_ctx.store.certificate("lgpki-app", issued.serial).partition
    fresh_ctx.store.revoke(authority="lgpki-app", serial=issued.serial, reason="keyCompromise", actor="test")
    clock[0] = t0 + timedelta(seconds=20)
    assert _done(publisher.run_due()) == set()  # within delta_after_revocation of the last CRL
    clock[0] = t0 + timedelta(seconds=60)
    soon = publisher.run_due()
    assert _done(soon) == {("lgpki-app", partition, "delta"), ("lgpki-app", "", "delta")}
    delta = next(o for o in soon if o.partition == partition)
    assert delta.record is not None
    crl = x509.load_der_x509_crl((settings.directory / delta.record.path).read_bytes())
    assert [e.serial_number for e in crl] == [issued.certificate.serial_number]

    clock[0] = t0 + timedelta(seconds=650)
    periodic = _done(publisher.run_due())
    assert periodic == {(a, p, "delta") for a, p in scopes if p != "arl"} - {
        ("lgpki-app", partition, "delta"),
        ("lgpki-app", "", "delta"),
    }

    clock[0] = t0 + timedelta(seconds=3700)
    hourly = _done(publisher.run_due())
    assert {(a, p) for a, p, k in hourly if k == "full"} == scopes
    assert {(a, p) for a, p, k in hourly if k == "delta"} == {(a, p) for a, p in scopes if p != "arl"}
