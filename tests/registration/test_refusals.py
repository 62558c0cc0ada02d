"""A refused decision changes nothing: the answer is a problem+json, and the request, the
application, its reviews, the certificates and the audit log are as they were before it."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from ca.service import CAContext
from registration.credentials import ensure_server_credentials
from registration.residents import load_resident_hasher
from registration.store import RegistrationStore
from tests.conftest import KAKUIN_SCRIPT, make_csr, make_ctx, new_token
from tests.lifecycle.conftest import run_cli
from tests.registration.conftest import (
    RA,
    Client,
    People,
    approve,
    issue,
    problem,
    server_env,
    start_server,
    submission,
    wait_ready,
)
from tests.unchanged import snapshot

REQUEST_TABLES = ("ra_revocation_requests", "certificates", "revocations")
APPLICATION_TABLES = ("ra_applications", "ra_reviews", "certificates", "authorities")


def test_approving_a_request_for_a_certificate_revoked_meanwhile_changes_nothing(
    ra: RA, people: People, rsa_key
) -> None:
    cert = issue(people, submission("lgpki-post", rsa_key))
    body = {**cert, "kind": "holder_request", "reason": "affiliation-changed"}
    body.pop("href", None)
    filed = people.a.clerk.post("/v1/revocation-requests", body)
    assert filed.status_code == 201 and filed.json()["state"] == "pending", filed.text
    path = f"/v1/revocation-requests/{filed.json()['id']}"
    revoked = people.operator.post(
        f"/v1/certificates/{cert['authority']}/{cert['serial']}/revoke", {"reason": "key-compromise"}
    )
    assert revoked.status_code == 200, revoked.text

    before = snapshot(ra.ctx.engine, *REQUEST_TABLES)
    refused = people.a.reviewer.post(path + "/reviews", {"decision": "approve"})
    assert "already revoked" in problem(refused, 409, "serial")["detail"]
    assert snapshot(ra.ctx.engine, *REQUEST_TABLES) == before
    shown = people.a.clerk.get(path).json()
    assert shown["state"] == "pending" and shown["reviewed_by"] is None, shown

    # Still open for a decision: rejected, with the reason.
    rejected = people.a.reviewer.post(path + "/reviews", {"decision": "reject", "reason": "失効済み"})
    assert rejected.status_code == 200 and rejected.json()["state"] == "rejected", rejected.text


@pytest.fixture()
def own_ra(softhsm: dict[str, str], tmp_path: Path) -> Iterator[RA]:
    """An RA with one worker on a CA of its own (the test terminates one of its authorities): the
    worker that approves is the one that loaded the authority while it was still active."""
    ctx: CAContext = make_ctx(
        tmp_path, f"sqlite:///{tmp_path / 'kakuin.db'}", new_token(softhsm, f"ra-{uuid.uuid4().hex[:6]}")
    )
    files = ensure_server_credentials(ctx, "test")
    hasher = load_resident_hasher(ctx.settings.home, create=True)
    log = tmp_path / "gunicorn.log"
    process, base = start_server(ctx, files, log, workers=1)
    try:
        ra = RA(ctx, RegistrationStore(ctx.engine), hasher, base, files, tmp_path, "own")
        wait_ready(ra.account("probe-admin", "admin"), process, log)
        yield ra
    finally:
        process.terminate()
        process.wait(timeout=30)
        ctx.token.close()
        ctx.engine.dispose()


def test_a_second_approval_refused_by_the_issuer_changes_nothing(own_ra: RA, rsa_key) -> None:
    office = own_ra.office("a")
    clerk = own_ra.account("clerk", "clerk", office)
    reviewer = own_ra.account("reviewer", "reviewer", office)
    operator = own_ra.account("operator", "operator")
    submitted = clerk.post("/v1/applications", submission("lgpki-post", rsa_key))
    assert submitted.status_code == 201, submitted.text
    app_id, authority = submitted.json()["id"], submitted.json()["authority"]
    assert approve(reviewer, app_id)["state"] == "first_approved"
    # Another process terminates the authority the worker still has loaded as active.
    terminated = run_cli(own_ra.ctx, "ca", "terminate", authority, "--yes")
    assert terminated.exit_code == 0, terminated.output

    before = snapshot(own_ra.ctx.engine, *APPLICATION_TABLES)
    refused = operator.post(f"/v1/applications/{app_id}/reviews", {"decision": "approve"})
    assert f"authority {authority} is terminated" in problem(refused, 403)["detail"]
    assert snapshot(own_ra.ctx.engine, *APPLICATION_TABLES) == before
    shown = clerk.get(f"/v1/applications/{app_id}").json()
    assert shown["state"] == "first_approved" and [r["stage"] for r in shown["reviews"]] == [1], shown


def test_a_credential_that_cannot_be_written_is_not_issued(ra: RA, tmp_path: Path) -> None:
    """A new client certificate replaces the account's previous one at once: if it cannot be
    written out, none is issued and the person's current certificate keeps working."""
    suffix = uuid.uuid4().hex[:6]
    clerk: Client = ra.account(f"cred-{suffix}", "clerk", ra.office(f"cred-{suffix}"))
    assert clerk.get("/v1/me").status_code == 200
    phrase = tmp_path / "phrase"
    phrase.write_text("correct horse battery\n")
    csr = tmp_path / "req.pem"
    csr.write_bytes(make_csr(ec.generate_private_key(ec.SECP256R1())))
    missing = tmp_path / "no-such-directory"
    before = snapshot(ra.ctx.engine, "ra_accounts", "certificates")
    for option, args in (
        ("--p12", ("--p12", str(missing / "clerk.p12"), "--passphrase-file", str(phrase))),
        ("--out", ("--csr", str(csr), "--out", str(missing / "clerk.pem"))),
    ):
        result = subprocess.run(
            [str(KAKUIN_SCRIPT), "account", "credential", clerk.name, *args],
            env=server_env(ra.ctx),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 2, (option, result.stderr)
        errors = [line for line in result.stderr.splitlines() if line.startswith("kakuin: error:")]
        assert len(errors) == 1 and str(missing) in errors[0], (option, result.stderr)
        assert result.stdout == ""
    assert snapshot(ra.ctx.engine, "ra_accounts", "certificates") == before
    assert not missing.exists()
    assert clerk.get("/v1/me").json()["name"] == clerk.name  # the current certificate still works
