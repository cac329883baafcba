"""A small page object for the Playground, so tests read as what a user does."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx

REPLY_TIMEOUT_MS = 180_000  # generous: CI machines may be slow and shared


def wait_idle(http: httpx.Client, timeout: float = 30.0) -> dict[str, Any]:
    """Wait until /health reports no running or waiting sequence; return the last report."""
    deadline = time.monotonic() + timeout
    while True:
        health = http.get("/health").json()
        if health.get("running") == 0 and health.get("waiting") == 0:
            return health
        if time.monotonic() > deadline:
            raise AssertionError(f"server still busy after {timeout:.0f} s: {health}")
        time.sleep(0.1)


class Playground:
    def __init__(self, page: Any, base_url: str) -> None:
        self.page = page
        self.base_url = base_url
        self.chat_requests: list[dict[str, Any]] = []
        page.on("request", self._record)

    def _record(self, request: Any) -> None:
        if request.method == "POST" and request.url.endswith("/v1/chat/completions"):
            self.chat_requests.append(json.loads(request.post_data or "{}"))

    def open(self, *, wait_models: bool = True) -> None:
        self.page.goto("/playground/")
        self.page.wait_for_selector("body[data-ready='true']")
        if wait_models:
            self.page.wait_for_function("document.querySelector('#model').options.length > 0")

    def set(self, field_id: str, value: str) -> None:
        """Fill a parameter field the way a user does (type, then leave the field)."""
        self.page.fill(f"#{field_id}", value)
        self.page.press(f"#{field_id}", "Tab")

    def send(self, text: str) -> None:
        """Type a message and press Enter."""
        self.page.fill("#input", text)
        self.page.press("#input", "Enter")

    @property
    def replies(self) -> Any:
        return self.page.locator("#messages li[data-role='assistant']")

    def reply_text(self, index: int = -1) -> str:
        return self.page.evaluate(
            "(i) => { const all = document.querySelectorAll("
            "'#messages li[data-role=assistant] .msg-body');"
            " const el = all[i < 0 ? all.length + i : i]; return el ? el.textContent : ''; }",
            index)

    def streaming(self) -> bool:
        return self.page.evaluate("document.body.dataset.state === 'streaming'")

    def wait_streamed_length(self, more_than: int) -> int:
        """Wait until the reply being streamed is longer than `more_than` characters while the
        page still says it is streaming; return the length seen then."""
        handle = self.page.wait_for_function(
            """(n) => {
                 if (document.body.dataset.state !== 'streaming') return false;
                 const all = document.querySelectorAll(
                   '#messages li[data-role=assistant] .msg-body');
                 const len = all.length ? all[all.length - 1].textContent.length : 0;
                 return len > n ? len : false;
               }""", arg=more_than, timeout=REPLY_TIMEOUT_MS, polling=20)
        return int(handle.json_value())

    def wait_done(self) -> None:
        """Wait until no reply is streaming (after one was started)."""
        self.page.wait_for_selector("body[data-state='idle']", timeout=REPLY_TIMEOUT_MS)

    def meta(self, key: str, index: int = -1) -> str:
        """A figure under a finished reply, e.g. meta('finish_reason') -> 'finish_reason stop'."""
        return self.replies.nth(index).locator(f"[data-meta='{key}']").inner_text()

    def error_text(self) -> str:
        self.page.wait_for_selector("#messages .msg-error", timeout=REPLY_TIMEOUT_MS)
        return self.page.locator("#messages .msg-error").inner_text()

    def view_code(self, tab: str) -> str:
        if not self.page.locator("#code-dialog").is_visible():
            self.page.click("#view-code")
        self.page.click(f"#tab-{tab}")
        return self.page.locator("#code-text").inner_text()
