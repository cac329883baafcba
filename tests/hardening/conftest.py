"""Servers for the hardening suite. Everything here needs the real default model."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .server import Server, chatapi_server

CTX_SIZE = 512  # small: a request without max_tokens cannot generate for long
PARALLEL = 8


@pytest.fixture(scope="session")
def open_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One keyless server for the bad-input suite and the fuzzing."""
    directory = tmp_path_factory.mktemp("open-server")
    with chatapi_server(directory, "--parallel", str(PARALLEL), "--ctx-size", str(CTX_SIZE)
                        ) as server:
        yield server
