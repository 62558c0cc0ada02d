"""Hardened endpoints (issue 15), as an attacker met them on a running RA: malformed input, an
office acting in another office's name or for a municipality it does not serve, implausible
applicant data, and a database that cannot be written. Each gets the documented refusal
(problem+json naming the field) and nothing is written: no application, no certificate, no CRL
partition."""

from __future__ import annotations

import json
import sqlite3
import subprocess
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
from sqlalchemy import text

from ca.timeutil import JST, utcnow
from crl.publisher import Publisher
from tests.conftest import KAKUIN_SCRIPT, jpki_auth_applicant, jpki_sign_applicant, make_csr
from tests.registration.conftest import (
    RA,
    Client,
    People,
    approve,
    issue,
    resident_id,
    server_env,
    start_server,
    submission,
    wait_ready,
)

FULL_WIDTH = str.maketrans("0123456789", "０１２３４５６７８９")
ARABIC_INDIC = str.maketrans("0123456789", "٠١٢٣٤٥٦٧٨٩")
HUGE = "9" * 5000  # int() refuses more than 4,300 digits with a ValueError
LONG = "9" * 400  # as long as a number in a URL gets (gunicorn refuses request lines over 4 KiB itself)


@dataclass
class Attack:
    """One malformed request and the refusal docs/ra.md promises for it."""

    name: str
    send: Callable[[], requests.Response]
    status: int
    kind: str
    field: str | None


def mismatch(response: requests.Response, status: int, kind: str, field: str | None) -> str | None:
    """What is wrong with the answer, or None if it is the documented refusal."""
    if response.status_code != status:
        return f"status {response.status_code}, not {status}: {response.text[:300]}"
    if response.headers.get("Content-Type") != "application/problem+json":
        return f"Content-Type {response.headers.get('Content-Type')}: {response.text[:300]}"
    data = response.json()
    if data.get("type") != f"urn:kakuin:problem:{kind}" or not data.get("title"):
        return f"type {data.get('type')!r} title {data.get('title')!r}, not {kind}"
    if data.get("status") != status or not data.get("detail"):
        return f"body {data}"
    if field is not None and (
        data.get("field") != field or data.get("invalid-params", [{}])[0].get("name") != field
    ):
        return f"field {data.get('field')!r}, not {field!r}"
    if status == 503 and not response.headers.get("Retry-After", "").isdigit():
        return f"Retry-After {response.headers.get('Retry-After')!r}"
    return None


def raw(client: Client, path: str, body: str) -> requests.Response:
    """A body sent exactly as written (the JSON a client library would never produce)."""
    return client.post(path, data=body.encode("utf-8"), headers={"Content-Type": "application/json"})


def written(ra: RA) -> dict[str, object]:
    """Everything a refused request must leave as it was."""
    with ra.ctx.engine.connect() as conn:
        counts: dict[str, object] = {
            table: conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one()
            for table in ("ra_applications", "certificates", "ra_revocation_requests", "ra_resident_events")
        }
        counts["partitions"] = sorted(
            conn.execute(text("SELECT DISTINCT partition FROM certificates")).scalars().all()
        )
    return counts


def with_applicant(body: dict[str, object], **items: object) -> dict[str, object]:
    applicant = dict(body["applicant"])  # type: ignore[call-overload]
    applicant.update(items)
    return {**body, "applicant": applicant}


