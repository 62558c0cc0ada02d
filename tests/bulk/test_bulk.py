"""Bulk issuance (ca.bulk, ``kakuin issue --batch``) on one process and on a pool of forked
workers: every good line becomes exactly one stored, audited certificate, returned in input order;
a bad line is refused with its number and leaves nothing behind; the CLI output verifies with
``openssl verify``."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from ca.bulk import BulkIssuer, request_from_line
from ca.errors import BadRequest
from ca.service import CAContext
from tests.conftest import ROOT, make_csr, openssl


@pytest.fixture(scope="module")
def ec_keys() -> list[ec.EllipticCurvePrivateKey]:
    return [ec.generate_private_key(ec.SECP256R1()) for _ in range(8)]


def client_lines(keys: list[ec.EllipticCurvePrivateKey], count: int, tag: str) -> list[str]:
    return [
        json.dumps(
            {
                "profile": "client",
                "csr": make_csr(keys[i % len(keys)]).decode(),
                "applicant": {"common_name": f"{tag}-{i:04d}"},
            }
        )
        + "\n"
        for i in range(count)
    ]


def common_name(pem: str) -> str:
    cert = x509.load_pem_x509_certificate(pem.encode())
    return str(cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


def issued_count(ctx: CAContext, authority: str = "operator") -> int:
    return ctx.store.count_certificates(ctx.store.authority(authority).id).get("issued", 0)


@pytest.mark.parametrize("workers", [1, 2])
def test_every_line_issued_once_stored_audited_in_order(
    ca_ctx: CAContext, ec_keys: list[ec.EllipticCurvePrivateKey], workers: int
) -> None:
    tag = f"bulk-w{workers}"
    lines = client_lines(ec_keys, 230, tag)
    lines.insert(5, "{not json\n")
    lines.insert(50, "\n")  # blank lines are skipped, but still count for line numbers
    lines.insert(100, json.dumps({"profile": "client", "csr": "garbage"}) + "\n")
    before = issued_count(ca_ctx)

    outcomes = list(BulkIssuer(ca_ctx, actor="test:bulk", batch_size=40, workers=workers).run(lines))

    issued = [item for outcome in outcomes for item in outcome.issued]
    refused = [item for outcome in outcomes for item in outcome.refused]
    assert sum(outcome.lines for outcome in outcomes) == len(lines) - 1
    assert [r.line for r in refused] == [6, 101]
    assert "not valid JSON" in refused[0].message
    assert refused[1].message.startswith("csr: ")
    # Input order, one certificate per good line, each for its own applicant.
    assert [common_name(item.pem) for item in issued] == [f"{tag}-{i:04d}" for i in range(230)]
    assert [item.line for item in issued] == sorted(item.line for item in issued)
    assert len({item.serial for item in issued}) == 230
    assert issued_count(ca_ctx) - before == 230
    for item in issued[::23]:
        record = ca_ctx.store.certificate("operator", item.serial)
        assert record.status == "issued"
        assert record.der == x509.load_pem_x509_certificate(item.pem.encode()).public_bytes(Encoding.DER)
    serials = {item.serial for item in issued}
    events = ca_ctx.store.audit_events(limit=5000, action="certificate.issue")
    assert sum(1 for event in events if event.serial in serials) == 230
    assert all(event.actor == "test:bulk" for event in events if event.serial in serials)


def test_only_bad_lines_change_nothing(ca_ctx: CAContext) -> None:
    before = issued_count(ca_ctx)
    lines = ["[]\n", '{"profile": "client"}\n', '{"profile": "no-such", "csr": "x"}\n']
    outcomes = list(BulkIssuer(ca_ctx, actor="test:bulk", workers=2, batch_size=1).run(lines))
    refused = [str(r) for outcome in outcomes for r in outcome.refused]
    assert refused[0] == "line 1: expected an object with profile and csr"
    assert refused[1] == "line 2: expected an object with profile and csr"
    assert refused[2].startswith("line 3: profile: unknown profile 'no-such'")
    assert issued_count(ca_ctx) == before


@pytest.mark.parametrize(
    "line,field",
    [
        ('{"profile": 5, "csr": "x"}', "profile"),
        ('{"profile": "client", "csr": ["x"]}', "csr"),
        ('{"profile": "client", "csr": "x", "applicant": "me"}', "applicant"),
    ],
)
def test_wrongly_typed_fields_are_named(line: str, field: str) -> None:
    with pytest.raises(BadRequest) as info:
        request_from_line(line, "test")
    assert info.value.field == field


def test_cli_batch_with_workers_verifies_with_openssl(
    fresh_ctx: CAContext, ec_keys: list[ec.EllipticCurvePrivateKey], tmp_path: Path
) -> None:
    batch = tmp_path / "requests.jsonl"
    lines = client_lines(ec_keys, 120, "cli")
    lines.insert(7, '{"profile": "client"}\n')
    batch.write_text("".join(lines), encoding="utf-8")
    out = tmp_path / "issued.pem"
    env = {
        **{k: v for k, v in os.environ.items() if k != "KAKUIN_CONFIG"},
        "KAKUIN_HOME": str(fresh_ctx.settings.home),
        "KAKUIN_DATABASE_URL": fresh_ctx.settings.database_url,
        "KAKUIN_TOKEN_LABEL": fresh_ctx.settings.token_label,
    }
    result = subprocess.run(
        [
            str(ROOT / ".venv" / "bin" / "kakuin"),
            "issue",
            "--batch",
            str(batch),
            "--out",
            str(out),
            "--workers",
            "2",
            "--batch-size",
            "25",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1, result.stderr  # one line was refused
    assert "refused line 8: expected an object with profile and csr" in result.stderr
    assert "issued 120, refused 1 of 121" in result.stderr
    pems = [
        p + "-----END CERTIFICATE-----\n" for p in out.read_text().split("-----END CERTIFICATE-----\n")[:-1]
    ]
    assert [common_name(p) for p in pems] == [f"cli-{i:04d}" for i in range(120)]
    ca_file = tmp_path / "operator.pem"
    ca_file.write_text(fresh_ctx.authorities.get("operator").certificate.public_bytes(Encoding.PEM).decode())
    for pem in pems[::30]:
        leaf = tmp_path / "leaf.pem"
        leaf.write_text(pem)
        verify = openssl("verify", "-CAfile", str(ca_file), "-purpose", "sslclient", str(leaf))
        assert verify.returncode == 0, verify.stdout + verify.stderr
    assert issued_count(fresh_ctx) == 120
