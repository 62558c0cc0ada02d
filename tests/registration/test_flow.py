"""The application flow through the real service: submit -> office review -> CA operator review ->
issuance -> collection, and every rule on the way (self-review, double review, other offices,
final rejection, disabled accounts)."""

from __future__ import annotations

import subprocess

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from tests.conftest import KAKUIN_SCRIPT, jpki_sign_applicant, openssl
from tests.registration.conftest import RA, People, approve, problem, server_env, submission


@pytest.mark.parametrize("profile", ["jpki-sign", "jpki-auth", "lgpki-post"])
def test_whole_flow_issues_and_office_collects(
    ra: RA, people: People, rsa_key, profile: str, tmp_path
) -> None:
    office = people.a
    body = submission(profile, rsa_key)
    submitted = office.clerk.post("/v1/applications", body)
    assert submitted.status_code == 201, submitted.text
    app = submitted.json()
    assert submitted.headers["Location"] == f"/v1/applications/{app['id']}"
    assert app["state"] == "submitted" and app["office"] == office.code
    assert app["submitted_by"] == office.clerk.name
    assert "resident_id" not in submitted.text and str(body.get("resident_id", "none")) not in submitted.text

    first = approve(office.reviewer, app["id"])
    assert first["state"] == "first_approved" and first["first_reviewer"] == office.reviewer.name
    assert office.clerk.get(f"/v1/applications/{app['id']}/certificate").status_code == 409

    second = approve(people.operator, app["id"])
    assert second["state"] == "issued", second
    assert [r["stage"] for r in second["reviews"]] == [1, 2]
    serial = second["certificate"]["serial"]

    pem = office.clerk.get(f"/v1/applications/{app['id']}/certificate")
    assert pem.status_code == 200 and pem.headers["Content-Type"].startswith("application/x-pem-file")
    der = office.clerk.get(
        f"/v1/applications/{app['id']}/certificate", headers={"Accept": "application/pkix-cert"}
    )
    assert der.headers["Content-Type"] == "application/pkix-cert"
    certificate = x509.load_der_x509_certificate(der.content)
    assert certificate.public_bytes(Encoding.PEM) == pem.content
    assert format(certificate.serial_number, "x") == serial
    assert certificate.public_key().public_numbers() == rsa_key.public_key().public_numbers()

    # the CA's record knows the application and (for JPKI) the resident, by keyed hash only
    record = ra.ctx.store.certificate(second["certificate"]["authority"], serial)
    assert record.status == "issued" and record.application_id == app["id"]
    if profile.startswith("jpki"):
        assert record.resident_key == ra.hasher(str(body["resident_id"]))
    else:
        assert record.resident_key is None

    # openssl, an independent client, parses what the office collected
    (tmp_path / "leaf.pem").write_bytes(pem.content)
    shown = openssl("x509", "-in", str(tmp_path / "leaf.pem"), "-noout", "-serial")
    assert shown.returncode == 0 and shown.stdout.strip().lower().endswith(serial.encode())

    collected = office.clerk.get(f"/v1/applications/{app['id']}").json()
    assert collected["collected_at"] is not None
    actions = [e.action for e in ra.ctx.store.audit_events(200) if e.detail.get("application") == app["id"]]
    for action in (
        "application.submit",
        "application.review1.approve",
        "application.review2.approve",
        "application.collect",
    ):
        assert action in actions
    actors = {e.actor for e in ra.ctx.store.audit_events(200) if e.detail.get("application") == app["id"]}
    assert {f"ra:{office.clerk.name}", f"ra:{office.reviewer.name}", f"ra:{people.operator.name}"} <= actors


def test_rejection_is_final_at_either_review(people: People, rsa_key) -> None:
    office = people.a
    for rejecter, approver in ((office.reviewer, None), (people.operator, office.reviewer)):
        app = office.clerk.post("/v1/applications", submission("lgpki-post", rsa_key)).json()
        if approver is not None:
            approve(approver, app["id"])
        problem(rejecter.post(f"/v1/applications/{app['id']}/reviews", {"decision": "reject"}), 400, "reason")
        rejected = rejecter.post(
            f"/v1/applications/{app['id']}/reviews", {"decision": "reject", "reason": "署名欄なし"}
        )
        assert rejected.status_code == 200 and rejected.json()["state"] == "rejected"
        assert rejected.json()["rejection_reason"] == "署名欄なし"
        for client in (office.reviewer, people.operator, people.operator2):
            problem(client.post(f"/v1/applications/{app['id']}/reviews", {"decision": "approve"}), 409, "id")
        assert office.clerk.get(f"/v1/applications/{app['id']}").json()["state"] == "rejected"
        problem(office.clerk.get(f"/v1/applications/{app['id']}/certificate"), 409)


