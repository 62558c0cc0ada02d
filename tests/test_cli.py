"""The real ``kakuin`` console script, run as an operator runs it: a fresh data directory, a token
the first ``kakuin init`` creates itself, SQLite in that directory. Output is checked as a person
reads it (stdout, one error line on stderr, exit status) and certificates with ``openssl``."""

from __future__ import annotations

import getpass
import json
import os
import pty
import re
import select
import sqlite3
import subprocess
import sys
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import click
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding

from tests.conftest import APPLICANTS, jpki_sign_applicant, make_csr, openssl

KAKUIN = Path(sys.executable).parent / "kakuin"
AUTHORITIES = ["jpki-sign", "jpki-auth", "lgpki-root", "lgpki-org", "lgpki-app", "lgpki-bridge", "operator"]


@dataclass
class Cli:
    home: Path
    env: dict[str, str]

    def run(
        self, *args: str, env: dict[str, str] | None = None, timeout: int = 180
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(KAKUIN), *args],
            env=env or self.env,
            cwd=self.home,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def many(self, *commands: tuple[str, ...]) -> list[subprocess.CompletedProcess[str]]:
        """Independent commands side by side (each start costs a second or two of imports)."""
        with ThreadPoolExecutor(max_workers=4) as pool:
            return list(pool.map(lambda args: self.run(*args), commands))

    def ok(self, *args: str) -> subprocess.CompletedProcess[str]:
        result = self.run(*args)
        assert result.returncode == 0, f"kakuin {' '.join(args)}: {result.stderr}"
        return result

    def rows(self, sql: str) -> list[tuple[object, ...]]:
        with sqlite3.connect(self.home / "kakuin.db") as db:
            return list(db.execute(sql))


