"""The console in headless Debian Chromium, driven by Playwright, against the RA under real
gunicorn over mTLS (started as tests/registration starts it), on SQLite only: the rules are the
service's and are tested on both backends by tests/registration."""

from __future__ import annotations

import os
import subprocess
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ca.service import CAContext
from registration.credentials import ensure_server_credentials
from registration.residents import load_resident_hasher
from registration.store import RegistrationStore
from tests.conftest import make_ctx, new_token
from tests.registration.conftest import RA, Client, Office, People, start_server, wait_ready

CHROMIUM = Path("/usr/bin/chromium")
# Screenshots go to docs/console only when asked (`make screenshots`), so that a
# test run leaves the checkout clean; otherwise to a scratch directory.
SHOTS = (
    Path(__file__).resolve().parents[2] / "docs" / "console"
    if os.environ.get("KAKUIN_SCREENSHOTS") == "docs"
    else Path(tempfile.gettempdir()) / f"kakuin-console-shots-{os.getpid()}"
)
LAUNCH_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture(scope="session")
def console_ctx(softhsm: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[CAContext]:
    """A CA of its own on SQLite (fixtures with their own names: the registration tests'
    session-scoped ``ra`` is parametrized by backend and must not be shared or overridden)."""
    home = tmp_path_factory.mktemp("home-console")
    ctx = make_ctx(home, f"sqlite:///{home / 'kakuin.db'}", new_token(softhsm, "kakuin-console"))
    yield ctx
    ctx.token.close()
    ctx.engine.dispose()


@pytest.fixture(scope="session")
def ra(console_ctx: CAContext, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RA]:
    """The RA under gunicorn (2 workers) over mTLS, as tests/registration starts it."""
    tmp = tmp_path_factory.mktemp("console-ra")
    files = ensure_server_credentials(console_ctx, "test")
    hasher = load_resident_hasher(console_ctx.settings.home, create=True)
    log = tmp / "gunicorn.log"
    process, base = start_server(console_ctx, files, log)
    ra = RA(
        console_ctx, RegistrationStore(console_ctx.engine), hasher, base, files, tmp, uuid.uuid4().hex[:6]
    )
    try:
        wait_ready(ra.account("probe-admin", "admin"), process, log)
        yield ra
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
        errors = [line for line in log.read_text(errors="replace").splitlines() if "Traceback" in line]
        assert not errors, log.read_text()[-4000:]


@pytest.fixture(scope="session")
def people(ra: RA) -> People:
    offices = []
    for name in ("a", "b"):
        code = ra.office(name)
        offices.append(
            Office(
                code,
                ra.account(f"clerk-{name}", "clerk", code),
                ra.account(f"reviewer-{name}", "reviewer", code),
            )
        )
    return People(
        offices[0],
        offices[1],
        ra.account("operator", "operator"),
        ra.account("operator2", "operator"),
        ra.account("admin", "admin"),
    )


@pytest.fixture(scope="package")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.skip("Debian chromium is not installed (/usr/bin/chromium); `make test` installs it")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        instance = p.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS)
        yield instance
        instance.close()


@pytest.fixture()
def open_as(browser: Any) -> Iterator[Callable[..., Any]]:
    """A browser page whose TLS client certificate is that of the given account."""
    contexts: list[Any] = []

    def make(client: Client, lang: str = "ja-JP") -> Any:
        assert isinstance(client.session.cert, tuple)
        cert, key = client.session.cert
        context = browser.new_context(
            client_certificates=[{"origin": client.base, "certPath": cert, "keyPath": key}],
            ignore_https_errors=True,
            viewport={"width": 1366, "height": 768},
            locale=lang,
            accept_downloads=True,
        )
        contexts.append(context)
        page = context.new_page()
        page.set_default_timeout(20000)
        return page

    yield make
    for context in contexts:
        context.close()


def shot(page: Any, name: str) -> None:
    """A screenshot for docs/console (viewport only, kept small)."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"))


__all__ = ["People", "shot"]
