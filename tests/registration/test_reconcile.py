"""A worker that dies mid-way leaves no application or revocation request stuck.

The deaths are real: a process runs the RA's own service code against this backend's database
and token and is SIGKILLed at the point under test (while the token signs; after the certificate
was stored but before the application was marked; after a revocation request was claimed). Then
the reconciler, run as an operator would (`kakuin ra reconcile`) or in-process, repairs what the
database says, and the office collects or the operator approves again through the API.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
from cryptography import x509
from sqlalchemy import select

from ca.errors import Conflict
from ca.models import Certificate
from ca.service import CAContext
from hsm import Token
from registration.models import Application
from registration.reconcile import GRACE_ENV, reconcile
from registration.service import Caller, RegistrationService
from tests.conftest import KAKUIN_SCRIPT
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

_DIES = textwrap.dedent(
    """
    import os, signal, sys
    from ca.service import CAContext
    from config import load_settings
    from hsm import Token
    from registration.residents import load_resident_hasher
    from registration.service import Caller, RegistrationService
    from registration.store import RegistrationStore

    where, item, operator = sys.argv[1], int(sys.argv[2]), sys.argv[3]


    def die() -> None:
        print("dying", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)


    class DiesWhileSigning(Token):
        def sign(self, label, data, mechanism):
            die()


    ctx = CAContext(load_settings())
    if where == "signing":
        ctx.__dict__["token"] = DiesWhileSigning(
            ctx.settings.pkcs11_module, ctx.settings.token_label, ctx.settings.pin.read
        )
    store = RegistrationStore(ctx.engine)
    service = RegistrationService(ctx, store, load_resident_hasher(ctx.settings.home))
    account = store.account(operator)
    if where == "signing":  # the RA's own second review, killed inside the token call
        service.review(Caller("x", account=account), item, {"decision": "approve"})
    elif where == "before-mark":  # signed and stored, killed before the application is marked
        app = store.application(item)
        prepared = ctx.issuer.prepare(service._issuance_request(app, account))
        store.record_review(app, stage=2, account=account, decision="approve", reason=None, new_state="issuing")
        ctx.issuer.issue_prepared([prepared])
        die()
    elif where == "revocation":  # the request is claimed, killed before the certificate is touched
        store.claim_revocation_request(store.revocation_request(item), account, "approve", None)
        die()
    print("survived", flush=True)
    """
)


def kill_at(ra: RA, where: str, item: int, operator: str) -> None:
    result = subprocess.run(
        [sys.executable, "-c", _DIES, where, str(item), operator],
        env=server_env(ra.ctx),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == -signal.SIGKILL, result.stdout + result.stderr
    assert result.stdout.strip() == "dying"


def rows_of(ctx: CAContext, app_id: int) -> list[dict[str, Any]]:
    table = Certificate.__table__
    with ctx.engine.connect() as conn:
        query = select(table).where(table.c.application_id == app_id).order_by(table.c.id)
        return [dict(r) for r in conn.execute(query).mappings()]


def first_approved(people: People, rsa_key, profile: str = "jpki-sign") -> int:
    submitted = people.a.clerk.post("/v1/applications", submission(profile, rsa_key))
    assert submitted.status_code == 201, submitted.text
    app_id = int(submitted.json()["id"])
    approve(people.a.reviewer, app_id)
    return app_id


def run_cli(ra: RA, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(KAKUIN_SCRIPT), "ra", "reconcile", *args],
        env=server_env(ra.ctx),
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_killed_while_signing_goes_back_for_a_new_second_review(ra: RA, people: People, rsa_key) -> None:
    app_id = first_approved(people, rsa_key)
    kill_at(ra, "signing", app_id, people.operator.name)

    # what the dead worker left: the claim and the reserved row, and nothing moves them
    stuck = people.a.clerk.get(f"/v1/applications/{app_id}").json()
    assert stuck["state"] == "issuing" and stuck["certificate"] is None
    [row] = rows_of(ra.ctx, app_id)
    assert row["status"] == "signing" and row["der"] is None
    problem(people.operator2.post(f"/v1/applications/{app_id}/reviews", {"decision": "approve"}), 409, "id")
    problem(people.a.clerk.get(f"/v1/applications/{app_id}/certificate"), 409, "id")

    # within the grace period the reconciler leaves it alone (a live worker could still be at it)
    quiet = run_cli(ra)
    assert quiet.returncode == 0, quiet.stderr
    assert "nothing to reconcile (claims older than 300 s)" in quiet.stdout
    assert people.a.clerk.get(f"/v1/applications/{app_id}").json()["state"] == "issuing"

    repaired = run_cli(ra, "--grace", "0")
    assert repaired.returncode == 0, repaired.stderr
    assert f"reconciled application {app_id}: returned" in repaired.stderr
    assert "reconciled 1 claim(s) older than 0 s" in repaired.stdout

    back = people.a.clerk.get(f"/v1/applications/{app_id}").json()
    assert back["state"] == "first_approved" and back["second_reviewer"] is None
    assert [r["stage"] for r in back["reviews"]] == [1]
    [row] = rows_of(ra.ctx, app_id)
    assert row["status"] == "failed" and row["der"] is None  # never signed, never handed out
    events = [e for e in ra.ctx.store.audit_events(100) if e.detail.get("application") == app_id]
    assert any(e.action == "application.reconcile" and e.detail["outcome"] == "returned" for e in events)

    # the operator approves again; the office collects
    again = approve(people.operator, app_id)
    assert again["state"] == "issued", again
    collected = people.a.clerk.get(
        f"/v1/applications/{app_id}/certificate", headers={"Accept": "application/pkix-cert"}
    )
    assert collected.status_code == 200
    certificate = x509.load_der_x509_certificate(collected.content)
    assert format(certificate.serial_number, "x") == again["certificate"]["serial"] != row["serial"]
    # a second run finds nothing
    assert reconcile(ra.ctx, timedelta(0)) == []


def test_killed_after_signing_issues_the_signed_certificate(
    ra: RA, people: People, rsa_key, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    app_id = first_approved(people, rsa_key, "jpki-auth")
    kill_at(ra, "before-mark", app_id, people.operator.name)
    assert people.a.clerk.get(f"/v1/applications/{app_id}").json()["state"] == "issuing"
    [row] = rows_of(ra.ctx, app_id)
    assert row["status"] == "issued" and row["der"] is not None

    # the job `kakuin up` runs every minute, with the grace period from the settings
    from kakuin import ra_commands, services

    [job] = [job for job in services.JOBS if job.name == "ra-reconcile"]
    assert job.interval(ra.ctx) == ra_commands.RECONCILE_INTERVAL == 60.0
    job.run(ra.ctx)
    assert people.a.clerk.get(f"/v1/applications/{app_id}").json()["state"] == "issuing"  # 300 s grace
    monkeypatch.setenv(GRACE_ENV, "0")
    job.run(ra.ctx)
    assert f"reconciled application {app_id}: issued" in capsys.readouterr().err

    shown = people.a.clerk.get(f"/v1/applications/{app_id}").json()
    assert shown["state"] == "issued"
    assert (
        shown["certificate"]["serial"] == row["serial"] and shown["certificate"]["authority"] == "jpki-auth"
    )
    collected = people.a.clerk.get(
        f"/v1/applications/{app_id}/certificate", headers={"Accept": "application/pkix-cert"}
    )
    assert collected.status_code == 200 and collected.content == row["der"]
    assert people.a.clerk.get(f"/v1/applications/{app_id}").json()["collected_at"] is not None


def test_killed_after_approving_a_revocation_request(ra: RA, people: People, rsa_key) -> None:
    revoked = issue(people, submission("lgpki-post", rsa_key))
    held = issue(people, submission("lgpki-post", rsa_key))
    path = "/v1/certificates/{authority}/{serial}"
    # a hold, then a release request for it, each approved by a worker that dies
    assert people.operator.post(path.format(**held) + "/revoke", {"reason": "certificate-hold"}).ok
    requests_ = {}
    for name, cert, kind in (("revoke", revoked, "holder_request"), ("release", held, "release")):
        target = {"authority": cert["authority"], "serial": cert["serial"], "kind": kind}
        filed = people.a.clerk.post("/v1/revocation-requests", target)
        assert filed.status_code == 201 and filed.json()["state"] == "pending", filed.text
        requests_[name] = filed.json()["id"]
        kill_at(ra, "revocation", filed.json()["id"], people.a.reviewer.name)
        assert (
            people.a.clerk.get(f"/v1/revocation-requests/{filed.json()['id']}").json()["state"] == "approving"
        )

    assert reconcile(ra.ctx, timedelta(seconds=300)) == []
    repairs = {r.id: r for r in reconcile(ra.ctx, timedelta(0))}
    # an approved revocation is carried out: it errs towards distrust
    assert repairs[requests_["revoke"]].outcome == "done"
    assert people.a.clerk.get(path.format(**revoked)).json()["status"] == "revoked"
    assert people.a.clerk.get(f"/v1/revocation-requests/{requests_['revoke']}").json()["state"] == "done"
    # an approved release restores trust: it goes back for a fresh decision, the hold stays
    assert repairs[requests_["release"]].outcome == "pending"
    pending = people.a.clerk.get(f"/v1/revocation-requests/{requests_['release']}").json()
    assert pending["state"] == "pending" and pending["reviewed_by"] is None
    assert people.a.clerk.get(path.format(**held)).json()["status"] == "on_hold"
    decided = people.a.reviewer.post(
        f"/v1/revocation-requests/{requests_['release']}/reviews", {"decision": "approve"}
    )
    assert decided.status_code == 200 and decided.json()["state"] == "done", decided.text
    assert people.a.clerk.get(path.format(**held)).json()["status"] == "issued"
    actions = [
        (e.action, e.detail.get("outcome"))
        for e in ra.ctx.store.audit_events(100)
        if e.detail.get("request") in requests_.values()
    ]
    assert ("revocation_request.reconcile", "done") in actions
    assert ("revocation_request.reconcile", "pending") in actions


class ReconcilesWhileSigning(Token):
    """A worker so slow that the grace period passes while the token signs: the reconciler (grace
    0, on another engine as another process would) runs in the middle of the signature."""

    def __init__(self, ctx: CAContext, reconciler: CAContext) -> None:
        super().__init__(ctx.settings.pkcs11_module, ctx.settings.token_label, ctx.settings.pin.read)
        self.reconciler = reconciler
        self.repairs: list[Any] = []

    def sign(self, label: str, data: bytes, mechanism: Any) -> bytes:
        if not self.repairs:
            self.repairs = reconcile(self.reconciler, timedelta(0))
        return super().sign(label, data, mechanism)


def test_a_worker_outliving_the_grace_period_hands_out_nothing(ra: RA, people: People, rsa_key) -> None:
    app_id = first_approved(people, rsa_key)
    ctx = CAContext(ra.ctx.settings)
    token = ReconcilesWhileSigning(ctx, ra.ctx)
    ctx.__dict__["token"] = token
    try:
        store = ra.store.__class__(ctx.engine)
        service = RegistrationService(ctx, store, ra.hasher)
        slow = Caller("x", account=store.account(people.operator.name))
        with pytest.raises(Conflict, match="reconciled after the grace period"):
            service.review(slow, app_id, {"decision": "approve"})
        assert [(r.kind, r.id, r.outcome) for r in token.repairs] == [("application", app_id, "returned")]
        [row] = rows_of(ctx, app_id)
        assert row["status"] == "failed" and row["der"] is None  # the signature was thrown away
        assert people.a.clerk.get(f"/v1/applications/{app_id}").json()["state"] == "first_approved"
        assert approve(people.operator, app_id)["state"] == "issued"
    finally:
        token.close()
        ctx.engine.dispose()


def test_reconcile_cli_refuses_a_bad_grace(ra: RA) -> None:
    result = run_cli(ra, "--grace", "-1")
    assert result.returncode != 0 and "--grace" in result.stderr
    env = {**server_env(ra.ctx), "KAKUIN_RA_RECONCILE_GRACE": "soon"}
    bad = subprocess.run(
        [str(KAKUIN_SCRIPT), "ra", "reconcile"], env=env, capture_output=True, text=True, timeout=120
    )
    assert bad.returncode != 0
    assert "registration.reconcile_grace_seconds" in bad.stderr and "soon" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1
    assert os.environ.get("KAKUIN_RA_RECONCILE_GRACE") is None


def _workers_of(master: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(stat[1]) == master:
                found.append(int(entry.name))
    return found


def test_gunicorn_worker_sigkilled_during_second_reviews(
    ra: RA, people: People, rsa_key, backend: str, tmp_path: Path
) -> None:
    """End to end: a real gunicorn worker is SIGKILLed the moment the database shows one of a
    burst of second reviews claimed (``issuing``); after the reconciler nothing is stuck, and
    every application is either issued (the office collects it) or back for its second review
    (the operator approves it again)."""
    if backend != "sqlite":
        pytest.skip("bounded time: the same service code on both backends; the kills above run on both")
    log = tmp_path / "gunicorn.log"
    process, base = start_server(ra.ctx, ra.files, log, workers=1)
    try:
        cert = people.operator.session.cert
        assert isinstance(cert, tuple)
        probe = Client(base, cert, str(ra.files.client_ca), people.operator.name)
        wait_ready(probe, process, log)
        [worker] = _workers_of(process.pid)
        apps = [first_approved(people, rsa_key, "jpki-auth") for _ in range(12)]
        answers: dict[int, int | None] = {}

        def second_review(app_id: int) -> None:
            client = Client(base, cert, str(ra.files.client_ca), people.operator.name)
            try:
                answers[app_id] = client.post(
                    f"/v1/applications/{app_id}/reviews", {"decision": "approve"}
                ).status_code
            except requests.RequestException:
                answers[app_id] = None  # the worker died under this request

        threads = [threading.Thread(target=second_review, args=(app_id,)) for app_id in apps]
        table = Application.__table__
        claimed = select(table.c.id).where(table.c.id.in_(apps), table.c.state == "issuing")
        for thread in threads:
            thread.start()
        killed = False
        deadline = time.monotonic() + 60
        with ra.ctx.engine.connect() as conn:
            while time.monotonic() < deadline and not killed:
                if conn.execute(claimed).first() is not None:
                    os.kill(worker, signal.SIGKILL)
                    killed = True
                conn.rollback()
        for thread in threads:
            thread.join(timeout=120)
        assert killed, "no second review was ever seen claimed"
        assert None in answers.values(), answers  # the kill hit requests in flight
    finally:
        process.terminate()
        process.wait(timeout=30)

    stuck = [a for a in apps if ra.store.application(a).state == "issuing"]
    assert stuck, "the kill landed between two second reviews, not in the middle of one"
    assert reconcile(ra.ctx, timedelta(seconds=300)) == []  # a fresh claim is left to its worker
    reconcile(ra.ctx, timedelta(0))
    for app_id in apps:
        app = ra.store.application(app_id)
        assert app.state in ("issued", "first_approved"), (app_id, app.state, stuck)
        if app.state == "first_approved":
            assert answers[app_id] != 200
            assert approve(people.operator, app_id)["state"] == "issued"
        collected = people.a.clerk.get(
            f"/v1/applications/{app_id}/certificate", headers={"Accept": "application/pkix-cert"}
        )
        assert collected.status_code == 200, collected.text
        record = ra.ctx.store.certificate("jpki-auth", ra.store.application(app_id).certificate_serial or "")
        assert record.status == "issued" and record.der == collected.content
    for app_id in apps:  # no reserved row of these applications is left half-done
        assert {r["status"] for r in rows_of(ra.ctx, app_id)} <= {"issued", "failed"}


def test_kakuin_serve_ra_reconciles_before_serving(ra: RA, people: People, rsa_key, backend: str) -> None:
    """A claim left by the previous run's dead worker is repaired when the RA starts."""
    if backend != "sqlite":
        pytest.skip("bounded time: the command is the same on both databases")
    from tests.registration.conftest import free_port

    app_id = first_approved(people, rsa_key, "jpki-auth")
    kill_at(ra, "before-mark", app_id, people.operator.name)
    port = free_port()
    log = ra.tmp / "serve-reconcile.log"
    process = subprocess.Popen(
        [str(KAKUIN_SCRIPT), "serve", "ra", "--port", str(port), "--workers", "1"],
        env={**server_env(ra.ctx), GRACE_ENV: "0"},
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    try:
        cert = people.a.clerk.session.cert
        assert isinstance(cert, tuple)
        clerk = Client(f"https://127.0.0.1:{port}", cert, str(ra.files.client_ca), "clerk")
        wait_ready(clerk, process, log)
        assert f"kakuin: reconciled application {app_id}: issued" in log.read_text()
        shown = clerk.get(f"/v1/applications/{app_id}").json()
        assert shown["state"] == "issued"
        assert clerk.get(f"/v1/applications/{app_id}/certificate").status_code == 200
    finally:
        process.terminate()
        process.wait(timeout=20)