def test_every_attack_gets_the_documented_refusal_and_writes_nothing(
    ra: RA, people: People, rsa_key, tmp_path: Path
) -> None:
    clerk, operator = people.a.clerk, people.operator
    registry = ra.account("hardening-registry", "registry")
    sign, auth = submission("jpki-sign", rsa_key), submission("jpki-auth", rsa_key)
    csr = str(sign["csr"])
    existing = clerk.post("/v1/applications", submission("lgpki-post", rsa_key))
    assert existing.status_code == 201
    existing_id = existing.json()["id"]
    today = utcnow().astimezone(JST).date()
    body = json.dumps(sign, ensure_ascii=False)
    event = {"event_id": "hardening-1", "kind": "moved", "resident_id": resident_id()}

    def submit(data: dict[str, object]) -> Callable[[], requests.Response]:
        return lambda: clerk.post("/v1/applications", data)

    def submit_raw(text_body: str) -> Callable[[], requests.Response]:
        return lambda: raw(clerk, "/v1/applications", text_body)

    attacks = [
        # numbers and identifiers: exact form, bounded length
        Attack(
            "5,000-digit integer", submit_raw(body[:-1] + f', "x": {HUGE}}}'), 400, "malformed-json", "body"
        ),
        Attack(
            "5,000-digit negative integer as sex",
            submit_raw(body.replace('"sex": "2"', f'"sex": -{HUGE}')),
            400,
            "malformed-json",
            "body",
        ),
        Attack(
            "5,000-digit number", submit_raw(body[:-1] + f', "x": {HUGE}.5}}'), 400, "malformed-json", "body"
        ),
        Attack("NaN", submit_raw(body[:-1] + ', "x": NaN}'), 400, "malformed-json", "body"),
        Attack("Infinity", submit_raw(body[:-1] + ', "x": -Infinity}'), 400, "malformed-json", "body"),
        Attack(
            "a member twice",
            submit_raw(body[:-1] + ', "profile": "lgpki-post"}'),
            400,
            "malformed-json",
            "body",
        ),
        Attack(
            "full-width resident id",
            submit({**sign, "resident_id": "12345678901".translate(FULL_WIDTH)}),
            400,
            "bad-request",
            "resident_id",
        ),
        Attack(
            "Arabic-Indic resident id",
            submit({**auth, "resident_id": "12345678901".translate(ARABIC_INDIC)}),
            400,
            "bad-request",
            "resident_id",
        ),
        Attack(
            "lone surrogate",
            submit_raw(body.replace("山田", "\\ud800")),
            400,
            "bad-request",
            "applicant.name",
        ),
        Attack(
            "full-width municipality code",
            submit(with_applicant(auth, municipality_code="13101".translate(FULL_WIDTH))),
            400,
            "bad-applicant-data",
            "applicant.municipality_code",
        ),
        Attack(
            "municipality 99999",
            submit(with_applicant(sign, municipality_code="99999")),
            400,
            "bad-applicant-data",
            "applicant.municipality_code",
        ),
        Attack(
            "wrong check digit",
            submit(with_applicant(sign, municipality_code="131017")),
            400,
            "bad-applicant-data",
            "applicant.municipality_code",
        ),
        # offices act only in their own name
        Attack(
            "another office's code",
            submit(with_applicant(sign, office_code="011010001")),
            422,
            "policy-refused",
            "applicant.office_code",
        ),
        Attack(
            "the other test office's code",
            submit(with_applicant(sign, office_code=people.b.code)),
            422,
            "policy-refused",
            "applicant.office_code",
        ),
        Attack(
            "a municipality the office does not serve",
            submit(with_applicant(sign, municipality_code="01101")),
            422,
            "policy-refused",
            "applicant.municipality_code",
        ),
        Attack(
            "the same for user authentication",
            submit(with_applicant(auth, municipality_code="011002")),
            422,
            "policy-refused",
            "applicant.municipality_code",
        ),
        # plausible applicant data
        Attack(
            "sex as a number", submit(with_applicant(sign, sex=2)), 400, "bad-applicant-data", "applicant.sex"
        ),
        *[
            Attack(
                f"birth date {birth}",
                submit(with_applicant(sign, birth_date=birth)),
                400,
                "bad-applicant-data",
                "applicant.birth_date",
            )
            for birth in (
                "0001-01-01",
                "1867-01-01",
                "1868-01-24",
                (today + timedelta(days=1)).isoformat(),
                "19850715",
            )
        ],
        *[
            Attack(
                f"card expiry {expiry} ({which})",
                submit(with_applicant(body_, card_expiry=expiry)),
                400,
                "bad-applicant-data",
                "applicant.card_expiry",
            )
            for which, body_ in (("sign", sign), ("auth", auth))
            for expiry in ("9999-12-31", date(today.year + 11, 1, 1).isoformat())
        ],
        Attack("two CSRs in one field", submit({**sign, "csr": csr + csr}), 400, "bad-csr", "csr"),
        Attack(
            "a CSR and a second one's start",
            submit({**sign, "csr": csr + "-----BEGIN CERTIFICATE REQUEST-----\n"}),
            400,
            "bad-csr",
            "csr",
        ),
        Attack("text after the CSR", submit({**sign, "csr": csr + "trailing data\n"}), 400, "bad-csr", "csr"),
        Attack(
            "text before the CSR",
            submit({**sign, "csr": "Certificate Request:\n" + csr}),
            400,
            "bad-csr",
            "csr",
        ),
        # query parameters and path ids
        *[
            Attack(
                f"limit={value[:8]!r}",
                lambda value=value: clerk.get("/v1/applications", params={"limit": value}),
                400,
                "bad-request",
                "limit",
            )
            for value in ("5".translate(FULL_WIDTH), "+5", " 5", "5_0", LONG)
        ],
        Attack(
            "before in Arabic-Indic digits",
            lambda: operator.get("/v1/applications", params={"before": "7".translate(ARABIC_INDIC)}),
            400,
            "bad-request",
            "before",
        ),
        Attack(
            "revocation requests limit in full width",
            lambda: clerk.get("/v1/revocation-requests", params={"limit": "10".translate(FULL_WIDTH)}),
            400,
            "bad-request",
            "limit",
        ),
        Attack(
            "an application id in full width",
            lambda: clerk.get(f"/v1/applications/{str(existing_id).translate(FULL_WIDTH)}"),
            404,
            "not-found",
            None,
        ),
        Attack(
            "a 400-digit application id",
            lambda: clerk.get(f"/v1/applications/{LONG}"),
            404,
            "not-found",
            None,
        ),
        # the resident-change feed and the registry admin
        Attack(
            "event with a full-width resident id",
            lambda: registry.post(
                "/v1/resident-events", {**event, "resident_id": "12345678901".translate(FULL_WIDTH)}
            ),
            400,
            "bad-request",
            "resident_id",
        ),
        Attack(
            "event with a 5,000-digit id",
            lambda: raw(registry, "/v1/resident-events", f'{{"event_id": {HUGE}, "kind": "moved"}}'),
            400,
            "malformed-json",
            "body",
        ),
        Attack(
            "event with its kind twice",
            lambda: raw(
                registry,
                "/v1/resident-events",
                json.dumps(event)[:-1] + ', "kind": "died"}',
            ),
            400,
            "malformed-json",
            "body",
        ),
        Attack(
            "revocation request note with a lone surrogate",
            lambda: raw(
                clerk,
                "/v1/revocation-requests",
                '{"authority": "jpki-sign", "serial": "01", "kind": "loss", "note": "\\udfff"}',
            ),
            400,
            "bad-request",
            "note",
        ),
        Attack(
            "office code in full width",
            lambda: people.admin.post(
                "/v1/offices", {"code": "131010009".translate(FULL_WIDTH), "name": "x"}
            ),
            400,
            "bad-request",
            "code",
        ),
    ]
    before = written(ra)
    failures = {a.name: mismatch(a.send(), a.status, a.kind, a.field) for a in attacks}
    failures = {name: reason for name, reason in failures.items() if reason is not None}
    print(f"{len(attacks)} malformed requests, {len(failures)} answered otherwise than documented")
    assert not failures, "\n".join(f"{name}: {reason}" for name, reason in failures.items())
    assert written(ra) == before
    # No client value became a CRL partition, and the publisher has none to publish.
    scopes = Publisher(ra.ctx, actor="test").scopes("jpki-sign") + Publisher(ra.ctx, actor="test").scopes(
        "jpki-auth"
    )
    assert not {"99999", "01101", "13101".translate(FULL_WIDTH)} & {
        scope.rsplit("/", 1)[-1] for scope in scopes
    }


