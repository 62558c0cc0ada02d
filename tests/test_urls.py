"""The CRL, OCSP and caIssuers URLs certificates carry: unset, they follow the services' own host
and port (one setting moves a service and its URLs); set to a loopback address on a port no
service of this instance listens on, `kakuin issue` and `kakuin up` say so in one line on stderr
and still go on. Certificates are read with `openssl x509 -text`."""

from __future__ import annotations

import contextlib
import os
import re
import selectors
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from config import load_settings
from tests.conftest import _free_port, make_csr

KAKUIN = Path(sys.prefix) / "bin" / "kakuin"
APPLICANT = Path(__file__).resolve().parent.parent / "docs" / "examples" / "lgpki-server.json"


# -- settings ------------------------------------------------------------------------------------


def _urls(environ: dict[str, str], config: Path | None = None) -> tuple[str, str, str]:
    s = load_settings(config, environ=environ)
    return s.crl_base_url, s.ocsp_base_url, s.ca_issuers_base_url


def test_unset_urls_follow_the_service_ports(tmp_path: Path) -> None:
    home = {"KAKUIN_HOME": str(tmp_path)}
    assert _urls(home) == (
        "http://127.0.0.1:8082/crl",
        "http://127.0.0.1:8081/ocsp",
        "http://127.0.0.1:8082/ca",
    )
    assert _urls({**home, "KAKUIN_OCSP_PORT": "9181", "KAKUIN_CRL_PORT": "9182"}) == (
        "http://127.0.0.1:9182/crl",
        "http://127.0.0.1:9181/ocsp",
        "http://127.0.0.1:9182/ca",
    )
    config = tmp_path / "k.toml"
    config.write_text('[services.ocsp]\nhost = "::1"\nport = 9281\n[services.crl]\nport = 9282\n')
    assert _urls(home, config) == (
        "http://127.0.0.1:9282/crl",
        "http://[::1]:9281/ocsp",
        "http://127.0.0.1:9282/ca",
    )


def test_set_urls_are_kept_whatever_the_ports(tmp_path: Path) -> None:
    config = tmp_path / "k.toml"
    config.write_text('[urls]\ncrl = "http://crl.example.lg.jp/crl/"\n[services.crl]\nport = 9282\n')
    environ = {"KAKUIN_HOME": str(tmp_path), "KAKUIN_OCSP_URL": "http://127.0.0.1:8081/ocsp"}
    environ["KAKUIN_OCSP_PORT"] = "9181"
    crl, ocsp, issuers = _urls(environ, config)
    assert (crl, ocsp) == ("http://crl.example.lg.jp/crl", "http://127.0.0.1:8081/ocsp")
    assert issuers == "http://127.0.0.1:9282/ca"  # unset: still follows the CRL service