def test_nobody_reviews_own_submission_or_gives_both_reviews(ra: RA, people: People, rsa_key) -> None:
    office = people.a
    # a reviewer who also submits (a reviewer is not a clerk: the role refuses submission)
    problem(office.reviewer.post("/v1/applications", submission("lgpki-post", rsa_key)), 403)
    app = office.clerk.post("/v1/applications", submission("lgpki-post", rsa_key)).json()
    problem(office.clerk.post(f"/v1/applications/{app['id']}/reviews", {"decision": "approve"}), 403)
    # the second review cannot come before the first
    problem(people.operator.post(f"/v1/applications/{app['id']}/reviews", {"decision": "approve"}), 409, "id")
    approve(office.reviewer, app["id"])
    problem(office.reviewer.post(f"/v1/applications/{app['id']}/reviews", {"decision": "approve"}), 409, "id")
    assert office.clerk.get(f"/v1/applications/{app['id']}").json()["state"] == "first_approved"

    # one account with both stages' power does not exist; the store rule holds for any account:
    # an operator who happened to give the first review may not give the second
    from registration.store import RegistrationStore

    store = RegistrationStore(ra.ctx.engine)
    app2 = office.clerk.post("/v1/applications", submission("lgpki-post", rsa_key)).json()
    record = store.application(app2["id"])
    operator = store.account(people.operator.name)
    store.record_review(
        record, stage=1, account=operator, decision="approve", reason=None, new_state="first_approved"
    )
    denied = people.operator.post(f"/v1/applications/{app2['id']}/reviews", {"decision": "approve"})
    assert problem(denied, 403)["detail"] == "one person cannot give both reviews"
    assert approve(people.operator2, app2["id"])["state"] == "issued"


def test_offices_see_only_their_own_work(people: People, rsa_key) -> None:
    app = people.a.clerk.post("/v1/applications", submission("jpki-auth", rsa_key)).json()
    for client in (people.b.clerk, people.b.reviewer):
        problem(client.get(f"/v1/applications/{app['id']}"), 404, "id")
        problem(client.get(f"/v1/applications/{app['id']}/certificate"), 404, "id")
    problem(
        people.b.reviewer.post(f"/v1/applications/{app['id']}/reviews", {"decision": "approve"}), 404, "id"
    )
    listing = people.b.clerk.get("/v1/applications").json()
    assert all(item["office"] == people.b.code for item in listing["items"])
    assert app["id"] not in [item["id"] for item in listing["items"]]
    problem(people.b.clerk.get(f"/v1/applications?office={people.a.code}"), 403, "office")
    # the operator sees every office and can filter
    mine = people.operator.get(
        f"/v1/applications?office={people.a.code}&state=submitted&profile=jpki-auth"
    ).json()
    assert app["id"] in [item["id"] for item in mine["items"]]
    assert all(i["office"] == people.a.code and i["state"] == "submitted" for i in mine["items"])
    # and the certificate of another office's resident is not theirs to see or revoke
    approve(people.a.reviewer, app["id"])
    issued = approve(people.operator, app["id"])["certificate"]
    path = f"/v1/certificates/{issued['authority']}/{issued['serial']}"
    assert people.a.clerk.get(path).json()["status"] == "issued"
    problem(people.b.clerk.get(path), 404, "serial")
    body = {"authority": issued["authority"], "serial": issued["serial"], "kind": "loss"}
    problem(people.b.clerk.post("/v1/revocation-requests", body), 404, "serial")


