"""Bad requests get OpenAI-shaped 4xx errors, never a 500, and the server keeps answering."""

from __future__ import annotations

import json
import re
from typing import Any

import httpx
import pytest

from .helpers import CTX_SIZE, assert_error, chat, health

MESSAGES = [{"role": "user", "content": "Say hi."}]
GOOD: dict[str, Any] = {"model": "gpt-3.5-turbo", "messages": MESSAGES, "max_tokens": 2}

# (case id, raw request body, the `param` the error must name)
BAD_BODIES: list[tuple[str, bytes, str | None]] = [
    ("temperature-string", json.dumps({**GOOD, "temperature": "hot"}).encode(), "temperature"),
    ("temperature-too-high", json.dumps({**GOOD, "temperature": 5}).encode(), "temperature"),
    # json.dumps writes NaN as the bare token NaN, which Python's json (and so the server) reads
    ("temperature-nan", json.dumps({**GOOD, "temperature": float("nan")}).encode(),
     "temperature"),
    ("n-zero", json.dumps({**GOOD, "n": 0}).encode(), "n"),
    ("n-huge", json.dumps({**GOOD, "n": 1000}).encode(), "n"),
    ("max-tokens-negative", json.dumps({**GOOD, "max_tokens": -1}).encode(), "max_tokens"),
    ("max-tokens-2**70", json.dumps({**GOOD, "max_tokens": 2**70}).encode(), "max_tokens"),
    ("messages-empty", json.dumps({**GOOD, "messages": []}).encode(), "messages"),
    ("role-unknown", json.dumps({**GOOD, "messages": [{"role": "robot", "content": "hi"}]})
     .encode(), "messages[0].role"),
    ("content-number", json.dumps({**GOOD, "messages": [{"role": "user", "content": 5}]})
     .encode(), "messages[0].content"),
    ("temperature-bool", json.dumps({**GOOD, "temperature": True}).encode(), "temperature"),
    ("top-p-too-high", json.dumps({**GOOD, "top_p": 1.5}).encode(), "top_p"),
    ("stream-string", json.dumps({**GOOD, "stream": "yes"}).encode(), "stream"),
    ("stop-too-many", json.dumps({**GOOD, "stop": list("abcde")}).encode(), "stop"),
    ("logit-bias-not-a-token", json.dumps({**GOOD, "logit_bias": {"abc": 1}}).encode(),
     "logit_bias"),
    ("model-missing", json.dumps({"messages": MESSAGES}).encode(), "model"),
    ("body-list", b"[]", None),
    ("body-string", b'"x"', None),
    ("body-null", b"null", None),
    ("body-not-json", b'{"model": "gpt-3.5-turbo", "messages": [', None),
    ("body-nested-too-deep", b'{"model": "gpt-4", "messages": ' + b"[" * 100_000
     + b"]" * 100_000 + b"}", None),
]


@pytest.mark.parametrize(("body", "param"), [case[1:] for case in BAD_BODIES],
                         ids=[case[0] for case in BAD_BODIES])
def test_invalid_request_is_a_400_naming_the_param(client: httpx.Client, body: bytes,
                                                   param: str | None) -> None:
    response = client.post("/v1/chat/completions", content=body,
                           headers={"content-type": "application/json"})
    assert_error(response, 400, type="invalid_request_error", param=param)


def test_unknown_model_is_a_404(client: httpx.Client) -> None:
    response = client.post("/v1/chat/completions", json={**GOOD, "model": "gpt-9000"})
    error = assert_error(response, 404, type="invalid_request_error", code="model_not_found",
                         param="model")
    assert "gpt-9000" in error["message"]


def _numbers(message: str) -> set[int]:
    return {int(n.replace(",", "")) for n in re.findall(r"\d[\d,]*", message)}


def test_completion_beyond_the_context_is_refused(client: httpx.Client) -> None:
    response = client.post("/v1/chat/completions", json={**GOOD, "max_tokens": CTX_SIZE - 10})
    error = assert_error(response, 400, type="invalid_request_error",
                         code="context_length_exceeded")
    numbers = _numbers(error["message"])
    assert CTX_SIZE in numbers, error["message"]
    assert any(n > CTX_SIZE for n in numbers), f"no requested total: {error['message']}"


def test_prompt_beyond_the_context_is_refused(client: httpx.Client) -> None:
    long = [{"role": "user", "content": "hello " * (CTX_SIZE + 100)}]
    response = client.post("/v1/chat/completions", json={**GOOD, "messages": long})
    error = assert_error(response, 400, code="context_length_exceeded")
    numbers = _numbers(error["message"])
    assert CTX_SIZE in numbers and any(n > CTX_SIZE for n in numbers), error["message"]


def test_body_over_two_megabytes_is_a_413(client: httpx.Client) -> None:
    big = json.dumps({**GOOD, "messages": [{"role": "user", "content": "a" * (2 << 20)}]})
    assert_error(client.post("/v1/chat/completions", content=big,
                             headers={"content-type": "application/json"}), 413)

    def chunked():  # no content-length: the limit must hold while the body arrives
        data = big.encode()
        for start in range(0, len(data), 1 << 16):
            yield data[start:start + (1 << 16)]

    assert_error(client.post("/v1/chat/completions", content=chunked(),
                             headers={"content-type": "application/json"}), 413)


@pytest.mark.parametrize(("method", "path"), [("GET", "/v1/nope"), ("POST", "/v2/chat"),
                                              ("GET", "/nope")])
def test_unknown_route_is_a_404_in_openai_shape(client: httpx.Client, method: str,
                                                path: str) -> None:
    assert_error(client.request(method, path, json={}), 404)


LONE_SURROGATE = "hi \ud800"  # valid JSON ("\\ud800"), but not encodable as UTF-8


@pytest.mark.parametrize(("path", "body"), [
    ("/v1/chat/completions", {**GOOD, "messages": [{"role": "user", "content": LONE_SURROGATE}]}),
    ("/v1/completions", {"model": "gpt-3.5-turbo", "prompt": LONE_SURROGATE, "max_tokens": 2}),
], ids=["chat-content", "legacy-prompt"])
def test_lone_surrogate_in_text_is_a_400(client: httpx.Client, path: str,
                                         body: dict[str, Any]) -> None:
    assert "\\ud800" in json.dumps(body)
    response = client.post(path, content=json.dumps(body),
                           headers={"content-type": "application/json"})
    assert_error(response, 400, type="invalid_request_error")


def test_server_still_answers_after_bad_requests(client: httpx.Client) -> None:
    # The parametrized cases above ran first in this module: the engine must have survived.
    assert health(client)["status"] == "ok"
    body = chat(client, **GOOD, temperature=0)
    assert body["choices"][0]["message"]["content"]