def test_an_office_applies_in_its_own_name(ra: RA, people: People, rsa_key) -> None:
    """The office code in the subject is the submitting office's: filled in when absent, accepted
    when it is the office's own; the certificate is that office's to collect."""
    office = people.a
    cert = issue(people, submission("jpki-sign", rsa_key))
    record = ra.ctx.store.certificate(cert["authority"], cert["serial"])
    assert record.subject.startswith("CN=") and record.subject.split(",")[0].endswith(office.code)
    assert office.clerk.get(f"/v1/certificates/{cert['authority']}/{cert['serial']}").status_code == 200
    assert people.b.clerk.get(f"/v1/certificates/{cert['authority']}/{cert['serial']}").status_code == 404
    own = with_applicant(submission("jpki-sign", rsa_key), office_code=office.code)
    submitted = office.clerk.post("/v1/applications", own)
    assert submitted.status_code == 201, submitted.text
    assert submitted.json()["applicant"]["office_code"] == office.code


def test_the_municipalities_an_office_serves_are_the_admins(
    ra: RA, people: People, rsa_key, backend: str
) -> None:
    """A new office serves the municipality its code starts with; the admin adds and removes
    others (`kakuin office municipalities`), and a removal holds at the second review too."""
    chuo = ra.office("chuo", municipality="13102")
    clerk = ra.account("clerk-chuo", "clerk", chuo)
    reviewer = ra.account("reviewer-chuo", "reviewer", chuo)

    def manage(*args: str) -> str:
        if backend == "sqlite":  # the CLI as the admin runs it (seconds a run: one backend)
            done = kakuin(ra, "office", "municipalities", *args)
            assert done.returncode == 0, done.stderr
            return done.stdout
        action, code, *codes = args  # the store the CLI calls, as `kakuin` prints it
        served = ra.store.municipalities(ra.store.office(code).id)
        if action == "list":
            return "\n".join(served)
        for municipality in codes:
            method = ra.store.add_municipality if action == "add" else ra.store.remove_municipality
            served = method(code, municipality, "test")
        return f"office {code} serves {', '.join(served)}"

    assert manage("list", chuo).split() == ["13102"]
    chiyoda = submission("jpki-auth", rsa_key)
    before = written(ra)
    answer = clerk.post("/v1/applications", chiyoda)
    assert mismatch(answer, 422, "policy-refused", "applicant.municipality_code") is None
    assert "13101" in answer.json()["detail"] and "13102" in answer.json()["detail"]
    assert written(ra) == before

    assert "13101, 13102" in manage("add", chuo, "131016")  # 6 digits with the check digit: 13101
    submitted = clerk.post("/v1/applications", chiyoda)
    assert submitted.status_code == 201, submitted.text
    app_id = submitted.json()["id"]
    approve(reviewer, app_id)
    manage("remove", chuo, "13101")
    refused = people.operator.post(f"/v1/applications/{app_id}/reviews", {"decision": "approve"})
    assert mismatch(refused, 422, "policy-refused", "applicant.municipality_code") is None
    again = people.operator.get(f"/v1/applications/{app_id}").json()
    assert again["state"] == "first_approved" and again["certificate"] is None
    assert written(ra)["certificates"] == before["certificates"]