def test_listing_pages_and_filters(people: People, rsa_key) -> None:
    office = people.a
    ids = [
        office.clerk.post("/v1/applications", submission("lgpki-post", rsa_key)).json()["id"]
        for _ in range(3)
    ]
    page = office.clerk.get("/v1/applications?limit=2&profile=lgpki-post").json()
    assert len(page["items"]) == 2 and page["next"]
    rest = office.clerk.get(page["next"]).json()
    seen = [i["id"] for i in page["items"]] + [i["id"] for i in rest["items"]]
    assert seen == sorted(seen, reverse=True) and set(ids) <= set(seen)
    problem(office.clerk.get("/v1/applications?state=bogus"), 400, "state")
    problem(office.clerk.get("/v1/applications?limit=0"), 400, "limit")
    problem(office.clerk.get("/v1/applications?since=yesterday"), 400, "since")
    future = office.clerk.get("/v1/applications?since=2999-01-01").json()
    assert future["items"] == [] and future["next"] is None


def test_disabled_account_is_refused_at_once(ra: RA, people: People, rsa_key, tmp_path) -> None:
    clerk = ra.account("clerk-soon-gone", "clerk", people.a.code)
    assert clerk.get("/v1/applications").status_code == 200  # keep the TLS connection open
    result = subprocess.run(
        [str(KAKUIN_SCRIPT), "account", "disable", clerk.name],
        env=server_env(ra.ctx),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert f"disabled {clerk.name}" in result.stdout
    data = problem(clerk.get("/v1/applications"), 403)  # same connection, next request
    assert "disabled" in data["detail"]
    problem(clerk.post("/v1/applications", submission("lgpki-post", rsa_key)), 403)


def test_unknown_certificate_and_no_certificate(ra: RA) -> None:
    import requests

    # a client certificate that belongs to no account: authenticated TLS, but no role
    stranger = ra.account("stranger", "clerk", ra.office("s"))
    ra.store.set_credential(stranger.name, "0" * 64, "1", "test")
    problem(stranger.get("/v1/applications"), 403)
    assert stranger.get("/healthz").json() == {"status": "ok"}
    # no client certificate at all: the TLS handshake itself fails
    with pytest.raises(requests.exceptions.RequestException):
        ra.anonymous().get("/healthz")


def test_bad_input_is_problem_json_and_changes_nothing(ra: RA, people: People, rsa_key) -> None:
    clerk = people.a.clerk
    before = len(ra.store.applications(limit=10_000))
    problem(
        clerk.post(
            "/v1/applications", data=b'{"profile": "jpki-sign",', headers={"Content-Type": "application/json"}
        ),
        400,
        "body",
    )
    problem(
        clerk.post("/v1/applications", {**submission("lgpki-post", rsa_key), "profile": "nope"}),
        400,
        "profile",
    )
    problem(
        clerk.post(
            "/v1/applications",
            {
                **submission("lgpki-post", rsa_key),
                "csr": "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
            },
        ),
        400,
        "csr",
    )
    bad_date = submission("jpki-sign", rsa_key)
    bad_date["applicant"] = jpki_sign_applicant(birth_date="1985-13-45")
    problem(clerk.post("/v1/applications", bad_date), 400, "applicant.birth_date")
    problem(
        clerk.post("/v1/applications", {**submission("jpki-auth", rsa_key), "resident_id": "12"}),
        400,
        "resident_id",
    )
    problem(clerk.post("/v1/applications", {**submission("lgpki-post", rsa_key), "extra": 1}), 400, "extra")
    problem(
        clerk.post("/v1/applications", submission("lgpki-post", rsa_key) | {"profile": "client"}),
        422,
        "profile",
    )
    huge = {**submission("lgpki-post", rsa_key), "padding": "x" * 200_000}
    problem(clerk.post("/v1/applications", huge), 413, "body")
    problem(
        clerk.post(
            "/v1/applications",
            data=b"profile=x",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        ),
        415,
    )
    problem(
        clerk.session.post(ra.base + "/v1/applications", json=submission("lgpki-post", rsa_key), timeout=30),
        400,
        "Idempotency-Key",
    )
    problem(clerk.get("/v1/nothing-here"), 404)
    problem(clerk.session.delete(ra.base + "/v1/applications", timeout=30), 405)
    assert len(ra.store.applications(limit=10_000)) == before
