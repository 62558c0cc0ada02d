"""After a key rollover every live key generation has CRLs and OCSP answers of its own (issue 7, in
the manner of AD CS's one CRL per CA key), on SQLite and PostgreSQL:

- certificates of generation 1 keep their CRL URLs; those of generation 2 (leaves and the
  subordinate CA certificate the root's new key signs) name ``…/g2/…`` URLs;
- each generation's CRLs are signed by its own key (``openssl crl -verify`` with that generation's
  CA certificate, not the other's), carry its AKI, list only the revocations of certificates it
  issued, and their issuingDistributionPoint is exactly the certificates' distribution point;
- the CRL responder serves the URLs the certificates carry, and ``openssl verify -crl_check_all``
  passes or says "certificate revoked" along each generation's chain;
- the OCSP responder answers for both generations (pre-signed and live), each answer signed by a
  delegated responder certificate of the generation's own key: it verifies against that
  generation's chain and not the other's.
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding

from ca.lifecycle_store import LifecycleStore
from ca.rollover import rollover
from ca.service import CAContext
from crl.config import load_crl_settings
from crl.publisher import Publisher
from crl.storer import CRLStore
from crl.wsgi import CRLResponder
from ocsp.presigner import presign
from ocsp.responders import ResponderKeys
from ocsp.settings import load_ocsp_settings
from ocsp.wsgi import OCSPApp
from tests.conftest import openssl
from tests.lifecycle.conftest import issue_org_user


def _ski(certificate: x509.Certificate) -> bytes:
    return certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest


def _aki(value: x509.Certificate | x509.CertificateRevocationList) -> bytes | None:
    return value.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier


def _points(certificate: x509.Certificate, kind: type[Any] = x509.CRLDistributionPoints) -> list[Any]:
    """The full names of the certificate's CRL distribution point (or freshestCRL) as a list."""
    return list(certificate.extensions.get_extension_for_class(kind).value[0].full_name)


def _uri(names: Iterable[x509.GeneralName]) -> str:
    return next(n.value for n in names if isinstance(n, x509.UniformResourceIdentifier))


def _call(app: Any, method: str, path: str, body: bytes = b"", content_type: str = "") -> tuple[str, bytes]:
    """One request to a WSGI app in this process."""
    captured: dict[str, str] = {}

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> None:
        captured["status"] = status

    environ = {
        "REQUEST_METHOD": method,
        "PATH_INFO": path,
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "80",
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(body),
        "CONTENT_LENGTH": str(len(body)),
        "CONTENT_TYPE": content_type,
    }
    data = b"".join(app(environ, start_response))
    return captured["status"], data


def revoked_partition(rolled: Rolled, certificate: x509.Certificate) -> str:
    return rolled.ctx.store.certificate("lgpki-org", certificate.serial_number).partition


@dataclass
class Rolled:
    ctx: CAContext
    dir: Path
    ca: dict[str, x509.Certificate] = field(default_factory=dict)
    leaf: dict[str, x509.Certificate] = field(default_factory=dict)
    apps: dict[str, Any] = field(default_factory=dict)  # the responders, in this process

    def file(self, name: str, *items: x509.Certificate | x509.CertificateRevocationList) -> str:
        path = self.dir / name
        path.write_bytes(b"".join(i.public_bytes(Encoding.PEM) for i in items))
        return str(path)

    def crl(self, url: str) -> x509.CertificateRevocationList:
        """The CRL at ``url``, fetched from Kakuin's CRL responder as a relying party would."""
        s = self.ctx.settings
        if "crl" not in self.apps:
            directory = load_crl_settings(s).directory
            self.apps["crl"] = CRLResponder(self.ctx.engine, directory, s.crl_base_url, s.ca_issuers_base_url)
        path = "/" + url.split("://", 1)[1].split("/", 1)[1]
        status, body = _call(self.apps["crl"], "GET", path)
        assert status.startswith("200"), (url, status, body)
        return x509.load_der_x509_crl(body)

    def ocsp(
        self, leaf: x509.Certificate, issuer: x509.Certificate, trust: list[x509.Certificate], nonce: bool
    ) -> str:
        """``openssl ocsp`` builds the request, Kakuin's OCSP app answers it, ``openssl ocsp``
        checks the answer trusting only ``trust``."""
        request = self.dir / "request.der"
        made = openssl(
            "ocsp", "-issuer", self.file("issuer.pem", issuer), "-cert", self.file("leaf.pem", leaf),
            *([] if nonce else ["-no_nonce"]), "-reqout", str(request),
        )  # fmt: skip
        assert made.returncode == 0, made.stderr
        if "ocsp" not in self.apps:
            settings = load_ocsp_settings(self.ctx.settings)
            self.apps["ocsp"] = OCSPApp(self.ctx.settings, settings, token=self.ctx.token)
        status, body = _call(
            self.apps["ocsp"], "POST", "/ocsp/lgpki-org", request.read_bytes(), "application/ocsp-request"
        )
        assert status.startswith("200"), status
        (self.dir / "response.der").write_bytes(body)
        result = openssl(
            "ocsp", "-no_nonce", "-respin", str(self.dir / "response.der"), "-issuer", self.file("issuer.pem", issuer),
            "-cert", self.file("leaf.pem", leaf), "-CAfile", self.file("trust.pem", *trust),
        )  # fmt: skip
        return (result.stdout + result.stderr).decode()