def test_office_municipalities_cli_refusals(ra: RA, people: People, backend: str) -> None:
    if backend == "postgresql":
        pytest.skip(
            "bounded time: each `kakuin` run costs seconds; the CLI goes through the same store on both"
        )
    bad, twice, absent, nobody = _many(
        ra,
        ("office", "municipalities", "add", people.a.code, "99999"),
        ("office", "municipalities", "add", people.a.code, "13101"),
        ("office", "municipalities", "remove", people.a.code, "01100"),
        ("office", "municipalities", "list", "NOSUCHOFF"),
    )
    for result in (bad, twice, absent, nobody):
        assert result.returncode == 1 and result.stdout == "", result
        assert len(result.stderr.splitlines()) == 1 and "Traceback" not in result.stderr
    assert bad.stderr.startswith("kakuin: error: municipality: ") and "prefecture" in bad.stderr
    assert twice.stderr.startswith("kakuin: error: municipality: ") and "already" in twice.stderr
    assert absent.stderr.startswith("kakuin: error: municipality: ")
    assert nobody.stderr.startswith("kakuin: error: office: ")
    assert ra.store.municipalities(ra.store.office(people.a.code).id) == ["13101"]


def test_a_municipal_registry_reaches_only_its_municipalities(ra: RA, people: People, rsa_key) -> None:
    """A registry account of an office sends change notices for that office's municipalities:
    another municipality's residents are not its to revoke (nor to learn about)."""
    chuo = ra.office("chuo-registry", municipality="13102")
    rid = resident_id()
    cert = issue(people, submission("jpki-sign", rsa_key, resident_id=rid))  # Chiyoda (13101)
    chuo_registry = ra.account("registry-of-chuo", "registry", chuo)
    chiyoda_registry = ra.account("registry-of-chiyoda", "registry", people.a.code)
    moved = {"event_id": f"scoped-{rid}", "kind": "moved", "resident_id": rid}

    answer = chuo_registry.post("/v1/resident-events", moved)
    assert answer.status_code == 200, answer.text
    assert answer.json()["outcome"] == "unknown_resident" and answer.json()["revoked"] == []
    assert ra.ctx.store.certificate(cert["authority"], cert["serial"]).status == "issued"

    answer = chiyoda_registry.post("/v1/resident-events", moved)
    assert answer.status_code == 200, answer.text
    assert [c["serial"] for c in answer.json()["revoked"]] == [cert["serial"]]
    assert ra.ctx.store.certificate(cert["authority"], cert["serial"]).status == "revoked"


