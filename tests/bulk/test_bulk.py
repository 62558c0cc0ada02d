"""Bulk issuance (ca.bulk, ``kakuin issue --batch``) on one process and on a pool of forked
workers: every good line becomes exactly one stored, audited certificate, returned in input order;
a bad line is refused with its number and leaves nothing behind; the CLI output verifies with
``openssl verify``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID
from sqlalchemy import select

from ca.bulk import BulkIssuer, request_from_line
from ca.errors import BadRequest
from ca.models import Certificate
from ca.service import CAContext
from tests.conftest import APPLICANTS, KAKUIN_SCRIPT, make_csr, openssl


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
            str(KAKUIN_SCRIPT),
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


# -- identity of a line, and a batch run again ------------------------------------------------------


def org_user_lines(keys: list[ec.EllipticCurvePrivateKey], count: int, tag: str) -> list[str]:
    """lgpki-org-user lines: an RSA authority, so signing a batch takes long enough to be caught."""
    applicant = {k: v for k, v in APPLICANTS["lgpki-org-user"].items() if k != "email"}
    return [
        json.dumps(
            {
                "profile": "lgpki-org-user",
                "csr": make_csr(keys[i % len(keys)]).decode(),
                "applicant": {**applicant, "common_name": f"{tag}-{i:04d}"},
            },
            ensure_ascii=False,
        )
        + "\n"
        for i in range(count)
    ]


def rows_by_identity(ctx: CAContext, keys: list[str]) -> list[tuple[str, str, bytes | None]]:
    """(request_key, status, der) of every certificate row of these line identities."""
    table = Certificate.__table__
    query = select(table.c.request_key, table.c.status, table.c.der).where(table.c.request_key.in_(keys))
    with ctx.engine.connect() as conn:
        return [(k, s, None if d is None else bytes(d)) for k, s, d in conn.execute(query)]


def statuses(ctx: CAContext, keys: list[str]) -> Counter[str]:
    return Counter(status for _, status, _ in rows_by_identity(ctx, keys))


def cli_env(ctx: CAContext, **extra: str) -> dict[str, str]:
    return {
        **{k: v for k, v in os.environ.items() if k not in ("KAKUIN_CONFIG", "KAKUIN_CA_RECONCILE_GRACE")},
        "KAKUIN_HOME": str(ctx.settings.home),
        "KAKUIN_DATABASE_URL": ctx.settings.database_url,
        "KAKUIN_TOKEN_LABEL": ctx.settings.token_label,
        **extra,
    }


def batch_cli(batch: Path, out: Path) -> list[str]:
    kakuin = str(KAKUIN_SCRIPT)
    return [kakuin, "issue", "--batch", str(batch), "--out", str(out), "--workers", "2", "--batch-size", "25"]


def pem_list(path: Path) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(path.read_bytes())


def test_repeated_lines_are_refused_and_a_run_again_issues_nothing_twice(
    ca_ctx: CAContext, ec_keys: list[ec.EllipticCurvePrivateKey]
) -> None:
    first, second = client_lines(ec_keys, 2, f"dup-{uuid.uuid4().hex[:6]}")
    entry = json.loads(first)
    # The same request written differently: members reordered, spaced, the PEM wrapped at 40.
    body = "".join(entry["csr"].strip().splitlines()[1:-1])
    chunks = [body[i : i + 40] for i in range(0, len(body), 40)]
    wrapped = "\n".join(["-----BEGIN CERTIFICATE REQUEST-----", *chunks, "-----END CERTIFICATE REQUEST-----"])
    respelled = json.dumps({"applicant": entry["applicant"], "csr": wrapped, "profile": "client"}, indent=1)
    lines = [
        first,
        second,
        first,
        respelled.replace("\n", " ") + "\n",
        json.dumps({**entry, "id": "renewal"}) + "\n",
        json.dumps({**entry, "id": 7}) + "\n",
    ]
    before = issued_count(ca_ctx)

    outcomes = list(BulkIssuer(ca_ctx, actor="test:bulk", batch_size=2, workers=2).run(lines))
    issued = [item for outcome in outcomes for item in outcome.issued]
    refused = [str(item) for outcome in outcomes for item in outcome.refused]
    assert [item.line for item in issued] == [1, 2, 5]
    assert all(item.already is None for item in issued)
    assert refused[:2] == [
        "line 3: the same request as line 1 (profile, authority, CSR and applicant data); to issue "
        'both, give each line its own "id"',
        "line 4: the same request as line 1 (profile, authority, CSR and applicant data); to issue "
        'both, give each line its own "id"',
    ]
    assert refused[2].startswith("line 6: id: expected a string")
    assert issued_count(ca_ctx) - before == 3

    # Run again: nothing new, and every line's certificate comes back as it was.
    again = list(BulkIssuer(ca_ctx, actor="test:bulk", batch_size=4, workers=1).run(lines))
    reissued = [item for outcome in again for item in outcome.issued]
    assert [(i.line, i.serial, i.pem, i.already) for i in reissued] == [
        (i.line, i.serial, i.pem, "issued") for i in issued
    ]
    assert issued_count(ca_ctx) - before == 3


def test_a_batch_killed_while_signing_and_run_again_issues_every_line_exactly_once(
    ca_ctx: CAContext, ec_keys: list[ec.EllipticCurvePrivateKey], tmp_path: Path
) -> None:
    lines = org_user_lines(ec_keys, 300, f"kill-{uuid.uuid4().hex[:6]}")
    batch = tmp_path / "requests.jsonl"
    batch.write_text("".join(lines), encoding="utf-8")
    keys = [request_from_line(line, "test").request_key or "" for line in lines]
    assert len(set(keys)) == len(lines)

    # First run: SIGKILLed (with its workers) at a moment the database shows certificates of the
    # file issued and others reserved but not yet signed; stopped first, so that moment holds.
    killed = subprocess.Popen(
        batch_cli(batch, tmp_path / "first.pem"),
        env=cli_env(ca_ctx),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    deadline = time.monotonic() + 180
    while True:
        assert killed.poll() is None, f"the batch ended before it was caught signing: {killed.stderr}"
        assert time.monotonic() < deadline, "the batch was never seen signing"
        seen = statuses(ca_ctx, keys)
        if seen["issued"] and seen["signing"]:
            os.killpg(killed.pid, signal.SIGSTOP)
            seen = statuses(ca_ctx, keys)
            if seen["issued"] and seen["signing"]:
                os.killpg(killed.pid, signal.SIGKILL)
                break
            os.killpg(killed.pid, signal.SIGCONT)
        time.sleep(0.002)
    killed.wait(timeout=30)
    left = statuses(ca_ctx, keys)
    assert left["issued"] + left["signing"] < len(lines), left  # some lines not reached at all

    # Run again at once: the rows being signed are younger than the grace period, so nothing
    # touches them (they might belong to a live process); their lines are refused, every other
    # line is issued or, if issued before, written out again.
    second = subprocess.run(
        batch_cli(batch, tmp_path / "second.pem"),
        env=cli_env(ca_ctx),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert second.returncode == 1, second.stderr
    being_signed = [line for line in second.stderr.splitlines() if line.startswith("refused ")]
    assert len(being_signed) == left["signing"]
    assert all("being signed since" in line for line in being_signed)
    fresh = len(lines) - left["issued"] - left["signing"]
    summary = f"issued {fresh}, already issued {left['issued']}, refused {left['signing']} of {len(lines)}"
    assert summary in second.stderr.splitlines()[-1]
    assert statuses(ca_ctx, keys) == Counter(issued=len(lines) - left["signing"], signing=left["signing"])
    assert len(pem_list(tmp_path / "second.pem")) == len(lines) - left["signing"]
    reconcile = subprocess.run(
        [str(KAKUIN_SCRIPT), "ca", "reconcile"],
        env=cli_env(ca_ctx),
        capture_output=True,
        text=True,
    )
    assert reconcile.returncode == 0 and "nothing to settle" in reconcile.stdout, reconcile.stdout

    # Once the grace period has passed (here: none), the killed run's reserved rows are settled as
    # never signed and their lines issued anew; the output holds every line's certificate.
    third = subprocess.run(
        batch_cli(batch, tmp_path / "third.pem"),
        env=cli_env(ca_ctx, KAKUIN_CA_RECONCILE_GRACE="0"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert third.returncode == 0, third.stderr
    settled = [line for line in third.stderr.splitlines() if line.startswith("settled certificate ")]
    assert len(settled) == left["signing"] and all("never signed, now failed" in s for s in settled)
    summary = (
        f"issued {left['signing']}, already issued {len(lines) - left['signing']}, refused 0 of {len(lines)}"
    )
    assert summary in third.stderr.splitlines()[-1]

    rows = rows_by_identity(ca_ctx, keys)
    assert Counter(status for _, status, _ in rows) == Counter(issued=len(lines), failed=left["signing"])
    live = {key: der for key, status, der in rows if status != "failed"}
    assert len(live) == len(lines)  # one certificate per line, none twice
    written = [c.public_bytes(Encoding.DER) for c in pem_list(tmp_path / "third.pem")]
    assert written == [live[key] for key in keys]  # every line's certificate, in line order
    names = [common_name(c.public_bytes(Encoding.PEM).decode()) for c in pem_list(tmp_path / "third.pem")]
    assert names == [json.loads(line)["applicant"]["common_name"] for line in lines]