@pytest.fixture(scope="module")
def rolled(small: CAContext, tmp_path_factory: pytest.TempPathFactory) -> Rolled:
    """The small CA after a rollover of its root and then of its organization CA, with a good and a
    revoked leaf of each organization CA generation, CRLs published (full and delta) and OCSP
    answers pre-signed."""
    ctx = small
    r = Rolled(ctx, tmp_path_factory.mktemp("generations"))
    key = ec.generate_private_key(ec.SECP256R1())
    r.ca["root-g1"] = ctx.authorities.get("lgpki-root").certificate
    r.ca["org-g1"] = ctx.authorities.get("lgpki-org").certificate
    r.leaf["old-good"] = issue_org_user(ctx, key, "Old Good").certificate
    r.leaf["old-revoked"] = issue_org_user(ctx, key, "Old Revoked").certificate
    store = LifecycleStore(ctx.engine)
    r.ca["root-g2"] = rollover(ctx.authorities, store, ctx.urls, "lgpki-root", "test").certificate
    r.ca["org-g2"] = rollover(ctx.authorities, store, ctx.urls, "lgpki-org", "test").certificate
    ctx.authorities.forget()
    r.leaf["new-good"] = issue_org_user(ctx, key, "New Good").certificate
    r.leaf["new-revoked"] = issue_org_user(ctx, key, "New Revoked").certificate
    for name in ("old-revoked", "new-revoked"):
        ctx.store.revoke(
            authority="lgpki-org", serial=r.leaf[name].serial_number, reason="keyCompromise", actor="test"
        )
    publisher = Publisher(ctx)
    publisher.publish()
    publisher.publish(delta=True)
    presign(ctx, load_ocsp_settings(ctx.settings), ["lgpki-org"])
    return r


def test_certificates_name_their_generations_crls(rolled: Rolled) -> None:
    base = rolled.ctx.settings.crl_base_url
    store = rolled.ctx.store
    for name, prefix in (("old-good", "lgpki-org/"), ("new-good", "lgpki-org/g2/")):
        leaf = rolled.leaf[name]
        partition = store.certificate("lgpki-org", leaf.serial_number).partition
        assert _uri(_points(leaf)) == f"{base}/{prefix}{partition}.crl"
        assert _uri(_points(leaf, x509.FreshestCRL)) == f"{base}/{prefix}{partition}-delta.crl"
    assert _aki(rolled.leaf["new-good"]) == _ski(rolled.ca["org-g2"])
    # CA certificates: the ARL of the generation of the root that signed them.
    assert _uri(_points(rolled.ca["org-g1"])) == f"{base}/lgpki-root/arl.crl"
    assert _uri(_points(rolled.ca["org-g2"])) == f"{base}/lgpki-root/g2/arl.crl"
    # Every live generation's scopes are published.
    scopes = Publisher(rolled.ctx).scopes("lgpki-org")
    assert {"", "0", "g2/", "g2/0", "arl", "g2/arl"} <= set(scopes), scopes


