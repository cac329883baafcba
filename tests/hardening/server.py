"""A `chatapi serve` subprocess the hardening tests can signal, measure and read the ledger of."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tests.integration.helpers import REPO_ROOT, _wait_healthy, free_port, thread_args

STOP_TIMEOUT_S = 60.0
# Settings a developer may have exported must not change what these tests start.
_CLEARED_ENV = ("CHATAPI_DATABASE_URL", "CHATAPI_ADMIN_KEYS", "CHATAPI_API_KEYS",
                "CHATAPI_REQUIRE_KEY", "CHATAPI_PORT", "CHATAPI_HOST",
                "CHATAPI_REQUEST_TIMEOUT", "CHATAPI_SHUTDOWN_TIMEOUT")


@dataclass
class Server:
    proc: subprocess.Popen
    url: str
    log: Path
    db: Path

    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=kwargs.pop("timeout", 120), **kwargs)

    def tail(self, chars: int = 6000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""

    def rss_bytes(self) -> int:
        """Resident memory of the server process, from /proc."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS in /proc status")

    def access_lines(self) -> list[dict[str, Any]]:
        """The parsed `chatapi.access` log lines so far."""
        marker = "chatapi.access: "
        return [json.loads(line.split(marker, 1)[1]) for line in self.tail(10**8).splitlines()
                if marker in line]

    def ledger(self) -> list[sqlite3.Row]:
        """Every usage row in the server's SQLite ledger."""
        conn = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True)
        conn.row_factory = sqlite3.Row
        try:
            return conn.execute("SELECT * FROM usage_ledger").fetchall()
        finally:
            conn.close()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT_S) -> int | None:
        """Signal the server and wait for it to exit; its exit status, or None if it had to be
        killed."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=15)
            return None


@contextmanager
def chatapi_server(directory: Path, *args: str) -> Iterator[Server]:
    """`chatapi serve` on the real default model, with its own SQLite ledger in `directory`;
    stopped (SIGTERM, then SIGKILL) at the end if still running."""
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    db, log = directory / "chatapi.db", directory / "server.log"
    cmd = [sys.executable, "-m", "chatapi", "serve", "--host", "127.0.0.1", "--port", str(port),
           "--database-url", f"sqlite:///{db}", *thread_args(), *args]
    env = {k: v for k, v in os.environ.items() if k not in _CLEARED_ENV}
    env["PYTHONUNBUFFERED"] = "1"
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    server = Server(proc, f"http://127.0.0.1:{port}", log, db)
    try:
        _wait_healthy(proc, server.url, log)
        yield server
    finally:
        server.stop()
