"""The Playground in headless Chromium against a real chatapi server and the default model."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess

import httpx
import pytest

from .conftest import API_KEY
from .playground import Playground, wait_idle

pytestmark = pytest.mark.model


def test_page_is_served_and_root_redirects(playground: Playground) -> None:
    response = httpx.get(playground.base_url + "/", follow_redirects=False)
    assert response.status_code in (302, 307)
    assert response.headers["location"].endswith("/playground/")
    playground.open()
    options = playground.page.eval_on_selector_all("#model option", "os => os.map(o => o.value)")
    assert "gpt-3.5-turbo" in options


def test_streamed_reply_appears_and_grows(playground: Playground) -> None:
    playground.open()
    playground.set("max_tokens", "40")
    playground.send("Write a short poem about the sea.")

    first = playground.wait_streamed_length(0)
    second = playground.wait_streamed_length(first)
    assert second > first > 0
    playground.wait_done()

    assert len(playground.reply_text()) >= second
    assert playground.page.locator("#messages li[data-role='user']").inner_text().endswith(
        "Write a short poem about the sea.")
    assert re.search(r"finish_reason (stop|length)", playground.meta("finish_reason"))
    assert re.search(r"completion [1-9]\d*", playground.meta("completion_tokens"))
    assert re.search(r"prompt [1-9]\d*", playground.meta("prompt_tokens"))
    assert re.search(r"cached \d+", playground.meta("cached_tokens"))
    assert re.search(r"first token \d", playground.meta("ttft"))
    assert re.search(r"speed \d+(\.\d)? tok/s", playground.meta("tokens_per_second"))
    request = playground.chat_requests[-1]
    assert request["stream"] is True
    assert request["stream_options"] == {"include_usage": True}
    assert request["messages"][-1] == {"role": "user",
                                       "content": "Write a short poem about the sea."}


def test_stop_halts_the_reply_and_frees_the_slot(playground: Playground) -> None:
    playground.open()
    playground.set("max_tokens", "400")
    playground.send("Write a long story about a dragon.")
    playground.wait_streamed_length(30)

    playground.page.click("#stop")
    playground.wait_done()
    stopped = len(playground.reply_text())
    playground.page.wait_for_timeout(1000)
    assert len(playground.reply_text()) == stopped, "the reply kept growing after Stop"
    assert "stopped" in playground.meta("finish_reason")
    with httpx.Client(base_url=playground.base_url, timeout=10) as http:
        assert wait_idle(http, timeout=5)["running"] == 0

    playground.set("max_tokens", "8")
    playground.send("Say hi.")
    playground.wait_done()
    assert playground.replies.count() == 2
    assert playground.reply_text()
    assert re.search(r"finish_reason (stop|length)", playground.meta("finish_reason"))


def test_parameters_reach_the_request_and_view_code(playground: Playground) -> None:
    playground.open()
    playground.set("temperature", "0.3")
    playground.set("max_tokens", "7")
    playground.page.fill("#system", "You count. Don't stop.")  # an apostrophe for the curl quoting
    playground.send("Count from 1 to 50.")
    playground.wait_done()

    request = playground.chat_requests[-1]
    assert request["temperature"] == 0.3
    assert request["max_tokens"] == 7
    assert request["messages"][0] == {"role": "system", "content": "You count. Don't stop."}
    assert "finish_reason length" in playground.meta("finish_reason")
    assert playground.meta("completion_tokens") == "completion 7"

    python = playground.view_code("python")
    compile(python, "snippet.py", "exec")  # it is valid Python
    assert "client.chat.completions.create(" in python
    assert "temperature=0.3," in python
    assert "max_tokens=7," in python
    assert '"content": "Count from 1 to 50."' in python
    assert f'base_url="{playground.base_url}/v1"' in python

    curl = playground.view_code("curl")
    assert curl.startswith(f"curl '{playground.base_url}/v1/chat/completions'")
    words = shlex.split(curl)  # as a POSIX shell reads it, quotes and all
    body = json.loads(words[words.index("-d") + 1])
    assert body["messages"][0]["content"] == "You count. Don't stop."
    assert body["temperature"] == 0.3
    assert body["max_tokens"] == 7
    assert body["messages"][2]["role"] == "assistant"  # the reply is part of the conversation
    # The snippet runs as it is shown: a shell, curl, the key from the environment.
    ran = subprocess.run(
        ["bash", "-c", curl],
        env={**os.environ, "CHATAPI_API_KEY": API_KEY},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    answer = json.loads(ran.stdout)
    assert answer["object"] == "chat.completion"
    assert answer["usage"]["completion_tokens"] <= 7

    playground.page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    playground.page.click("#copy-code")
    playground.page.wait_for_selector("#copy-code:has-text('Copied')")  # the copy is async
    assert playground.page.evaluate("navigator.clipboard.readText()") == curl.rstrip("\n") + "\n"
    playground.page.keyboard.press("Escape")
    assert not playground.page.locator("#code-dialog").is_visible()


def test_tool_definition_leads_to_a_tool_call_card(playground: Playground) -> None:
    page = playground.page
    playground.open()
    playground.set("max_tokens", "60")
    page.click("#tools-example")
    page.select_option("#tool_choice", "required")
    with page.expect_response(lambda r: r.url.endswith("/v1/chat/completions")) as answer:
        playground.send("What is the weather in Paris?")
    response = answer.value
    if response.status == 400 and "tool" in response.text().lower():
        assert "tools" in playground.error_text()  # the refusal is readable on the page
        pytest.skip("server has no tool support yet")
    playground.wait_done()

    cards = page.locator("#messages .tool-call")
    cards.first.wait_for()
    assert cards.first.locator(".tool-name").inner_text() == "get_weather"
    arguments = json.loads(cards.first.locator(".tool-args").inner_text())
    assert isinstance(arguments, dict)
    assert "finish_reason tool_calls" in playground.meta("finish_reason")

    page.select_option("#tool_choice", "none")
    result = '{"temperature": 21, "unit": "celsius"}'
    for _ in range(cards.count()):  # answering the last open call sends the conversation on
        card = page.locator("#messages .tool-call:has(textarea)").first
        card.locator("textarea").fill(result)
        card.get_by_role("button", name="Send result").click()
    playground.wait_done()
    follow_up = playground.chat_requests[-1]["messages"]
    calls = next(m for m in follow_up if m.get("tool_calls"))["tool_calls"]
    answers = [m for m in follow_up if m["role"] == "tool"]
    assert answers == [{"role": "tool", "tool_call_id": c["id"], "content": result} for c in calls]
    assert playground.replies.count() == 2


def test_wrong_api_key_shows_the_error(keyed_playground: Playground) -> None:
    page = keyed_playground.page
    keyed_playground.open(wait_models=False)
    page.wait_for_selector("#model-error:not([hidden])")  # no key yet: the model list says why

    keyed_playground.set("api-key", "sk-wrong")
    keyed_playground.set("max_tokens", "8")
    keyed_playground.send("Hello")
    text = keyed_playground.error_text()
    assert "Incorrect API key provided." in text
    assert "401" in text
    assert keyed_playground.chat_requests[-1]["messages"][-1]["content"] == "Hello"

    keyed_playground.set("api-key", API_KEY)
    page.wait_for_selector("#model-error", state="hidden")
    page.click("#send")  # the user message is still there: send it again
    keyed_playground.wait_done()
    assert keyed_playground.reply_text()
    assert page.locator("#messages .msg-error").count() == 0

    page.reload()
    page.wait_for_selector("body[data-ready='true']")
    assert page.input_value("#api-key") == API_KEY  # kept in localStorage


HOSTILE = '<img src=x onerror="window.__pwned=1"> <script>window.__pwned=2</script>'


def test_hostile_reply_is_shown_as_text(playground: Playground) -> None:
    page = playground.page
    playground.open()
    playground.set("temperature", "0")
    playground.set("max_tokens", "60")
    page.fill("#system", "Repeat the user's message exactly.")
    playground.send(HOSTILE)
    playground.wait_done()

    assert page.evaluate("window.__pwned") is None
    assert page.locator("#messages img, #messages script, #messages [onerror]").count() == 0
    assert page.locator("#messages li[data-role='user'] .msg-body").inner_text() == HOSTILE
    reply = playground.reply_text()
    if "<" in reply:  # whatever of it the model echoed is visible as characters
        assert "<" in page.locator("#messages li[data-role='assistant'] .msg-body").inner_text()


RENDER_CHECK = """async (cases) => {
  const { renderMarkdown } = await import('/playground/markdown.js');
  const allowed = new Set(['P', 'BR', 'STRONG', 'EM', 'DEL', 'CODE', 'PRE', 'UL', 'OL', 'LI',
    'H1', 'H2', 'H3', 'H4', 'H5', 'H6', 'BLOCKQUOTE', 'HR']);
  return cases.map((text) => {
    const html = renderMarkdown(text);
    const box = document.createElement('template');
    box.innerHTML = html;
    const bad = [];
    for (const node of box.content.querySelectorAll('*')) {
      if (!allowed.has(node.tagName)) bad.push('tag ' + node.tagName);
      for (const attr of node.attributes) {
        const ok = node.tagName === 'CODE' && attr.name === 'class'
          && /^language-[a-z0-9-]+$/.test(attr.value);
        if (!ok) bad.push('attribute ' + attr.name + '=' + attr.value);
      }
    }
    return { html, bad, text: box.content.textContent };
  });
}"""

HOSTILE_MARKDOWN = [
    HOSTILE,
    "<img src=x onerror=alert(1)>",
    "<script>alert(1)</script>",
    '```"><img src=x onerror=alert(1)>\ncode\n```',
    "```js onload=alert(1)\nx\n```",
    "**<svg onload=alert(1)>**",
    "*<iframe src=javascript:alert(1)>*",
    "`<b onclick=alert(1)>`",
    "- <a href='javascript:alert(1)'>x</a>\n- two",
    "[click](javascript:alert(1))",
    "# <style>body{display:none}</style>",
    "> <object data=x></object>",
    "\ue0000\ue001 `a` \ue0001\ue001",
    "&lt;script&gt; &amp; &#60;img&#62;",
    '" onmouseover="alert(1)',
    "<!-- comment --><textarea></textarea>",
]


def test_markdown_renderer_escapes_hostile_text(playground: Playground) -> None:
    playground.open(wait_models=False)
    results = playground.page.evaluate(RENDER_CHECK, HOSTILE_MARKDOWN)
    for source, result in zip(HOSTILE_MARKDOWN, results, strict=True):
        assert result["bad"] == [], (source, result["html"])
    # Markup characters survive as text: the user sees exactly what the model wrote.
    assert HOSTILE in results[0]["text"]
    assert "<svg onload=alert(1)>" in results[5]["text"]
    assert "&lt;script&gt; &amp; &#60;img&#62;" in results[13]["text"]
    assert playground.page.evaluate("window.__pwned") is None


def test_markdown_renderer_formats(playground: Playground) -> None:
    playground.open(wait_models=False)
    cases = ["**bold** and *it* and `x < y`",
             "```python\nif a < b:\n    print('**no**')\n```",
             "1. one\n2. two\n\n- a\n- b",
             "# Title\ntext\nmore",
             "```js\nunfinished <b>",
             "Steps:\n1. mix\n2. bake\nIn 2024. it worked"]
    out = [r["html"] for r in playground.page.evaluate(RENDER_CHECK, cases)]
    assert out[0] == "<p><strong>bold</strong> and <em>it</em> and <code>x &lt; y</code></p>"
    assert out[1] == ('<pre><code class="language-python">if a &lt; b:\n'
                      "    print(&#39;**no**&#39;)</code></pre>")
    assert out[2] == "<ol><li>one</li><li>two</li></ol><ul><li>a</li><li>b</li></ul>"
    assert out[3] == "<h1>Title</h1><p>text<br>more</p>"
    assert out[4] == "<pre><code class=\"language-js\">unfinished &lt;b&gt;</code></pre>"
    assert out[5] == "<p>Steps:</p><ol><li>mix</li><li>bake</li></ol><p>In 2024. it worked</p>"


def test_edit_delete_regenerate_and_clear(playground: Playground) -> None:
    page = playground.page
    playground.open()
    playground.set("max_tokens", "6")
    playground.send("Say hello.")
    playground.wait_done()

    page.click("#regenerate")
    playground.wait_done()
    assert playground.replies.count() == 1
    assert playground.chat_requests[-1]["messages"][-1] == {"role": "user",
                                                            "content": "Say hello."}

    page.get_by_role("button", name="Edit User message 1").click()
    page.fill("#edit-0", "Say goodbye.")
    page.get_by_role("button", name="Save & resend").click()
    playground.wait_done()
    assert playground.chat_requests[-1]["messages"][-1] == {"role": "user",
                                                            "content": "Say goodbye."}
    assert page.locator("#messages li[data-role='user']").inner_text().endswith("Say goodbye.")
    assert playground.replies.count() == 1

    page.get_by_role("button", name="Delete Assistant message 2").click()
    assert playground.replies.count() == 0
    page.click("#send")  # the conversation ends with the user turn: continue from there
    playground.wait_done()
    assert playground.replies.count() == 1

    page.click("#clear")
    assert page.locator("#messages li").count() == 0


def test_narrow_screen_and_keyboard(narrow_playground: Playground) -> None:
    page = narrow_playground.page
    narrow_playground.open(wait_models=False)
    assert page.evaluate("document.documentElement.scrollWidth") <= 360
    assert page.locator("#input").is_visible()
    assert not page.locator("#params").is_visible()
    page.click("#params-toggle")
    assert page.locator("#params").is_visible()
    assert page.get_attribute("#params-toggle", "aria-expanded") == "true"
    assert page.evaluate("document.documentElement.scrollWidth") <= 360

    page.focus("#input")
    page.keyboard.type("line one")
    page.keyboard.press("Shift+Enter")
    page.keyboard.type("line two")
    assert page.input_value("#input") == "line one\nline two"
    assert page.locator("#messages li").count() == 0

    # every control can be reached with Tab and shows where the focus is
    page.focus("#system")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "input"
    outline = page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
    assert outline != "none"
