"""Revocation requests of offices, the CA operator's revoke/hold/release, and the resident-change
feed revoking exactly what domain.md's rules say, once."""

from __future__ import annotations

import uuid

import pytest

from tests.conftest import jpki_sign_applicant
from tests.registration.conftest import RA, People, issue, problem, resident_id, submission


def status(ra: RA, cert: dict) -> str:
    return ra.ctx.store.certificate(cert["authority"], cert["serial"]).status


def test_jpki_loss_report_revokes_at_once(ra: RA, people: People, rsa_key) -> None:
    cert = issue(people, submission("jpki-sign", rsa_key))
    body = {"authority": cert["authority"], "serial": cert["serial"], "kind": "loss", "note": "card lost"}
    filed = people.a.clerk.post("/v1/revocation-requests", body)
    assert filed.status_code == 201, filed.text
    assert filed.json()["state"] == "done" and filed.json()["reason"] == "keyCompromise"
    record = ra.ctx.store.certificate(cert["authority"], cert["serial"])
    assert record.status == "revoked" and record.revocation_reason == "keyCompromise"
    assert (
        people.a.clerk.get(f"/v1/certificates/{cert['authority']}/{cert['serial']}").json()["status"]
        == "revoked"
    )
    problem(people.a.clerk.post("/v1/revocation-requests", body), 409, "serial")


def test_other_requests_wait_for_a_review_by_someone_else(ra: RA, people: People, rsa_key) -> None:
    cert = issue(people, submission("lgpki-post", rsa_key))
    body = {
        "authority": cert["authority"],
        "serial": cert["serial"],
        "kind": "holder_request",
        "reason": "affiliation-changed",
    }
    filed = people.a.clerk.post("/v1/revocation-requests", body).json()
    assert filed["state"] == "pending" and filed["reason"] == "affiliationChanged"
    assert status(ra, cert) == "issued"
    path = f"/v1/revocation-requests/{filed['id']}"
    problem(people.a.clerk.post(path + "/reviews", {"decision": "approve"}), 403)  # a clerk does not review
    problem(people.b.reviewer.post(path + "/reviews", {"decision": "approve"}), 404, "id")  # another office
    problem(people.b.reviewer.get(path), 404, "id")
    done = people.a.reviewer.post(path + "/reviews", {"decision": "approve"})
    assert done.status_code == 200 and done.json()["state"] == "done", done.text
    assert done.json()["reviewed_by"] == people.a.reviewer.name
    assert status(ra, cert) == "revoked"
    problem(people.a.reviewer.post(path + "/reviews", {"decision": "approve"}), 409, "id")

    # a rejected request changes nothing and stays rejected
    cert2 = issue(people, submission("lgpki-post", rsa_key))
    filed2 = people.a.clerk.post("/v1/revocation-requests", {**body, "serial": cert2["serial"]}).json()
    rejected = people.operator.post(
        f"/v1/revocation-requests/{filed2['id']}/reviews", {"decision": "reject", "reason": "本人確認できず"}
    )
    assert rejected.json()["state"] == "rejected" and rejected.json()["rejection_reason"] == "本人確認できず"
    assert status(ra, cert2) == "issued"
    listing = people.a.clerk.get("/v1/revocation-requests?state=rejected").json()["items"]
    assert filed2["id"] in [item["id"] for item in listing]
    assert people.b.clerk.get("/v1/revocation-requests").json()["items"] == []


def test_hold_and_release_through_requests_and_the_operator(ra: RA, people: People, rsa_key) -> None:
    cert = issue(people, submission("jpki-auth", rsa_key))
    base = {"authority": cert["authority"], "serial": cert["serial"]}
    hold = people.a.clerk.post("/v1/revocation-requests", {**base, "kind": "hold"}).json()
    people.a.reviewer.post(f"/v1/revocation-requests/{hold['id']}/reviews", {"decision": "approve"})
    assert status(ra, cert) == "on_hold"
    release = people.a.clerk.post("/v1/revocation-requests", {**base, "kind": "release"}).json()
    people.operator.post(f"/v1/revocation-requests/{release['id']}/reviews", {"decision": "approve"})
    assert status(ra, cert) == "issued"

    path = f"/v1/certificates/{cert['authority']}/{cert['serial']}"
    problem(people.a.clerk.post(path + "/revoke", {"reason": "key-compromise"}), 403)
    held = people.operator.post(path + "/revoke", {"reason": "certificate-hold"})
    assert held.status_code == 200 and held.json()["status"] == "on_hold"
    assert people.operator.post(path + "/release").json()["status"] == "issued"
    problem(people.operator.post(path + "/revoke", {"reason": "bogus"}), 400, "reason")
    revoked = people.operator.post(path + "/revoke", {"reason": "superseded"})
    assert revoked.json()["status"] == "revoked" and revoked.json()["revocation_reason"] == "superseded"
    problem(people.operator.post(path + "/revoke", {"reason": "superseded"}), 409, "serial")
    events = [e for e in ra.ctx.store.audit_events(100) if e.serial == cert["serial"]]
    assert f"ra:{people.operator.name}" in {e.actor for e in events if e.action == "certificate.revoke"}


