"""The database goes away under a running RA (PostgreSQL stopped, SQLite unwritable): a submission
is refused with 503 problem+json, nothing half-done; once the database is back, every request is
answered normally again, by workers that started during the outage too."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from registration.credentials import ensure_server_credentials
from registration.residents import load_resident_hasher
from registration.store import RegistrationStore
from tests.conftest import make_ctx, new_token
from tests.outage import Outage, database_outage, replace_workers
from tests.registration.conftest import RA, Client, problem, start_server, submission, wait_ready

WORKERS = 2
THREADS = 4  # start_server's


@pytest.fixture(params=["sqlite", "postgresql"])
def outage(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Outage]:
    with database_outage(str(request.param), tmp_path_factory.mktemp("ra-outage")) as outage:
        yield outage


def _fresh(client: Client) -> Client:
    """The same account on a new TLS connection (whichever worker accepts it)."""
    assert client.session.cert is not None and isinstance(client.session.verify, str)
    return Client(client.base, client.session.cert, client.session.verify, client.name)  # type: ignore[arg-type]


def _answers(client: Client) -> bool:
    try:
        _fresh(client).get("/healthz")
        return True
    except requests.exceptions.RequestException:
        return False


def test_the_ra_answers_normally_once_the_database_is_back(
    outage: Outage, softhsm: dict[str, str], rsa_key, tmp_path: Path
) -> None:
    ctx = make_ctx(tmp_path, outage.url, new_token(softhsm, f"ra-outage-{uuid.uuid4().hex[:6]}"))
    files = ensure_server_credentials(ctx, "test")
    hasher = load_resident_hasher(ctx.settings.home, create=True)
    log = tmp_path / "gunicorn.log"
    process, base = start_server(ctx, files, log, workers=WORKERS)
    ra = RA(ctx, RegistrationStore(ctx.engine), hasher, base, files, tmp_path, "outage")
    try:
        clerk = ra.account("clerk", "clerk", ra.office("a"))
        wait_ready(clerk, process, log)

        def submit() -> requests.Response:
            return _fresh(clerk).post("/v1/applications", submission("lgpki-post", rsa_key))

        assert submit().status_code == 201
        applications = len(ra.store.applications(limit=100))

        outage.begin()
        problem(submit(), 503)
        # Workers restarted now (as after a crash) open every connection while the database is
        # away; requests in parallel make each open several.
        replace_workers(process.pid, WORKERS, lambda: _answers(clerk))
        with ThreadPoolExecutor(2 * THREADS) as pool:
            during = list(pool.map(lambda _: submit().status_code, range(4 * THREADS)))
            reads = set(pool.map(lambda _: _fresh(clerk).get("/v1/me").status_code, range(4 * THREADS)))
        assert set(during) == {503}
        # A read-only SQLite database still answers reads; a stopped PostgreSQL answers nothing.
        assert reads == ({200} if outage.backend == "sqlite" else {503})

        outage.end()
        outage.wait_until_back()
        after = [submit().status_code for _ in range(4 * THREADS)]
        assert after == [201] * len(after)
        assert _fresh(clerk).get("/healthz").status_code == 200
        # The refused submissions left nothing behind.
        assert len(ra.store.applications(limit=100)) == applications + len(after)
    finally:
        process.terminate()
        process.wait(timeout=30)
        ctx.token.close()
        ctx.engine.dispose()
    assert "Traceback" not in log.read_text(errors="replace"), log.read_text()[-4000:]  # no 500s either
