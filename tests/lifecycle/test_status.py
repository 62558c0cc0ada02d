"""Status after lifecycle events, through Kakuin's own CRL publisher and OCSP responder (granian
on 127.0.0.1), checked with `openssl verify -crl_check` and `openssl ocsp`:

- an imported legacy CA (made with `openssl ca`): every certificate good or revoked as the old CA
  said, on Kakuin's CRL and from Kakuin's OCSP responder;
- a key rollover: certificates of both generations, each through its own generation's CRL
  (``g2/…`` scopes for the new one) and OCSP responder certificate (more in test_generations.py);
- termination: final CRLs beyond the last expiry, issuance refused, status still answered.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding

from ca.lifecycle_store import LifecycleStore
from ca.rollover import rollover
from ca.service import CAContext
from crl.config import load_crl_settings
from crl.publisher import Publisher
from crl.reader import COMPLETE
from crl.storer import CRLStore
from ocsp.responders import ensure_responders
from ocsp.server import granian_argv
from ocsp.settings import load_ocsp_settings
from tests.conftest import make_csr, openssl
from tests.lifecycle.conftest import ctx_env, issue_org_user, pem, run_cli
from tests.lifecycle.oldca import OldCA, make_old_ca
from tests.lifecycle.test_legacy import softhsm_import
from tests.ocsp.conftest import free_port, healthy_check, start_server, stop_server


@dataclass
class World:
    ctx: CAContext
    old: OldCA
    dir: Path
    port: int = 0
    legacy: dict[str, x509.Certificate] = field(default_factory=dict)
    org: dict[str, x509.Certificate] = field(default_factory=dict)  # leaves of lgpki-org
    ca: dict[str, x509.Certificate] = field(default_factory=dict)  # CA certificates

    def write(self, name: str, *certificates: x509.Certificate) -> str:
        path = self.dir / name
        path.write_bytes(pem(*certificates))
        return str(path)

    def crl(self, authority: str, partition: str) -> x509.CertificateRevocationList:
        """The newest full CRL Kakuin's publisher recorded for the scope, as it serves it."""
        record = self.ctx.store.authority(authority)
        published = CRLStore(self.ctx.engine).latest(record.id, partition, "full")
        assert published is not None, (authority, partition)
        directory = load_crl_settings(self.ctx.settings).directory
        return x509.load_der_x509_crl((directory / published.path).read_bytes())

    def crl_check(
        self, leaf: x509.Certificate, chain: list[x509.Certificate], crl: x509.CertificateRevocationList
    ) -> str:
        (self.dir / "crl.pem").write_bytes(crl.public_bytes(Encoding.PEM))
        args = ["verify", "-crl_check", "-CAfile", self.write("anchor.pem", chain[-1])]
        if len(chain) > 1:
            args += ["-untrusted", self.write("untrusted.pem", *chain[:-1])]
        result = openssl(*args, "-CRLfile", str(self.dir / "crl.pem"), self.write("leaf.pem", leaf))
        return (result.stdout + result.stderr).decode()

    def ocsp(
        self, authority: str, issuer: x509.Certificate, leaf: x509.Certificate, *parents: x509.Certificate
    ) -> str:
        """`openssl ocsp` for ``leaf`` against Kakuin's responder, trusting ``issuer`` and its
        ``parents`` (the delegated responder certificate must chain to them)."""
        result = openssl(
            "ocsp",
            "-issuer", self.write("issuer.pem", issuer),
            "-cert", self.write("leaf.pem", leaf),
            "-url", f"http://127.0.0.1:{self.port}/ocsp/{authority}",
            "-CAfile", self.write("ocsp-trust.pem", issuer, *parents),
            "-timeout", "20",
        )  # fmt: skip
        return (result.stdout + result.stderr).decode()


