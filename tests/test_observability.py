"""Logs, health and metrics of a real ``kakuin up`` (issue 13, items 4 and 5): one JSON-lines
format with the same core keys from every service, the scheduler and a CLI command; no personal
data in any line; ``--log-file`` reopened on SIGHUP; ``/healthz`` and ``/metrics`` everywhere; the
figures an operator alerts on agree with the CRL and the CA certificate themselves."""

from __future__ import annotations

import http.client
import json
import os
import signal
import ssl
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509

from config.logs import CORE_KEYS
from crl.paths import relative_url
from tests.conftest import wait_for
from tests.test_instance import (
    Home,
    accepts,
    make_home,
    ocsp_healthy,
    run,
    start,
    stop_group,
    wait_serving,
)

RESIDENT = {
    "name": "観測　未来子",
    "name_substitutes": "000000",
    "sex": "2",
    "birth_date": "1979-11-23",
    "address": "東京都千代田区永田町九丁目8番7号",
    "address_substitutes": "0" * 17,
    "prefecture": "Tokyo-to",
    "municipality": "Chiyoda-ku",
    "municipality_code": "13101",
    "office_code": "131010001",
    "card_expiry": "2035-07-15",
}


@dataclass
class Up:
    home: Home
    process: subprocess.Popen[bytes]
    log: Path  # --log-file
    cli_log: Path  # KAKUIN_LOG_FILE of the CLI commands
    metrics: int
    client: tuple[str, str]  # an operator-CA client certificate and key for the RA
    subject: x509.Name


def openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    base = tmp_path_factory.mktemp("observed")
    home = make_home(base)
    metrics = home.metrics
    cli_log = base / "cli.log"
    outcome = run(home, "init", timeout=300)
    assert outcome.returncode == 0, outcome.stderr
    # a resident's certificate, issued with personal data, and CRLs published, by the CLI
    openssl(
        "req", "-new", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=x",
        "-keyout", str(base / "r.key"), "-out", str(base / "r.csr"),
    )  # fmt: skip
    (base / "applicant.json").write_text(json.dumps(RESIDENT, ensure_ascii=False), encoding="utf-8")
    env = {"KAKUIN_LOG_FILE": str(cli_log)}
    issued = run(
        home, "issue", "--profile", "jpki-sign", "--csr", str(base / "r.csr"),
        "--applicant", str(base / "applicant.json"), env=env,
    )  # fmt: skip
    assert issued.returncode == 0, issued.stderr
    published = run(home, "crl", "publish", "--authority", "lgpki-root", env=env)
    assert published.returncode == 0, published.stderr
    # an account whose client certificate carries a person's name in its subject
    assert run(home, "account", "add", "watcher", "--role", "admin").returncode == 0
    openssl(
        "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-subj", "/CN=watcher", "-keyout", str(base / "c.key"), "-out", str(base / "c.csr"),
    )  # fmt: skip
    credential = run(
        home, "account", "credential", "watcher", "--csr", str(base / "c.csr"), "--out", str(base / "c.pem")
    )
    assert credential.returncode == 0, credential.stderr
    subject = x509.load_pem_x509_certificate((base / "c.pem").read_bytes()).subject
    log = base / "kakuin.log"
    process = start(home, base / "up.out", "up", "--log-file", str(log))
    try:
        wait_serving(
            process,
            base / "up.out",
            [
                lambda: accepts(home.ra),
                lambda: accepts(home.crl),
                lambda: ocsp_healthy(home.ocsp),
                lambda: accepts(metrics),
            ],
        )
        yield Up(home, process, log, cli_log, metrics, (str(base / "c.pem"), str(base / "c.key")), subject)
    finally:
        stop_group(process)


def get(port: int, path: str, client: tuple[str, str] | None = None) -> tuple[int, bytes]:
    if client is None:
        conn: http.client.HTTPConnection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    else:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        context.load_cert_chain(*client)
        conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=10, context=context)
    try:
        conn.request("GET", path, headers={"X-Request-Id": "observability-test"})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def entries(path: Path) -> list[dict[str, object]]:
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [json.loads(line) for line in lines]  # every line is JSON, or this fails


def metric(text: str, name: str, **labels: str) -> float | None:
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        head, _, value = line.rpartition(" ")
        if head.split("{")[0] != name:
            continue
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            return float(value)
    return None


def test_every_service_answers_healthz_and_metrics(up: Up) -> None:
    home = up.home
    for port, client in ((home.ocsp, None), (home.crl, None), (home.ra, up.client)):
        status, body = get(port, "/healthz", client)
        assert status == 200 and json.loads(body)["status"] == "ok", (port, body)
        status, body = get(port, "/metrics", client)
        assert status == 200 and b"# TYPE kakuin_" in body, (port, body[:300])
    status, body = get(up.metrics, "/metrics")
    assert status == 200
    text = body.decode()
    assert metric(text, "kakuin_database_up") == 1.0
    assert metric(text, "kakuin_token_up") == 1.0
    crl_text = get(home.crl, "/metrics")[1].decode()
    assert metric(crl_text, "kakuin_crl_database_up") == 1.0