def one_error_line(result: subprocess.CompletedProcess[str], status: int) -> str:
    """The CLI's error contract: one line on stderr, prefixed, and the documented exit status."""
    assert result.returncode == status, (result.returncode, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("kakuin: error: ")
    assert "Traceback" not in result.stderr
    return lines[0]


def cli_env(home: Path, label: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KAKUIN_")}
    env.update(
        KAKUIN_HOME=str(home),
        KAKUIN_TOKEN_LABEL=label,
        KAKUIN_DATABASE_URL=f"sqlite:///{home / 'kakuin.db'}",
        KAKUIN_TOKEN_PIN=os.environ["KAKUIN_TOKEN_PIN"],
        KAKUIN_TOKEN_SO_PIN=os.environ["KAKUIN_TOKEN_SO_PIN"],
        SOFTHSM2_CONF=os.environ["SOFTHSM2_CONF"],
    )
    return env


@pytest.fixture(scope="module")
def first_init(
    softhsm: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> tuple[Cli, subprocess.CompletedProcess[str]]:
    """`kakuin init` on nothing: it creates the token (label never seen before), database, hierarchy."""
    home = tmp_path_factory.mktemp("cli-home")
    cli = Cli(home, cli_env(home, f"cli-{uuid.uuid4().hex[:10]}"))
    return cli, cli.run("init")


@pytest.fixture(scope="module")
def cli(first_init: tuple[Cli, subprocess.CompletedProcess[str]]) -> Cli:
    cli, result = first_init
    assert result.returncode == 0, result.stderr
    return cli


@pytest.fixture(scope="module")
def keys() -> tuple[rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey]:
    return rsa.generate_private_key(65537, 2048), ec.generate_private_key(ec.SECP256R1())


def write(path: Path, data: str | bytes) -> Path:
    if isinstance(data, bytes):
        path.write_bytes(data)
    else:
        path.write_text(data, encoding="utf-8")
    return path


def pem_certificates(text: str) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(text.encode()) if "BEGIN CERTIFICATE" in text else []


# -- set-up and authorities ----------------------------------------------------------------------


def test_init_creates_everything_then_is_idempotent(
    first_init: tuple[Cli, subprocess.CompletedProcess[str]],
) -> None:
    cli, first = first_init
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith("created authorities: ")
    assert sorted(first.stdout.strip().removeprefix("created authorities: ").split(", ")) == sorted(
        AUTHORITIES
    )
    before = cli.rows("SELECT name, subject_der FROM authorities ORDER BY name")
    keys_before = cli.rows(
        "SELECT key_label, key_identifier, certificate_der FROM key_generations ORDER BY key_label"
    )
    second = cli.ok("init")
    assert second.stdout.strip() == "already initialized"
    assert cli.rows("SELECT name, subject_der FROM authorities ORDER BY name") == before
    assert (
        cli.rows("SELECT key_label, key_identifier, certificate_der FROM key_generations ORDER BY key_label")
        == keys_before
    )
    assert len(before) == 7


def test_ca_list_shows_the_hierarchy(cli: Cli) -> None:
    lines = cli.ok("ca", "list").stdout.splitlines()
    assert len(lines) == 7
    by_name = {line.split()[0]: line for line in lines}
    assert set(by_name) == set(AUTHORITIES)
    indent = {
        name: len(line) - len(line.lstrip())
        for name, line in zip([ln.split()[0] for ln in lines], lines, strict=True)
    }
    assert indent == {name: 2 if name in ("lgpki-org", "lgpki-app") else 0 for name in AUTHORITIES}
    # Children follow their parent.
    names = [line.split()[0] for line in lines]
    assert (
        names.index("lgpki-org") == names.index("lgpki-root") + 1
        or names.index("lgpki-app") == names.index("lgpki-root") + 1
    )
    assert (
        "C=JP, O=JPKI, OU=JPKI for digital signature, OU=Japan Agency for Local Authority Information Systems"
        in by_name["jpki-sign"]
    )
    assert "C=JP, O=LGPKI, CN=Organization CA G4 Sub1" in by_name["lgpki-org"]
    assert "ec-p256" in by_name["operator"] and "rsa-2048" in by_name["jpki-auth"]
    assert "[restricted]" in by_name["jpki-sign"] and "[restricted]" not in by_name["lgpki-root"]


def test_ca_show(cli: Cli) -> None:
    org, root, unknown = cli.many(
        ("ca", "show", "lgpki-org"), ("ca", "show", "jpki-sign"), ("ca", "show", "no-such-ca")
    )
    assert org.returncode == 0 and root.returncode == 0, org.stderr + root.stderr
    fields = dict(re.findall(r"^([a-z0-9 ]+?):\s+(.*)$", org.stdout, re.MULTILINE))
    assert fields["name"] == "lgpki-org"
    assert fields["subject"] == "C=JP, O=LGPKI, CN=Organization CA G4 Sub1"
    assert fields["issuer"] == "lgpki-root"
    assert fields["partitioning"] == "shards:4"
    assert fields["restricted"] == "no"
    assert re.search(
        r"^key g1:\s+rsa-2048 label lgpki-org-g1 SKI [0-9a-f:]{59} serial [0-9a-f]+ ",
        org.stdout,
        re.MULTILINE,
    )
    assert "(self-signed root)" in root.stdout
    assert "partitioning:  municipality" in root.stdout
    assert "no-such-ca" in one_error_line(unknown, 1)


def test_ca_cert_pem_and_chain(cli: Cli, tmp_path: Path) -> None:
    single, with_chain = cli.many(("ca", "cert", "jpki-sign"), ("ca", "cert", "lgpki-app", "--chain"))
    (cert,) = pem_certificates(single.stdout)
    assert cert.subject.rfc4514_string() == (
        "OU=Japan Agency for Local Authority Information Systems,OU=JPKI for digital signature,O=JPKI,C=JP"
    )
    chain = pem_certificates(with_chain.stdout)
    assert [c.subject.rfc4514_string() for c in chain] == [
        "CN=Application CA G4 Sub1,O=LGPKI,C=JP",
        "CN=Application CA G4 Root,O=LGPKI,C=JP",
    ]
    write(tmp_path / "root.pem", chain[1].public_bytes(Encoding.PEM))
    write(tmp_path / "sub.pem", chain[0].public_bytes(Encoding.PEM))
    result = openssl("verify", "-CAfile", str(tmp_path / "root.pem"), str(tmp_path / "sub.pem"))
    assert result.returncode == 0, result.stderr
    der = subprocess.run(
        [str(KAKUIN), "ca", "cert", "jpki-sign", "--der"],
        env=cli.env,
        cwd=cli.home,
        capture_output=True,
        timeout=120,
    )
    assert der.returncode == 0
    assert x509.load_der_x509_certificate(der.stdout) == cert


def test_hsm_keys_lists_protected_keys(cli: Cli) -> None:
    lines = cli.ok("hsm", "keys").stdout.splitlines()
    # Every authority's key, and the audit key that signs the audit log's checkpoints (docs/audit.md).
    assert sorted(line.split("\t")[0] for line in lines) == sorted(
        [*(f"{a}-g1" for a in AUTHORITIES), "kakuin-audit"]
    )
    for line in lines:
        assert "sensitive=yes" in line and "extractable=no" in line and "never_extractable=yes" in line


# -- issuance ------------------------------------------------------------------------------------


def test_issue_one_certificate(
    cli: Cli, keys: tuple[rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey], tmp_path: Path
) -> None:
    csr = write(tmp_path / "req.pem", make_csr(keys[0]))
    applicant = write(tmp_path / "applicant.json", json.dumps(jpki_sign_applicant(), ensure_ascii=False))
    der_csr = write(
        tmp_path / "req.der", x509.load_pem_x509_csr(make_csr(keys[1])).public_bytes(Encoding.DER)
    )
    result, ca, responder = cli.many(
        ("issue", "--profile", "jpki-sign", "--csr", str(csr), "--applicant", str(applicant)),
        ("ca", "cert", "jpki-sign"),
        ("issue", "--profile", "ocsp-responder", "--csr", str(der_csr), "--authority", "lgpki-app"),
    )
    assert result.returncode == 0, result.stderr
    (cert,) = pem_certificates(result.stdout)
    serial = format(cert.serial_number, "x")
    assert result.stderr.strip() == f"issued jpki-sign serial {serial} by jpki-sign"
    write(tmp_path / "ca.pem", ca.stdout)
    write(tmp_path / "leaf.pem", result.stdout)
    verified = openssl("verify", "-CAfile", str(tmp_path / "ca.pem"), str(tmp_path / "leaf.pem"))
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert cli.rows(f"SELECT status, profile FROM certificates WHERE serial = '{serial}'") == [
        ("issued", "jpki-sign")
    ]
    # A DER request, and --authority for a profile any authority may issue.
    assert responder.returncode == 0, responder.stderr
    (other,) = pem_certificates(responder.stdout)
    assert other.issuer.rfc4514_string() == "CN=Application CA G4 Sub1,O=LGPKI,C=JP"


def test_issue_refusals_are_one_line(
    cli: Cli, keys: tuple[rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey], tmp_path: Path
) -> None:
    csr = write(tmp_path / "req.pem", make_csr(keys[0]))
    bad_applicant = write(tmp_path / "bad.json", json.dumps(jpki_sign_applicant(sex="9"), ensure_ascii=False))
    garbage = write(tmp_path / "garbage.pem", os.urandom(200))
    not_json = write(tmp_path / "not.json", "{name: 1")
    count = cli.rows("SELECT count(*) FROM certificates")
    profile, applicant, bad_csr, json_error, usage = cli.many(
        ("issue", "--profile", "no-such-profile", "--csr", str(csr)),
        ("issue", "--profile", "jpki-sign", "--csr", str(csr), "--applicant", str(bad_applicant)),
        ("issue", "--profile", "client", "--csr", str(garbage)),
        ("issue", "--profile", "jpki-sign", "--csr", str(csr), "--applicant", str(not_json)),
        ("issue", "--profile", "jpki-sign"),
    )
    line = one_error_line(profile, 1)
    assert "profile" in line and "no-such-profile" in line and "jpki-sign" in line
    assert one_error_line(applicant, 1).startswith("kakuin: error: applicant.sex: ")
    assert one_error_line(bad_csr, 1).startswith("kakuin: error: csr: ")
    line = one_error_line(json_error, 1)
    assert "not valid JSON" in line and "not.json" in line
    assert "--profile and --csr" in one_error_line(usage, 2)
    assert cli.rows("SELECT count(*) FROM certificates") == count


def test_issue_batch(
    cli: Cli, keys: tuple[rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey], tmp_path: Path
) -> None:
    rsa_csr = make_csr(keys[0]).decode()
    ec_csr = make_csr(keys[1]).decode()
    lines = [
        {"profile": "jpki-sign", "csr": rsa_csr, "applicant": jpki_sign_applicant()},
        {"profile": "client", "csr": ec_csr, "applicant": APPLICANTS["client"]},
        {
            "profile": "jpki-sign",
            "csr": rsa_csr,
            "applicant": jpki_sign_applicant(name_substitutes="0"),
        },  # bad
        {"profile": "lgpki-server", "csr": rsa_csr, "applicant": APPLICANTS["lgpki-server"]},
        # The request of line 2 once more, on purpose: its own "id" makes it another line.
        {"profile": "client", "csr": ec_csr, "applicant": APPLICANTS["client"], "id": "again"},
    ]
    text = "\n".join(json.dumps(line, ensure_ascii=False) for line in lines) + "\n"
    text += "this is not json\n"
    batch = write(tmp_path / "batch.jsonl", text)
    out = tmp_path / "out.pem"
    before = cli.rows("SELECT count(*) FROM certificates WHERE status = 'issued'")[0][0]
    result = cli.run("issue", "--batch", str(batch), "--out", str(out))
    assert result.returncode == 1, result.stderr
    assert result.stdout == ""
    err = result.stderr.splitlines()
    refused = [line for line in err if line.startswith("refused ")]
    assert len(refused) == 2
    assert refused[0].startswith("refused line 3: applicant.name_substitutes: ")
    assert refused[1].startswith("refused line 6: ") and "JSON" in refused[1]
    assert re.fullmatch(r"issued 4, refused 2 of 6 in \d+\.\d s \(\d+/s\)", err[-1]), err[-1]
    certificates = pem_certificates(out.read_text())
    assert len(certificates) == 4
    assert len({c.serial_number for c in certificates}) == 4
    assert cli.rows("SELECT count(*) FROM certificates WHERE status = 'issued'")[0][0] == before + 4
    assert cli.rows("SELECT count(*) FROM certificates WHERE status IN ('signing', 'failed')")[0][0] == 0


def test_issue_batch_shows_a_progress_bar_on_a_terminal(
    cli: Cli, keys: tuple[rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey], tmp_path: Path
) -> None:
    ec_csr = make_csr(keys[1]).decode()
    batch = write(
        tmp_path / "batch.jsonl",
        "".join(
            json.dumps({"profile": "client", "csr": ec_csr, "applicant": APPLICANTS["client"], "id": str(i)})
            + "\n"
            for i in range(5)
        ),
    )
    primary, secondary = pty.openpty()
    try:
        process = subprocess.Popen(
            [str(KAKUIN), "issue", "--batch", str(batch), "--out", str(tmp_path / "out.pem")],
            env=cli.env,
            cwd=cli.home,
            stdout=subprocess.DEVNULL,
            stderr=secondary,
        )
        os.close(secondary)
        chunks = []
        while True:
            ready, _, _ = select.select([primary], [], [], 120)
            if not ready:
                break
            try:
                chunk = os.read(primary, 4096)
            except OSError:  # the other end closed
                break
            if not chunk:
                break
            chunks.append(chunk)
        assert process.wait(timeout=120) == 0
    finally:
        os.close(primary)
    screen = b"".join(chunks).decode("utf-8", "replace")
    assert re.search(r"issuing\s+\[#+\]\s+5/5", screen), screen
    assert re.search(r"issued 5, refused 0 of 5 in", screen)


# -- certificates and revocation -----------------------------------------------------------------


@pytest.fixture(scope="module")
def serial_pool(cli: Cli, tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """Client certificates for the revocation tests, issued by one `kakuin issue --batch`."""
    directory = tmp_path_factory.mktemp("pool")
    csr = make_csr(ec.generate_private_key(ec.SECP256R1())).decode()
    lines = [
        json.dumps({"id": f"pool-{n}", "profile": "client", "csr": csr, "applicant": APPLICANTS["client"]})
        for n in range(5)
    ]
    batch = write(directory / "pool.jsonl", "\n".join(lines) + "\n")
    cli.ok("issue", "--batch", str(batch), "--out", str(directory / "pool.pem"))
    return [format(c.serial_number, "x") for c in pem_certificates((directory / "pool.pem").read_text())]


@pytest.fixture()
def issued_serial(serial_pool: list[str]) -> str:
    return serial_pool.pop()


def test_cert_show(cli: Cli, issued_serial: str) -> None:
    summary, pem, unknown = cli.many(
        ("cert", "show", issued_serial),
        ("cert", "show", issued_serial, "--pem"),
        ("cert", "show", "abcdef0123456789"),
    )
    fields = dict(re.findall(r"^([a-z0-9]+):\s+(.*)$", summary.stdout, re.MULTILINE))
    assert fields["serial"] == issued_serial
    assert fields["authority"] == "operator"
    assert fields["profile"] == "client v1"
    assert fields["status"] == "issued"
    assert "CN=clerk-0001" in fields["subject"]
    assert format(pem_certificates(pem.stdout)[0].serial_number, "x") == issued_serial
    assert "abcdef0123456789" in one_error_line(unknown, 1)


def test_revoke_then_revoke_again(cli: Cli, issued_serial: str) -> None:
    result = cli.ok("revoke", "--authority", "operator", issued_serial, "--reason", "key-compromise")
    assert re.fullmatch(
        rf"revoked {issued_serial} \(keyCompromise\) at \d{{4}}-\d\d-\d\d \d\d:\d\d:\d\dZ",
        result.stdout.strip(),
    ), result.stdout
    shown, again, audit = cli.many(
        ("cert", "show", issued_serial),
        ("revoke", "--authority", "operator", issued_serial, "--reason", "superseded"),
        ("audit", "--action", "certificate.revoke", "--limit", "5"),
    )
    assert "status:       revoked" in shown.stdout
    assert "(keyCompromise)" in shown.stdout
    assert "already revoked" in one_error_line(again, 1)
    assert again.stdout == ""
    revocations = cli.rows(
        "SELECT count(*) FROM revocations r JOIN certificates c ON c.id = r.certificate_id "
        f"WHERE c.serial = '{issued_serial}'"
    )
    assert revocations == [(1,)]
    # The audit trail says who did it.
    line = next(line for line in audit.stdout.splitlines() if issued_serial in line)
    assert f"cli:{getpass.getuser()}" in line and "certificate.revoke" in line and "keyCompromise" in line


def test_revoke_refusals(cli: Cli, issued_serial: str) -> None:
    reason, issuer, malformed, unknown = cli.many(
        ("revoke", "--authority", "operator", issued_serial, "--reason", "stolen"),
        ("revoke", "--authority", "lgpki-app", issued_serial, "--reason", "superseded"),
        ("revoke", "--authority", "operator", "zz-not-hex", "--reason", "superseded"),
        ("revoke", "--authority", "operator", "123456789abcdef", "--reason", "superseded"),
    )
    line = one_error_line(reason, 1)
    assert "reason" in line and "stolen" in line
    assert "lgpki-app" in one_error_line(issuer, 1)
    assert "serial" in one_error_line(malformed, 1)
    assert "123456789abcdef" in one_error_line(unknown, 1)
    assert cli.rows(f"SELECT status FROM certificates WHERE serial = '{issued_serial}'") == [("issued",)]


def test_hold_and_release(cli: Cli, issued_serial: str) -> None:
    held = cli.ok("revoke", "--authority", "operator", issued_serial, "--reason", "certificateHold")
    assert held.stdout.startswith(f"on_hold {issued_serial} (certificateHold)")
    released = cli.ok("release", "--authority", "operator", issued_serial)
    assert released.stdout.strip() == f"released {issued_serial}: issued"
    line = one_error_line(cli.run("release", "--authority", "operator", issued_serial), 1)
    assert "not on hold" in line


# -- verifiers -----------------------------------------------------------------------------------


def test_verifier_add_list_disable(cli: Cli, tmp_path: Path) -> None:
    def client_cert(name: str) -> Path:
        """A relying party's own certificate (it need not come from this CA)."""
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, name)])
        now = datetime.now(UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(now + timedelta(days=30))
            .sign(key, hashes.SHA256())
        )
        return write(tmp_path / f"{name}.pem", cert.public_bytes(Encoding.PEM))

    platform = client_cert("pf-one")
    provider = client_cert("sp-one")
    added = cli.ok(
        "verifier",
        "add",
        "pf-one",
        "--kind",
        "platform",
        "--cert",
        str(platform),
        "--authorities",
        "jpki-sign,jpki-auth",
        "--pinless",
    )
    assert re.fullmatch(
        r"registered platform pf-one \(sha256 [0-9a-f]{64}\) for jpki-sign, jpki-auth", added.stdout.strip()
    )
    bogus = write(tmp_path / "bogus.pem", "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    sp, duplicate, not_a_cert = cli.many(
        (
            "verifier",
            "add",
            "sp-one",
            "--kind",
            "service_provider",
            "--cert",
            str(provider),
            "--authorities",
            "jpki-auth",
            "--platform",
            "pf-one",
        ),
        ("verifier", "add", "pf-one", "--kind", "platform", "--cert", str(platform)),
        ("verifier", "add", "y", "--kind", "government", "--cert", str(bogus)),
    )
    assert sp.returncode == 0, sp.stderr
    line = one_error_line(duplicate, 1)
    assert "pf-one" in line and "exists already" in line
    line = one_error_line(not_a_cert, 1)
    assert "cert" in line and "X.509" in line

    listing = {line.split()[0]: line.split() for line in cli.ok("verifier", "list").stdout.splitlines()}
    assert set(listing) == {"pf-one", "sp-one"}
    assert listing["pf-one"][1:4] == ["platform", "active", "jpki-sign,jpki-auth"]
    assert "pinless=yes" in listing["pf-one"]
    assert listing["sp-one"][1:4] == ["service_provider", "active", "jpki-auth"]
    assert listing["sp-one"][-2:] == ["via", "pf-one"]

    assert cli.ok("verifier", "disable", "pf-one").stdout.strip() == "disabled pf-one"
    listing = {line.split()[0]: line.split() for line in cli.ok("verifier", "list").stdout.splitlines()}
    assert listing["pf-one"][2] == "disabled"


# -- configuration errors ------------------------------------------------------------------------


def test_bad_configuration_stops_with_one_line(cli: Cli, tmp_path: Path) -> None:
    """Exit status 2, one line naming the key and the file (and no side effect: the database
    and token of the data directory are never opened)."""
    cases = {
        "database.urll": '[database]\nurll = "sqlite:///x.db"\n',
        "(syntax)": "[token\nlabel = 'x'\n",
        "services.ra.host": '[services.ra]\nhost = "0.0.0.0"\n',
    }
    files = {
        key: write(tmp_path / f"case{n}.toml", content) for n, (key, content) in enumerate(cases.items())
    }
    home = tmp_path / "home"
    home.mkdir()
    write(home / "kakuin.toml", '[token]\npin = "1234"\n')
    commands = [("--config", str(path), "ca", "list") for path in files.values()]
    results = cli.many(*commands)
    for (key, path), result in zip(files.items(), results, strict=True):
        line = one_error_line(result, 2)
        assert line.startswith(f"kakuin: error: configuration error: {key} in {path}: "), line
    assert "0.0.0.0 is not a loopback address" in results[2].stderr
    # $KAKUIN_HOME/kakuin.toml is read without --config.
    line = one_error_line(cli.run("ca", "list", env={**cli.env, "KAKUIN_HOME": str(home)}), 2)
    assert f"token.pin in {home / 'kakuin.toml'}: unknown setting" in line
    assert not (home / "kakuin.db").exists()


def test_unusable_token_or_database_is_exit_3(cli: Cli, tmp_path: Path) -> None:
    wrong_pin = {**cli.env, "KAKUIN_TOKEN_PIN": "not-the-pin"}
    empty = {
        **cli.env,
        "KAKUIN_HOME": str(tmp_path),
        "KAKUIN_DATABASE_URL": f"sqlite:///{tmp_path / 'new.db'}",
    }
    with ThreadPoolExecutor(max_workers=2) as pool:
        token, database = pool.map(
            lambda args: cli.run(*args[1], env=args[0]),
            [(wrong_pin, ("hsm", "keys")), (empty, ("ca", "list"))],
        )
    line = one_error_line(token, 3)
    assert "PIN" in line and "incorrect" in line and "not-the-pin" not in line
    line = one_error_line(database, 3)
    assert "kakuin init" in line


# -- help ----------------------------------------------------------------------------------------


def _command_paths() -> list[list[str]]:
    from kakuin.cli import main

    paths: list[list[str]] = []

    def walk(command: click.Command, path: list[str]) -> None:
        paths.append(path)
        if isinstance(command, click.Group):
            for name, sub in command.commands.items():
                walk(sub, [*path, name])

    walk(main, [])
    return paths


def test_help_everywhere(cli: Cli) -> None:
    """Every command and group answers --help. The installed script is run for the top level;
    the (many) subcommands go through click's runner in this process, which calls the same
    ``main`` object the script calls, to keep the test fast on a busy machine."""
    from click.testing import CliRunner

    from kakuin.cli import main

    top = cli.ok("--help")
    assert top.stdout.startswith("Usage: kakuin [OPTIONS] COMMAND")
    paths = _command_paths()
    assert ["issue"] in paths and ["verifier", "disable"] in paths and ["ca", "cert"] in paths
    listed = re.findall(r"^  ([a-z-]+)\s", top.stdout.split("Commands:")[1], re.MULTILINE)
    assert sorted(listed) == sorted(p[0] for p in paths if len(p) == 1)
    for path in paths:
        result = CliRunner().invoke(main, [*path, "--help"], prog_name="kakuin", env=cli.env)
        assert result.exit_code == 0, (path, result.output)
        assert result.output.startswith(f"Usage: kakuin {' '.join(path)}".rstrip()), (
            path,
            result.output[:200],
        )
