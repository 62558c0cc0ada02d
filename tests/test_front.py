"""The front's contract and configuration (config/front.py, kakuin/front.py), without servers:
who may believe the client-certificate header, the ``[front]`` settings, and a configuration
HAProxy itself accepts. tests/test_slow_clients.py runs the real thing."""

from __future__ import annotations

import base64
import shutil
import socket
import subprocess
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from config import ConfigError, load_settings
from config.front import BEHIND_FRONT_ENV, FrontPeer, front_peer, load_front_settings
from crl.wsgi import _peer
from kakuin.front import ClientTLS, Route, render, socket_directory
from ocsp.wsgi import _caller
from registration.app import client_certificate

CERTIFICATE = b"0\x82\x01\x00not really DER, but bytes the front verified"
HEADER = base64.b64encode(CERTIFICATE).decode()


def environ(sock: Any, header: str | None = HEADER) -> dict[str, Any]:
    env: dict[str, Any] = {"gunicorn.socket": sock, "wsgi.url_scheme": "http"}
    if header is not None:
        env["HTTP_X_KAKUIN_CLIENT_CERT"] = header
    return env


@pytest.fixture()
def unix_socket() -> Any:
    left, right = socket.socketpair(socket.AF_UNIX)
    yield left
    left.close()
    right.close()


@pytest.fixture()
def tcp_socket() -> Any:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        yield sock


def test_the_header_is_believed_only_behind_the_front_on_a_unix_socket(
    monkeypatch: pytest.MonkeyPatch, unix_socket: Any, tcp_socket: Any
) -> None:
    monkeypatch.delenv(BEHIND_FRONT_ENV, raising=False)
    # Not behind the front (a server with its own TLS, or plain HTTP): the header means nothing.
    assert front_peer(environ(unix_socket)) is None
    assert client_certificate(environ(tcp_socket)) is None
    assert _peer(environ(tcp_socket)).certificate is None
    assert _caller(environ(tcp_socket)).tls_certificate is None

    monkeypatch.setenv(BEHIND_FRONT_ENV, "tls")
    assert front_peer(environ(unix_socket)) == FrontPeer(True, CERTIFICATE)
    assert client_certificate(environ(unix_socket)) == CERTIFICATE
    assert _peer(environ(unix_socket)).certificate == CERTIFICATE and _peer(environ(unix_socket)).over_tls
    assert _caller(environ(unix_socket)).tls_certificate == CERTIFICATE
    # Over TCP the same setting believes nothing: anyone could send the header there.
    assert front_peer(environ(tcp_socket)) == FrontPeer(True, None)
    assert client_certificate(environ(tcp_socket)) is None
    assert _caller(environ(tcp_socket)).tls_certificate is None
    # granian hands the app no socket: no certificate either.
    assert front_peer(environ(None)) == FrontPeer(True, None)
    # No header, or one that is not base64: no certificate.
    assert front_peer(environ(unix_socket, header=None)) == FrontPeer(True, None)
    assert front_peer(environ(unix_socket, header="not base64!")) == FrontPeer(True, None)

    monkeypatch.setenv(BEHIND_FRONT_ENV, "plain")
    assert front_peer(environ(unix_socket)) == FrontPeer(False, None)
    assert client_certificate(environ(unix_socket)) is None
    assert not _peer(environ(unix_socket)).over_tls


def test_a_tls_socket_still_gives_its_peer_certificate(monkeypatch: pytest.MonkeyPatch) -> None:
    """The direct modes are unchanged: the certificate comes from the TLS connection."""
    monkeypatch.delenv(BEHIND_FRONT_ENV, raising=False)

    class Peer:
        family = socket.AF_INET

        def getpeercert(self, binary_form: bool = False) -> bytes:
            assert binary_form
            return CERTIFICATE

    assert client_certificate(environ(Peer(), header=None)) == CERTIFICATE
    assert _caller(environ(Peer(), header=None)).tls_certificate == CERTIFICATE


