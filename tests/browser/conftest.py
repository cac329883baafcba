"""Fixtures: one headless Chromium, one real server (and a keyed one on demand), a fresh page."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from .harness import DESKTOP, chromium, missing_browser, running_server
from .playground import Playground, wait_idle

API_KEY = "sk-playground-test"
SERVER_ARGS = ("--parallel", "4", "--ctx-size", "2048")


@pytest.fixture(scope="package")  # the sync Playwright loop must end with this package
def browser() -> Iterator[Any]:
    reason = missing_browser()
    if reason:
        pytest.skip(reason)
    with chromium() as launched:
        yield launched


def _serve(tmp_path_factory: pytest.TempPathFactory, name: str, *args: str) -> Iterator[str]:
    log = tmp_path_factory.mktemp(name) / "server.log"
    with running_server(log, *SERVER_ARGS, *args) as url:
        yield url


@pytest.fixture(scope="package")  # the sync Playwright loop must end with this package
def server(browser: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Base URL of a `chatapi serve` subprocess without keys (started after the browser check)."""
    yield from _serve(tmp_path_factory, "server")


@pytest.fixture(scope="package")  # the sync Playwright loop must end with this package
def keyed_server(browser: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Base URL of a server started with `--api-key API_KEY`."""
    yield from _serve(tmp_path_factory, "keyed-server", "--api-key", API_KEY)


def _playground(browser: Any, base_url: str, viewport: dict[str, int]) -> Iterator[Playground]:
    with httpx.Client(base_url=base_url, timeout=10) as http:
        wait_idle(http)  # each test starts on an idle server
    context = browser.new_context(viewport=viewport, base_url=base_url)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        yield Playground(page, base_url)
        assert not errors, f"uncaught errors in the page: {errors}"
    finally:
        context.close()


@pytest.fixture
def playground(browser: Any, server: str) -> Iterator[Playground]:
    """The Playground at desktop size, not yet opened."""
    yield from _playground(browser, server, DESKTOP)


@pytest.fixture
def keyed_playground(browser: Any, keyed_server: str) -> Iterator[Playground]:
    yield from _playground(browser, keyed_server, DESKTOP)


@pytest.fixture
def narrow_playground(browser: Any, server: str) -> Iterator[Playground]:
    yield from _playground(browser, server, {"width": 360, "height": 740})
