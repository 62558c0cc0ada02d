"""The console in headless Debian Chromium, driven by Playwright, against the RA under real
gunicorn over mTLS (the registration tests' ``ra`` and ``people`` fixtures), on SQLite only: the
rules are the service's and are tested on both backends by tests/registration."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.registration.conftest import Client, People, people, ra  # noqa: F401  (fixtures reused)

CHROMIUM = Path("/usr/bin/chromium")
SHOTS = Path(__file__).resolve().parents[2] / "docs" / "console"
LAUNCH_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture(scope="session")
def backend() -> str:
    """SQLite only for the browser tests (overrides the two-backend parameter)."""
    return "sqlite"


@pytest.fixture(scope="session")
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
