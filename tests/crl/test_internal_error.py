"""Nothing unexpected reaches a CRL client as a server's bare 500 (issue 15, item 2), under the
real gunicorn responder on SQLite and PostgreSQL:

- a crafted ``If-Modified-Since`` (a year or an offset of twenty digits: ``email.utils`` raises
  ``OverflowError``, not ``ValueError``) is an invalid date, ignored as RFC 9110 §13.1.3 says: the
  CRL is served. Before: a 500 with gunicorn's HTML page and the traceback in the log.
- an exception of an unexpected type anywhere in the request path (injected into the server by a
  ``sitecustomize`` while a flag file of the function's name exists) is a problem+json 500, logged
  by exception type only (never its message: it may carry input)."""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ca.service import CAContext
from config import load_settings
from crl.config import load_crl_settings
from crl.publisher import Publisher
from tests.conftest import _free_port, wait_for
from tests.crl.conftest import unique_partition
from tests.faults import FAULTS_ENV, SECRET, fault_hook

ROOT = Path(__file__).resolve().parents[2]
HOOK = fault_hook(
    ["crl.storer", "crl.wsgi"],
    [
        ("crl.storer.CRLStore", "latest"),
        ("crl.wsgi", "_not_modified"),
        ("crl.wsgi.CRLResponder", "_authority"),
    ],
)


@dataclass
class Server:
    port: int
    faults: Path
    log: Path
    publisher: Publisher

    def get(
        self, path: str, headers: dict[str, str] | None = None, method: str = "GET"
    ) -> tuple[int, str, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request(method, path, headers=headers or {})
            response = conn.getresponse()
            return response.status, response.getheader("Content-Type", ""), response.read()
        finally:
            conn.close()


@pytest.fixture(scope="module")
def server(ca_ctx: CAContext, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("crl-faults")
    hook = tmp / "hook"
    faults = hook / "faults"
    faults.mkdir(parents=True)
    (hook / "sitecustomize.py").write_text(HOOK)
    port = _free_port()
    config = tmp / "kakuin.toml"
    config.write_text(f'[crl]\ndirectory = "{tmp / "crl"}"\n')
    env = {
        **os.environ,
        "KAKUIN_HOME": str(ca_ctx.settings.home),
        "KAKUIN_DATABASE_URL": ca_ctx.settings.database_url,
        "KAKUIN_CRL_PORT": str(port),
        FAULTS_ENV: str(faults),
        # The hook imports the responder's modules before ``python -m`` puts the working
        # directory on the path: this checkout's, then.
        "PYTHONPATH": os.pathsep.join(filter(None, [str(hook), str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    crl_settings = load_crl_settings(load_settings(config, environ=env))
    log = tmp / "plain.log"
    process = subprocess.Popen(
        [sys.executable, "-m", "crl.server", "--listener", "plain", "--config", str(config)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=log.open("wb"),
    )
    try:
        server = Server(port, faults, log, Publisher(ca_ctx, crl_settings, actor="test"))
        assert wait_for(lambda: _answers(server), 30), log.read_text()
        yield server
    finally:
        process.terminate()
        process.wait(timeout=15)


def _answers(server: Server) -> bool:
    try:
        return server.get("/crl/nothing-here.crl")[0] == 404
    except OSError:
        return False


def test_a_date_that_overflows_is_ignored(server: Server) -> None:
    partition = unique_partition()
    record = server.publisher.publish_full("lgpki-app", partition).record
    assert record is not None
    path = f"/crl/lgpki-app/{partition}.crl"
    for date in (
        "Mon, 01 Jan 99999999999999999999 00:00:00 GMT",
        "Mon, 01 Jan 2030 00:00:00 -99999999999999999999",
        "Mon, 01 Jan 10000 00:00:00 GMT",
    ):
        status, content_type, body = server.get(path, {"If-Modified-Since": date})
        assert (status, content_type, len(body)) == (200, "application/pkix-crl", record.size), date


def test_an_unexpected_exception_is_a_problem_500(server: Server) -> None:
    partition = unique_partition()
    server.publisher.publish_full("lgpki-app", partition)
    path = f"/crl/lgpki-app/{partition}.crl"
    failures = 0
    for function, method in (
        ("latest", "GET"),
        ("_not_modified", "GET"),
        ("_authority", "GET"),
        ("_authority", "HEAD"),
    ):
        (server.faults / function).touch()
        try:
            status, content_type, body = server.get(path, method=method)
        finally:
            (server.faults / function).unlink()
        failures += 1
        assert (status, content_type) == (500, "application/problem+json"), (function, body[:300])
        if method == "GET":
            assert json.loads(body)["status"] == 500
    assert server.get(path)[0] == 200  # and it serves again
    log = server.log.read_text(errors="replace")
    assert log.count("CRL request failed: AttributeError") == failures, log
    assert "Traceback" not in log and SECRET not in log, log