@pytest.fixture(scope="module")
def registry(ra: RA):
    return ra.account("resident-registry", "registry")


def test_resident_events_follow_the_rules_and_apply_once(ra: RA, people: People, registry, rsa_key) -> None:
    rid = resident_id()
    sign = issue(people, submission("jpki-sign", rsa_key, resident_id=rid))
    auth = issue(people, submission("jpki-auth", rsa_key, resident_id=rid))
    post = issue(people, submission("lgpki-post", rsa_key))

    moved = {
        "event_id": "ev1-" + uuid.uuid4().hex,
        "kind": "moved",
        "resident_id": rid,
        "occurred_on": "2026-04-01",
    }
    first = registry.post("/v1/resident-events", moved)
    assert first.status_code == 200, first.text
    answer = first.json()
    assert answer["outcome"] == "applied" and answer["replayed"] is False
    assert [(c["serial"], c["reason"]) for c in answer["revoked"]] == [(sign["serial"], "affiliationChanged")]
    assert [c["serial"] for c in answer["kept"]] == [auth["serial"]]
    assert (status(ra, sign), status(ra, auth), status(ra, post)) == ("revoked", "issued", "issued")
    assert rid not in first.text

    # sent again (a new Idempotency-Key, the same event id): applied once, the same answer
    again = registry.post("/v1/resident-events", moved)
    assert again.status_code == 200 and again.json()["replayed"] is True
    assert again.json()["revoked"] == answer["revoked"] and again.json()["kept"] == answer["kept"]
    problem(registry.post("/v1/resident-events", {**moved, "kind": "died"}), 422, "event_id")
    revocations = [
        e
        for e in ra.ctx.store.audit_events(500)
        if e.serial == sign["serial"] and e.action == "certificate.revoke"
    ]
    assert len(revocations) == 1

    died = registry.post(
        "/v1/resident-events", {"event_id": "ev2-" + uuid.uuid4().hex, "kind": "died", "resident_id": rid}
    ).json()
    assert [(c["serial"], c["reason"]) for c in died["revoked"]] == [(auth["serial"], "cessationOfOperation")]
    assert status(ra, auth) == "revoked" and status(ra, post) == "issued"


@pytest.mark.parametrize(
    ("kind", "sign_revoked", "auth_revoked"),
    [
        ("renamed", True, False),
        ("former_surname_changed", True, False),
        ("removed", True, True),
        ("card_returned", True, True),
        ("card_lapsed", True, True),
    ],
)
def test_each_event_kind(
    ra: RA, people: People, registry, rsa_key, kind: str, sign_revoked: bool, auth_revoked: bool
) -> None:
    rid = resident_id()
    sign = issue(people, submission("jpki-sign", rsa_key, resident_id=rid))
    auth = issue(people, submission("jpki-auth", rsa_key, resident_id=rid))
    answer = registry.post(
        "/v1/resident-events", {"event_id": f"{kind}-{uuid.uuid4().hex}", "kind": kind, "resident_id": rid}
    ).json()
    assert status(ra, sign) == ("revoked" if sign_revoked else "issued")
    assert status(ra, auth) == ("revoked" if auth_revoked else "issued")
    assert len(answer["revoked"]) == sign_revoked + auth_revoked


def test_unknown_resident_and_bad_events(ra: RA, people: People, registry) -> None:
    event = {"event_id": "unknown-1-" + resident_id(), "kind": "died", "resident_id": resident_id()}
    answer = registry.post("/v1/resident-events", event).json()
    assert (
        answer["outcome"] == "unknown_resident" and answer["revoked"] == [] and "recorded" in answer["detail"]
    )
    assert registry.post("/v1/resident-events", event).json()["replayed"] is True
    problem(
        registry.post("/v1/resident-events", {**event, "event_id": "x1", "kind": "emigrated"}), 400, "kind"
    )
    problem(
        registry.post("/v1/resident-events", {**event, "event_id": "x2", "resident_id": "abc"}),
        400,
        "resident_id",
    )
    problem(people.a.clerk.post("/v1/resident-events", {**event, "event_id": "x3"}), 403)
    # the feed of the registry never leaks into an office's view
    problem(registry.get("/v1/applications"), 403)


def test_sign_certificate_of_minor_is_refused_at_submission(people: People, rsa_key) -> None:
    young = submission("jpki-sign", rsa_key)
    young["applicant"] = jpki_sign_applicant(birth_date="2020-01-01", card_expiry="2030-01-01")
    problem(people.a.clerk.post("/v1/applications", young), 422, "applicant.birth_date")
