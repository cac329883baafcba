"""Page behaviour for stream shapes the default model cannot be made to produce on demand:
the server's answers are scripted with page.route (OpenAI's exact wire shapes)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from .playground import Playground

pytestmark = pytest.mark.model  # the page itself is served by a real server

HEAD = {"id": "chatcmpl-test", "object": "chat.completion.chunk", "created": 1,
        "model": "gpt-4", "system_fingerprint": "fp_test"}


def sse(*chunks: dict[str, Any]) -> str:
    return "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n"


def delta(payload: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {**HEAD, "choices": [{"index": 0, "delta": payload, "logprobs": None,
                                 "finish_reason": finish}]}


def usage(prompt: int, completion: int, cached: int) -> dict[str, Any]:
    return {**HEAD, "choices": [], "usage": {
        "prompt_tokens": prompt, "completion_tokens": completion,
        "total_tokens": prompt + completion, "prompt_tokens_details": {"cached_tokens": cached}}}


def fragment(index: int, **function: str) -> dict[str, Any]:
    return {"tool_calls": [{"index": index, "function": function}]}


TOOL_CALL_STREAM = sse(
    delta({"role": "assistant", "content": None}),
    delta({"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                           "function": {"name": "get_weather", "arguments": ""}}]}),
    delta(fragment(0, arguments='{"city": ')),
    delta(fragment(0, arguments='"Paris"}')),
    delta({"tool_calls": [{"index": 1, "id": "call_2", "type": "function",
                           "function": {"name": "get_time", "arguments": "{}"}}]}),
    delta({}, "tool_calls"),
    usage(120, 25, 64),
)
ANSWER_STREAM = sse(delta({"role": "assistant", "content": ""}),
                    delta({"content": "It is **21 °C** in Paris."}),
                    delta({}, "stop"), usage(160, 9, 120))


def test_tool_call_cards_take_results_and_continue(playground: Playground) -> None:
    page = playground.page
    answers = [TOOL_CALL_STREAM, ANSWER_STREAM]
    page.route("**/v1/chat/completions", lambda route: route.fulfill(
        status=200, headers={"content-type": "text/event-stream"}, body=answers.pop(0)))
    playground.open(wait_models=False)
    page.click("#tools-example")
    playground.send("Weather and time in Paris?")
    playground.wait_done()

    cards = page.locator("#messages .tool-call")
    assert cards.count() == 2
    assert cards.nth(0).locator(".tool-name").inner_text() == "get_weather"
    assert json.loads(cards.nth(0).locator(".tool-args").inner_text()) == {"city": "Paris"}
    assert cards.nth(1).locator(".tool-name").inner_text() == "get_time"
    assert "finish_reason tool_calls" in playground.meta("finish_reason")
    assert playground.meta("cached_tokens") == "cached 64"
    assert playground.chat_requests[0]["tools"][0]["function"]["name"] == "get_weather"

    cards.nth(0).locator("textarea").fill('{"temperature": 21}')
    cards.nth(0).get_by_role("button", name="Send result").click()
    assert len(playground.chat_requests) == 1  # one call is still unanswered
    page.locator("#messages .tool-call textarea").fill('"12:00"')
    page.locator("#messages .tool-call textarea").press("Enter")
    playground.wait_done()

    messages = playground.chat_requests[1]["messages"]
    assert messages[-3] == {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function",
         "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
        {"id": "call_2", "type": "function", "function": {"name": "get_time", "arguments": "{}"}},
    ]}
    assert messages[-2:] == [
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temperature": 21}'},
        {"role": "tool", "tool_call_id": "call_2", "content": '"12:00"'}]
    assert page.locator("#messages li[data-role='tool']").count() == 2
    reply = playground.replies.last.locator(".msg-body")
    assert reply.inner_text() == "It is 21 °C in Paris."
    assert reply.locator("strong").inner_text() == "21 °C"


def test_error_event_after_streaming_began_keeps_the_text(playground: Playground) -> None:
    page = playground.page
    body = (f"data: {json.dumps(delta({'content': 'Partial answer'}))}\n\n"
            'data: {"error": {"message": "The engine stopped.", "type": "server_error", '
            '"param": null, "code": "engine_error"}}\n\ndata: [DONE]\n\n')
    page.route("**/v1/chat/completions", lambda route: route.fulfill(
        status=200, headers={"content-type": "text/event-stream"}, body=body))
    playground.open(wait_models=False)
    playground.send("Hello")
    text = playground.error_text()
    assert "The engine stopped." in text
    assert "server_error" in text
    assert playground.reply_text() == "Partial answer"
    assert "finish_reason error" in playground.meta("finish_reason")


def test_unreachable_server_and_bad_json_are_readable(playground: Playground) -> None:
    page = playground.page
    playground.open(wait_models=False)
    page.fill("#tools", "[{oops")
    playground.send("Hello")
    assert "Tools: not valid JSON" in playground.error_text()
    assert page.locator("#tools-error").is_visible()
    assert playground.chat_requests == []

    page.fill("#tools", "")
    page.route("**/v1/chat/completions", lambda route: route.abort("connectionrefused"))
    page.click("#send")
    page.wait_for_selector("#messages .msg-error:has-text('Could not reach the server')")
    assert "Is the chatapi server still running?" in playground.error_text()
