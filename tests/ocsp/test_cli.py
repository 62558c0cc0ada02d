"""`kakuin ocsp …` and `kakuin serve ocsp` as an operator runs them, and the OCSP part of `kakuin up`."""

from __future__ import annotations

import re
import subprocess
import sys
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from ca.timeutil import utcnow
from ca.verifiers import VerifierRegistry
from ocsp.responders import ResponderKeys
from ocsp.store import QueryLog, QueryRecord
from tests.ocsp.conftest import (
    OCSPCA,
    free_port,
    healthy_check,
    make_verifier,
    server_env,
    start_server,
    stop_server,
)

KAKUIN = [sys.executable, "-m", "kakuin.cli"]


def kakuin(ca: OCSPCA, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*KAKUIN, *args], env=server_env(ca, 8081), capture_output=True, text=True, timeout=120
    )


def test_responder_cert_and_presign_commands(ocsp_ca: OCSPCA) -> None:
    ca = ocsp_ca
    operator_id = ca.ctx.store.authority("operator").id
    before = max(k.generation for k in ResponderKeys(ca.ctx.engine).all(operator_id))
    result = kakuin(ca, "ocsp", "responder-cert", "--authority", "operator", "--renew")
    assert result.returncode == 0, result.stderr
    assert re.search(rf"^operator\s+renewed\s+generation {before + 1} until \d{{4}}-", result.stdout, re.M)
    result = kakuin(ca, "ocsp", "responder-cert", "--authority", "operator", "--pem")
    certificates = x509.load_pem_x509_certificates(result.stdout.encode())
    newest = certificates[-1]
    assert newest.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value == x509.ExtendedKeyUsage(
        [ExtendedKeyUsageOID.OCSP_SIGNING]
    )
    assert newest.issuer == ca.ctx.authorities.get("operator").certificate.subject

    for _ in range(2):
        ca.issue("operator")
    # Two spawned signing processes, each with its own token session and database connections.
    result = kakuin(ca, "ocsp", "presign", "--authority", "operator", "--processes", "2")
    assert result.returncode == 0, result.stderr
    signed = int(re.search(r"^signed (\d+) answers in", result.stdout, re.M).group(1))  # type: ignore[union-attr]
    assert signed >= 2 * 2  # two new certificates (and the new responder's own), SHA-1 and SHA-256
    result = kakuin(ca, "ocsp", "presign", "--authority", "operator")
    assert re.search(r"^signed 0 answers in", result.stdout, re.M), result.stdout

    result = kakuin(ca, "ocsp", "presign", "--authority", "nope")
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and result.stderr.startswith(
        "kakuin: error: --authority: no authority named 'nope'"
    )


def test_query_log_retention_and_purge(ocsp_ca: OCSPCA) -> None:
    ca = ocsp_ca
    verifier = make_verifier(ca, f"retention-{uuid.uuid4().hex[:6]}", ["jpki-auth"])
    record = VerifierRegistry(ca.ctx.store).get(verifier.name)
    log = QueryLog(ca.ctx.engine)
    authority_id = ca.ctx.store.authority("jpki-auth").id
    now = utcnow()
    log.record(
        [QueryRecord(record.id, authority_id, "01d5e1a1", "good", "signature")], now - timedelta(days=31)
    )
    log.record([QueryRecord(record.id, authority_id, "f1e5e1a1", "revoked", "tls")], now - timedelta(days=1))

    result = kakuin(ca, "ocsp", "purge-log")  # ocsp.query_log_retention_days = 30 in the test settings
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "deleted 1 query log entries"
    result = kakuin(ca, "ocsp", "log", "--verifier", verifier.name)
    lines = result.stdout.splitlines()
    assert len(lines) == 1 and "f1e5e1a1" in lines[0] and verifier.name in lines[0] and "tls" in lines[0]

    result = kakuin(ca, "ocsp", "purge-log", "--older-than-days", "0")
    assert result.returncode == 0 and int(result.stdout.split()[1]) >= 1
    assert [e for e in log.entries(record.id)] == []


def test_serve_ocsp_command(ocsp_ca: OCSPCA, tmp_path: Path) -> None:
    if ocsp_ca.backend != "sqlite":
        pytest.skip("the command is the same on both backends")
    port = free_port()
    process = start_server(
        [*KAKUIN, "serve", "ocsp", "--port", str(port), "--workers", "1"],
        server_env(ocsp_ca, port),
        healthy_check(port),
        tmp_path / "serve.log",
    )
    try:
        assert "serving ocsp on http://127.0.0.1:" in (tmp_path / "serve.log").read_text()
    finally:
        stop_server(process)


def test_kakuin_up_runs_the_responder_and_its_jobs(ocsp_ca: OCSPCA) -> None:
    import kakuin.cli  # noqa: F401  (registers every service's launchers and jobs)
    from kakuin import services

    ctx = ocsp_ca.ctx
    started = [
        s
        for s in (launch(ctx) for launch in services.LAUNCHERS)
        if s is not None and s.name.startswith("ocsp")
    ]
    assert [s.name for s in started] == ["ocsp"]  # no [ocsp.tls]: no mTLS listener
    argv, route = started[0].argv, started[0].route
    # Behind the front (kakuin up's default): granian on a private Unix socket of this home, and
    # the front's public listener on services.ocsp.
    assert "granian" in argv and "--host" not in argv and "--port" not in argv
    assert route is not None
    assert argv[argv.index("--uds") + 1] == str(route.socket)
    assert (route.host, route.port) == ("127.0.0.1", ctx.settings.services["ocsp"].port)
    assert any(a.startswith("KAKUIN_HOME=") for a in argv)
    jobs = {job.name: job for job in services.JOBS}
    assert {"ocsp-presign", "ocsp-purge-log"} <= set(jobs)
    assert jobs["ocsp-presign"].interval(ctx) == 300.0
    jobs["ocsp-presign"].run(ctx)  # renews what is due and signs what is missing, quietly
    jobs["ocsp-purge-log"].run(ctx)