def test_issue_cli_refuses_implausible_applicant_data(ra: RA, rsa_key, tmp_path: Path, backend: str) -> None:
    """The same rules for `kakuin issue --applicant` as for the RA (they live in ca/applicant.py)."""
    if backend == "postgresql":
        pytest.skip(
            "bounded time: each `kakuin` run costs seconds; the CLI goes through the same issuer on both"
        )
    csr = make_csr(rsa_key).decode()
    files = {
        "sex": jpki_sign_applicant(sex=2),
        "birth_date": jpki_sign_applicant(birth_date="0001-01-01"),
        "card_expiry": jpki_sign_applicant(card_expiry="9999-12-31"),
        "municipality_code": jpki_auth_applicant(municipality_code="13101".translate(FULL_WIDTH)),
    }
    args = []
    for field, applicant in files.items():
        path = tmp_path / f"{field}.json"
        path.write_text(json.dumps(applicant, ensure_ascii=False), encoding="utf-8")
        profile = "jpki-auth" if field == "municipality_code" else "jpki-sign"
        (tmp_path / "req.pem").write_text(csr)
        args.append(
            ("issue", "--profile", profile, "--csr", str(tmp_path / "req.pem"), "--applicant", str(path))
        )
    (tmp_path / "two.pem").write_text(csr + csr)
    (tmp_path / "ok.json").write_text(json.dumps(jpki_sign_applicant(), ensure_ascii=False), encoding="utf-8")
    args.append(
        (
            "issue",
            "--profile",
            "jpki-sign",
            "--csr",
            str(tmp_path / "two.pem"),
            "--applicant",
            str(tmp_path / "ok.json"),
        )
    )
    before = written(ra)
    results = _many(ra, *args)
    for field, result in zip([*[f"applicant.{f}" for f in files], "csr"], results, strict=True):
        assert result.returncode == 1 and result.stdout == "", (field, result.stderr)
        assert result.stderr.startswith(f"kakuin: error: {field}: "), (field, result.stderr)
        assert len(result.stderr.splitlines()) == 1
    assert written(ra) == before


# -- a database that cannot be written ----------------------------------------------------------


