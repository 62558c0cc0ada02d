"""Fixtures of the lifecycle tests: an LGPKI CA of our own per backend (rollover and termination
change it, so it is not the shared ``ca_ctx``), and a simulated GPKI — a second Kakuin with its
own token, database and hierarchy (root, officials CA, bridge) — to cross-certify with.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ca.authorities import random_serial
from ca.extensions import authority_key_identifier
from ca.issuance import IssuanceRequest, IssuedCertificate
from ca.names import name_from_pairs
from ca.service import CAContext
from ca.timeutil import utcnow
from tests.conftest import APPLICANTS, KAKUIN_SCRIPT, ROOT, make_csr, make_ctx, new_token


def run_coroutine(coroutine: Coroutine[Any, Any, Any]) -> Any:
    """Run pyhanko-certvalidator's coroutine to completion in a thread of its own: the thread
    running the tests may already have an event loop (Playwright's sync API keeps one while its
    browser is open), and ``asyncio.run`` refuses to nest."""
    import asyncio

    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


LGPKI_POLICY = "1.2.392.200110.10.8.5.1.101.10"
GPKI_POLICY = "1.2.392.100300.1.1.99"  # a policy OID for the simulated GPKI (test data only)

LGPKI_BRIDGE_DN = [["C", "JP"], ["O", "LGPKI"], ["OU", "Bridge CA"], ["CN", "LGPKI Bridge CA G1"]]
GPKI_BRIDGE_DN = [["C", "JP"], ["O", "Japanese Government"], ["OU", "BridgeCA"]]

# Our side's agreement with GPKI: appended to a copy of the default hierarchy.
LGPKI_CROSS = f"""
[cross.gpki]
title = "LGPKI bridge CA -> GPKI bridge CA"
issuer = "lgpki-bridge"
expected_subject = {GPKI_BRIDGE_DN!r}
validity_years = 5
path_length = 2
permitted_subtrees = [[["C", "JP"], ["O", "Japanese Government"]]]
policies = ["{LGPKI_POLICY}"]
policy_mappings = [["{LGPKI_POLICY}", "{GPKI_POLICY}"]]
require_explicit_policy = 0
inhibit_policy_mapping = 0
""".replace("'", '"')

# EC P-256 keys on the simulated GPKI side: quick to generate; the LGPKI side keeps the default
# configuration's RSA-2048, so the paths also mix key types as real bridges may.
GPKI_HIERARCHY = f"""
[agency]
name_en = "Government of Japan (simulated)"
name_ja = "日本国政府"

[authorities.gpki-root]
title = "GPKI application root CA (simulated)"
subject = [["C", "JP"], ["O", "Japanese Government"], ["OU", "ApplicationCA"]]
string_type = "printable"
parent = ""
key = "ec-p256"
validity_years = 20
alt_name = [["O", "日本国政府"], ["OU", "アプリケーションCA"]]

[authorities.gpki-officials]
title = "GPKI official-status CA (simulated)"
subject = [["C", "JP"], ["O", "Japanese Government"], ["OU", "OfficialStatusCA"]]
string_type = "printable"
parent = "gpki-root"
key = "ec-p256"
validity_years = 10
policies = ["{GPKI_POLICY}"]

[authorities.gpki-bridge]
title = "GPKI bridge CA (simulated)"
subject = {GPKI_BRIDGE_DN!r}
string_type = "printable"
parent = ""
key = "ec-p256"
validity_years = 20

[cross.root-to-bridge]
issuer = "gpki-root"
subject_authority = "gpki-bridge"
policies = ["{GPKI_POLICY}"]

[cross.bridge-to-root]
issuer = "gpki-bridge"
subject_authority = "gpki-root"
path_length = 1
policies = ["{GPKI_POLICY}"]

