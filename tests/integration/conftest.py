"""One real server for the whole integration session, and an HTTP client for it."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from .helpers import idle_client, temp_server


@pytest.fixture(scope="session")
def base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Base URL of one `chatapi serve --parallel 8 --ctx-size 2048` subprocess."""
    with temp_server(tmp_path_factory, "server", "--parallel", "8") as url:
        yield url


@pytest.fixture
def client(base_url: str) -> Iterator[httpx.Client]:
    with idle_client(base_url) as http:
        yield http
