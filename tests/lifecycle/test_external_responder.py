"""A legacy CA whose key stays outside the token, answered without it (SQLite and PostgreSQL):

- OCSP through a delegated responder certificate the old CA signs (RFC 6960 §4.2.2.2): `kakuin ocsp
  responder-csr` (key in the token), `openssl ca` of the old CA, `kakuin ocsp responder-import`;
  then `openssl ocsp` against Kakuin's responder (granian) verifies against the old CA; bad
  certificates are refused with one line and nothing stored;
- CRL: the old CA's own latest imported CRL served at /crl/NAME.crl (gunicorn), used by `openssl
  verify -crl_check`, replaced by a newer one on re-import, never by an older one.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from email.utils import parsedate_to_datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from ca.service import CAContext
from ca.timeutil import utcnow
from ocsp.external import external_responder_notices
from ocsp.responders import ResponderKeys
from ocsp.server import granian_argv
from tests.conftest import openssl, wait_for
from tests.lifecycle.conftest import CliResult, ctx_env, pem, run_cli
from tests.lifecycle.oldca import OldCA, make_old_ca
from tests.ocsp.conftest import free_port, healthy_check, start_server, stop_server

NAME = "pref-chiba"
OCSP_EXTENSIONS = """
[ ocsp_ext ]
basicConstraints = CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = OCSPSigning
noCheck = ignored
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
"""


def ca_sign(
    ca: OldCA, csr: Path, out: Path, *args: str, extensions: str | None = "ocsp_ext"
) -> x509.Certificate:
    """The operator has the old CA sign a request with `openssl ca`, where its key lives."""
    ext = ca.dir / "ocsp-ext.cnf"
    ext.write_text(OCSP_EXTENSIONS)
    chosen = ["-extfile", str(ext), "-extensions", extensions] if extensions else []
    result = openssl(
        "ca", "-batch", "-config", ca.conf, "-in", str(csr), "-out", str(out), "-notext", *chosen,
        *(args or ("-days", "30")),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr.decode()
    return x509.load_pem_x509_certificate(out.read_bytes())


@dataclass
class World:
    ctx: CAContext
    old: OldCA
    dir: Path
    csr: Path
    leaves: dict[str, x509.Certificate] = field(default_factory=dict)

    @property
    def authority_id(self) -> int:
        return self.ctx.store.authority(NAME).id

    def write(self, name: str, *certificates: x509.Certificate) -> str:
        path = self.dir / name
        path.write_bytes(pem(*certificates))
        return str(path)

    def import_legacy(self, crl: Path) -> CliResult:
        return run_cli(
            self.ctx, "import-legacy", "--authority", NAME, "--ca-cert", str(self.old.ca_pem),
            "--index", str(self.old.index), "--crl", str(crl),
        )  # fmt: skip


@pytest.fixture(scope="module")
def world(small: CAContext, tmp_path_factory: pytest.TempPathFactory) -> World:
    base = tmp_path_factory.mktemp("external")
    old = make_old_ca(base / "old", "Chiba Prefectural CA")
    w = World(small, old, base, base / "responder.csr")
    for name in ("good", "compromised", "held", "later"):
        w.leaves[name] = old.issue(name)
    old.revoke(w.leaves["compromised"], "-crl_reason", "keyCompromise")
    old.revoke(w.leaves["held"], "-crl_hold", "1.2.840.10040.2.2")
    old.gencrl()
    result = run_cli(
        small, "import-legacy", "--authority", NAME, "--ca-cert", str(old.ca_pem),
        "--index", str(old.index), "--crl", str(old.crl),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "key outside the token" in result.stdout, result.stdout
    # The old CA's own CRL (crlnumber 0x1000) is what Kakuin serves for it.
    assert f"/crl/{NAME}.crl #4096 (the old CA's own, 2 entries)" in result.stdout, result.stdout
    assert f"{NAME} has no valid OCSP responder certificate" in result.stderr, result.stderr
    return w


def test_responder_csr_is_signed_by_a_new_token_key(world: World) -> None:
    result = run_cli(world.ctx, "ocsp", "responder-csr", "--authority", NAME, "--out", str(world.csr))
    assert result.exit_code == 0, result.output
    assert f"responder key ocsp-{NAME}-g1" in result.stderr
    csr = x509.load_pem_x509_csr(world.csr.read_bytes())
    assert csr.is_signature_valid
    assert csr.subject.rfc4514_string() == f"CN={NAME} OCSP Responder,O=Tokyo Metropolis,C=JP"
    info = world.ctx.token.public_info(f"ocsp-{NAME}-g1")
    assert info.spki_der == csr.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    # Asked again before the import, it signs with the same waiting key.
    again = run_cli(world.ctx, "ocsp", "responder-csr", "--authority", NAME)
    assert again.exit_code == 0, again.output
    assert x509.load_pem_x509_csr(again.stdout.encode()).public_key() == csr.public_key()
    # An authority whose key is in the token gets its responders from Kakuin itself.
    refused = run_cli(world.ctx, "ocsp", "responder-csr", "--authority", "lgpki-org")
    assert refused.exit_code == 1
    assert refused.stderr.strip() == (
        "kakuin: error: authority: lgpki-org's CA key is in the token: Kakuin issues its responder certificates "
        "itself (kakuin ocsp responder-cert --authority lgpki-org)"
    )


def test_bad_responder_certificates_are_refused_and_nothing_changes(world: World) -> None:
    ctx, old, tmp = world.ctx, world.old, world.dir
    other = make_old_ca(tmp / "other", "Gunma Prefectural CA")
    foreign_csr = tmp / "foreign.csr"
    made = openssl(
        "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", "/dev/null",
        "-subj", "/C=JP/O=Tokyo Metropolis/CN=not from the token", "-out", str(foreign_csr),
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    (tmp / "junk.pem").write_text("not a certificate\n")
    cases = [
        (ca_sign(other, world.csr, tmp / "wrong-issuer.pem"), "the certificate was issued by CN=Gunma Prefectural CA,O=Tokyo Metropolis,C=JP, not by pref-chiba's CA (CN=Chiba Prefectural CA,O=Tokyo Metropolis,C=JP)"),
        (ca_sign(old, world.csr, tmp / "no-eku.pem", extensions=None), "the certificate does not carry extendedKeyUsage id-kp-OCSPSigning (RFC 6960 §4.2.2.2)"),
        (ca_sign(old, foreign_csr, tmp / "foreign.pem"), f"the certificate's public key is not the token key ocsp-{NAME}-g1 (kakuin ocsp responder-csr --authority {NAME} made the request to sign)"),
        (ca_sign(old, world.csr, tmp / "expired.pem", "-startdate", "20200101000000Z", "-enddate", "20200201000000Z"), "the certificate is not valid now (valid from 2020-01-01 00:00:00Z to 2020-02-01 00:00:00Z)"),
        (None, "not an X.509 certificate in PEM or DER ("),
    ]  # fmt: skip
    files = ["wrong-issuer.pem", "no-eku.pem", "foreign.pem", "expired.pem", "junk.pem"]
    before = len(ctx.store.certificates(authority=NAME, limit=1000))
    for file, (_certificate, message) in zip(files, cases, strict=True):
        result = run_cli(ctx, "ocsp", "responder-import", "--authority", NAME, str(tmp / file))
        assert result.exit_code == 1, (file, result.output)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"kakuin: error: certificate: {message}"), (
            file,
            result.stderr,
        )
    assert ResponderKeys(ctx.engine).all(world.authority_id) == []
    assert len(ctx.store.certificates(authority=NAME, limit=1000)) == before
    listed = run_cli(ctx, "ocsp", "responders")
    assert NAME not in listed.stdout and f"{NAME} has no valid OCSP responder certificate" in listed.stderr


def _ocsp(world: World, port: int, leaf: x509.Certificate) -> str:
    result = openssl(
        "ocsp", "-issuer", world.write("issuer.pem", world.old.certificate),
        "-cert", world.write("leaf.pem", leaf), "-url", f"http://127.0.0.1:{port}/ocsp/{NAME}",
        "-CAfile", world.write("trust.pem", world.old.certificate), "-resp_text", "-timeout", "20",
    )  # fmt: skip
    return (result.stdout + result.stderr).decode()


def test_imported_responder_answers_ocsp_for_the_old_ca(world: World) -> None:
    ctx = world.ctx
    certificate = ca_sign(world.old, world.csr, world.dir / "responder.pem")
    result = run_cli(ctx, "ocsp", "responder-import", "--authority", NAME, str(world.dir / "responder.pem"))
    assert result.exit_code == 0, result.output
    until = f"{certificate.not_valid_after_utc:%Y-%m-%d %H:%M:%S}Z"
    assert (
        result.stdout.strip() == f"{NAME:<14} imported generation 1 until {until} (renew by hand before then)"
    )
    record = ctx.store.certificate(NAME, certificate.serial_number)
    assert record.profile == "ocsp-responder" and record.status == "issued"
    listed = run_cli(ctx, "ocsp", "responders")
    assert f"{NAME:<14} generation 1 imported until {until}" in listed.stdout, listed.output
    assert "warning" not in listed.stderr, listed.stderr
    # The pre-signer signs the old CA's answers with it (Kakuin cannot sign with the CA key).
    presigned = run_cli(ctx, "ocsp", "presign", "--authority", NAME)
    assert presigned.exit_code == 0, presigned.output
    assert f"{NAME:<14} due        5  signed " in presigned.stdout, presigned.stdout
    assert not presigned.stdout.split(f"{NAME:<14} due        5  signed ")[1].lstrip().startswith("0 ")

    port = free_port()
    env = {**os.environ, **ctx_env(ctx), "KAKUIN_OCSP_URL": f"http://127.0.0.1:{port}/ocsp"}
    process = start_server(
        granian_argv("127.0.0.1", port, 1), env, healthy_check(port), world.dir / "ocsp.log"
    )
    try:
        for name, status in (("good", "good"), ("compromised", "revoked"), ("held", "revoked")):
            answer = _ocsp(world, port, world.leaves[name])
            assert "Response verify OK" in answer, answer
            assert f"leaf.pem: {status}" in answer, (name, answer)
            assert f"Subject: C=JP, O=Tokyo Metropolis, CN={NAME} OCSP Responder" in answer, answer
        assert "Reason: keyCompromise" in _ocsp(world, port, world.leaves["compromised"])
        assert "Reason: certificateHold" in _ocsp(world, port, world.leaves["held"])
    finally:
        stop_server(process)

    # Renewal is by hand: the job and the listing warn once it is due, naming the commands.
    now = certificate.not_valid_after_utc - timedelta(days=2)
    notices = external_responder_notices(ctx, ctx.store.authority(NAME), 1 / 3, now, retire=False)
    assert [n.level for n in notices] == ["warning"]
    assert notices[0].message == (
        f"{NAME}'s OCSP responder certificate g1 expires {until} and cannot be renewed automatically "
        f"(CA key outside the token); renew by hand: kakuin ocsp responder-csr --authority {NAME}, "
        "have the CA sign it, kakuin ocsp responder-import"
    )
    status = run_cli(ctx, "ca", "serve-status")
    assert f"{NAME}'s OCSP responder certificate g1 expires {until}" in status.stdout, status.output


@dataclass
class CRLServer:
    port: int

    def get(self, path: str) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            return response.status, dict(response.getheaders()), response.read()
        finally:
            conn.close()


@pytest.fixture
def crl_server(world: World) -> Iterator[CRLServer]:
    port = free_port()
    env = {**os.environ, **ctx_env(world.ctx), "KAKUIN_CRL_PORT": str(port)}
    env.pop("KAKUIN_CONFIG", None)
    log = world.dir / "crl.log"
    process = subprocess.Popen(
        [sys.executable, "-m", "crl.server", "--listener", "plain"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=log.open("wb"),
        start_new_session=True,
    )
    server = CRLServer(port)
    try:
        assert wait_for(lambda: _answers(server), 30), log.read_text()
        yield server
    finally:
        stop_server(process)


def _answers(server: CRLServer) -> bool:
    try:
        server.get("/healthz")
    except OSError:
        return False
    return True


def _verify(world: World, leaf: x509.Certificate, crl: bytes) -> str:
    (world.dir / "fetched.crl").write_bytes(crl)
    result = openssl(
        "verify", "-crl_check", "-CAfile", world.write("anchor.pem", world.old.certificate),
        "-CRLfile", str(world.dir / "fetched.crl"), world.write("leaf.pem", leaf),
    )  # fmt: skip
    return (result.stdout + result.stderr).decode()


def _der(path: Path) -> bytes:
    return x509.load_pem_x509_crl(path.read_bytes()).public_bytes(Encoding.DER)


def test_the_old_cas_own_crl_is_served_and_replaced_only_by_a_newer_one(
    world: World, crl_server: CRLServer
) -> None:
    status, headers, body = crl_server.get(f"/crl/{NAME}.crl")
    assert status == 200, body
    assert body == _der(world.old.crl)  # the old CA's bytes, as it signed them
    crl = x509.load_der_x509_crl(body)
    assert headers["Content-Type"] == "application/pkix-crl"
    assert headers["ETag"] == f'"{hashlib.sha256(body).hexdigest()}"'
    assert parsedate_to_datetime(headers["Last-Modified"]) == crl.last_update_utc.replace(microsecond=0)
    assert crl.next_update_utc is not None
    max_age = int(headers["Cache-Control"].split("max-age=")[1].split(",")[0])
    assert abs(max_age - (crl.next_update_utc - utcnow()).total_seconds()) < 120, headers
    pem_crl = crl.public_bytes(Encoding.PEM)
    for name, verdict in (
        ("good", "leaf.pem: OK"),
        ("later", "leaf.pem: OK"),
        ("compromised", "certificate revoked"),
    ):
        assert verdict in _verify(world, world.leaves[name], pem_crl), name

    # The old CA revokes one more and makes a newer CRL in the same second as the first (its
    # cRLNumber, not thisUpdate, tells them apart); a re-import serves that one.
    first = world.dir / "first-crl.pem"
    first.write_bytes(world.old.crl.read_bytes())
    held = x509.load_pem_x509_crl(first.read_bytes())
    world.old.revoke(world.leaves["later"], "-crl_reason", "superseded")
    newer = world.old.gencrl(held.last_update_utc.strftime("%Y%m%d%H%M%SZ"))
    assert newer.last_update_utc == held.last_update_utc
    result = world.import_legacy(world.old.crl)
    assert result.exit_code == 0, result.output
    assert f"/crl/{NAME}.crl #4097 (the old CA's own, 3 entries)" in result.stdout
    status, _headers, body = crl_server.get(f"/crl/{NAME}.crl")
    assert status == 200 and body == newer.public_bytes(Encoding.DER)
    later = _verify(world, world.leaves["later"], x509.load_der_x509_crl(body).public_bytes(Encoding.PEM))
    assert "certificate revoked" in later, later
    assert world.ctx.store.certificate(NAME, world.leaves["later"].serial_number).status == "revoked"

    # The older CRL again is refused, with nothing changed.
    refused = world.import_legacy(first)
    assert refused.exit_code == 1
    line = refused.stderr.strip().splitlines()[-1]
    assert line.startswith("kakuin: error: crl: the CRL (number 4096, thisUpdate "), line
    assert f"is not newer than the one {NAME} holds (number 4097, " in line and line.endswith(
        "nothing was imported"
    )
    status, _headers, body = crl_server.get(f"/crl/{NAME}.crl")
    assert body == newer.public_bytes(Encoding.DER)