@pytest.fixture(scope="module")
def world(small_ctx, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    ctx: CAContext = small_ctx()
    base = tmp_path_factory.mktemp("status")
    old = make_old_ca(base / "old", "Saitama Prefectural CA")
    w = World(ctx, old, base)
    for name in ("good", "compromised", "held", "good2"):
        w.legacy[name] = old.issue(name)
    old.revoke(w.legacy["compromised"], "-crl_reason", "keyCompromise")
    old.revoke(w.legacy["held"], "-crl_hold", "1.2.840.10040.2.2")
    old.gencrl()
    # The operator imports the old CA's key into the token with SoftHSM's own tool, then its records.
    softhsm_import(ctx, old.key, "pref-saitama-g1")
    result = run_cli(
        ctx, "import-legacy", "--authority", "pref-saitama", "--ca-cert", str(old.ca_pem),
        "--index", str(old.index), "--crl", str(old.crl), "--key-label", "pref-saitama-g1",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "OCSP responder g1 for pref-saitama" in result.stdout, result.stdout
    assert "pref-saitama.crl #1 (2 entries)" in result.stdout, result.stdout

    # A rollover of the organization CA, with a certificate of each generation revoked.
    key = ec.generate_private_key(ec.SECP256R1())
    w.ca["root"] = ctx.authorities.get("lgpki-root").certificate
    w.ca["org-g1"] = ctx.authorities.get("lgpki-org").certificate
    w.org["old-good"] = issue_org_user(ctx, key, "Old Good").certificate
    w.org["old-revoked"] = issue_org_user(ctx, key, "Old Revoked").certificate
    w.ca["org-g2"] = rollover(
        ctx.authorities, LifecycleStore(ctx.engine), ctx.urls, "lgpki-org", "test"
    ).certificate
    w.org["new-good"] = issue_org_user(ctx, key, "New Good").certificate
    w.org["new-revoked"] = issue_org_user(ctx, key, "New Revoked").certificate
    for name in ("old-revoked", "new-revoked"):
        ctx.store.revoke(
            authority="lgpki-org", serial=w.org[name].serial_number, reason="affiliationChanged", actor="test"
        )
    Publisher(ctx).publish()
    settings = load_ocsp_settings(ctx.settings)
    ensure_responders(ctx, key_spec=settings.responder_key, renew_fraction=settings.renew_fraction)

    w.port = free_port()
    env = {**os.environ, **ctx_env(ctx), "KAKUIN_OCSP_URL": f"http://127.0.0.1:{w.port}/ocsp"}
    process = start_server(
        granian_argv("127.0.0.1", w.port, 1), env, healthy_check(w.port), base / "ocsp.log"
    )
    try:
        yield w
    finally:
        stop_server(process)


def test_legacy_statuses_through_kakuin_crl_and_ocsp(world: World) -> None:
    crl = world.crl("pref-saitama", COMPLETE)
    assert crl.issuer == world.old.certificate.subject
    assert crl.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier == (
        world.old.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    )
    listed = {entry.serial_number for entry in crl}
    assert listed == {world.legacy["compromised"].serial_number, world.legacy["held"].serial_number}
    anchor = [world.old.certificate]
    for name, expected in (
        ("good", "OK"),
        ("good2", "OK"),
        ("compromised", "certificate revoked"),
        ("held", "certificate revoked"),
    ):
        output = world.crl_check(world.legacy[name], anchor, crl)
        assert expected in output, (name, output)
        answer = world.ocsp("pref-saitama", world.old.certificate, world.legacy[name])
        assert "Response verify OK" in answer, answer
        status = {"good": "good", "good2": "good", "compromised": "revoked", "held": "revoked"}[name]
        assert f"leaf.pem: {status}" in answer, (name, answer)
    held = world.ocsp("pref-saitama", world.old.certificate, world.legacy["held"])
    assert "Reason: certificateHold" in held, held


def test_new_generation_status_after_rollover(world: World) -> None:
    chain = [world.ca["org-g2"], world.ca["root"]]
    for name, verdict, status in (
        ("new-good", "OK", "good"),
        ("new-revoked", "certificate revoked", "revoked"),
    ):
        leaf = world.org[name]
        partition = world.ctx.store.certificate("lgpki-org", leaf.serial_number).partition
        assert verdict in world.crl_check(leaf, chain, world.crl("lgpki-org", f"g2/{partition}"))
        answer = world.ocsp("lgpki-org", world.ca["org-g2"], leaf, world.ca["root"])
        assert "Response verify OK" in answer and f"leaf.pem: {status}" in answer, answer


@pytest.mark.parametrize("name", ["old-good", "old-revoked"])
def test_old_generation_status_after_rollover(world: World, name: str) -> None:
    leaf = world.org[name]
    chain = [world.ca["org-g1"], world.ca["root"]]
    partition = world.ctx.store.certificate("lgpki-org", leaf.serial_number).partition
    verdict, status = ("OK", "good") if name == "old-good" else ("certificate revoked", "revoked")
    crl_output = world.crl_check(leaf, chain, world.crl("lgpki-org", partition))  # generation 1's own
    answer = world.ocsp("lgpki-org", world.ca["org-g1"], leaf, world.ca["root"])
    assert verdict in crl_output, crl_output
    assert "Response verify OK" in answer and f"leaf.pem: {status}" in answer, answer


def test_termination(world: World, tmp_path: Path) -> None:
    ctx = world.ctx
    # The root cannot go while its organization CA still issues.
    result = run_cli(ctx, "ca", "terminate", "lgpki-root", "--yes")
    assert result.exit_code == 1
    assert "still has active subordinates (lgpki-org)" in result.stderr

    for name, leaves in (("pref-saitama", world.legacy), ("lgpki-org", world.org)):
        result = run_cli(ctx, "ca", "terminate", name, "--yes", "--reason", "closed (FY2018)")
        assert result.exit_code == 0, result.output
        assert f"terminated {name}" in result.stdout
        # Its last certificate: of the leaves here, or a link or responder certificate it signed.
        last = LifecycleStore(ctx.engine).last_expiry(ctx.store.authority(name).id)
        assert last is not None and last >= max(c.not_valid_after_utc for c in leaves.values())
        partitions = [COMPLETE] if name == "pref-saitama" else Publisher(ctx).scopes(name)
        for partition in partitions:
            final = world.crl(name, partition)
            assert final.next_update_utc is not None and final.next_update_utc > last, (name, partition)
            assert final.next_update_utc - last < timedelta(days=2)
            with pytest.raises(x509.ExtensionNotFound):
                final.extensions.get_extension_for_class(x509.FreshestCRL)  # no delta follows
        event = ctx.store.audit_events(action="authority.terminate", limit=5)[0]
        assert event.authority == name and event.detail["reason"] == "closed (FY2018)"
        assert event.detail["last_expiry"] == last.isoformat()

    # Issuance is refused from now on; so are rollover and termination again.
    csr = tmp_path / "user.csr"
    csr.write_bytes(make_csr(ec.generate_private_key(ec.SECP256R1())))
    applicant = tmp_path / "applicant.json"
    applicant.write_text('{"organization": "X", "common_name": "Late Applicant"}')
    refused = [
        (("issue", "--profile", "lgpki-org-user", "--csr", str(csr), "--applicant", str(applicant)),
         "authority lgpki-org is terminated and issues no more"),
        (("ca", "rollover", "lgpki-org"), "lgpki-org is terminated"),
        (("ca", "terminate", "lgpki-org", "--yes"), "lgpki-org is already terminated"),
    ]  # fmt: skip
    for args, message in refused:
        result = run_cli(ctx, *args)
        assert result.exit_code == 1, result.output
        assert message in result.stderr.strip().splitlines()[-1], result.stderr
    # Status is still answered, by OCSP as by the final CRL.
    for name, issuer, leaf, status in (
        ("pref-saitama", world.old.certificate, world.legacy["compromised"], "revoked"),
        ("pref-saitama", world.old.certificate, world.legacy["good"], "good"),
        ("lgpki-org", world.ca["org-g2"], world.org["new-good"], "good"),
    ):
        answer = world.ocsp(name, issuer, leaf, world.ca["root"])
        assert "Response verify OK" in answer and f"leaf.pem: {status}" in answer, answer
    shown = run_cli(ctx, "ca", "show", "lgpki-org").stdout
    assert "state:         terminated" in shown
