"""Shared fixtures: a real SoftHSM2 token, real SQLite and a real throwaway PostgreSQL cluster.

Nothing here is mocked. The session builds one initialized CA (token + database + default
hierarchy) per database backend; tests that need a pristine database make their own with
``fresh_ctx``.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from ca.service import CAContext
from config import load_settings
from hsm.softhsm import init_token, token_exists

# The venv this suite runs in (.venv for make test, .venv-latest for make test-latest).
VENV_BIN = Path(sys.executable).parent
KAKUIN_SCRIPT = VENV_BIN / "kakuin"

ROOT = Path(__file__).resolve().parent.parent

# Kakuin and its servers run with umask 077 (kakuin/instance.py); so does the code that builds
# homes in this process, or the first `kakuin` command on such a home would report making it
# private. tests/test_instance.py starts its commands under umask 022 on purpose.
os.umask(0o077)


@pytest.fixture(scope="session")
def softhsm(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A private SoftHSM2 token directory for this test session; the PIN comes from the environment."""
    base = tmp_path_factory.mktemp("softhsm")
    (base / "tokens").mkdir()
    conf = base / "softhsm2.conf"
    conf.write_text(
        f"directories.tokendir = {base / 'tokens'}\nobjectstore.backend = file\nlog.level = ERROR\n"
    )
    os.environ["SOFTHSM2_CONF"] = str(conf)
    pin = secrets.token_hex(8)
    so_pin = secrets.token_hex(8)
    os.environ["KAKUIN_TOKEN_PIN"] = pin
    os.environ["KAKUIN_TOKEN_SO_PIN"] = so_pin
    return {"conf": str(conf), "pin": pin, "so_pin": so_pin}


def new_token(softhsm: dict[str, str], label: str | None = None) -> str:
    label = label or f"t-{uuid.uuid4().hex[:12]}"
    if not token_exists(label):
        init_token(label, softhsm["so_pin"], softhsm["pin"])
    return label


def _find_pg_bin() -> Path | None:
    for candidate in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (candidate / "initdb").exists():
            return candidate
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def postgres() -> Iterator[Callable[[], str]]:
    """A throwaway PostgreSQL cluster on a Unix socket; yields a factory of fresh database URLs.

    initdb refuses to run as root, so the cluster runs as the ``postgres`` user in a directory
    that user owns.
    """
    pg_bin = _find_pg_bin()
    if pg_bin is None:
        pytest.skip("PostgreSQL is not installed (make test installs Debian's postgresql)")
    # Its own directory under /tmp, not pytest's: every pytest session that starts makes
    # /tmp/pytest-of-root owner-only again, which would cut the postgres user off a running cluster.
    base = Path(tempfile.mkdtemp(prefix="kakuin-pg-"))
    data = base / "data"
    sock = base / "sock"
    sock.mkdir()
    as_postgres: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(base, "postgres")
        shutil.chown(sock, "postgres")
        os.chmod(base, 0o700)
        as_postgres = ["runuser", "-u", "postgres", "--"]
    user = "postgres" if os.geteuid() == 0 else os.environ.get("USER", "postgres")
    subprocess.run(
        [
            *as_postgres,
            str(pg_bin / "initdb"),
            "-D",
            str(data),
            "-U",
            user,
            "--auth=trust",
            "-E",
            "UTF8",
            "--locale=C.UTF-8",
        ],
        check=True,
        capture_output=True,
    )
    port = _free_port()
    subprocess.run(
        [
            *as_postgres,
            str(pg_bin / "pg_ctl"),
            "-D",
            str(data),
            "-w",
            "-l",
            str(base / "log"),
            "-o",
            f"-c listen_addresses='' -c unix_socket_directories={sock} -p {port} "
            "-c fsync=off -c max_connections=200",
            "start",
        ],
        check=True,
        capture_output=True,
    )

    def make_database() -> str:
        name = f"k_{uuid.uuid4().hex[:12]}"
        subprocess.run(
            [str(pg_bin / "createdb"), "-h", str(sock), "-p", str(port), "-U", user, name],
            check=True,
            capture_output=True,
        )
        return f"postgresql+psycopg://{user}@/{name}?host={sock}&port={port}"

    try:
        yield make_database
    finally:
        subprocess.run(
            [*as_postgres, str(pg_bin / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
            capture_output=True,
        )
        shutil.rmtree(base, ignore_errors=True)


def make_ctx(home: Path, database_url: str, token_label: str, **extra_env: str) -> CAContext:
    environ = {
        "KAKUIN_HOME": str(home),
        "KAKUIN_DATABASE_URL": database_url,
        "KAKUIN_TOKEN_LABEL": token_label,
        "KAKUIN_TOKEN_PIN": os.environ["KAKUIN_TOKEN_PIN"],
        "SOFTHSM2_CONF": os.environ["SOFTHSM2_CONF"],
        **extra_env,
    }
    ctx = CAContext(load_settings(environ=environ))
    ctx.migrate()
    ctx.ensure_hierarchy()
    return ctx


@pytest.fixture(scope="session", params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="session")
def ca_ctx(
    backend: str,
    softhsm: dict[str, str],
    tmp_path_factory: pytest.TempPathFactory,
    request: pytest.FixtureRequest,
) -> Iterator[CAContext]:
    """An initialized CA (default hierarchy) on SQLite and, as a second parameter, on PostgreSQL."""
    home = tmp_path_factory.mktemp(f"home-{backend}")
    url = f"sqlite:///{home / 'kakuin.db'}" if backend == "sqlite" else request.getfixturevalue("postgres")()
    ctx = make_ctx(home, url, new_token(softhsm, f"kakuin-{backend}"))
    yield ctx
    ctx.token.close()
    ctx.engine.dispose()


@pytest.fixture()
def fresh_ctx(softhsm: dict[str, str], tmp_path: Path) -> Iterator[CAContext]:
    """A new SQLite database and a new token: for tests that need to see the empty state."""
    ctx = make_ctx(tmp_path, f"sqlite:///{tmp_path / 'kakuin.db'}", new_token(softhsm))
    yield ctx
    ctx.token.close()
    ctx.engine.dispose()


# -- applicant keys and CSRs -------------------------------------------------------------------


@pytest.fixture(scope="session")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="session")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def make_csr(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey, cn: str = "from the CSR, ignored") -> bytes:
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM)


