"""The CRL responder as relying parties meet it: real gunicorn on 127.0.0.1 (plain HTTP and the
mTLS listener), conditional GETs, HEAD, caching headers, problem+json errors, and restricted
(JPKI) CRLs for registered verifiers only; on SQLite and PostgreSQL."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import secrets
import ssl
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime, parsedate_to_datetime
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding

from ca.issuance import IssuanceRequest
from ca.service import CAContext
from ca.verifiers import VerifierRegistry
from config import load_settings
from crl.config import load_crl_settings
from crl.publisher import Publisher
from crl.storer import CRLStore
from crl.tls import ensure_tls_files
from tests.conftest import APPLICANTS, _free_port, make_csr, wait_for
from tests.crl.conftest import add_rows, municipality, unique_partition


@dataclass
class Responder:
    plain_port: int
    tls_port: int
    publisher: Publisher
    server_ca: Path  # the operator CA certificate (PEM): the TLS listener's issuer
    tmp: Path

    def request(
        self,
        path: str,
        method: str = "GET",
        headers: dict[str, str] | None = None,
        tls: bool = False,
        client: tuple[Path, Path] | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        if tls:
            context = ssl.create_default_context(cafile=str(self.server_ca))
            if client is not None:
                context.load_cert_chain(str(client[0]), str(client[1]))
            conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                "127.0.0.1", self.tls_port, context=context, timeout=30
            )
        else:
            conn = http.client.HTTPConnection("127.0.0.1", self.plain_port, timeout=30)
        try:
            conn.request(method, path, headers=headers or {})
            response = conn.getresponse()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
        finally:
            conn.close()


def _up(port: int, tls: bool) -> bool:
    import socket

    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture(scope="module")
def responder(ca_ctx: CAContext, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Responder]:
    tmp = tmp_path_factory.mktemp("responder")
    plain, tls = _free_port(), _free_port()
    config = tmp / "kakuin.toml"
    config.write_text(f'[crl]\ndirectory = "{tmp / "crl"}"\ntls_port = {tls}\n')
    env = {
        **os.environ,
        "KAKUIN_HOME": str(ca_ctx.settings.home),
        "KAKUIN_DATABASE_URL": ca_ctx.settings.database_url,
        "KAKUIN_CRL_PORT": str(plain),
    }
    settings = load_settings(config, environ=env)
    crl_settings = load_crl_settings(settings)
    ensure_tls_files(ca_ctx, crl_settings)
    server_ca = tmp / "operator.pem"
    server_ca.write_bytes(ca_ctx.authorities.get("operator").certificate.public_bytes(Encoding.PEM))
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "crl.server", "--listener", listener, "--config", str(config)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=(tmp / f"{listener}.log").open("wb"),
        )
        for listener in ("plain", "tls")
    ]
    try:
        assert wait_for(lambda: _up(plain, False) and _up(tls, True), 30), (tmp / "plain.log").read_text()
        yield Responder(plain, tls, Publisher(ca_ctx, crl_settings, actor="test"), server_ca, tmp)
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(timeout=15)


def _problem(status: int, headers: dict[str, str], body: bytes) -> dict[str, object]:
    assert headers["content-type"] == "application/problem+json"
    problem = json.loads(body)
    assert problem["status"] == status
    return dict(problem)


def test_get_serves_the_newest_crl_with_cache_headers(ca_ctx: CAContext, responder: Responder) -> None:
    partition = unique_partition()
    add_rows(ca_ctx, "lgpki-app", partition, [datetime(2099, 1, 1, tzinfo=UTC)])
    first = responder.publisher.publish_full("lgpki-app", partition).record
    assert first is not None
    status, headers, body = responder.request(f"/crl/lgpki-app/{partition}.crl")
    assert status == 200
    assert headers["content-type"] == "application/pkix-crl"
    assert int(headers["content-length"]) == len(body) == first.size
    assert headers["etag"] == f'"{hashlib.sha256(body).hexdigest()}"'
    crl = x509.load_der_x509_crl(body)
    assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == first.number
    assert parsedate_to_datetime(headers["last-modified"]) == crl.last_update_utc
    assert parsedate_to_datetime(headers["expires"]) == crl.next_update_utc
    assert crl.next_update_utc is not None
    max_age = int(headers["cache-control"].split("max-age=")[1].split(",")[0])
    remaining = (crl.next_update_utc - datetime.now(UTC)).total_seconds()
    assert headers["cache-control"].startswith("public")
    assert remaining - 30 <= max_age <= remaining + 1

    second = responder.publisher.publish_full("lgpki-app", partition).record
    assert second is not None and second.number > first.number
    status, headers2, body2 = responder.request(f"/crl/lgpki-app/{partition}.crl")
    assert status == 200 and headers2["etag"] != headers["etag"]
    assert x509.load_der_x509_crl(body2).extensions.get_extension_for_class(
        x509.CRLNumber
    ).value.crl_number == (second.number)


def test_conditional_get_and_head(ca_ctx: CAContext, responder: Responder) -> None:
    partition = unique_partition()
    responder.publisher.publish_full("lgpki-app", partition)
    path = f"/crl/lgpki-app/{partition}.crl"
    _, headers, body = responder.request(path)
    etag, modified = headers["etag"], headers["last-modified"]

    status, h304, empty = responder.request(path, headers={"If-None-Match": etag})
    assert (status, empty) == (304, b"")
    assert h304["etag"] == etag and "max-age=" in h304["cache-control"] and "expires" in h304
    assert responder.request(path, headers={"If-None-Match": f'"other", W/{etag}'})[0] == 304
    assert responder.request(path, headers={"If-None-Match": '"other"'})[0] == 200
    assert responder.request(path, headers={"If-Modified-Since": modified})[0] == 304
    earlier = format_datetime(datetime(2020, 1, 1, tzinfo=UTC), usegmt=True)
    assert responder.request(path, headers={"If-Modified-Since": earlier})[0] == 200
    assert responder.request(path, headers={"If-Modified-Since": "not a date"})[0] == 200
    # If-None-Match wins over If-Modified-Since (RFC 9110 §13.1.3).
    assert (
        responder.request(path, headers={"If-None-Match": '"other"', "If-Modified-Since": modified})[0] == 200
    )

    status, head_headers, head_body = responder.request(path, method="HEAD")
    assert (status, head_body) == (200, b"")
    assert head_headers["content-length"] == str(len(body)) and head_headers["etag"] == etag


def test_delta_complete_and_ca_certificate_paths(ca_ctx: CAContext, responder: Responder) -> None:
    partition = unique_partition()
    responder.publisher.publish_full("lgpki-app", partition)
    delta = responder.publisher.publish_delta("lgpki-app", partition).record
    assert delta is not None
    status, headers, body = responder.request(f"/crl/lgpki-app/{partition}-delta.crl")
    assert status == 200 and headers["content-type"] == "application/pkix-crl"
    indicator = x509.load_der_x509_crl(body).extensions.get_extension_for_class(x509.DeltaCRLIndicator)
    assert indicator.value.crl_number == delta.base_number

    responder.publisher.publish_full("lgpki-org", "")
    status, _, body = responder.request("/crl/lgpki-org.crl")
    crl = x509.load_der_x509_crl(body)
    assert status == 200 and crl.issuer == ca_ctx.authorities.get("lgpki-org").certificate.subject
    with pytest.raises(x509.ExtensionNotFound):
        crl.extensions.get_extension_for_class(x509.IssuingDistributionPoint)

    status, headers, body = responder.request("/ca/lgpki-app.cer")
    assert status == 200 and headers["content-type"] == "application/pkix-cert"
    assert body == ca_ctx.authorities.get("lgpki-app").certificate.public_bytes(Encoding.DER)


def test_a_certificates_crl_urls_lead_to_its_partitions_full_and_delta(
    ca_ctx: CAContext, responder: Responder
) -> None:
    """The URLs a relying party reads from a certificate (CRL distribution point, freshestCRL)
    are the paths the responder serves, and the full CRL points to the same delta."""
    issued = ca_ctx.issuer.issue(
        IssuanceRequest(
            profile="lgpki-server",
            csr=make_csr(ec.generate_private_key(ec.SECP256R1())),
            applicant=APPLICANTS["lgpki-server"],
            actor="test",
        )
    )
    dp = issued.certificate.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    fresh = issued.certificate.extensions.get_extension_for_class(x509.FreshestCRL).value
    [full_url] = [n.value for n in dp[0].full_name or [] if isinstance(n, x509.UniformResourceIdentifier)]
    [delta_url] = [n.value for n in fresh[0].full_name or []]
    partition = ca_ctx.store.certificate(issued.authority, issued.serial).partition
    responder.publisher.publish_full(issued.authority, partition)
    ca_ctx.store.revoke(
        authority=issued.authority, serial=issued.serial, reason="keyCompromise", actor="test"
    )
    responder.publisher.publish_delta(issued.authority, partition)

    status, _, body = responder.request(urlsplit(full_url).path)
    assert status == 200, full_url
    full = x509.load_der_x509_crl(body)
    assert full.extensions.get_extension_for_class(x509.FreshestCRL).value == fresh
    status, _, body = responder.request(urlsplit(delta_url).path)
    assert status == 200, delta_url
    delta = x509.load_der_x509_crl(body)
    assert delta.extensions.get_extension_for_class(x509.DeltaCRLIndicator)
    revoked = delta.get_revoked_certificate_by_serial_number(issued.certificate.serial_number)
    assert revoked is not None and revoked.extensions.get_extension_for_class(
        x509.CRLReason
    ).value.reason == (x509.ReasonFlags.key_compromise)


@pytest.mark.parametrize(
    ("method", "path", "status", "field"),
    [
        ("GET", "/crl/nobody/0.crl", 404, "authority"),
        ("GET", "/crl/lgpki-app/never-published.crl", 404, "partition"),
        ("GET", "/crl/lgpki-app/a/b/c.crl", 404, "path"),
        ("GET", "/crl/lgpki-app/0.pem", 404, "path"),
        ("GET", "/elsewhere", 404, "path"),
        ("GET", "/ca/nobody.cer", 404, "authority"),
        ("POST", "/crl/lgpki-app/0.crl", 405, "method"),
        ("DELETE", "/crl/lgpki-app/0.crl", 405, "method"),
    ],
)
def test_bad_requests_get_problem_json(
    responder: Responder, method: str, path: str, status: int, field: str
) -> None:
    got, headers, body = responder.request(path, method=method)
    assert got == status
    assert _problem(status, headers, body)["field"] == field
    if status == 405:
        assert headers["allow"] == "GET, HEAD"


# -- restricted authorities ------------------------------------------------------------------


def _client_certificate(ctx: CAContext, tmp: Path, name: str) -> tuple[x509.Certificate, tuple[Path, Path]]:
    key = ec.generate_private_key(ec.SECP256R1())
    issued = ctx.issuer.issue(
        IssuanceRequest(
            profile="client",
            csr=make_csr(key),
            applicant={"common_name": name, "unit": "verifier"},
            actor="test",
        )
    )
    cert_path, key_path = tmp / f"{name}.pem", tmp / f"{name}.key"
    cert_path.write_text(issued.pem)
    key_path.write_bytes(
        key.private_bytes(Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return issued.certificate, (cert_path, key_path)


def test_restricted_crls_only_for_registered_verifiers(
    ca_ctx: CAContext, responder: Responder, tmp_path: Path
) -> None:
    code = municipality()
    published = responder.publisher.publish_full("jpki-sign", code).record
    assert published is not None
    path = f"/crl/jpki-sign/{code}.crl"
    registry = VerifierRegistry(ca_ctx.store)
    suffix = secrets.token_hex(4)
    allowed_cert, allowed = _client_certificate(ca_ctx, tmp_path, f"pf-{suffix}")
    other_cert, other = _client_certificate(ca_ctx, tmp_path, f"auth-only-{suffix}")
    _, stranger = _client_certificate(ca_ctx, tmp_path, f"stranger-{suffix}")
    registry.add(
        name=f"pf-{suffix}",
        kind="platform",
        certificate=allowed_cert,
        authorities=["jpki-sign"],
        pinless=False,
        platform=None,
        actor="test",
    )
    registry.add(
        name=f"auth-only-{suffix}",
        kind="government",
        certificate=other_cert,
        authorities=["jpki-auth"],
        pinless=False,
        platform=None,
        actor="test",
    )

    status, headers, body = responder.request(path)  # plain HTTP
    problem = _problem(403, headers, body)
    assert status == 403 and f"https://127.0.0.1:{responder.tls_port}" in str(problem["detail"])
    assert "private" not in headers.get("cache-control", "") and headers["cache-control"] == "no-store"

    status, headers, body = responder.request(path, tls=True)  # TLS, no client certificate
    assert status == 403 and _problem(403, headers, body)["field"] == "client_certificate"
    assert responder.request(path, tls=True, client=stranger)[0] == 403
    assert responder.request(path, tls=True, client=other)[0] == 403

    status, headers, body = responder.request(path, tls=True, client=allowed)
    assert status == 200
    assert body == (responder.publisher.settings.directory / published.path).read_bytes()
    assert headers["cache-control"].startswith("private")
    assert (
        responder.request(path, tls=True, client=allowed, headers={"If-None-Match": headers["etag"]})[0]
        == 304
    )
    # Public authorities are served on the TLS listener too, to anyone.
    assert responder.request("/ca/lgpki-app.cer", tls=True)[0] == 200

    registry.disable(f"pf-{suffix}", actor="test")
    assert responder.request(path, tls=True, client=allowed)[0] == 403

    log = [r for r in CRLStore(ca_ctx.engine).downloads(200) if r["partition"] == code]
    seen = [(r["verifier"], r["status"]) for r in reversed(log)]
    assert seen == [
        (None, 403),
        (None, 403),
        (None, 403),
        (f"auth-only-{suffix}", 403),
        (f"pf-{suffix}", 200),
        (f"pf-{suffix}", 304),
        (f"pf-{suffix}", 403),
    ]
    served = next(r for r in log if r["status"] == 200)
    assert served["authority"] == "jpki-sign" and served["number"] == published.number
    assert served["fingerprint"] == hashlib.sha256(allowed_cert.public_bytes(Encoding.DER)).hexdigest()
    # Only registry names and certificate fingerprints: no subject data of anyone.
    assert set(served) == {
        "id",
        "at",
        "verifier",
        "fingerprint",
        "authority",
        "partition",
        "kind",
        "number",
        "status",
    }


def test_restricted_unpublished_partition_is_refused_before_it_is_looked_up(responder: Responder) -> None:
    """A stranger learns nothing about which partitions exist."""
    status, headers, body = responder.request(f"/crl/jpki-sign/{municipality()}.crl", tls=True)
    assert status == 403 and _problem(403, headers, body)["field"] == "client_certificate"


def test_database_unreachable_is_a_503_problem(tmp_path: Path) -> None:
    """The app itself (as a gunicorn worker runs it) on a PostgreSQL URL nothing listens on."""
    from ca.db import make_engine
    from crl.wsgi import CRLResponder

    engine = make_engine(f"postgresql+psycopg://nobody@/nothing?host={tmp_path}&port=1&connect_timeout=2")
    app = CRLResponder(engine, tmp_path, "http://127.0.0.1:8082/crl", "http://127.0.0.1:8082/ca")
    answers: list[str] = []
    body = b"".join(
        app(
            {"REQUEST_METHOD": "GET", "PATH_INFO": "/crl/lgpki-app/0.crl", "wsgi.url_scheme": "http"},
            lambda status, headers: answers.append(status),
        )
    )
    assert answers == ["503 Service Unavailable"]
    problem = json.loads(body)
    assert problem["status"] == 503 and "database" in problem["detail"]