# -- kakuin issue --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def home(softhsm: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """A work directory and the environment of an initialized data directory (``home`` in it)
    whose services were moved to ports 9181 (OCSP), 9182 (CRL)."""
    work = tmp_path_factory.mktemp("urls")
    home = work / "home"
    env = {k: v for k, v in os.environ.items() if not k.startswith("KAKUIN_")}
    env.update(
        KAKUIN_HOME=str(home),
        KAKUIN_TOKEN_LABEL=f"urls-{uuid.uuid4().hex[:10]}",
        KAKUIN_TOKEN_PIN=softhsm["pin"],
        KAKUIN_TOKEN_SO_PIN=softhsm["so_pin"],
        SOFTHSM2_CONF=softhsm["conf"],
        KAKUIN_OCSP_PORT="9181",
        KAKUIN_CRL_PORT="9182",
    )
    init = subprocess.run([str(KAKUIN), "init"], env=env, capture_output=True, text=True, timeout=300)
    assert init.returncode == 0, init.stderr
    assert "warning" not in init.stderr
    (work / "server.csr").write_bytes(make_csr(ec.generate_private_key(ec.SECP256R1())))
    return work, env


def issue(home: tuple[Path, dict[str, str]], **extra: str) -> tuple[str, list[str]]:
    """`kakuin issue` of an lgpki-server certificate: (openssl x509 -text of it, stderr lines)."""
    directory, env = home
    csr = str(directory / "server.csr")
    result = subprocess.run(
        [str(KAKUIN), "issue", "--profile", "lgpki-server", "--csr", csr, "--applicant", str(APPLICANT)],
        env={**env, **extra},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    text = subprocess.run(
        ["openssl", "x509", "-noout", "-text"],
        input=result.stdout,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return text, result.stderr.splitlines()


def uris(text: str) -> list[str]:
    return re.findall(r"URI:(\S+)", text)


def test_issued_certificate_follows_moved_ports(home: tuple[Path, dict[str, str]]) -> None:
    text, stderr = issue(home)
    crl, delta, ocsp, issuers = uris(text)
    assert re.fullmatch(r"http://127\.0\.0\.1:9182/crl/lgpki-app/\d+\.crl", crl)
    assert re.fullmatch(r"http://127\.0\.0\.1:9182/crl/lgpki-app/\d+-delta\.crl", delta)
    assert (ocsp, issuers) == (
        "http://127.0.0.1:9181/ocsp/lgpki-app",
        "http://127.0.0.1:9182/ca/lgpki-app.cer",
    )
    assert "OCSP - URI:http://127.0.0.1:9181/ocsp/lgpki-app" in text
    assert "CA Issuers - URI:http://127.0.0.1:9182/ca/lgpki-app.cer" in text
    assert len(stderr) == 1 and stderr[0].startswith("issued lgpki-server serial "), stderr


def test_ports_moved_in_the_settings_file(home: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    config = tmp_path / "kakuin.toml"
    config.write_text("[services.ocsp]\nport = 9281\n[services.crl]\nport = 9282\n")
    environ = {k: v for k, v in home[1].items() if not k.endswith("_PORT")}
    text, stderr = issue((home[0], environ), KAKUIN_CONFIG=str(config))
    assert "OCSP - URI:http://127.0.0.1:9281/ocsp/lgpki-app" in text
    assert "CA Issuers - URI:http://127.0.0.1:9282/ca/lgpki-app.cer" in text
    assert all(uri.startswith(("http://127.0.0.1:9281/", "http://127.0.0.1:9282/")) for uri in uris(text))
    assert not [line for line in stderr if "warning" in line]


def test_loopback_url_on_a_port_nobody_listens_on_is_one_warning(home: tuple[Path, dict[str, str]]) -> None:
    text, stderr = issue(home, KAKUIN_OCSP_URL="http://127.0.0.1:9/ocsp")
    warnings = [line for line in stderr if line.startswith("kakuin: warning: ")]
    assert len(warnings) == 1 and len(stderr) == 2, stderr
    assert "urls.ocsp" in warnings[0] and "KAKUIN_OCSP_URL" in warnings[0]
    assert "port 9 " in warnings[0] and "9181" in warnings[0]
    # Still issued, with the URL as set.
    assert stderr[1].startswith("issued lgpki-server serial ")
    assert "OCSP - URI:http://127.0.0.1:9/ocsp/lgpki-app" in text


def test_loopback_url_on_the_right_port_or_a_public_name_is_quiet(home: tuple[Path, dict[str, str]]) -> None:
    _text, on_port = issue(
        home, KAKUIN_CRL_URL="http://localhost:9182/crl", KAKUIN_OCSP_URL="http://[::1]:9181/ocsp"
    )
    text, public = issue(
        home,
        KAKUIN_OCSP_URL="http://ocsp.example.lg.jp:9/ocsp",
        KAKUIN_CA_ISSUERS_URL="https://repo.example.lg.jp/ca",
    )
    assert "OCSP - URI:http://ocsp.example.lg.jp:9/ocsp/lgpki-app" in text
    for stderr in (on_port, public):
        assert len(stderr) == 1 and stderr[0].startswith("issued "), stderr


def test_bad_ca_issuers_port_is_named(home: tuple[Path, dict[str, str]]) -> None:
    config = home[0] / "issuers.toml"
    config.write_text('[urls]\nca_issuers = "http://127.0.0.1:9183/ca"\n')
    _text, stderr = issue(home, KAKUIN_CONFIG=str(config))
    (warning,) = [line for line in stderr if "warning" in line]
    assert f"urls.ca_issuers ({config})" in warning and "port 9183" in warning


# -- kakuin up -----------------------------------------------------------------------------------


def test_up_warns_before_it_serves(home: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    """The warning comes first, before the first run's CA certificates or any server start."""
    config = tmp_path / "kakuin.toml"
    config.write_text("[crl]\ntls_port = 0\n")
    directory, env = home
    env = {
        **env,
        "KAKUIN_CONFIG": str(config),
        "KAKUIN_RA_PORT": str(_free_port()),
        "KAKUIN_OCSP_PORT": str(_free_port()),
        "KAKUIN_CRL_PORT": str(_free_port()),
        "KAKUIN_CRL_URL": "http://127.0.0.1:9/crl",
    }
    process = subprocess.Popen(
        [str(KAKUIN), "up"],
        env=env,
        cwd=directory,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        selector = selectors.DefaultSelector()
        assert process.stderr is not None
        selector.register(process.stderr, selectors.EVENT_READ)
        deadline = time.monotonic() + 120
        first = ""
        while time.monotonic() < deadline:  # an exit makes the pipe readable too
            if selector.select(timeout=0.5):
                first = process.stderr.readline()
                break
        assert first.startswith("kakuin: warning: urls.crl (environment variable KAKUIN_CRL_URL)"), first
        assert "port 9 " in first
    finally:
        # `kakuin up` stops its servers on SIGTERM; whatever was still starting goes with the group.
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
