"""Foreign input never raises past the registration API (issue 12): a CSR in an application and
a verifier's certificate that cannot be read in full are 400 problem+json naming the field, and
change nothing (every table but the Idempotency-Key answers keeps its row count), under real
gunicorn on SQLite and PostgreSQL.

Before: a CSR with a duplicated or broken requested extension was accepted (and later issued),
and a verifier certificate whose subject does not decode was a 500 with a traceback in the log
(the ``ra`` fixture fails on any traceback in gunicorn's log)."""

from __future__ import annotations

import base64
import uuid
from dataclasses import dataclass

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from tests.conftest import APPLICANTS
from tests.malformed import (
    CA_BASIC_CONSTRAINTS,
    CRL_NUMBER,
    OCSP_SIGNING,
    Bad,
    Forger,
    crl_entry,
    extension,
    pem,
    row_counts,
    unreadable_certificates,
    unreadable_requests,
)
from tests.registration.conftest import RA, People, problem

FORGER = Forger(ec.generate_private_key(ec.SECP256R1()))  # a key lgpki-org-user takes
CERTIFICATE = FORGER.certificate([CA_BASIC_CONSTRAINTS])
REQUEST = FORGER.request([])
CRL = FORGER.crl([crl_entry(5)], [extension(CRL_NUMBER, b"\x02\x01\x01")])


@dataclass(frozen=True)
class Text:
    """A JSON string field's value and words the problem's detail must contain."""

    id: str
    value: str
    says: tuple[str, ...]


def _as_pem(cases: list[Bad], label: str) -> list[Text]:
    return [Text(case.id, pem(label, case.data).decode(), case.says) for case in cases]


def _damaged(good: bytes, label: str, not_a: str, others: dict[str, bytes]) -> list[Text]:
    """What an API client may put in the field instead: text that holds no such object."""
    text = pem(label, good).decode()
    cases = [
        Text(
            "PEM with garbage base64",
            f"-----BEGIN {label}-----\nnot*base64!\n-----END {label}-----\n",
            (not_a,),
        ),
        Text("PEM with nothing inside", f"-----BEGIN {label}-----\n-----END {label}-----\n", (not_a,)),
        Text("truncated PEM", text[: len(text) // 2], (not_a,)),
        Text("PEM cut before its end line", text[: text.index("-----END")], (not_a,)),
        Text("DER as text", good.decode("latin-1"), ("NUL",)),
        Text("a lone surrogate", "\ud800" + text, ("surrogate",)),
        Text("blank", " \n ", ("non-empty",)),
    ]
    cases += [
        Text(f"a {kind} in PEM", pem(tag, der).decode(), (not_a,)) for kind, (tag, der) in others.items()
    ]
    return cases


REQUESTS = _as_pem(unreadable_requests(FORGER), "CERTIFICATE REQUEST") + _damaged(
    REQUEST,
    "CERTIFICATE REQUEST",
    "not a PKCS#10",
    {"certificate": ("CERTIFICATE", CERTIFICATE), "CRL": ("X509 CRL", CRL)},
)
CERTIFICATES = _as_pem(
    unreadable_certificates(FORGER, [CA_BASIC_CONSTRAINTS, OCSP_SIGNING]), "CERTIFICATE"
) + _damaged(
    CERTIFICATE,
    "CERTIFICATE",
    "not an X.509 certificate",
    {"CSR": ("CERTIFICATE REQUEST", REQUEST), "CRL": ("X509 CRL", CRL)},
)
CERTIFICATES.append(Text("base64 without the PEM lines", base64.b64encode(CERTIFICATE).decode(), ("PEM",)))


def _counts(ra: RA) -> dict[str, int]:
    """Every table but the stored answers to Idempotency-Keys (a refusal's answer is kept)."""
    counts = row_counts(ra.ctx.engine)
    counts.pop("ra_idempotency_keys", None)
    return counts


@pytest.mark.parametrize("case", REQUESTS, ids=[case.id for case in REQUESTS])
def test_an_unreadable_csr_is_refused_at_the_counter(ra: RA, people: People, case: Text) -> None:
    before = _counts(ra)
    body = {"profile": "lgpki-org-user", "csr": case.value, "applicant": APPLICANTS["lgpki-org-user"]}
    data = problem(people.a.clerk.post("/v1/applications", body), 400, "csr")
    assert all(word in data["detail"] for word in case.says), data
    assert _counts(ra) == before


@pytest.mark.parametrize("case", CERTIFICATES, ids=[case.id for case in CERTIFICATES])
def test_an_unreadable_verifier_certificate_is_refused(ra: RA, people: People, case: Text) -> None:
    before = _counts(ra)
    body = {
        "name": f"v-{uuid.uuid4().hex[:8]}",
        "kind": "government",
        "certificate": case.value,
        "authorities": [],
    }
    data = problem(people.admin.post("/v1/verifiers", body), 400, "certificate")
    assert all(word in data["detail"] for word in case.says), data
    assert _counts(ra) == before