def settings_with(tmp_path: Path, text: str) -> Any:
    (tmp_path / "kakuin.toml").write_text(text, encoding="utf-8")
    return load_settings(environ={"KAKUIN_HOME": str(tmp_path)})


def test_front_settings(tmp_path: Path) -> None:
    front = load_front_settings(settings_with(tmp_path, ""), environ={})
    assert front.enabled and front.request_timeout == 5 and front.client_timeout == 10
    assert front.per_client == 20 and front.maxconn == 1000
    front = load_front_settings(
        settings_with(tmp_path, "[front]\nrequest_timeout = 2.5\nper_client = 4\n"), environ={}
    )
    assert (front.request_timeout, front.per_client) == (2.5, 4)
    assert not load_front_settings(settings_with(tmp_path, ""), environ={"KAKUIN_FRONT": "off"}).enabled
    for text, key in (
        ("[front]\nrequest_timeout = 0\n", "front.request_timeout"),
        ('[front]\nper_client = "many"\n', "front.per_client"),
        ("[front]\nenable = false\n", "front.enable"),
        ('[front]\nenabled = "perhaps"\n', "front.enabled"),
    ):
        with pytest.raises(ConfigError) as caught:
            load_front_settings(settings_with(tmp_path, text), environ={})
        assert caught.value.key == key, text


def _pem_pair(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    import datetime

    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "server.pem", directory / "server.key"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


@pytest.mark.skipif(
    shutil.which("haproxy", path="/usr/sbin:/usr/bin") is None, reason="HAProxy is not installed"
)
def test_haproxy_accepts_the_configuration(tmp_path: Path) -> None:
    cert, key = _pem_pair(tmp_path)
    (tmp_path / "ra.pem").write_bytes(cert.read_bytes() + key.read_bytes())
    front = load_front_settings(settings_with(tmp_path, ""), environ={})
    routes = [
        Route(
            "ra",
            "127.0.0.1",
            18443,
            tmp_path / "ra.sock",
            131072,
            ClientTLS(cert, key, cert, "required", True),
        ),
        Route("ocsp", "::1", 18081, tmp_path / "ocsp.sock", 16384),
    ]
    text = render(front, routes, tmp_path, crl=None)
    assert "timeout http-request 5000ms" in text and "option http-buffer-request" in text
    assert "bind ipv6@::1:18081" in text and "crl-file" not in text
    assert "tune.bufsize 163840" in text  # the RA's largest body fits in one buffer, headers too
    assert not [line for line in text.splitlines() if line.split()[:1] == ["log"]]  # no access log
    config = tmp_path / "haproxy.cfg"
    config.write_text(text)
    result = subprocess.run(
        [shutil.which("haproxy", path="/usr/sbin:/usr/bin") or "haproxy", "-c", "-q", "-f", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


def test_sockets_move_out_of_a_home_too_deep_for_their_names(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 90) / "home"
    directory = socket_directory(deep)
    try:
        assert len(str(directory / "ocsp-tls.sock")) <= 100
        assert directory.stat().st_mode & 0o777 == 0o700
        assert socket_directory(deep) == directory  # the same one each time, for the same home
    finally:
        directory.rmdir()
    assert socket_directory(tmp_path / "home") == tmp_path / "home" / "run"


def test_kakuin_up_names_a_missing_haproxy_before_anything(tmp_path: Path) -> None:
    """`kakuin up` checks its ports with ``services.listeners`` before it prints, initializes or
    starts anything: a missing HAProxy is the one line of a setting there."""
    from kakuin.services import listeners

    settings = settings_with(tmp_path, '[front]\nhaproxy = "/nonexistent/haproxy"\n')
    with pytest.raises(ConfigError) as caught:
        listeners(settings)
    assert caught.value.key == "front.haproxy" and "apt-get install haproxy" in str(caught.value)
    listeners(settings_with(tmp_path, '[front]\nenabled = false\nhaproxy = "/nonexistent/haproxy"\n'))
