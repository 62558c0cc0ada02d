"""Foreign input never raises past the CLI (issue 12): `kakuin issue --csr` and `--batch`,
`kakuin account credential --csr` and `kakuin verifier add --cert` refuse every malformed
request or certificate with one line naming the option and what cannot be read, exit status 1,
and write nothing (every table's row count unchanged), on SQLite and PostgreSQL.

The inputs (tests/malformed.py) load in cryptography but cannot be read in full (duplicated or
broken extensions, undecodable names, unknown keys), or are no such object at all (empty,
truncated, garbage base64, the wrong kind)."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from ca.service import CAContext
from registration.store import RegistrationStore
from tests.conftest import APPLICANTS
from tests.lifecycle.conftest import ctx_env
from tests.malformed import (
    CA_BASIC_CONSTRAINTS,
    CRL_NUMBER,
    OCSP_SIGNING,
    Bad,
    Forger,
    crl_entry,
    extension,
    kakuin,
    not_a_certificate,
    not_a_request,
    pem,
    refused_in_one_line,
    row_counts,
    unreadable_certificates,
    unreadable_requests,
)

FORGER = Forger(ec.generate_private_key(ec.SECP256R1()))  # P-256: a key the client profile takes
GOOD_CERTIFICATE = FORGER.certificate([CA_BASIC_CONSTRAINTS])
GOOD_REQUEST = FORGER.request([])
GOOD_CRL = FORGER.crl([crl_entry(5)], [extension(CRL_NUMBER, b"\x02\x01\x01")])

BROKEN_REQUESTS = unreadable_requests(FORGER)
REQUESTS = BROKEN_REQUESTS + not_a_request(GOOD_REQUEST, GOOD_CERTIFICATE)
CERTIFICATES = unreadable_certificates(FORGER, [CA_BASIC_CONSTRAINTS, OCSP_SIGNING]) + not_a_certificate(
    GOOD_CERTIFICATE, {"CSR": GOOD_REQUEST, "CRL": GOOD_CRL}
)


def _ids(cases: list[Bad]) -> list[str]:
    return [case.id for case in cases]


@pytest.fixture(scope="module")
def env(ca_ctx: CAContext) -> dict[str, str | None]:
    """The CLI's environment for ``ca_ctx``, after one command that succeeds: whatever a first
    command says once about a data directory made by the fixtures is said before the tests."""
    settings: dict[str, str | None] = dict(ctx_env(ca_ctx))
    first = kakuin(settings, "ca", "list")
    assert first.exit_code == 0, first.output
    return settings


def _file(tmp_path: Path, case: Bad) -> str:
    path = tmp_path / "input"
    path.write_bytes(case.data)
    return str(path)


@pytest.mark.parametrize("case", REQUESTS, ids=_ids(REQUESTS))
def test_issue_refuses_an_unreadable_csr(
    ca_ctx: CAContext, env: dict[str, str | None], tmp_path: Path, case: Bad
) -> None:
    applicant = tmp_path / "applicant.json"
    applicant.write_text(json.dumps(APPLICANTS["client"]))
    before = row_counts(ca_ctx.engine)
    result = kakuin(
        env, "issue", "--profile", "client", "--csr", _file(tmp_path, case), "--applicant", str(applicant)
    )
    line = refused_in_one_line(result, *case.says)
    assert line.startswith("kakuin: error: csr: ")
    assert row_counts(ca_ctx.engine) == before


@pytest.fixture(scope="module")
def account(ca_ctx: CAContext) -> str:
    name = f"foreign-{uuid.uuid4().hex[:8]}"
    RegistrationStore(ca_ctx.engine).add_account(name, "admin", None, "test")
    return name


@pytest.mark.parametrize("case", REQUESTS, ids=_ids(REQUESTS))
def test_account_credential_refuses_an_unreadable_csr(
    ca_ctx: CAContext, env: dict[str, str | None], account: str, tmp_path: Path, case: Bad
) -> None:
    before = row_counts(ca_ctx.engine)
    result = kakuin(env, "account", "credential", account, "--csr", _file(tmp_path, case))
    line = refused_in_one_line(result, *case.says)
    assert line.startswith("kakuin: error: csr: ")
    assert row_counts(ca_ctx.engine) == before


@pytest.mark.parametrize("case", CERTIFICATES, ids=_ids(CERTIFICATES))
def test_verifier_add_refuses_an_unreadable_certificate(
    ca_ctx: CAContext, env: dict[str, str | None], tmp_path: Path, case: Bad
) -> None:
    before = row_counts(ca_ctx.engine)
    name = f"v-{uuid.uuid4().hex[:8]}"
    result = kakuin(env, "verifier", "add", name, "--kind", "government", "--cert", _file(tmp_path, case))
    line = refused_in_one_line(result, *case.says)
    assert line.startswith("kakuin: error: cert: ")
    assert row_counts(ca_ctx.engine) == before


def _batch_text(case: Bad) -> str:
    """The CSR of a bulk line is PEM text: broken structures go in as PEM, and damaged files as
    the text they hold (bytes that are not UTF-8 as Latin-1 characters)."""
    if case in BROKEN_REQUESTS:
        return pem("CERTIFICATE REQUEST", case.data).decode()
    return case.data.decode("latin-1")


def test_issue_batch_refuses_every_unreadable_csr_by_line(
    ca_ctx: CAContext, env: dict[str, str | None], tmp_path: Path
) -> None:
    lines = [
        json.dumps({"profile": "client", "csr": _batch_text(case), "applicant": APPLICANTS["client"]})
        for case in REQUESTS
    ]
    lines.append(json.dumps({"profile": "client", "csr": "\ud800", "applicant": APPLICANTS["client"]}))
    batch = tmp_path / "batch.jsonl"
    batch.write_text("\n".join(lines) + "\n", encoding="utf-8")
    before = row_counts(ca_ctx.engine)
    result = kakuin(env, "issue", "--batch", str(batch), "--workers", "1")
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert result.exit_code == 1, result.output
    refused = [line for line in result.stderr.splitlines() if line.startswith("refused ")]
    assert len(refused) == len(lines), result.stderr
    for number, (line, case) in enumerate(zip(refused, REQUESTS, strict=False), 1):
        assert line.startswith(f"refused line {number}: csr: "), line
        assert all(word in line for word in case.says), (case.id, line)
    assert "not a PKCS#10" in refused[-1]
    assert f"issued 0, refused {len(lines)} of {len(lines)}" in result.stderr
    assert "Traceback" not in result.output
    assert row_counts(ca_ctx.engine) == before


def test_issue_batch_that_is_not_utf8_is_one_line(
    ca_ctx: CAContext, env: dict[str, str | None], tmp_path: Path
) -> None:
    batch = tmp_path / "batch.jsonl"
    batch.write_bytes(b'{"profile": "client", "csr": "\xff\xfe"}\n')
    before = row_counts(ca_ctx.engine)
    line = refused_in_one_line(kakuin(env, "issue", "--batch", str(batch)), "--batch", "UTF-8")
    assert str(batch) in line
    assert row_counts(ca_ctx.engine) == before