def jpki_sign_applicant(**overrides: object) -> dict[str, object]:
    data: dict[str, object] = {
        "name": "山田　花子",
        "name_substitutes": "00000",
        "sex": "2",
        "birth_date": "1985-07-15",
        "address": "東京都千代田区霞が関二丁目1番2号",
        "address_substitutes": "00000000000000000",
        "prefecture": "Tokyo-to",
        "municipality": "Chiyoda-ku",
        "municipality_code": "13101",
        "office_code": "131010001",
        "card_expiry": "2035-07-15",
    }
    data.update(overrides)
    return data


def jpki_auth_applicant(**overrides: object) -> dict[str, object]:
    data: dict[str, object] = {
        "birth_date": "1985-07-15",
        "card_expiry": "2035-07-15",
        "municipality_code": "13101",
    }
    data.update(overrides)
    return data


APPLICANTS: dict[str, dict[str, object]] = {
    "lgpki-org-user": {
        "organization": "千代田区",
        "unit": "情報政策課",
        "common_name": "Hanako Yamada",
        "email": "hanako.yamada@city.chiyoda.lg.jp",
    },
    "lgpki-post": {"organization": "千代田区", "post": "区長"},
    "lgpki-server": {
        "organization": "Chiyoda City",
        "dns_names": ["www.city.chiyoda.lg.jp", "city.chiyoda.lg.jp"],
    },
    "lgpki-code-signing": {"organization": "千代田区", "common_name": "Chiyoda City Software"},
    "lgpki-mail": {
        "organization": "千代田区",
        "common_name": "Hanako Yamada",
        "email": "hanako.yamada@city.chiyoda.lg.jp",
    },
    "client": {"common_name": "clerk-0001", "unit": "office 13101"},
    "ocsp-responder": {},
    "service-server": {"dns_names": ["localhost"], "ip_addresses": ["127.0.0.1"]},
}


def openssl(
    *args: str, input: bytes | None = None, check: bool = False
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["openssl", *args], input=input, capture_output=True, check=check, timeout=60)


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False
