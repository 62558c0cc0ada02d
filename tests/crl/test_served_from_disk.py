"""While the database cannot be reached (a PostgreSQL cluster of the test's own stopped, an SQLite
database whose directory is gone), the CRL responder serves every published CRL (full, delta,
partition, complete, ARL, a later key generation's) and every CA certificate from disk, byte for
byte with the headers it sent before; restricted CRLs are refused with 503; /healthz says
degraded. Once the database is back, everything is as before, and new publications are served."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from ca.lifecycle_store import LifecycleStore
from ca.rollover import rollover
from config import load_settings
from crl.config import load_crl_settings
from crl.publisher import Publisher
from tests.conftest import _free_port, make_ctx, new_token, wait_for
from tests.crl.conftest import municipality, unique_partition
from tests.outage import Outage, database_outage, replace_workers

WORKERS = 2  # services.crl.workers by default

Answer = tuple[int, dict[str, str], bytes]


@dataclass
class Unreachable:
    """The database going away for good (not just read-only): PostgreSQL stopped, or for SQLite
    its directory hidden under an empty read-only tmpfs, so a new connection finds no file and
    cannot create one (a connection opened before keeps its open file, as on a lost mount)."""

    outage: Outage

    @property
    def hidden(self) -> Path:
        assert self.outage.sqlite_file is not None
        return self.outage.sqlite_file.parent

    def begin(self) -> None:
        if self.outage.backend == "postgresql":
            self.outage.begin()
            return
        mount = ["mount", "-t", "tmpfs", "-o", "ro,size=64k", "kakuin-gone", str(self.hidden)]
        subprocess.run(mount, check=True, capture_output=True)

    def end(self) -> None:
        if self.outage.backend == "postgresql":
            self.outage.end()
        else:
            subprocess.run(["umount", str(self.hidden)], check=True, capture_output=True)
        self.outage.wait_until_back()


@pytest.fixture(params=["postgresql", "sqlite"])
def unreachable(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Unreachable]:
    with database_outage(str(request.param), tmp_path_factory.mktemp("crl-disk")) as outage:
        if outage.backend == "sqlite":
            assert outage.sqlite_file is not None
            probe = outage.sqlite_file.parent / "mount-probe"
            probe.mkdir()
            mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "probe", str(probe)])
            if mounted.returncode != 0:
                pytest.skip("cannot mount a tmpfs here (hiding the SQLite database needs it)")
            subprocess.run(["umount", str(probe)], check=True)
            probe.rmdir()
        gone = Unreachable(outage)
        try:
            yield gone
        finally:
            if outage.backend == "sqlite":
                subprocess.run(["umount", str(gone.hidden)], capture_output=True)


def _get(port: int, path: str, headers: dict[str, str] | None = None) -> Answer:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def _answers(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _health(port: int) -> tuple[int, dict[str, str]]:
    status, _headers, body = _get(port, "/healthz")
    return status, json.loads(body)


def _max_age(headers: dict[str, str]) -> int:
    return int(headers["cache-control"].split("max-age=")[1].split(",")[0])


def _same_as_before(before: Answer, now: Answer) -> None:
    """The body byte for byte and every validator and date as before; max-age counts down."""
    assert now[0] == 200, now
    assert now[2] == before[2]
    for header in ("content-type", "content-length", "etag", "last-modified", "expires"):
        assert now[1].get(header) == before[1].get(header), header
    if "etag" in before[1]:  # a CRL: caching ends at its nextUpdate, as before
        assert now[1]["cache-control"].split(",")[0] == before[1]["cache-control"].split(",")[0]
        assert 0 <= _max_age(now[1]) <= _max_age(before[1])
    else:
        assert now[1]["cache-control"] == before[1]["cache-control"]


def test_published_crls_and_ca_certificates_are_served_from_disk_while_the_database_is_away(
    unreachable: Unreachable, softhsm: dict[str, str], tmp_path: Path
) -> None:
    outage = unreachable.outage
    ctx = make_ctx(tmp_path / "home", outage.url, new_token(softhsm, f"crl-disk-{uuid.uuid4().hex[:6]}"))
    plain = _free_port()
    config = tmp_path / "kakuin.toml"
    config.write_text(f'[crl]\ndirectory = "{tmp_path / "crl"}"\ntls_port = 0\n')
    env = {
        **os.environ,
        "KAKUIN_HOME": str(ctx.settings.home),
        "KAKUIN_DATABASE_URL": ctx.settings.database_url,
        "KAKUIN_TOKEN_LABEL": ctx.settings.token_label,
        "KAKUIN_CRL_PORT": str(plain),
    }
    crl_settings = load_crl_settings(load_settings(config, environ=env))
    publisher = Publisher(ctx, crl_settings, actor="test")
    partition, stale, code = unique_partition(), unique_partition("s"), municipality()
    publisher.publish_full("lgpki-app", partition)
    publisher.publish_delta("lgpki-app", partition)
    publisher.publish_full("lgpki-app", "")  # the complete CRL
    publisher.publish_full("lgpki-root", "arl")
    publisher.publish_full("jpki-sign", code)
    # A CRL whose nextUpdate has passed by the time the database goes away.
    expired = Publisher(ctx, replace(crl_settings, full_validity=1), actor="test")
    next_update = expired.publish_full("lgpki-app", stale).record
    assert next_update is not None
    # A CRL file the database never recorded (a publisher killed before its record), numbered
    # above the recorded one: it is never what the scope serves.
    recorded = publisher.store.latest(ctx.store.authority("lgpki-app").id, partition, "full")
    assert recorded is not None
    orphan = tmp_path / "crl" / Path(recorded.path).with_name(f"{recorded.number + 1:012d}-full.crl")
    shutil.copyfile(tmp_path / "crl" / recorded.path, orphan)
    with orphan.open("r+b") as file:
        file.seek(recorded.size - 1)
        file.write(b"\x00")

    process = subprocess.Popen(
        [sys.executable, "-m", "crl.server", "--listener", "plain", "--config", str(config)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "plain.log").open("wb"),
    )
    try:
        assert wait_for(lambda: _answers(plain), 30), (tmp_path / "plain.log").read_text()
        old_certificate = _get(plain, "/ca/lgpki-app.cer")[2]
        assert old_certificate == ctx.authorities.get("lgpki-app").certificate.public_bytes(Encoding.DER)
        # A rollover while the responder runs: the CA certificate URL serves the new generation's
        # at once, and so it does from disk; the new generation's CRLs have URLs of their own.
        rollover(ctx.authorities, LifecycleStore(ctx.engine), ctx.urls, "lgpki-app", "test")
        ctx.authorities.forget()
        new_certificate = ctx.authorities.get("lgpki-app").certificate.public_bytes(Encoding.DER)
        assert new_certificate != old_certificate
        publisher.publish_full("lgpki-app", f"g2/{partition}")
        assert wait_for(lambda: _get(plain, "/ca/lgpki-app.cer")[2] == new_certificate, 10)

        public = [
            f"/crl/lgpki-app/{partition}.crl",
            f"/crl/lgpki-app/{partition}-delta.crl",
            "/crl/lgpki-app.crl",
            "/crl/lgpki-root/arl.crl",
            f"/crl/lgpki-app/g2/{partition}.crl",
            f"/crl/lgpki-app/{stale}.crl",
            "/ca/lgpki-app.cer",
            "/ca/lgpki-root.cer",
            "/ca/jpki-sign.cer",
        ]
        restricted = f"/crl/jpki-sign/{code}.crl"
        before = {path: _get(plain, path) for path in public}
        assert all(answer[0] == 200 for answer in before.values()), {p: a[0] for p, a in before.items()}
        assert before["/ca/lgpki-app.cer"][2] == new_certificate
        assert (tmp_path / "crl" / recorded.path).read_bytes() == before[public[0]][2]
        assert _get(plain, restricted)[0] == 403  # no client certificate on plain HTTP
        assert _health(plain) == (200, {"status": "ok", "database": "ok"})
        assert wait_for(lambda: datetime.now(UTC) > next_update.next_update, 10)

        def served_from_disk(restricted_refused: bool = True) -> None:
            for path in public:
                _same_as_before(before[path], _get(plain, path))
            answer = _get(plain, f"/crl/lgpki-app/{stale}.crl")
            assert _max_age(answer[1]) == 0
            assert parsedate_to_datetime(answer[1]["expires"]) < datetime.now(UTC)
            etag = before[public[0]][1]["etag"]
            assert _get(plain, public[0], {"If-None-Match": etag})[0] == 304
            status, headers, body = _get(plain, restricted)
            if restricted_refused:
                assert (status, headers["content-type"]) == (503, "application/problem+json"), body
            assert _get(plain, "/crl/no-such/0.crl")[0] == 404

        unreachable.begin()
        # The workers that knew the database, then workers started while it is away (they find
        # the authorities in the snapshot on disk). An SQLite connection opened before keeps its
        # file (as on a lost mount): through it a restricted download may still be recorded.
        served_from_disk(restricted_refused=outage.backend == "postgresql")
        replace_workers(process.pid, WORKERS, lambda: _answers(plain))
        served_from_disk()
        status, health = _health(plain)
        assert status == 200
        assert health == {
            "status": "degraded",
            "database": "unreachable",
            "restricted": "refused",
            "public": "served from disk",
        }

        unreachable.end()
        deadline = time.monotonic() + 30
        while _health(plain)[1]["status"] != "ok":
            assert time.monotonic() < deadline, _health(plain)
            time.sleep(0.05)
        for path in public:
            _same_as_before(before[path], _get(plain, path))
        assert _get(plain, restricted)[0] == 403
        newer = publisher.publish_full("lgpki-app", partition).record
        assert newer is not None
        status, headers, body = _get(plain, public[0])
        assert (status, headers["etag"]) == (200, f'"{newer.sha256}"')
        assert body == (tmp_path / "crl" / newer.path).read_bytes()
    finally:
        process.terminate()
        process.wait(timeout=30)
        ctx.token.close()
        ctx.engine.dispose()
