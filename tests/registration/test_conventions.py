"""Conventions of the API: Idempotency-Key, /healthz, /metrics, JSON logs without personal data,
and the `kakuin office|account` commands that set everything up."""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12
from prometheus_client.mmap_dict import MmapedDict

from config.logs import CORE_KEYS
from registration.server import metrics_directory
from tests.conftest import KAKUIN_SCRIPT, jpki_sign_applicant
from tests.registration.conftest import RA, Client, People, problem, resident_id, server_env, submission


def kakuin(ra: RA, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(KAKUIN_SCRIPT), *args],
        env={**server_env(ra.ctx), **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_idempotency_key_replays_the_first_answer(ra: RA, people: People, rsa_key) -> None:
    clerk = people.a.clerk
    body = submission("lgpki-post", rsa_key)
    key = uuid.uuid4().hex
    first = clerk.post("/v1/applications", body, key=key)
    assert first.status_code == 201
    count = len(ra.store.applications(limit=100_000))
    again = clerk.post("/v1/applications", body, key=key)
    assert again.status_code == 201 and again.json() == first.json()
    assert again.headers["Location"] == first.headers["Location"]
    assert again.headers["Idempotent-Replayed"] == "true"
    assert len(ra.store.applications(limit=100_000)) == count  # nothing new was submitted
    other = clerk.post(
        "/v1/applications", {**body, "applicant": {"organization": "港区", "post": "区長"}}, key=key
    )
    problem(other, 422, "Idempotency-Key")
    # keys are per account: another clerk's identical key is a new request
    assert people.b.clerk.post("/v1/applications", body, key=key).status_code == 201
    # a refused request is answered the same way again too
    bad = {**body, "profile": "nope"}
    bad_key = uuid.uuid4().hex
    assert (
        clerk.post("/v1/applications", bad, key=bad_key).json()
        == clerk.post("/v1/applications", bad, key=bad_key).json()
    )
    # reviews are POSTs too: a retried approval is not a second review
    app_id = first.json()["id"]
    review_key = uuid.uuid4().hex
    one = people.a.reviewer.post(
        f"/v1/applications/{app_id}/reviews", {"decision": "approve"}, key=review_key
    )
    two = people.a.reviewer.post(
        f"/v1/applications/{app_id}/reviews", {"decision": "approve"}, key=review_key
    )
    assert one.status_code == two.status_code == 200 and one.json() == two.json()
    problem(people.a.reviewer.post(f"/v1/applications/{app_id}/reviews", {"decision": "approve"}), 409, "id")


def test_health_metrics_and_logs(ra: RA, people: People, rsa_key) -> None:
    assert people.a.clerk.get("/healthz").json() == {"status": "ok"}
    rid = resident_id()
    name = "個人　情報子"
    body = submission("jpki-sign", rsa_key, resident_id=rid)
    body["applicant"] = jpki_sign_applicant(name=name, name_substitutes="000000", office_code=people.a.code)
    assert people.a.clerk.post("/v1/applications", body).status_code == 201
    assert people.operator.get("/v1/applications?limit=1").status_code == 200
    metrics = people.operator.get("/metrics")
    assert metrics.status_code == 200 and metrics.headers["Content-Type"].startswith(
        "text/plain; version=0.0.4"
    )
    text = metrics.text
    assert "# TYPE kakuin_ra_requests_total counter" in text and "worker=" not in text
    assert 'kakuin_ra_requests_total{method="GET",route="/v1/applications",status="200"}' in text
    assert 'kakuin_ra_applications{state="submitted"}' in text
    assert "# TYPE kakuin_ra_request_duration_seconds histogram" in text
    log = (ra.tmp / "gunicorn.log").read_text(encoding="utf-8")
    lines = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    assert any(
        e["route"] == "/v1/applications" and e["method"] == "POST" and e["status"] == 201 for e in lines
    )
    requests = [e for e in lines if e["event"] == "request"]
    assert requests and all(list(e)[:6] == list(CORE_KEYS) and e["service"] == "ra" for e in requests)
    assert rid not in log and name not in log and "山田" not in log
    # and the audit log has no personal data in plain text either
    audit = json.dumps([e.detail for e in ra.ctx.store.audit_events(1000)], ensure_ascii=False)
    assert rid not in audit and name not in audit


def _me_count(text: str) -> float:
    line = 'kakuin_ra_requests_total{method="GET",route="/v1/me",status="200"} '
    found = [float(row[len(line) :]) for row in text.splitlines() if row.startswith(line)]
    return found[0] if found else 0.0


def _me_by_worker(directory: Path) -> dict[str, float]:
    """GET /v1/me answers counted in each worker's own file (counter_<pid>.db)."""
    counts: dict[str, float] = {}
    for path in directory.glob("counter_*.db"):
        for key, value, _ts, _pos in MmapedDict.read_all_values_from_file(str(path)):
            _metric, name, labels, _help = json.loads(key)
            if name == "kakuin_ra_requests_total" and labels == {
                "method": "GET",
                "route": "/v1/me",
                "status": "200",
            }:
                counts[path.stem.split("_")[1]] = value
    return counts


def test_metrics_count_every_worker_whichever_answers(ra: RA, people: People) -> None:
    """Requests spread over both gunicorn workers; every scrape, whichever worker answers it,
    shows all of them (the old per-worker counters showed only the answering worker's)."""
    directory = metrics_directory(ra.ctx, int(ra.base.rsplit(":", 1)[1]))
    cert = people.operator.session.cert
    assert isinstance(cert, tuple)

    def fresh() -> Client:  # a new TLS connection, accepted by whichever worker the kernel picks
        return Client(ra.base, cert, str(ra.files.client_ca), people.operator.name)

    before = _me_count(fresh().get("/metrics").text)
    workers_before = _me_by_worker(directory)

    def burst(_i: int) -> list[int]:
        client = fresh()
        return [client.get("/v1/me").status_code for _ in range(5)]

    # which worker accepts a connection is the kernel's choice: go on until both answered some
    n, grown = 0, {}
    with ThreadPoolExecutor(6) as pool:
        for _round in range(20):
            statuses = [s for batch in pool.map(burst, range(6)) for s in batch]
            assert statuses == [200] * 30
            n += 30
            grown = {p: v - workers_before.get(p, 0.0) for p, v in _me_by_worker(directory).items()}
            if len([v for v in grown.values() if v > 0]) == 2:
                break
    assert len([v for v in grown.values() if v > 0]) == 2, grown  # both workers answered some
    assert sum(grown.values()) == n
    for _ in range(8):
        scrape = fresh().get("/metrics")
        assert scrape.status_code == 200
        assert _me_count(scrape.text) == before + n, scrape.text[-2000:]


def test_cli_sets_up_offices_accounts_and_credentials(ra: RA, people: People, tmp_path, backend: str) -> None:
    if backend == "postgresql":
        pytest.skip(
            "bounded time: each `kakuin` run costs seconds; the CLI goes through the same store on both"
        )
    code = f"cli-{uuid.uuid4().hex[:6]}"
    added = kakuin(ra, "office", "add", code, "--name", "千代田区 区民課")
    assert added.returncode == 0 and f"added office {code}" in added.stdout, added.stderr
    assert code in kakuin(ra, "office", "list").stdout
    again = kakuin(ra, "office", "add", code, "--name", "x")
    assert again.returncode == 1 and again.stderr.startswith("kakuin: error: code:") and again.stdout == ""
    assert kakuin(ra, "account", "add", f"{code}-c", "--role", "clerk", "--office", code).returncode == 0
    no_office = kakuin(ra, "account", "add", f"{code}-d", "--role", "clerk")
    assert no_office.returncode == 1 and "office" in no_office.stderr
    assert kakuin(ra, "account", "add", f"{code}-r", "--role", "registry").returncode == 0

    # a PKCS#12 for the clerk; the passphrase from a file, never the command line
    phrase = tmp_path / "phrase"
    phrase.write_text("correct horse battery\n")
    p12 = tmp_path / "clerk.p12"
    made = kakuin(
        ra, "account", "credential", f"{code}-c", "--p12", str(p12), "--passphrase-file", str(phrase)
    )
    assert made.returncode == 0, made.stderr
    assert oct(p12.stat().st_mode & 0o777) == "0o600"
    key, cert, _cas = pkcs12.load_key_and_certificates(p12.read_bytes(), b"correct horse battery")
    assert key is not None and cert is not None
    cert_path, key_path = tmp_path / "c.pem", tmp_path / "c.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    clerk = Client(ra.base, (str(cert_path), str(key_path)), str(ra.files.client_ca), f"{code}-c")
    me = clerk.get("/v1/me").json()
    assert me["name"] == f"{code}-c" and me["role"] == "clerk" and me["office"] == code
    listed = kakuin(ra, "account", "list").stdout
    assert f"{code}-c" in listed and me["certificate_serial"] in listed
    # a new credential replaces the old one at once
    csr = tmp_path / "req.pem"
    subprocess.run(
        ["openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout",
         str(tmp_path / "new.key"), "-subj", "/CN=ignored", "-out", str(csr)],
        check=True, capture_output=True,
    )  # fmt: skip
    renewed = kakuin(ra, "account", "credential", f"{code}-c", "--csr", str(csr))
    assert renewed.returncode == 0 and "BEGIN CERTIFICATE" in renewed.stdout, renewed.stderr
    problem(clerk.get("/v1/me"), 403)
    short = tmp_path / "short"
    short.write_text("abc")
    bad = kakuin(
        ra,
        "account",
        "credential",
        f"{code}-c",
        "--p12",
        str(tmp_path / "x.p12"),
        "--passphrase-file",
        str(short),
    )
    assert bad.returncode == 1 and "passphrase" in bad.stderr and not (tmp_path / "x.p12").exists()
    neither = kakuin(ra, "account", "credential", f"{code}-c")
    assert neither.returncode == 2
    env_phrase = kakuin(
        ra,
        "account",
        "credential",
        f"{code}-c",
        "--p12",
        str(tmp_path / "e.p12"),
        env={"KAKUIN_P12_PASSPHRASE": "from the environment"},
    )
    assert env_phrase.returncode == 0 and (tmp_path / "e.p12").exists()


def test_resident_key_file_is_private(ra: RA) -> None:
    path = ra.ctx.settings.home / "ra" / "resident.key"
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert oct((ra.ctx.settings.home / "ra" / "server.key").stat().st_mode & 0o777) == "0o600"
    assert os.environ.get("KAKUIN_RESIDENT_KEY") is None


def test_kakuin_serve_ra_runs_the_service(ra: RA, people: People, backend: str) -> None:
    """The documented way to run it: `kakuin serve ra` (exec's gunicorn with the RA's TLS files)."""
    if backend == "postgresql":
        pytest.skip("bounded time: the command is the same on both databases")
    from tests.registration.conftest import free_port, wait_ready

    port = free_port()
    log = ra.tmp / "serve.log"
    process = subprocess.Popen(
        [str(KAKUIN_SCRIPT), "serve", "ra", "--port", str(port), "--workers", "1"],
        env=server_env(ra.ctx),
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    try:
        assert isinstance(people.a.clerk.session.cert, tuple)
        client = Client(
            f"https://127.0.0.1:{port}", people.a.clerk.session.cert, str(ra.files.client_ca), "clerk"
        )
        wait_ready(client, process, log)
        assert client.get("/v1/me").json()["name"] == people.a.clerk.name
    finally:
        process.terminate()
        process.wait(timeout=20)