@pytest.mark.parametrize("generation", ["g1", "g2"])
def test_each_generation_has_its_own_crls(rolled: Rolled, generation: str) -> None:
    own, other = ("old", "new") if generation == "g1" else ("new", "old")
    other_generation = "g2" if generation == "g1" else "g1"
    issuer = rolled.ca[f"org-{generation}"]
    revoked, elsewhere = rolled.leaf[f"{own}-revoked"], rolled.leaf[f"{other}-revoked"]
    prefix = f"{rolled.ctx.settings.crl_base_url}/lgpki-org{'' if generation == 'g1' else '/g2'}"
    other_partition = rolled.ctx.store.certificate("lgpki-org", elsewhere.serial_number).partition
    crls = {
        "full": rolled.crl(_uri(_points(revoked))),
        "delta": rolled.crl(_uri(_points(revoked, x509.FreshestCRL))),
        # This generation's CRL of the partition where the other generation's revocation is, and
        # its complete CRL (every partition, no IDP): neither lists the other generation's.
        "other partition": rolled.crl(f"{prefix}/{other_partition}.crl"),
        "complete": rolled.crl(f"{prefix}.crl"),
        "complete delta": rolled.crl(f"{prefix}-delta.crl"),
    }
    for kind, crl in crls.items():
        # Signed by the generation's key and named by its AKI.
        assert _aki(crl) == _ski(issuer), kind
        listed = {entry.serial_number for entry in crl}
        assert elsewhere.serial_number not in listed, kind
        if kind != "other partition" or other_partition == revoked_partition(rolled, revoked):
            assert revoked.serial_number in listed, kind
        crl_file = rolled.file("crl.pem", crl)
        good = openssl("crl", "-in", crl_file, "-noout", "-verify", "-CAfile", rolled.file("ca.pem", issuer))
        assert b"verify OK" in good.stdout + good.stderr, (kind, good)
        wrong = rolled.file("ca.pem", rolled.ca[f"org-{other_generation}"])
        bad = openssl("crl", "-in", crl_file, "-noout", "-verify", "-CAfile", wrong)
        assert b"verify OK" not in bad.stdout + bad.stderr, (kind, bad)
    for kind in ("full", "delta"):
        # The IDP is exactly the distribution point the certificates carry.
        idp = crls[kind].extensions.get_extension_for_class(x509.IssuingDistributionPoint).value
        assert list(idp.full_name or []) == _points(revoked), kind

    # A relying party checking the whole chain: the leaf's CRL, the root generation's ARL (the
    # organization CA certificate's distribution point) and the root's complete CRL.
    root = rolled.ca[f"root-{generation}"]
    arl = rolled.crl(_uri(_points(issuer)))
    assert _aki(arl) == _ski(root)
    complete = rolled.crl(_uri(_points(issuer)).replace("/arl.crl", ".crl"))
    for name, verdict in ((f"{own}-good", "OK"), (f"{own}-revoked", "certificate revoked")):
        leaf_crl = rolled.crl(_uri(_points(rolled.leaf[name])))  # its own partition's
        crls = rolled.file("crls.pem", leaf_crl, arl, complete)
        result = openssl(
            "verify", "-crl_check_all", "-CAfile", rolled.file("root.pem", root),
            "-untrusted", rolled.file("untrusted.pem", issuer), "-CRLfile", crls,
            rolled.file("leaf.pem", rolled.leaf[name]),
        )  # fmt: skip
        assert verdict in (result.stdout + result.stderr).decode(), (name, result)


def test_crl_numbers_rise_per_generation_scope(rolled: Rolled) -> None:
    ctx = rolled.ctx
    authority = ctx.store.authority("lgpki-org")
    store = CRLStore(ctx.engine)
    partition = ctx.store.certificate("lgpki-org", rolled.leaf["new-good"].serial_number).partition
    before = {s: store.latest(authority.id, s, "full") for s in (partition, f"g2/{partition}")}
    Publisher(ctx).publish("lgpki-org", f"g2/{partition}")
    after = store.latest(authority.id, f"g2/{partition}", "full")
    old = before[f"g2/{partition}"]
    assert after is not None and old is not None and after.number > old.number
    assert store.latest(authority.id, partition, "full") == before[partition]  # g1's scope untouched
    generations = {g.generation: g.id for g in ctx.store.key_generations(authority.id)}
    assert after.key_generation_id == generations[2]
    assert before[partition] is not None and before[partition].key_generation_id == generations[1]


@pytest.mark.parametrize("generation", ["g1", "g2"])
def test_ocsp_answers_each_generation_with_its_own_responder(rolled: Rolled, generation: str) -> None:
    own = "old" if generation == "g1" else "new"
    other_generation = "g2" if generation == "g1" else "g1"
    issuer = rolled.ca[f"org-{generation}"]
    chain = [issuer, rolled.ca[f"root-{generation}"]]
    for nonce in (False, True):  # pre-signed, then signed live
        for name, status in ((f"{own}-good", "good"), (f"{own}-revoked", "revoked")):
            answer = rolled.ocsp(rolled.leaf[name], issuer, chain, nonce)
            assert "Response verify OK" in answer and f"leaf.pem: {status}" in answer, (name, nonce, answer)
    # The responder certificate is the generation's own: the other generation's chain rejects it.
    wrong = [rolled.ca[f"org-{other_generation}"], rolled.ca[f"root-{other_generation}"]]
    answer = rolled.ocsp(rolled.leaf[f"{own}-good"], issuer, wrong, False)
    assert "Response verify OK" not in answer, answer
    authority = rolled.ctx.store.authority("lgpki-org")
    generations = {g.generation: g.id for g in rolled.ctx.store.key_generations(authority.id)}
    responders = [k for k in ResponderKeys(rolled.ctx.engine).all(authority.id) if k.state == "active"]
    assert {k.ca_key_generation_id for k in responders} == set(generations.values())
    for record in responders:
        certificate = x509.load_der_x509_certificate(record.certificate_der)
        signer = next(g for g, i in generations.items() if i == record.ca_key_generation_id)
        assert _aki(certificate) == _ski(rolled.ca[f"org-g{signer}"])
