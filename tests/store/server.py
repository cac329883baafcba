"""A real `chatapi serve` subprocess on a database of the test's choosing."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.engine import make_url

from chatapi.store import Store
from chatapi.store.schema import usage_ledger

REPO_ROOT = Path(__file__).resolve().parents[2]
STARTUP_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 45.0  # the server's graceful shutdown waits up to 30 s for open requests
# Settings a developer may have exported must not change what these tests start.
_CLEARED_ENV = ("CHATAPI_DATABASE_URL", "CHATAPI_ADMIN_KEYS", "CHATAPI_API_KEYS",
                "CHATAPI_REQUIRE_KEY", "CHATAPI_PORT", "CHATAPI_HOST")


@dataclass
class Server:
    proc: subprocess.Popen
    url: str
    log: Path

    def tail(self, chars: int = 6000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""

    def terminate(self) -> int:
        """SIGTERM, then wait for the exit; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=15)
            pytest.fail(f"server ignored SIGTERM for {STOP_TIMEOUT_S} s; log:\n{self.tail()}")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def chatapi_server(log: Path, database_url: str, *args: str) -> Iterator[Server]:
    """`chatapi serve` on the default model with small limits, stopped with SIGTERM at the end."""
    port = free_port()
    # One thread: the test machine is small and shared; llama.cpp threads spin when it is busy.
    cmd = [sys.executable, "-m", "chatapi", "serve", "--host", "127.0.0.1", "--port", str(port),
           "--database-url", database_url, "--parallel", "8", "--ctx-size", "1024",
           "--threads", "1", *args]
    env = {k: v for k, v in os.environ.items() if k not in _CLEARED_ENV}
    env["PYTHONUNBUFFERED"] = "1"
    with log.open("ab") as out:
        proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    server = Server(proc, f"http://127.0.0.1:{port}", log)
    try:
        _wait_healthy(server)
        yield server
    finally:
        server.terminate()


def _wait_healthy(server: Server) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            pytest.fail(f"server exited with {server.proc.returncode}; log:\n{server.tail()}",
                        pytrace=False)
        try:
            if httpx.get(f"{server.url}/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.25)
    pytest.fail(f"server not healthy after {STARTUP_TIMEOUT_S} s; log:\n{server.tail()}",
                pytrace=False)


def ledger_rows(database_url: str) -> dict[str, Any]:
    """Every usage row, by request id."""
    async def read() -> dict[str, Any]:
        store = Store(database_url)
        try:
            async with store.engine.connect() as conn:
                rows = (await conn.execute(select(usage_ledger))).all()
        finally:
            await store.engine.dispose()
        return {row.request_id: row for row in rows}

    return asyncio.run(read())


def create_key(database_url: str, name: str, **options: Any) -> tuple[str, str]:
    """(secret, prefix) of a new key, made the way `chatapi keys create` makes it."""
    async def create() -> tuple[str, str]:
        store = await Store(database_url).open()
        try:
            key, secret = await store.keys.create(name, **options)
        finally:
            await store.close()
        return secret, key.prefix

    return asyncio.run(create())


async def admit_then_send(stream_to: list[str], then_to: list[str], secret: str, body: dict
                          ) -> tuple[list[httpx.Headers], list[httpx.Response], float]:
    """Start one streamed request per URL in `stream_to`; once all are admitted (their headers
    came), send one plain request per URL in `then_to`. Returns the streams' headers, the
    plain responses, and the seconds from the first request to the last answer."""
    auth = {"Authorization": f"Bearer {secret}"}
    streamed = {**body, "max_tokens": 1, "stream": True}
    async with httpx.AsyncClient(timeout=120) as client, contextlib.AsyncExitStack() as streams:
        started = time.monotonic()
        responses = await asyncio.gather(*(
            streams.enter_async_context(client.stream(
                "POST", f"{url}/v1/chat/completions", json=streamed, headers=auth))
            for url in stream_to))
        later = [await client.post(f"{url}/v1/chat/completions", json=body, headers=auth)
                 for url in then_to]
        elapsed = time.monotonic() - started
        for response in responses:
            assert response.status_code == 200, await response.aread()
            await response.aread()
    return [r.headers for r in responses], later, elapsed


@contextlib.asynccontextmanager
async def ledger_writes_held(database_url: str) -> AsyncIterator[None]:
    """While inside, the server's inserts into the usage ledger wait (reads go on)."""
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite":
        conn = sqlite3.connect(url.database, isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")  # the write lock: other writers wait (busy timeout)
        try:
            yield
        finally:
            conn.execute("ROLLBACK")
            conn.close()
        return
    pg = await asyncpg.connect(host=url.host, port=url.port, user=url.username,
                               database=url.database)
    try:
        async with pg.transaction():
            await pg.execute("LOCK TABLE usage_ledger IN EXCLUSIVE MODE")
            yield
    finally:
        await pg.close()
