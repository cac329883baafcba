"""Write docs/playground.png: the Playground at 1280x800 with a short conversation in it.

Run from the repository root: `python -m tests.browser.screenshot [chatapi serve flags]`
(needs /usr/bin/chromium, playwright and the default model; about a minute on a laptop CPU).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from .harness import DESKTOP, REPO_ROOT, chromium, missing_browser, running_server

OUTPUT = REPO_ROOT / "docs" / "playground.png"
QUESTIONS = ["What is a palindrome? Answer in one sentence.",
             "Write a short Python function that checks whether a string is a palindrome."]


def main(server_args: list[str]) -> int:
    reason = missing_browser()
    if reason:
        print(f"cannot take the screenshot: {reason}", file=sys.stderr)
        return 1
    with (tempfile.TemporaryDirectory() as tmp,
          running_server(Path(tmp) / "server.log", *server_args) as base_url,
          chromium() as browser):
        context = browser.new_context(viewport=DESKTOP, base_url=base_url,
                                      color_scheme="light")
        page = context.new_page()
        page.goto("/playground/")
        page.wait_for_selector("body[data-ready='true']")
        page.wait_for_function("document.querySelector('#model').options.length > 0")
        page.fill("#system", "You are a concise coding assistant.")
        page.fill("#temperature", "0")
        page.fill("#max_tokens", "120")
        for question in QUESTIONS:
            page.fill("#input", question)
            page.press("#input", "Enter")
            page.wait_for_selector("body[data-state='idle']", timeout=300_000)
        page.evaluate("document.activeElement.blur()")
        OUTPUT.parent.mkdir(exist_ok=True)
        page.screenshot(path=str(OUTPUT))
        context.close()
    print(f"wrote {OUTPUT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