def test_expiry_and_next_update_metrics_match_the_crl_and_the_certificate(up: Up) -> None:
    home = up.home
    text = get(up.metrics, "/metrics")[1].decode()
    now = datetime.now(UTC)
    # the CRL as a relying party fetches it
    url = f"http://127.0.0.1:{home.crl}/crl/{relative_url('lgpki-root', '', 'full')}"
    with urllib.request.urlopen(url, timeout=10) as response:
        crl = x509.load_der_x509_crl(response.read())
    assert crl.next_update_utc is not None
    seconds = metric(text, "kakuin_crl_seconds_until_next_update", authority="lgpki-root", kind="full")
    assert seconds is not None, text
    assert abs(seconds - (crl.next_update_utc - now).total_seconds()) < 30, seconds
    # the CA certificate as `kakuin ca cert` gives it
    pem = run(home, "ca", "cert", "lgpki-root").stdout.encode()
    not_after = x509.load_pem_x509_certificate(pem).not_valid_after_utc
    expiry = metric(text, "kakuin_certificate_seconds_until_expiry", role="ca", authority="lgpki-root")
    assert expiry is not None
    assert abs(expiry - (not_after - now).total_seconds()) < 30, expiry
    # a job that ran: the CRL schedule polls every 10 s
    assert wait_for(
        lambda: (
            (
                v := metric(
                    get(up.metrics, "/metrics")[1].decode(),
                    "kakuin_job_last_success_timestamp_seconds",
                    job="crl-publisher",
                )
            )
            is not None
            and abs(v - time.time()) < 120
        ),
        60,
    )
    responder = metric(text, "kakuin_certificate_seconds_until_expiry", role="ocsp-responder")
    assert responder is None or 0 < responder < 10 * 365 * 86400
    age = metric(text, "kakuin_ocsp_presigned_oldest_age_seconds")
    assert age is None or 0 <= age < 48 * 3600


def test_each_service_logs_json_lines_with_the_same_core_keys(up: Up) -> None:
    home = up.home
    assert get(home.ra, "/healthz", up.client)[0] == 200
    assert get(home.crl, "/crl/no-such-authority.crl")[0] == 404

    def services() -> set[object]:
        return {e["service"] for e in entries(up.log)}

    assert wait_for(lambda: {"ra", "crl", "ocsp", "scheduler"} <= services(), 60), services()
    found = entries(up.log) + entries(up.cli_log)
    for entry in found:
        assert list(entry)[: len(CORE_KEYS)] == list(CORE_KEYS), entry
        assert str(entry["time"]).endswith("Z") and entry["level"] in ("debug", "info", "warning", "error")
    by_service = {e["service"]: e for e in found}
    assert set(by_service) >= {"ra", "crl", "ocsp", "scheduler", "cli"}, set(by_service)
    ra = [e for e in found if e["service"] == "ra" and e["event"] == "request"]
    assert any(e["request_id"] == "observability-test" and e["actor"] == "ra:watcher" for e in ra), ra
    crl = [e for e in found if e["service"] == "crl" and e["event"] == "request"]
    assert any(e["status"] == 404 and e["path"] == "/crl/no-such-authority.crl" for e in crl), crl
    assert any(e["service"] == "cli" and "published" in str(e["event"]) for e in found)


def test_no_line_holds_personal_data_or_the_client_certificate_subject(up: Up) -> None:
    get(up.home.ra, "/v1/me", up.client)
    assert wait_for(lambda: "/v1/me" in up.log.read_text(encoding="utf-8"), 30)
    text = up.log.read_text(encoding="utf-8") + up.cli_log.read_text(encoding="utf-8")
    text += (up.log.parent / "up.out").read_text(encoding="utf-8", errors="replace")
    for value in (RESIDENT["name"], RESIDENT["address"], RESIDENT["birth_date"], "19791123", "観測"):
        assert value not in text, value
    # the subject in the forms a server would write it (the CN alone is the account's name, the
    # actor of its requests)
    openssl_form = "".join(f"/{a.rfc4514_string()}" for a in reversed(list(up.subject)))
    for form in (up.subject.rfc4514_string(), openssl_form, openssl_form.replace("/", ", ").strip(", ")):
        assert form not in text, form


def test_sighup_reopens_the_log_file(up: Up) -> None:
    """Last: logrotate's rename, then `systemctl reload` (SIGHUP to kakuin up)."""
    rotated = up.log.with_name("kakuin.log.1")
    os.rename(up.log, rotated)
    os.kill(up.process.pid, signal.SIGHUP)
    assert wait_for(lambda: up.log.exists() and "log file reopened" in up.log.read_text(encoding="utf-8"), 30)
    assert up.process.poll() is None  # SIGHUP did not stop it
    # the servers reopen theirs when they next write: a CRL access line lands in the new file
    get(up.home.crl, "/crl/after-rotation.crl")
    assert wait_for(lambda: "after-rotation" in up.log.read_text(encoding="utf-8"), 30)
    assert oct(up.log.stat().st_mode & 0o777) == "0o600"
    assert all(e["service"] for e in entries(up.log))
    assert "after-rotation" not in rotated.read_text(encoding="utf-8")
