"""One real server for the whole integration session, and an HTTP client for it."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from .helpers import CTX_SIZE, REQUEST_TIMEOUT_S, running_server, thread_args, wait_idle


@pytest.fixture(scope="session")
def base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Base URL of one `chatapi serve --parallel 8 --ctx-size 2048` subprocess."""
    log = tmp_path_factory.mktemp("server") / "server.log"
    args = ["--parallel", "8", "--ctx-size", str(CTX_SIZE), *thread_args()]
    with running_server(log, *args) as url:
        yield url


@pytest.fixture
def client(base_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base_url, timeout=REQUEST_TIMEOUT_S) as http:
        # Each test starts on an idle server, so slot counts and timings are its own.
        wait_idle(http, timeout=30)
        yield http