@pytest.fixture
def locked_ra(
    ra: RA, backend: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[RA, Callable[[], Any]]]:
    """A second RA on the same SQLite database that waits only 0.3 s for a lock, and a way to
    hold the database's write lock the way another process writing it does."""
    if backend != "sqlite":
        pytest.skip("SQLite's write lock; a stopped PostgreSQL is tests/registration/test_outage.py")
    monkeypatch.setenv("KAKUIN_DATABASE_BUSY_TIMEOUT", "0.3")
    log = ra.tmp / "gunicorn-locked.log"
    process, base = start_server(ra.ctx, ra.files, log, workers=1)
    locked = RA(ra.ctx, ra.store, ra.hasher, base, ra.files, ra.tmp, ra.prefix)
    holder: list[sqlite3.Connection] = []

    def lock() -> Any:
        db = sqlite3.connect(
            ra.ctx.settings.database_url.split("///", 1)[1], timeout=30, isolation_level=None
        )
        db.execute("BEGIN EXCLUSIVE")
        holder.append(db)
        return db

    try:
        wait_ready(_moved(ra.clients[f"{ra.prefix}-probe-admin"], base), process, log)
        yield locked, lock
    finally:
        for db in holder:
            db.close()  # rolls back: the lock is gone
        process.terminate()
        process.wait(timeout=15)
        assert "Traceback" not in log.read_text(errors="replace"), log.read_text()[-4000:]
        assert "database is locked" not in log.read_text(errors="replace")  # the type only


def test_a_locked_database_is_503_with_retry_after(locked_ra, ra: RA, people: People, rsa_key) -> None:
    server, lock = locked_ra
    clerk, reviewer = _moved(people.a.clerk, server.base), _moved(people.a.reviewer, server.base)
    operator, admin = _moved(people.operator, server.base), _moved(people.admin, server.base)
    registry = _moved(ra.account("locked-registry", "registry"), server.base)
    cert = issue(people, submission("jpki-auth", rsa_key))
    pending = people.a.clerk.post("/v1/applications", submission("lgpki-post", rsa_key)).json()["id"]
    requests_during_lock = {
        "submit": lambda: clerk.post("/v1/applications", submission("lgpki-post", rsa_key)),
        "review": lambda: reviewer.post(f"/v1/applications/{pending}/reviews", {"decision": "approve"}),
        "revocation request": lambda: clerk.post(
            "/v1/revocation-requests",
            {"authority": cert["authority"], "serial": cert["serial"], "kind": "hold"},
        ),
        "operator hold": lambda: operator.post(
            f"/v1/certificates/{cert['authority']}/{cert['serial']}/revoke", {"reason": "certificate-hold"}
        ),
        "resident event": lambda: registry.post(
            "/v1/resident-events", {"event_id": "locked-1", "kind": "died", "resident_id": resident_id()}
        ),
        "office": lambda: admin.post("/v1/offices", {"code": "131010999", "name": "locked"}),
    }
    before = written(ra)
    db = lock()
    try:
        answers = {name: send() for name, send in requests_during_lock.items()}
        reads = clerk.get("/v1/me")
    finally:
        db.close()
    failures = {name: mismatch(answer, 503, "unavailable", None) for name, answer in answers.items()}
    assert not {name: why for name, why in failures.items() if why}, failures
    assert reads.status_code == 200  # reading goes on while another process writes
    assert written(ra) == before
    assert ra.ctx.store.certificate(cert["authority"], cert["serial"]).status == "issued"
    # The lock gone, the same requests are served.
    assert requests_during_lock["revocation request"]().status_code == 201
    assert requests_during_lock["review"]().status_code == 200


# -- helpers ------------------------------------------------------------------------------------


def _moved(client: Client, base: str) -> Client:
    """The same account (certificate and key) talking to another RA server."""
    assert client.session.cert is not None and isinstance(client.session.verify, str)
    return Client(base, client.session.cert, client.session.verify, client.name)  # type: ignore[arg-type]


def kakuin(ra: RA, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(KAKUIN_SCRIPT), *args], env=server_env(ra.ctx), capture_output=True, text=True, timeout=120
    )


def _many(ra: RA, *commands: tuple[str, ...]) -> list[subprocess.CompletedProcess[str]]:
    with ThreadPoolExecutor(max_workers=3) as pool:
        return list(pool.map(lambda args: kakuin(ra, *args), commands))
