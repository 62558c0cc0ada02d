"""Cross-certification through two bridges: LGPKI (our Kakuin) and a simulated GPKI (a second
Kakuin with its own token and database). Relying parties on either side trust only their own
root and validate the other side's certificates through the bridges, with `openssl verify
-policy_check` and pyhanko-certvalidator; constraints bite; revocation of a cross certificate is
recorded on the bridge and the cross certificate leaves the published set.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from asn1crypto import x509 as ax
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtensionOID
from pyhanko_certvalidator import CertificateValidator, ValidationContext
from pyhanko_certvalidator.errors import PathBuildingError, PathValidationError
from pyhanko_certvalidator.policy_decl import PKIXValidationParams

from ca import crosscert
from ca.errors import BadRequest, NotFound
from ca.lifecycle_store import LifecycleStore
from ca.service import CAContext
from crl.config import load_crl_settings
from crl.publisher import Publisher
from tests.conftest import openssl
from tests.lifecycle.conftest import (
    GPKI_POLICY,
    LGPKI_POLICY,
    issue_gpki_official,
    issue_org_user,
    pem,
    run_cli,
    run_coroutine,
)


@dataclass
class Bridged:
    lgpki: CAContext
    gpki: CAContext
    dir: Path
    certs: dict[str, x509.Certificate]


def _load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


@pytest.fixture(scope="module")
def bridged(lgpki: CAContext, gpki: CAContext, tmp_path_factory: pytest.TempPathFactory) -> Bridged:
    """Both PKIs cross-certified the way operators do it, through the `kakuin` CLI only."""
    d = tmp_path_factory.mktemp("bridge")
    certs: dict[str, x509.Certificate] = {}
    out = d / "bridge-to-org.pem"
    result = run_cli(lgpki, "cross-certify", "issue", "bridge-to-org", "--out", str(out))
    assert result.exit_code == 0, result.output
    assert "issued cross certificate" in result.stderr
    certs["lg:bridge-to-org"] = _load(out)
    # The other internal agreements through the Python API (the same code, one process fewer each).
    for ctx, agreement in ((lgpki, "root-to-bridge"), (gpki, "root-to-bridge"), (gpki, "bridge-to-root")):
        signed, _record = crosscert.issue(
            ctx.authorities, LifecycleStore(ctx.engine), ctx.urls, agreement, actor="test"
        )
        certs[("lg:" if ctx is lgpki else "g:") + agreement] = signed
    for ctx, name in ((lgpki, "lgpki-bridge"), (gpki, "gpki-bridge")):
        path = d / f"{name}.pem"
        path.write_bytes(pem(ctx.authorities.get(name).certificate))
    # GPKI certifies our bridge key from our CSR (proof of possession, signed in our token) ...
    result = run_cli(lgpki, "cross-certify", "csr", "--authority", "lgpki-bridge", "--out", str(d / "lg.csr"))
    assert result.exit_code == 0, result.output
    result = run_cli(
        gpki, "cross-certify", "issue", "lgpki", "--csr", str(d / "lg.csr"), "--out", str(d / "g2lg.pem")
    )
    assert result.exit_code == 0, result.output
    # ... and we keep it, checked against GPKI's bridge certificate.
    result = run_cli(
        lgpki,
        "cross-certify",
        "import",
        "--authority",
        "lgpki-bridge",
        "--cert",
        str(d / "g2lg.pem"),
        "--issuer",
        str(d / "gpki-bridge.pem"),
        "--agreement",
        "gpki",
    )
    assert result.exit_code == 0, result.output
    # We certify GPKI's bridge from its certificate; GPKI keeps ours.
    result = run_cli(
        lgpki,
        "cross-certify",
        "issue",
        "gpki",
        "--cert",
        str(d / "gpki-bridge.pem"),
        "--out",
        str(d / "lg2g.pem"),
    )
    assert result.exit_code == 0, result.output
    result = run_cli(
        gpki, "cross-certify", "import", "--authority", "gpki-bridge", "--cert", str(d / "lg2g.pem")
    )
    assert result.exit_code == 0, result.output
    certs["g:lgpki"] = _load(d / "g2lg.pem")
    certs["lg:gpki"] = _load(d / "lg2g.pem")
    return Bridged(lgpki, gpki, d, certs)


def _ext(certificate: x509.Certificate, oid: x509.ObjectIdentifier) -> x509.Extension[x509.ExtensionType]:
    return certificate.extensions.get_extension_for_oid(oid)


def test_cross_certificate_carries_the_agreement(bridged: Bridged) -> None:
    lg2g = bridged.certs["lg:gpki"]
    bridge = bridged.lgpki.authorities.get("lgpki-bridge")
    gpki_bridge = bridged.gpki.authorities.get("gpki-bridge").certificate
    assert lg2g.issuer == bridge.certificate.subject
    assert lg2g.subject.public_bytes() == gpki_bridge.subject.public_bytes()  # their DN, byte for byte
    assert lg2g.public_key() == gpki_bridge.public_key()
    basic = _ext(lg2g, ExtensionOID.BASIC_CONSTRAINTS)
    assert basic.critical and basic.value.ca and basic.value.path_length == 2
    constraints = _ext(lg2g, ExtensionOID.NAME_CONSTRAINTS)
    assert constraints.critical
    assert [n.value.rfc4514_string() for n in constraints.value.permitted_subtrees] == [
        "O=Japanese Government,C=JP"
    ]
    mappings = _ext(lg2g, ExtensionOID.POLICY_MAPPINGS)
    assert mappings.critical
    decoded = ax.PolicyMappings.load(mappings.value.value)
    assert [(m["issuer_domain_policy"].dotted, m["subject_domain_policy"].dotted) for m in decoded] == [
        (LGPKI_POLICY, GPKI_POLICY)
    ]
    policy_constraints = _ext(lg2g, ExtensionOID.POLICY_CONSTRAINTS)
    assert policy_constraints.critical
    assert policy_constraints.value.require_explicit_policy == 0
    assert policy_constraints.value.inhibit_policy_mapping == 0
    policies = _ext(lg2g, ExtensionOID.CERTIFICATE_POLICIES).value
    assert [p.policy_identifier.dotted_string for p in policies] == [LGPKI_POLICY]
    aki = _ext(lg2g, ExtensionOID.AUTHORITY_KEY_IDENTIFIER).value.key_identifier
    assert aki == bridge.generation.key_identifier
    ski = _ext(lg2g, ExtensionOID.SUBJECT_KEY_IDENTIFIER).value.digest
    assert ski == _ext(gpki_bridge, ExtensionOID.SUBJECT_KEY_IDENTIFIER).value.digest
    crldp = _ext(lg2g, ExtensionOID.CRL_DISTRIBUTION_POINTS).value[0].full_name
    assert crldp[0].value == bridge.certificate.subject
    assert crldp[1].value.endswith("/lgpki-bridge/arl.crl")
    # A certificate of the bridge, on its ARL partition, revocable like any other.
    row = bridged.lgpki.store.certificate("lgpki-bridge", lg2g.serial_number)
    assert (row.profile, row.partition, row.status) == ("cross-certificate", "arl", "issued")
    # openssl reads the same extensions.
    text = openssl("x509", "-noout", "-text", input=pem(lg2g)).stdout.decode()
    assert "X509v3 Policy Mappings: critical" in text
    assert f"{LGPKI_POLICY}:{GPKI_POLICY}" in text
    assert "X509v3 Name Constraints: critical" in text
    assert "RequireExplicitPolicy:0" in text.replace(" ", "")


def test_both_directions_are_listed_and_exported(bridged: Bridged) -> None:
    result = run_cli(bridged.lgpki, "cross-certify", "list", "--authority", "lgpki-bridge")
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert any(" issued " in line and "gpki " in line and "BridgeCA" in line for line in lines)
    assert any(" received " in line and "gpki " in line for line in lines)
    exported = run_cli(bridged.lgpki, "cross-certify", "export").stdout.encode()
    serials = {c.serial_number for c in x509.load_pem_x509_certificates(exported)}
    for key in ("lg:gpki", "g:lgpki", "lg:bridge-to-org", "lg:root-to-bridge"):
        assert bridged.certs[key].serial_number in serials
    # Importing the same reverse certificate again changes nothing.
    store = LifecycleStore(bridged.lgpki.engine)
    before = len(store.cross_certificates())
    again = crosscert.import_reverse(
        bridged.lgpki.authorities, store, "lgpki-bridge", bridged.certs["g:lgpki"], actor="test"
    )
    assert again.direction == "received" and len(store.cross_certificates()) == before


def _openssl_verify(
    directory: Path,
    anchor: x509.Certificate,
    untrusted: list[x509.Certificate],
    leaf: x509.Certificate,
    policy: str,
    *extra: str,
) -> tuple[int, str]:
    (directory / "anchor.pem").write_bytes(pem(anchor))
    (directory / "untrusted.pem").write_bytes(pem(*untrusted))
    (directory / "leaf.pem").write_bytes(pem(leaf))
    result = openssl(
        "verify",
        "-x509_strict",
        "-policy_check",
        "-explicit_policy",
        "-policy",
        policy,
        "-CAfile",
        str(directory / "anchor.pem"),
        "-untrusted",
        str(directory / "untrusted.pem"),
        *extra,
        str(directory / "leaf.pem"),
    )
    return result.returncode, (result.stdout + result.stderr).decode()


def _pyhanko(
    anchor: x509.Certificate,
    untrusted: list[x509.Certificate],
    leaf: x509.Certificate,
    policy: str,
    crls: list[x509.CertificateRevocationList] | None = None,
) -> list[str]:
    """Validate with pyhanko-certvalidator; returns the subjects of the path it found. With
    ``crls``, revocation is checked for every certificate of the path (hard-fail)."""

    def a(c: x509.Certificate) -> ax.Certificate:
        return ax.Certificate.load(c.public_bytes(Encoding.DER))

    context = ValidationContext(
        trust_roots=[a(anchor)],
        allow_fetching=False,
        crls=[c.public_bytes(Encoding.DER) for c in crls or []],
        revocation_mode="hard-fail" if crls is not None else "soft-fail",
    )
    validator = CertificateValidator(
        a(leaf),
        intermediate_certs=[a(c) for c in untrusted],
        validation_context=context,
        pkix_params=PKIXValidationParams(
            user_initial_policy_set=frozenset({policy}), initial_explicit_policy=True
        ),
    )
    path = run_coroutine(validator.async_validate_usage({"digital_signature"}))
    return [c.subject.human_friendly for c in path]


def test_gpki_relying_party_validates_an_lgpki_user(
    bridged: Bridged, rsa_key: rsa.RSAPrivateKey, tmp_path: Path
) -> None:
    user = issue_org_user(bridged.lgpki, rsa_key).certificate
    anchor = bridged.gpki.authorities.get("gpki-root").certificate
    untrusted = [
        bridged.certs["g:root-to-bridge"],
        bridged.certs["g:lgpki"],
        bridged.certs["lg:bridge-to-org"],
    ]
    code, output = _openssl_verify(tmp_path, anchor, untrusted, user, GPKI_POLICY)
    assert code == 0, output
    assert output.strip().endswith(": OK")
    path = _pyhanko(anchor, untrusted, user, GPKI_POLICY)
    assert len(path) == 5 and "OrganizationCA" in path[3].replace(" ", "").replace("G4Sub1", "")


def test_lgpki_relying_party_validates_a_gpki_official(
    bridged: Bridged, rsa_key: rsa.RSAPrivateKey, tmp_path: Path
) -> None:
    official = issue_gpki_official(bridged.gpki, rsa_key)
    anchor = bridged.lgpki.authorities.get("lgpki-root").certificate
    untrusted = [
        bridged.certs["lg:root-to-bridge"],
        bridged.certs["lg:gpki"],
        bridged.certs["g:bridge-to-root"],
        bridged.gpki.authorities.get("gpki-officials").certificate,
    ]
    code, output = _openssl_verify(tmp_path, anchor, untrusted, official, LGPKI_POLICY)
    assert code == 0, output
    path = _pyhanko(anchor, untrusted, official, LGPKI_POLICY)
    assert len(path) == 6


def test_policy_and_name_constraints_bite(
    bridged: Bridged, rsa_key: rsa.RSAPrivateKey, tmp_path: Path
) -> None:
    user = issue_org_user(bridged.lgpki, rsa_key).certificate
    anchor = bridged.gpki.authorities.get("gpki-root").certificate
    untrusted = [
        bridged.certs["g:root-to-bridge"],
        bridged.certs["g:lgpki"],
        bridged.certs["lg:bridge-to-org"],
    ]
    # A policy GPKI never mapped to ours is not satisfied.
    code, output = _openssl_verify(tmp_path, anchor, untrusted, user, "1.2.392.100300.1.1.98")
    assert code != 0 and "policy" in output.lower(), output
    with pytest.raises(PathValidationError):
        _pyhanko(anchor, untrusted, user, "1.2.392.100300.1.1.98")
    # A certificate outside GPKI's permitted subtree (O=LGPKI) is refused even though every
    # signature is good: the organization CA signs a name of another organization.
    org = bridged.lgpki.authorities.get("lgpki-org")
    outsider = (
        x509.CertificateBuilder()
        .subject_name(x509.Name.from_rfc4514_string("CN=Someone,O=Not LGPKI,C=JP"))
        .issuer_name(org.certificate.subject)
        .public_key(rsa_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(user.not_valid_before_utc)
        .not_valid_after(user.not_valid_after_utc)
        .add_extension(
            x509.CertificatePolicies([x509.PolicyInformation(x509.ObjectIdentifier(LGPKI_POLICY), None)]),
            False,
        )
        .add_extension(x509.KeyUsage(True, False, False, False, False, False, False, False, False), True)
        .add_extension(x509.AuthorityKeyIdentifier(org.generation.key_identifier, None, None), False)
        .sign(org.key, org.certificate.signature_hash_algorithm)  # type: ignore[arg-type]
    )
    code, output = _openssl_verify(tmp_path, anchor, untrusted, outsider, GPKI_POLICY)
    assert code != 0 and "subtree" in output.lower(), output
    with pytest.raises((PathValidationError, PathBuildingError)):
        _pyhanko(anchor, untrusted, outsider, GPKI_POLICY)


def test_refusals_name_the_option_and_change_nothing(bridged: Bridged, tmp_path: Path) -> None:
    lgpki = bridged.lgpki
    bridge_id = lgpki.store.authority("lgpki-bridge").id
    before = (
        lgpki.store.count_certificates(bridge_id),
        len(LifecycleStore(lgpki.engine).cross_certificates()),
    )
    gpki_root = tmp_path / "gpki-root.pem"
    gpki_root.write_bytes(pem(bridged.gpki.authorities.get("gpki-root").certificate))
    cases = [
        (("cross-certify", "issue", "gpki"), "--cert"),  # external: needs their certificate or CSR
        (
            ("cross-certify", "import", "--authority", "lgpki-bridge", "--cert", str(gpki_root)),
            "does not certify a key of lgpki-bridge",
        ),
        (
            (
                "cross-certify",
                "import",
                "--authority",
                "lgpki-bridge",
                "--cert",
                str(bridged.dir / "g2lg.pem"),
                "--issuer",
                str(bridged.dir / "lgpki-bridge.pem"),
            ),
            "--issuer",
        ),
    ]
    for args, expected in cases:
        result = run_cli(lgpki, *args)
        assert result.exit_code == 1, (args, result.output)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("kakuin: error:"), result.stderr
        assert expected in lines[0], lines[0]
    # The same refusals from Python name the field too.
    store = LifecycleStore(lgpki.engine)
    root_cert = bridged.gpki.authorities.get("gpki-root").certificate
    for name, certificate, error, expected in (
        ("gpki", root_cert, BadRequest, r"that \[cross\.gpki\] expects"),  # not the agreed DN
        ("bridge-to-org", root_cert, BadRequest, "give no --cert"),
        ("nope", None, NotFound, r"no cross-certification \[cross.nope\]"),
    ):
        with pytest.raises(error, match=expected) as caught:
            crosscert.issue(lgpki.authorities, store, lgpki.urls, name, certificate=certificate, actor="test")
        assert caught.value.field in ("cert", "name")
    after = (
        lgpki.store.count_certificates(bridge_id),
        len(LifecycleStore(lgpki.engine).cross_certificates()),
    )
    assert after == before


def publish_all(ctx: CAContext, directory: Path) -> list[x509.CertificateRevocationList]:
    """Every CRL and ARL of every authority, published now by Kakuin's CRL service (what a
    relying party would have fetched)."""
    publisher = Publisher(ctx, replace(load_crl_settings(ctx.settings), directory=directory))
    outcomes = publisher.publish()
    outcomes += publisher.publish(delta=True)  # full CRLs name their delta (freshestCRL)
    assert outcomes and all(o.record is not None for o in outcomes)
    crls = []
    for outcome in outcomes:
        assert outcome.record is not None
        crls.append(x509.load_der_x509_crl((directory / outcome.record.path).read_bytes()))
    return crls


def test_revoked_cross_certificates_fail_crl_checks_both_ways(
    bridged: Bridged, rsa_key: rsa.RSAPrivateKey, tmp_path: Path
) -> None:
    """With every CRL and ARL from both Kakuins, both relying parties validate with
    -crl_check_all; once each side's bridge revokes its cross certificate (listed on the bridge's
    ARL), the path through it fails as revoked, in openssl and pyhanko-certvalidator."""
    lgpki, gpki = bridged.lgpki, bridged.gpki
    user = issue_org_user(lgpki, rsa_key).certificate
    official = issue_gpki_official(gpki, rsa_key)
    cases = [
        (
            gpki.authorities.get("gpki-root").certificate,
            [bridged.certs["g:root-to-bridge"], bridged.certs["g:lgpki"], bridged.certs["lg:bridge-to-org"]],
            user,
            GPKI_POLICY,
        ),
        (
            lgpki.authorities.get("lgpki-root").certificate,
            [
                bridged.certs["lg:root-to-bridge"],
                bridged.certs["lg:gpki"],
                bridged.certs["g:bridge-to-root"],
                gpki.authorities.get("gpki-officials").certificate,
            ],
            official,
            LGPKI_POLICY,
        ),
    ]

    def check(round_: str) -> list[tuple[int, str]]:
        crls = publish_all(lgpki, tmp_path / f"crl-lg-{round_}") + publish_all(
            gpki, tmp_path / f"crl-g-{round_}"
        )
        (tmp_path / "crls.pem").write_bytes(b"".join(c.public_bytes(Encoding.PEM) for c in crls))
        results = []
        for anchor, untrusted, leaf, policy in cases:
            results.append(
                _openssl_verify(
                    tmp_path,
                    anchor,
                    untrusted,
                    leaf,
                    policy,
                    "-crl_check_all",
                    "-CRLfile",
                    str(tmp_path / "crls.pem"),
                )
            )
            try:
                _pyhanko(anchor, untrusted, leaf, policy, crls=crls)
                results[-1] = (results[-1][0], results[-1][1] + " | pyhanko: valid")
            except (PathValidationError, PathBuildingError) as exc:
                results[-1] = (results[-1][0], results[-1][1] + f" | pyhanko: {type(exc).__name__}: {exc}")
        return results

    for code, output in check("before"):
        assert (
            code == 0
            and output.split(" | ")[0].strip().endswith(": OK")
            and output.endswith("pyhanko: valid")
        ), output

    # Each bridge revokes its cross certificate to the other: ours through the CLI, GPKI's in its store.
    lg2g, g2lg = bridged.certs["lg:gpki"], bridged.certs["g:lgpki"]
    result = run_cli(
        lgpki,
        "revoke",
        format(lg2g.serial_number, "x"),
        "--authority",
        "lgpki-bridge",
        "--reason",
        "cessation-of-operation",
    )
    assert result.exit_code == 0, result.output
    gpki.store.revoke(
        authority="gpki-bridge", serial=g2lg.serial_number, reason="cessationOfOperation", actor="test"
    )
    row = lgpki.store.certificate("lgpki-bridge", lg2g.serial_number)
    assert (row.status, row.partition, row.revocation_reason) == ("revoked", "arl", "cessationOfOperation")

    for code, output in check("after"):
        assert code != 0 and "certificate revoked" in output, output
        assert "pyhanko: RevokedError" in output or "revoked" in output.split(" | pyhanko: ")[1], output

    # The bridge's records say so, and relying parties no longer get it from `export`.
    listed = LifecycleStore(lgpki.engine).cross_certificates("lgpki-bridge")
    assert [r.status for r in listed if r.serial == row.serial] == ["revoked"]
    exported = run_cli(lgpki, "cross-certify", "export").stdout.encode()
    assert lg2g.serial_number not in {c.serial_number for c in x509.load_pem_x509_certificates(exported)}
