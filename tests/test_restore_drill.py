"""The restore drill (issue 13, item 3), on SQLite and PostgreSQL.

A Kakuin serves its CRLs while a background thread issues and revokes (the CLI, one command at a
time, as a busy office would) and publishes CRLs; ``kakuin backup`` runs in the middle; the work
goes on; the data directory is destroyed. The last CRLs stay published where relying parties
fetch them (a stand-in web server on the same URL). ``kakuin restore --crl-url-check`` into
another directory, then the restored instance serves CRLs and OCSP:

- every revocation acknowledged before the backup began is revoked in the database, on OCSP and
  in the next CRL, and ``openssl verify -crl_check`` and ``openssl ocsp`` agree on each checked
  certificate;
- the restored CA's CRL numbers continue above every number the destroyed one published.
"""

from __future__ import annotations

import contextlib
import http.server
import os
import re
import shutil
import signal
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from tests.conftest import openssl
from tests.test_backup import KAKUIN, Home, init_home, issue_clients, restored_home

ROUNDS_BEFORE = 3
ROUNDS_AFTER = 3
PER_ROUND = 4  # certificates issued per round; half of them revoked


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def poll(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"gave up waiting for {what} after {timeout} s")


def accepts(port: int) -> bool:
    import socket

    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def fetch(url: str) -> bytes | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            return bytes(answer.read())
    except OSError:
        return None


