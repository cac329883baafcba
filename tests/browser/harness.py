"""A real chatapi server subprocess and a headless Debian Chromium, for the browser tests
and for `python -m tests.browser.screenshot`."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

REPO_ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
STARTUP_TIMEOUT_S = 180.0
DESKTOP = {"width": 1280, "height": 800}


class ServerFailed(RuntimeError):
    """The server subprocess exited or never became healthy; the message holds its log."""


def missing_browser() -> str | None:
    """Why the browser tests cannot run here, or None when they can."""
    if not CHROMIUM.exists():
        return (f"{CHROMIUM} is missing (install Debian's chromium: "
                "apt-get install -y chromium)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is not installed (pip install playwright)"
    return None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@contextmanager
def running_server(log_path: Path, *extra_args: str) -> Iterator[str]:
    """Run `python -m chatapi serve` on a free port; yield its base URL once /health answers."""
    port = free_port()
    cmd = [sys.executable, "-m", "chatapi", "serve", "--host", "127.0.0.1", "--port", str(port),
           *extra_args]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.setdefault("CHATAPI_DATABASE_URL",
                   f"sqlite:///{tempfile.mkdtemp(prefix='chatapi-browser-')}/ledger.db")
    with log_path.open("wb") as log:
        proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                raise ServerFailed(f"server exited with {proc.returncode}; log:\n"
                                   f"{_tail(log_path)}")
            try:
                if httpx.get(f"{base_url}/health", timeout=2.0).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise ServerFailed(f"server not healthy after {STARTUP_TIMEOUT_S:.0f} s; log:\n"
                                   f"{_tail(log_path)}")
            time.sleep(0.25)
        yield base_url
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


@contextmanager
def chromium() -> Iterator[Any]:
    """Debian's headless Chromium driven by Playwright (never a downloaded browser)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS,
                                     headless=True)
        try:
            yield browser
        finally:
            browser.close()

