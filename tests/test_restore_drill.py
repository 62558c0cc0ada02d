"""The restore drill (issue 13, item 3), on SQLite and PostgreSQL.

A Kakuin serves its CRLs and its registration API (the RA, gunicorn with client certificates)
while two office client threads issue and revoke through the RA as offices and operators do:
a clerk submits, the office's reviewer gives the first review, a CA operator the second (which
issues), the clerk collects the certificate; half of what is issued is revoked, one by the
operator's revocation at once, one by the clerk's revocation request approved by the reviewer.
One thread publishes CRLs after each of its rounds. ``kakuin backup`` runs in the middle; the
work goes on; the data directory is destroyed. The last CRLs stay published where relying
parties fetch them (a stand-in web server on the same URLs). ``kakuin restore --crl-url-check``
into another directory, then the restored instance serves CRLs and OCSP:

- every revocation the RA acknowledged before the backup began is revoked in the database, on
  OCSP and in the next CRL of its partition, and ``openssl verify -crl_check`` and ``openssl
  ocsp`` agree on each checked certificate;
- the restored CA's CRL numbers continue above every number the destroyed one published.

The certificates are LGPKI post certificates (``lgpki-org``, public CRLs in 4 partitions): the
RA issues no operator-CA profiles, and JPKI's revocation data is for registered verifiers only.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding

from tests.conftest import make_csr, openssl
from tests.mirror import Mirror
from tests.registration.conftest import Client, approve, free_port, submission, wait_ready
from tests.test_backup import KAKUIN, Home, init_home, restored_home

AUTHORITY = "lgpki-org"  # the authority of profile lgpki-post
PARTITIONS = [str(p) for p in range(4)]  # its `shards:4`
THREADS = 2  # office client threads
ROUNDS_BEFORE = 4  # rounds (of all threads together) before the backup, and after it
ROUNDS_AFTER = 4
MAX_ROUNDS = 10  # per thread: the load is bounded whatever happens to the polls
PER_ROUND = 4  # certificates issued per round; half of them revoked


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


@dataclass
class Desk:
    """The accounts of one office and a CA operator, as PEM files of key and certificate."""

    clerk: tuple[str, str]
    reviewer: tuple[str, str]
    operator: tuple[str, str]


def open_desk(home: Home, work: Path, tag: str) -> Desk:
    """An office with a clerk and a reviewer, and an operator, made with the CLI as docs/ra.md has
    it (`kakuin office add`, `account add`, `account credential --csr`)."""
    code = f"13101{tag[-4:]:0>4}"
    home.ok("office", "add", code, "--name", f"drill {tag}")
    files = {}
    for role in ("clerk", "reviewer", "operator"):
        name = f"{tag}-{role}"
        home.ok("account", "add", name, "--role", role, *(["--office", code] if role != "operator" else []))
        key = ec.generate_private_key(ec.SECP256R1())
        key_path, csr_path, cert_path = (work / f"{name}.{ext}" for ext in ("key", "csr", "pem"))
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        csr_path.write_bytes(make_csr(key))
        home.ok("account", "credential", name, "--csr", str(csr_path), "--out", str(cert_path))
        files[role] = (str(cert_path), str(key_path))
    return Desk(**files)


class Office(threading.Thread):
    """One office's counter and a CA operator, through the RA, in rounds until told to stop (or
    MAX_ROUNDS): PER_ROUND applications submitted, reviewed twice and collected, then half of
    the certificates revoked, alternately by the operator at once and by a request the office's
    reviewer approves. Records when each issuance and revocation was acknowledged (the RA's
    answer arrived)."""

    def __init__(
        self,
        index: int,
        base: str,
        client_ca: str,
        desk: Desk,
        key: rsa.RSAPrivateKey,
        publish: Callable[[], None] | None,
        progress: Callable[[], None],
    ) -> None:
        super().__init__(daemon=True, name=f"office-{index}")
        self.clerk = Client(base, desk.clerk, client_ca, "clerk")
        self.reviewer = Client(base, desk.reviewer, client_ca, "reviewer")
        self.operator = Client(base, desk.operator, client_ca, "operator")
        self.key, self.publish, self.progress = key, publish, progress
        self.certificates: dict[str, tuple[float, bytes]] = {}  # serial -> (issued at, PEM)
        self.acknowledged: list[tuple[float, str]] = []  # (monotonic time, serial)
        self.failure: BaseException | None = None
        self.halt = threading.Event()

    def issue(self) -> tuple[str, str]:
        submitted = self.clerk.post("/v1/applications", submission("lgpki-post", self.key))
        assert submitted.status_code == 201, submitted.text
        app_id = submitted.json()["id"]
        assert approve(self.reviewer, app_id)["state"] == "first_approved"
        issued = approve(self.operator, app_id)
        assert issued["state"] == "issued", issued
        collected = self.clerk.get(f"/v1/applications/{app_id}/certificate")
        assert collected.status_code == 200, collected.text
        cert = x509.load_pem_x509_certificates(collected.content)[0]
        serial = format(cert.serial_number, "x")
        self.certificates[serial] = (time.monotonic(), cert.public_bytes(Encoding.PEM))
        return serial, str(issued["certificate"]["serial"])

    def revoke_at_once(self, ra_serial: str) -> None:
        answer = self.operator.post(
            f"/v1/certificates/{AUTHORITY}/{ra_serial}/revoke", {"reason": "key-compromise"}
        )
        assert answer.status_code == 200 and answer.json()["status"] == "revoked", answer.text

    def revoke_by_request(self, ra_serial: str) -> None:
        body = {
            "authority": AUTHORITY,
            "serial": ra_serial,
            "kind": "holder_request",
            "reason": "key-compromise",
        }
        filed = self.clerk.post("/v1/revocation-requests", body)
        assert filed.status_code == 201 and filed.json()["state"] == "pending", filed.text
        done = self.reviewer.post(
            f"/v1/revocation-requests/{filed.json()['id']}/reviews", {"decision": "approve"}
        )
        assert done.status_code == 200 and done.json()["state"] == "done", done.text

    def run(self) -> None:
        try:
            for _ in range(MAX_ROUNDS):
                if self.halt.is_set():
                    break
                issued = [self.issue() for _ in range(PER_ROUND)]
                for number, (serial, ra_serial) in enumerate(issued[: PER_ROUND // 2]):
                    (self.revoke_at_once if number % 2 == 0 else self.revoke_by_request)(ra_serial)
                    self.acknowledged.append((time.monotonic(), serial))
                if self.publish:
                    self.publish()
                self.progress()
        except BaseException as exc:  # reported by the test, not lost in the thread
            self.failure = exc


def published_crls(crl_port: int) -> dict[str, bytes]:
    """The authority's CRLs as its responder serves them (full and delta of every partition, the
    complete CRL), by path."""
    paths = [f"/crl/{AUTHORITY}/{p}{kind}.crl" for p in PARTITIONS for kind in ("", "-delta")]
    paths += [f"/crl/{AUTHORITY}.crl", f"/crl/{AUTHORITY}-delta.crl"]
    found = {path: fetch(f"http://127.0.0.1:{crl_port}{path}") for path in paths}
    return {path: data for path, data in found.items() if data is not None}


def newer_crl(url: str, than: int) -> bool:
    data = fetch(url)
    return data is not None and crl_number(data) > than


def ra_errors(log: Path) -> list[str]:
    return [line for line in log.read_text(errors="replace").splitlines() if "Traceback" in line]


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_restore_drill(
    backend: str, softhsm: dict[str, str], tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    new_database: Callable[[], str] | None = (
        request.getfixturevalue("postgres") if backend == "postgresql" else None
    )
    crl_port, ocsp_port, ra_port = free_port(), free_port(), free_port()
    ports = {
        "KAKUIN_CRL_PORT": str(crl_port),
        "KAKUIN_OCSP_PORT": str(ocsp_port),
        "KAKUIN_RA_PORT": str(ra_port),
    }
    original = init_home(tmp_path / "a", new_database() if new_database else None, **ports)
    crl_base = f"http://127.0.0.1:{crl_port}"
    # as `kakuin up` would: the delegated responder's key is in the token, so in the backup
    original.ok("ocsp", "responder-cert", "--authority", AUTHORITY)
    served = start(original, tmp_path / "crl-a.log", "serve", "crl", "--listener", "plain")
    ra_log = tmp_path / "ra-a.log"
    ra = start(original, ra_log, "serve", "ra", "--workers", "2")
    processes = [served, ra]
    try:
        desks = [open_desk(original, tmp_path, f"d{i:04}") for i in range(THREADS)]
        client_ca = str(original.path / "ra" / "client-ca.pem")
        poll(lambda: Path(client_ca).exists() or ra.poll() is not None, 60, "the RA's client CA file")
        base = f"https://127.0.0.1:{ra_port}"
        wait_ready(Client(base, desks[0].operator, client_ca, "probe"), ra, ra_log)
        poll(lambda: fetch(f"{crl_base}/ca/{AUTHORITY}.cer") is not None, 120, "the CRL responder")

        rounds = [0]
        counted = threading.Lock()

        def progress() -> None:
            with counted:
                rounds[0] += 1

        def publish() -> None:
            original.ok("crl", "publish", "--authority", AUTHORITY)

        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        offices = [
            Office(i, base, client_ca, desk, key, publish if i == 0 else None, progress)
            for i, desk in enumerate(desks)
        ]
        for office in offices:
            office.start()

        def failed() -> BaseException | None:
            return next((o.failure for o in offices if o.failure is not None), None)

        poll(lambda: rounds[0] >= ROUNDS_BEFORE or failed() is not None, 300, "work before the backup")
        assert failed() is None, failed()
        began = time.monotonic()
        backup = tmp_path / "backup"
        taken = original.run("backup", str(backup))  # while the offices go on
        assert taken.returncode == 0, taken.stderr
        rounds_at_backup = rounds[0]
        poll(
            lambda: (
                rounds[0] >= rounds_at_backup + ROUNDS_AFTER
                or failed() is not None
                or not any(o.is_alive() for o in offices)  # each reached MAX_ROUNDS
            ),
            300,
            "work after the backup",
        )
        for office in offices:
            office.halt.set()
        for office in offices:
            office.join(timeout=120)
            assert not office.is_alive()
        assert failed() is None, failed()
        publish()  # the last CRLs of the destroyed CA, after the last revocation
        acknowledged = [entry for office in offices for entry in office.acknowledged]
        certificates = {serial: entry for office in offices for serial, entry in office.certificates.items()}
        before = [serial for at, serial in acknowledged if at < began]
        after = [serial for at, serial in acknowledged if at >= began]
        assert len(before) >= ROUNDS_BEFORE * PER_ROUND // 2 and after

        # The last CRLs the destroyed CA published stay at their URLs; its data directory goes.
        published = published_crls(crl_port)
        assert all(f"/crl/{AUTHORITY}/{p}.crl" in published for p in PARTITIONS), sorted(published)
        stop(ra)
        processes.remove(ra)
        assert not ra_errors(ra_log), ra_log.read_text()[-4000:]
        stop(served)
        processes.remove(served)
        pin = (original.path / "token.pin").read_text().strip()  # the operator keeps it apart
        shutil.rmtree(original.path)
        mirror = Mirror(published, crl_port)
        try:
            restored = restored_home(
                original, tmp_path / "b", new_database() if new_database else None, pin, **ports
            )
            result = restored.ok("restore", str(backup), "--crl-url-check")
        finally:
            mirror.close()
        moved = {
            m[1]: (int(m[2]), m[3], int(m[4]))
            for m in re.finditer(
                rf"^  {AUTHORITY} (\S+): highest (\d+) \((.*)\) -> next (\d+)$", result.stdout, re.M
            )
        }
        for p in PARTITIONS:
            assert p in moved, result.stdout
            highest, where, next_number = moved[p]
            mine = {
                f"{crl_base}{path}": crl_number(data)
                for path, data in published.items()
                if path in (f"/crl/{AUTHORITY}/{p}.crl", f"/crl/{AUTHORITY}/{p}-delta.crl")
            }
            assert highest == max(mine.values()) and mine.get(where) == highest, (p, moved[p], mine)
            assert next_number > highest

        processes.append(start(restored, tmp_path / "crl-b.log", "serve", "crl", "--listener", "plain"))
        processes.append(start(restored, tmp_path / "ocsp-b.log", "serve", "ocsp", "--server", "gunicorn"))
        restored.ok("crl", "publish", "--authority", AUTHORITY)
        crls: dict[str, x509.CertificateRevocationList] = {}
        for p in PARTITIONS:
            url = f"{crl_base}/crl/{AUTHORITY}/{p}.crl"
            poll(partial(newer_crl, url, moved[p][0]), 120, f"the new CRL of partition {p}")
            data = fetch(url)
            assert data is not None
            assert crl_number(data) == moved[p][2]  # the first number after the restore: the next one
            crls[url] = x509.load_der_x509_crl(data)
        listed = {format(entry.serial_number, "x") for crl in crls.values() for entry in crl}

        # the database
        in_database = set(
            re.findall(
                r"^([0-9a-f]+)\s",
                restored.ok(
                    "cert", "list", "--authority", AUTHORITY, "--status", "revoked", "--limit", "1000"
                ).stdout,
                re.M,
            )
        )
        assert set(before) <= in_database, set(before) - in_database
        assert set(before) <= listed, set(before) - listed

        # openssl: CRL and OCSP agree on every pre-backup revocation and on two good certificates
        issuer_pem = tmp_path / f"{AUTHORITY}.pem"
        issuer_pem.write_bytes(restored.ok("ca", "cert", AUTHORITY).stdout.encode())
        chain_pem = tmp_path / f"{AUTHORITY}-chain.pem"
        chain_pem.write_bytes(restored.ok("ca", "cert", AUTHORITY, "--chain").stdout.encode())
        revoked_serials = {serial for _, serial in acknowledged}
        good = [s for s, (at, _) in certificates.items() if at < began and s not in revoked_serials][:2]
        assert good
        poll(lambda: accepts(ocsp_port), 120, "the OCSP responder")
        for serial in [*before, *good]:
            leaf = tmp_path / f"{serial}.pem"
            leaf.write_bytes(certificates[serial][1])
            cert = x509.load_pem_x509_certificate(certificates[serial][1])
            points = cert.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
            uri = next(
                n.value
                for point in points
                for n in point.full_name or []
                if isinstance(n, x509.UniformResourceIdentifier)
            )
            crl_pem = tmp_path / f"{serial}.crl.pem"
            crl_pem.write_bytes(crls[uri].public_bytes(Encoding.PEM))
            verify = openssl(
                "verify", "-crl_check", "-CAfile", str(chain_pem), "-CRLfile", str(crl_pem), str(leaf)
            )
            ocsp = openssl(
                "ocsp",
                "-issuer",
                str(issuer_pem),
                "-cert",
                str(leaf),
                "-url",
                f"http://127.0.0.1:{ocsp_port}/ocsp/{AUTHORITY}",
                "-CAfile",
                str(chain_pem),
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