def start(home: Home, log: Path, *args: str) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [str(KAKUIN), *args], env=home.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def stop(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


def crl_number(data: bytes) -> int:
    crl = x509.load_der_x509_crl(data)
    return int(crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number)


class Office(threading.Thread):
    """Issues, revokes and publishes in rounds until told to stop; records when each revocation
    was acknowledged (its command returned 0)."""

    def __init__(self, home: Home, work: Path) -> None:
        super().__init__(daemon=True)
        self.home, self.work = home, work
        self.rounds = 0
        self.certificates: dict[str, bytes] = {}  # serial -> PEM
        self.acknowledged: list[tuple[float, str]] = []  # (monotonic time, serial)
        self.failure: BaseException | None = None
        self.halt = threading.Event()

    def run(self) -> None:
        try:
            while not self.halt.is_set():
                tag = f"round{self.rounds}"
                serials = issue_clients(self.home, self.work, PER_ROUND, tag)
                pems = x509.load_pem_x509_certificates((self.work / f"{tag}.pem").read_bytes())
                for serial, cert in zip(serials, pems, strict=True):
                    self.certificates[serial] = cert.public_bytes(Encoding.PEM)
                for serial in serials[: PER_ROUND // 2]:
                    self.home.ok("revoke", "--authority", "operator", serial, "--reason", "key-compromise")
                    self.acknowledged.append((time.monotonic(), serial))
                self.home.ok("crl", "publish", "--authority", "operator")
                self.rounds += 1
        except BaseException as exc:  # reported by the test, not lost in the thread
            self.failure = exc


class Mirror:
    """Where the CRLs stay published after the data directory is gone (a web server, a CDN)."""

    def __init__(self, port: int, files: dict[str, bytes]) -> None:
        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = files.get(self.path)
                self.send_response(200 if body else 404)
                self.send_header("Content-Length", str(len(body or b"")))
                self.end_headers()
                self.wfile.write(body or b"")

            def log_message(self, *args: object) -> None:
                pass

        http.server.ThreadingHTTPServer.allow_reuse_address = True
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_restore_drill(
    backend: str, softhsm: dict[str, str], tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    new_database: Callable[[], str] | None = (
        request.getfixturevalue("postgres") if backend == "postgresql" else None
    )
    crl_port, ocsp_port = free_port(), free_port()
    ports = {"KAKUIN_CRL_PORT": str(crl_port), "KAKUIN_OCSP_PORT": str(ocsp_port)}
    original = init_home(tmp_path / "a", new_database() if new_database else None, **ports)
    crl_url = f"http://127.0.0.1:{crl_port}/crl/operator/0.crl"
    # as `kakuin up` would: the delegated responder's key is in the token, so in the backup
    original.ok("ocsp", "responder-cert", "--authority", "operator")
    served = start(original, tmp_path / "crl-a.log", "serve", "crl", "--listener", "plain")
    processes = [served]
    try:
        poll(
            lambda: fetch(f"http://127.0.0.1:{crl_port}/ca/operator.cer") is not None,
            120,
            "the CRL responder",
        )
        office = Office(original, tmp_path)
        office.start()
        poll(
            lambda: office.rounds >= ROUNDS_BEFORE or office.failure is not None,
            300,
            "work before the backup",
        )
        assert office.failure is None, office.failure
        began = time.monotonic()
        backup = tmp_path / "backup"
        taken = original.run("backup", str(backup))  # while the office goes on
        assert taken.returncode == 0, taken.stderr
        rounds_at_backup = office.rounds
        poll(
            lambda: office.rounds >= rounds_at_backup + ROUNDS_AFTER or office.failure is not None,
            300,
            "work after the backup",
        )
        office.halt.set()
        office.join(timeout=120)
        assert office.failure is None, office.failure
        before = [serial for at, serial in office.acknowledged if at < began]
        after = [serial for at, serial in office.acknowledged if at >= began]
        assert len(before) >= ROUNDS_BEFORE * PER_ROUND // 2 and after

        # The last CRLs the destroyed CA published stay at their URLs; its data directory goes.
        published = fetch(crl_url)
        assert published is not None
        newest_published = crl_number(published)
        stop(served)
        processes.remove(served)
        pin = (original.path / "token.pin").read_text().strip()  # the operator keeps it apart
        shutil.rmtree(original.path)
        mirror = Mirror(crl_port, {"/crl/operator/0.crl": published})
        try:
            restored = restored_home(
                original, tmp_path / "b", new_database() if new_database else None, pin, **ports
            )
            result = restored.ok("restore", str(backup), "--crl-url-check")
        finally:
            mirror.close()
        line = re.search(r"^  operator 0: highest (\d+) \((.*)\) -> next (\d+)$", result.stdout, re.M)
        assert line, result.stdout
        assert int(line[1]) == newest_published and line[2] == crl_url, line[0]
        assert int(line[3]) > newest_published

        processes.append(start(restored, tmp_path / "crl-b.log", "serve", "crl", "--listener", "plain"))
        processes.append(start(restored, tmp_path / "ocsp-b.log", "serve", "ocsp", "--server", "gunicorn"))
        restored.ok("crl", "publish", "--authority", "operator")
        poll(
            lambda: (data := fetch(crl_url)) is not None and crl_number(data) > newest_published,
            120,
            "the new CRL",
        )
        crl_der = fetch(crl_url)
        assert crl_der is not None
        crl = x509.load_der_x509_crl(crl_der)
        assert crl_number(crl_der) == int(line[3])
        listed = {format(entry.serial_number, "x") for entry in crl}

        # the database
        in_database = set(
            re.findall(
                r"^([0-9a-f]+)\s",
                restored.ok(
                    "cert", "list", "--authority", "operator", "--status", "revoked", "--limit", "1000"
                ).stdout,
                re.M,
            )
        )
        assert set(before) <= in_database, set(before) - in_database
        assert set(before) <= listed, set(before) - listed

        # openssl: CRL and OCSP agree on every pre-backup revocation and on two good certificates
        ca_pem = tmp_path / "operator.pem"
        ca_pem.write_bytes(restored.ok("ca", "cert", "operator").stdout.encode())
        crl_pem = tmp_path / "operator-0.crl.pem"
        crl_pem.write_bytes(crl.public_bytes(Encoding.PEM))
        revoked_serials = {serial for _, serial in office.acknowledged}
        issued_before = list(office.certificates)[: PER_ROUND * ROUNDS_BEFORE]
        good = [serial for serial in issued_before if serial not in revoked_serials][:2]
        assert good
        poll(lambda: accepts(ocsp_port), 120, "the OCSP responder")
        for serial in [*before, *good]:
            leaf = tmp_path / f"{serial}.pem"
            leaf.write_bytes(office.certificates[serial])
            verify = openssl(
                "verify", "-crl_check", "-CAfile", str(ca_pem), "-CRLfile", str(crl_pem), str(leaf)
            )
            ocsp = openssl(
                "ocsp",
                "-issuer",
                str(ca_pem),
                "-cert",
                str(leaf),
                "-url",
                f"http://127.0.0.1:{ocsp_port}/ocsp/operator",
                "-CAfile",
                str(ca_pem),
                "-timeout",
                "20",
            )
            said = (ocsp.stdout + ocsp.stderr).decode()
            assert "Response verify OK" in said, said
            if serial in before:
                assert verify.returncode != 0 and b"certificate revoked" in verify.stdout + verify.stderr
                assert f"{leaf}: revoked" in said, said
            else:
                assert verify.returncode == 0, verify.stdout + verify.stderr
                assert f"{leaf}: good" in said, said
    finally:
        for process in processes:
            stop(process)