[cross.lgpki]
title = "GPKI bridge CA -> LGPKI bridge CA"
issuer = "gpki-bridge"
expected_subject = {LGPKI_BRIDGE_DN!r}
validity_years = 5
path_length = 2
permitted_subtrees = [[["C", "JP"], ["O", "LGPKI"]]]
policies = ["{GPKI_POLICY}"]
policy_mappings = [["{GPKI_POLICY}", "{LGPKI_POLICY}"]]
require_explicit_policy = 0
inhibit_policy_mapping = 0
""".replace("'", '"')

GPKI_PROFILES = """
[profiles.ocsp-responder]
title = "Delegated OCSP responder"
version = 1
authority = "*"
subject = "ocsp-responder"
alt_names = "none"
validity = "days"
validity_days = 30
key_types = ["ec-p256", "rsa-2048"]
key_usage = ["digital_signature"]
key_usage_critical = true
extended_key_usage = ["ocsp_signing"]
policies = []
crl_distribution_point = []
ocsp = false
ca_issuers = false
ocsp_no_check = true
"""


def ctx_env(ctx: CAContext) -> dict[str, str]:
    """The environment under which ``kakuin`` sees the same CA as ``ctx``."""
    s = ctx.settings
    return {
        "KAKUIN_HOME": str(s.home),
        "KAKUIN_DATABASE_URL": s.database_url,
        "KAKUIN_TOKEN_LABEL": s.token_label,
        "KAKUIN_HIERARCHY": str(s.hierarchy_file),
        "KAKUIN_PROFILES": str(s.profiles_file),
        "KAKUIN_TOKEN_PIN": os.environ["KAKUIN_TOKEN_PIN"],
        "SOFTHSM2_CONF": os.environ["SOFTHSM2_CONF"],
    }


@dataclass(frozen=True)
class CliResult:
    exit_code: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def run_cli(ctx: CAContext, *args: str, input: str | None = None) -> CliResult:
    """Run ``kakuin ARGS`` as an operator would (its own process: a PKCS#11 login belongs to one
    process), against ``ctx``'s CA."""
    result = subprocess.run(
        [str(KAKUIN_SCRIPT), *args],
        env={**{k: v for k, v in os.environ.items() if k != "KAKUIN_CONFIG"}, **ctx_env(ctx)},
        input=input,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return CliResult(result.returncode, result.stdout, result.stderr)


def _tables(text: str, headers: list[str]) -> str:
    """The given ``[table]`` sections of a TOML file, verbatim (each up to the next header)."""
    parts = []
    for header in headers:
        start = text.index(f"[{header}]\n")
        end = text.find("\n[", start + 1)
        parts.append(text[start : end if end != -1 else len(text)].strip() + "\n")
    return "\n".join(parts)


def lgpki_hierarchy_file(directory: Path) -> Path:
    """The LGPKI part of the default hierarchy (root, organization CA, bridge) and its default
    internal cross-certification tables, verbatim, plus the agreement with GPKI."""
    text = (ROOT / "config" / "hierarchy.toml").read_text(encoding="utf-8")
    headers = [
        "agency",
        "authorities.lgpki-root",
        "authorities.lgpki-org",
        "authorities.lgpki-bridge",
        "cross.bridge-to-org",
        "cross.root-to-bridge",
    ]
    path = directory / "hierarchy.toml"
    path.write_text(_tables(text, headers) + LGPKI_CROSS, encoding="utf-8")
    (directory / "profiles.toml").write_text(_profile_tables("lgpki-org-user"), encoding="utf-8")
    return path


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def lgpki(
    request: pytest.FixtureRequest, softhsm: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[CAContext]:
    """Our LGPKI CA (root, organization CA, bridge, and the GPKI agreement) on a token and database
    of its own."""
    home = tmp_path_factory.mktemp(f"lgpki-{request.param}")
    url = (
        f"sqlite:///{home / 'kakuin.db'}"
        if request.param == "sqlite"
        else request.getfixturevalue("postgres")()
    )
    ctx = make_ctx(
        home,
        url,
        new_token(softhsm),
        KAKUIN_HIERARCHY=str(lgpki_hierarchy_file(home)),
        KAKUIN_PROFILES=str(home / "profiles.toml"),
    )
    yield ctx
    ctx.token.close()
    ctx.engine.dispose()


@pytest.fixture(scope="module")
def gpki(softhsm: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[CAContext]:
    """The simulated national-government PKI: another Kakuin, another token, another database."""
    home = tmp_path_factory.mktemp("gpki")
    (home / "hierarchy.toml").write_text(GPKI_HIERARCHY, encoding="utf-8")
    (home / "profiles.toml").write_text(GPKI_PROFILES, encoding="utf-8")
    ctx = make_ctx(
        home,
        f"sqlite:///{home / 'gpki.db'}",
        new_token(softhsm),
        KAKUIN_HIERARCHY=str(home / "hierarchy.toml"),
        KAKUIN_PROFILES=str(home / "profiles.toml"),
    )
    yield ctx
    ctx.token.close()
    ctx.engine.dispose()


SMALL_HIERARCHY = """
[authorities.lgpki-root]
title = "LGPKI root CA (small test hierarchy)"
subject = [["C", "JP"], ["O", "LGPKI"], ["CN", "Application CA G4 Root"]]
string_type = "printable"
parent = ""
key = "ec-p256"
validity_years = 20

[authorities.lgpki-org]
title = "LGPKI organization CA (small test hierarchy)"
subject = [["C", "JP"], ["O", "LGPKI"], ["CN", "Organization CA G4 Sub1"]]
string_type = "printable"
parent = "lgpki-root"
key = "ec-p256"
validity_years = 10
partitioning = "shards:4"
policies = ["1.2.392.200110.10.8.5.1.101.10"]
cps_uri = "http://www.lgpki.jp"
"""


def _profile_tables(*names: str) -> str:
    """The given [profiles.NAME] tables of the default profiles file, verbatim."""
    text = (ROOT / "config" / "profiles.toml").read_text(encoding="utf-8")
    head = text[: text.index("[profiles.")]
    parts = []
    for name in names:
        start = text.index(f"[profiles.{name}]")
        end = text.find("\n[profiles.", start + 1)
        parts.append(text[start : end if end != -1 else len(text)])
    return head + "\n".join(parts)


def _make_small(home: Path, url: str, softhsm: dict[str, str]) -> CAContext:
    (home / "hierarchy.toml").write_text(SMALL_HIERARCHY, encoding="utf-8")
    (home / "profiles.toml").write_text(_profile_tables("lgpki-org-user", "ocsp-responder"), encoding="utf-8")
    return make_ctx(
        home,
        url,
        new_token(softhsm),
        KAKUIN_HIERARCHY=str(home / "hierarchy.toml"),
        KAKUIN_PROFILES=str(home / "profiles.toml"),
    )


@pytest.fixture(scope="module")
def small_ctx(
    softhsm: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[[], CAContext]]:
    """A factory of brand-new small CAs (an EC root and organization CA) on SQLite: quick to make,
    for tests that change an authority for good or import legacy CAs beside it."""
    made: list[CAContext] = []

    def make() -> CAContext:
        home = tmp_path_factory.mktemp("small")
        made.append(_make_small(home, f"sqlite:///{home / 'kakuin.db'}", softhsm))
        return made[-1]

    yield make
    for ctx in made:
        ctx.token.close()
        ctx.engine.dispose()


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def small(
    request: pytest.FixtureRequest, softhsm: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[CAContext]:
    """A small CA of this module's own, on SQLite and on PostgreSQL."""
    home = tmp_path_factory.mktemp(f"small-{request.param}")
    url = (
        f"sqlite:///{home / 'kakuin.db'}"
        if request.param == "sqlite"
        else request.getfixturevalue("postgres")()
    )
    ctx = _make_small(home, url, softhsm)
    yield ctx
    ctx.token.close()
    ctx.engine.dispose()


def issue_org_user(
    ctx: CAContext, key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey, name: str = "Hanako Yamada"
) -> IssuedCertificate:
    applicant = dict(APPLICANTS["lgpki-org-user"], common_name=name)
    return ctx.issuer.issue(
        IssuanceRequest(profile="lgpki-org-user", csr=make_csr(key), applicant=applicant, actor="test")
    )


def issue_gpki_official(ctx: CAContext, key: rsa.RSAPrivateKey) -> x509.Certificate:
    """A GPKI official's certificate (domain.md: OfficialStatusCA, policies critical, directoryName
    CRL DP), signed by the simulated officials CA's token key as GPKI's own software would."""
    issuer = ctx.authorities.get("gpki-officials")
    now = utcnow()
    builder = (
        x509.CertificateBuilder()
        .subject_name(
            name_from_pairs(
                [
                    ["C", "JP"],
                    ["O", "Japanese Government"],
                    ["OU", "Ministry of Internal Affairs"],
                    ["CN", "Director"],
                ],
                "printable",
            )
        )
        .issuer_name(issuer.certificate.subject)
        .public_key(key.public_key())
        .serial_number(random_serial())
        .not_valid_before(now)
        .not_valid_after(now + timedelta(days=365 * 5))
        .add_extension(
            x509.KeyUsage(True, True, False, False, False, False, False, False, False), critical=True
        )
        .add_extension(
            x509.CertificatePolicies([x509.PolicyInformation(x509.ObjectIdentifier(GPKI_POLICY), None)]),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
        .add_extension(authority_key_identifier(issuer.certificate, False), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    return builder.sign(issuer.key, hashes.SHA256())


def pem(*certificates: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(Encoding.PEM) for c in certificates)


def common_name(certificate: x509.Certificate) -> str:
    return str(certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)
