"""Every malformed request gets a 4xx OpenAI error object in under a second, and the server
keeps serving: each case checks /health after it, the module ends with a real generation and
no 5xx in /metrics. Cases the server gets wrong today are strict xfails naming the bug."""

from __future__ import annotations

import json
import re
import select
import socket
import time
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from tests.integration.helpers import assert_error, chat
from tests.openapi import validate

from .conftest import CTX_SIZE
from .server import Server

CHAT = "/v1/chat/completions"
LEGACY = "/v1/completions"
MESSAGES = [{"role": "user", "content": "Say hi."}]
GOOD: dict[str, Any] = {"model": "gpt-3.5-turbo", "messages": MESSAGES, "max_tokens": 2}
PROMPT: dict[str, Any] = {"model": "gpt-3.5-turbo", "prompt": "Say hi.", "max_tokens": 2}
FAST_S = 1.0


def tool(name: str = "get_weather", parameters: Any = None) -> dict[str, Any]:
    function: dict[str, Any] = {"name": name, "description": "Weather in a city."}
    if parameters is not None:
        function["parameters"] = parameters
    return {"type": "function", "function": function}


CITY = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
BAD_TYPE = {"type": "object", "properties": {"city": {"type": "nonsense"}}}


def raw(text: str) -> bytes:
    return text.encode()


def body(base: dict[str, Any], **changes: Any) -> bytes:
    return json.dumps({**base, **changes}).encode()


def without(base: dict[str, Any], key: str) -> bytes:
    return json.dumps({k: v for k, v in base.items() if k != key}).encode()


def known_bug(case_id: str, path: str, content: bytes, status: int, param: Any, reason: str
              ) -> Any:
    """A case the server gets wrong today: a strict xfail saying why."""
    return pytest.param(path, content, status, param, id=case_id, marks=pytest.mark.xfail(
        strict=True, raises=AssertionError, reason=reason))


# (id, path, raw body, expected status, expected param or ... for any)
CASES: list[Any] = [
    # -- the body is not a JSON object
    ("invalid-json", CHAT, raw('{"model": "gpt-4", "messages": ['), 400, None),
    ("empty-body", CHAT, b"", 400, None),
    ("not-utf8", CHAT, b'\xff\xfe{"model": 1}', 400, None),
    ("body-string", CHAT, raw('"x"'), 400, None),
    ("body-array", CHAT, raw("[]"), 400, None),
    ("body-number", CHAT, raw("42"), 400, None),
    ("body-null", CHAT, raw("null"), 400, None),
    # -- numbers: wrong type, NaN, infinities, negatives, 2**63
    ("temperature-nan", CHAT, body(GOOD, temperature=float("nan")), 400, "temperature"),
    ("temperature-inf", CHAT, body(GOOD, temperature=float("inf")), 400, "temperature"),
    ("temperature-minus-inf", CHAT, body(GOOD, temperature=float("-inf")), 400, "temperature"),
    ("temperature-string", CHAT, body(GOOD, temperature="0.5"), 400, "temperature"),
    ("temperature-too-high", CHAT, body(GOOD, temperature=2.5), 400, "temperature"),
    ("top-p-negative", CHAT, body(GOOD, top_p=-0.1), 400, "top_p"),
    ("n-zero", CHAT, body(GOOD, n=0), 400, "n"),
    ("n-over-limit", CHAT, body(GOOD, n=9), 400, "n"),
    ("n-2**63", CHAT, body(GOOD, n=2**63), 400, "n"),
    ("max-tokens-zero", CHAT, body(GOOD, max_tokens=0), 400, "max_tokens"),
    ("max-tokens-negative", CHAT, body(GOOD, max_tokens=-1), 400, "max_tokens"),
    ("max-tokens-float", CHAT, body(GOOD, max_tokens=1.5), 400, "max_tokens"),
    ("max-tokens-2**63", CHAT, body(GOOD, max_tokens=2**63), 400, "max_tokens"),
    ("max-tokens-over-context", CHAT, body(GOOD, max_tokens=10**12), 400, ...),
    ("presence-penalty-out-of-range", CHAT, body(GOOD, presence_penalty=2.5), 400,
     "presence_penalty"),
    ("frequency-penalty-string", CHAT, body(GOOD, frequency_penalty="high"), 400,
     "frequency_penalty"),
    ("seed-2**64", CHAT, body(GOOD, seed=2**64), 400, "seed"),
    ("stream-string", CHAT, body(GOOD, stream="yes"), 400, "stream"),
    ("stream-options-not-object", CHAT, body(GOOD, stream=True, stream_options=1), 400,
     "stream_options"),
    ("top-logprobs-21", CHAT, body(GOOD, logprobs=True, top_logprobs=21), 400, "top_logprobs"),
    ("top-logprobs-without-logprobs", CHAT, body(GOOD, top_logprobs=2), 400, "top_logprobs"),
    # -- stop sequences
    ("stop-100-strings", CHAT, body(GOOD, stop=[f"s{i}" for i in range(100)]), 400, "stop"),
    ("stop-empty-string", CHAT, body(GOOD, stop=[""]), 400, "stop"),
    ("stop-too-long", CHAT, body(GOOD, stop="x" * 10_000), 400, "stop"),
    ("stop-number", CHAT, body(GOOD, stop=5), 400, "stop"),
    # -- logit_bias
    ("logit-bias-out-of-vocab", CHAT, body(GOOD, logit_bias={"999999999": 5}), 400,
     "logit_bias"),
    ("logit-bias-negative-id", CHAT, body(GOOD, logit_bias={"-1": 5}), 400, "logit_bias"),
    ("logit-bias-not-an-id", CHAT, body(GOOD, logit_bias={"hello": 5}), 400, "logit_bias"),
    ("logit-bias-value-out-of-range", CHAT, body(GOOD, logit_bias={"100": 1000}), 400, ...),
    ("logit-bias-100k-entries", CHAT,
              body(GOOD, logit_bias={str(i): 1 for i in range(100_000)}), 400, "logit_bias"),
    # -- model
    ("model-missing", CHAT, without(GOOD, "model"), 400, "model"),
    ("model-empty", CHAT, body(GOOD, model=""), 400, "model"),
    ("model-unknown", CHAT, body(GOOD, model="gpt-9000"), 404, "model"),
    ("model-10k-chars", CHAT, body(GOOD, model="m" * 10_000), 400, "model"),
    ("model-number", CHAT, body(GOOD, model=4), 400, "model"),
    # -- messages
    ("messages-missing", CHAT, without(GOOD, "messages"), 400, "messages"),
    ("messages-empty", CHAT, body(GOOD, messages=[]), 400, "messages"),
    ("messages-string", CHAT, body(GOOD, messages="hi"), 400, "messages"),
    ("role-unknown", CHAT, body(GOOD, messages=[{"role": "robot", "content": "hi"}]), 400,
     "messages[0].role"),
    ("role-missing", CHAT, body(GOOD, messages=[{"content": "hi"}]), 400, "messages[0].role"),
    ("content-number", CHAT, body(GOOD, messages=[{"role": "user", "content": 5}]), 400,
     "messages[0].content"),
    ("content-image-part", CHAT, body(GOOD, messages=[{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "http://127.0.0.1/x.png"}}]}]), 400, ...),
    ("user-content-null", CHAT,
              body(GOOD, messages=[{"role": "user", "content": None}]), 400,
              "messages[0].content"),
    ("tool-message-without-id", CHAT,
     body(GOOD, messages=[{"role": "tool", "content": "20C"}]), 400, ...),
    ("prompt-over-context", CHAT,
     body(GOOD, messages=[{"role": "user", "content": "hello " * (CTX_SIZE * 4)}]), 400, ...),
    # -- tools
    ("tool-name-invalid", CHAT, body(GOOD, tools=[tool("get weather!")]), 400, ...),
    ("tool-type-unknown", CHAT, body(GOOD, tools=[{"type": "retrieval"}]), 400, ...),
    ("tool-parameters-string", CHAT, body(GOOD, tools=[tool(parameters="city")]), 400, ...),
    ("tool-schema-bad-type-required", CHAT,
     body(GOOD, tools=[tool(parameters=BAD_TYPE)], tool_choice="required"), 400, ...),
    ("tool-schema-bad-type-auto", CHAT, body(GOOD, tools=[tool(parameters=BAD_TYPE)]),
              400, ...),
    ("tool-schema-not-object", CHAT,
              body(GOOD, tools=[tool(parameters={"type": "array"})]), 400, ...),
    ("tool-names-duplicate", CHAT, body(GOOD, tools=[tool(), tool()]), 400, ...),
    ("tools-129", CHAT, body(GOOD, tools=[tool(f"f{i}") for i in range(129)]), 400, "tools"),
    ("tools-and-functions", CHAT, body(GOOD, tools=[tool()],
                                       functions=[tool()["function"]]), 400, ...),
    ("tool-choice-unknown-function", CHAT, body(GOOD, tools=[tool(parameters=CITY)],
         tool_choice={"type": "function", "function": {"name": "send_email"}}), 400,
     "tool_choice"),
    ("tool-choice-unknown-mode", CHAT, body(GOOD, tools=[tool()], tool_choice="sometimes"),
     400, ...),
    ("tool-choice-without-tools", CHAT, body(GOOD, tool_choice="required"), 400, ...),
    # -- response_format
    ("response-format-unsupported", CHAT, body(GOOD, response_format={"type": "xml"}), 400,
     ...),
    ("response-format-schema-missing", CHAT,
     body(GOOD, response_format={"type": "json_schema"}), 400, ...),
    ("response-format-schema-invalid", CHAT, body(GOOD, response_format={
        "type": "json_schema", "json_schema": {"name": "x", "schema": BAD_TYPE}}), 400, ...),
    ("response-format-schema-ref-loop", CHAT, body(GOOD, response_format={
        "type": "json_schema", "json_schema": {"name": "x", "schema": {"$ref": "#"}}}), 400, ...),
    # -- legacy completions
    ("prompt-missing", LEGACY, without(PROMPT, "prompt"), 400, "prompt"),
    ("prompt-out-of-vocab-id", LEGACY, body(PROMPT, prompt=[10**9]), 400, "prompt"),
    ("prompt-negative-id", LEGACY, body(PROMPT, prompt=[-1]), 400, "prompt"),
    ("prompt-empty-ids", LEGACY, body(PROMPT, prompt=[[]]), 400, "prompt"),
    ("prompt-65-prompts", LEGACY, body(PROMPT, prompt=["a"] * 65), 400, "prompt"),
    ("best-of-below-n", LEGACY, body(PROMPT, n=3, best_of=2), 400, "best_of"),
    ("logprobs-6", LEGACY, body(PROMPT, logprobs=6), 400, "logprobs"),
    # -- size
    ("body-10mb", CHAT, body(GOOD, messages=[{"role": "user", "content": "a" * 10_000_000}]),
     413, ...),
]


def timed(send: Any) -> httpx.Response:
    started = time.monotonic()
    response = send()
    elapsed = time.monotonic() - started
    assert elapsed < FAST_S, f"answered in {elapsed:.2f} s"
    return response


def still_serving(client: httpx.Client) -> None:
    response = client.get("/health")
    assert response.status_code == 200 and response.json()["status"] == "ok", response.text


@pytest.fixture
def client(open_server: Server) -> Any:
    with open_server.client() as http:
        yield http


KNOWN_SERVER_ERRORS: list[str] = []  # 5xx answers to known-bug cases, for the final check


@pytest.mark.parametrize(("path", "content", "status", "param"), [
    case if hasattr(case, "marks") else pytest.param(*case[1:], id=case[0]) for case in CASES])
def test_bad_request_is_a_quick_openai_error(request: pytest.FixtureRequest,
                                             client: httpx.Client, path: str, content: bytes,
                                             status: int, param: Any) -> None:
    response = timed(lambda: client.post(path, content=content,
                                         headers={"content-type": "application/json"}))
    if response.status_code >= 500 and request.node.get_closest_marker("xfail"):
        KNOWN_SERVER_ERRORS.append(request.node.name)
    assert_error(response, status, param=param)
    still_serving(client)


def test_chunked_10mb_body_is_a_413(client: httpx.Client) -> None:
    data = body(GOOD, messages=[{"role": "user", "content": "a" * 10_000_000}])

    def chunks() -> Any:  # no content-length: the limit holds while the body arrives
        for start in range(0, len(data), 1 << 16):
            yield data[start:start + (1 << 16)]

    assert_error(timed(lambda: client.post(CHAT, content=chunks())), 413)
    still_serving(client)


@pytest.mark.parametrize("headers", [
    {"x-huge": "a" * 64 * 1024},
    {f"x-h{i}": "v" for i in range(200)},
], ids=["one-64kb-header", "200-headers"])
def test_huge_headers_are_a_431(open_server: Server, headers: dict[str, str]) -> None:
    with open_server.client() as http:  # the server may close the connection after this
        response = timed(lambda: http.post(CHAT, json=GOOD, headers=headers))
    assert_error(response, 431, code="request_header_fields_too_large")


def _raw_exchange(url: str, request: bytes) -> tuple[int, dict[str, Any]]:
    """Send bytes on a fresh connection, in pieces, until the server answers; (status, JSON
    body) of the answer. Stopping early matters: a server that closes with unread data sends
    a reset, which can discard the answer before it is read."""
    host, port = urlsplit(url).hostname, urlsplit(url).port
    with socket.create_connection((host, port), timeout=10) as sock:
        for start in range(0, len(request), 16384):
            if select.select([sock], [], [], 0.02)[0]:
                break  # answered already
            sock.sendall(request[start:start + 16384])
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    head, _, payload = reply.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, json.loads(payload)


@pytest.mark.parametrize(("request_bytes", "status"), [
    (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Huge: " + b"a" * 400_000
     + b"\r\n\r\n", 431),
    (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n", 400),
    (b"GARBAGE\r\n\r\n", 400),
], ids=["400kb-header-on-the-wire", "negative-content-length", "not-http"])
def test_unparseable_http_is_an_openai_error(open_server: Server, request_bytes: bytes,
                                             status: int) -> None:
    started = time.monotonic()
    got, payload = _raw_exchange(open_server.url, request_bytes)
    assert time.monotonic() - started < FAST_S
    assert got == status
    validate("ErrorResponse", payload)


def test_wrong_method_and_unknown_route_are_openai_errors(client: httpx.Client) -> None:
    assert_error(timed(lambda: client.get(CHAT)), 405)
    assert_error(timed(lambda: client.post("/v1/engines/davinci/completions", json=GOOD)), 404)


def test_chat_template_in_the_body_is_ignored(client: httpx.Client) -> None:
    # A template from a request is code (CVE-2024-34359): it must never be rendered.
    request = {**GOOD, "max_tokens": 8, "temperature": 0}
    plain = chat(client, **request)
    hostile = chat(client, **request, chat_template="{{ 'PWNED ' * 50 }}",
                   chat_template_kwargs={"add_generation_prompt": False},
                   template="{{ cycler.__init__.__globals__ }}")
    assert hostile["usage"]["prompt_tokens"] == plain["usage"]["prompt_tokens"]
    assert hostile["choices"][0]["message"] == plain["choices"][0]["message"]


def test_server_still_answers_and_never_failed(client: httpx.Client) -> None:
    # Runs after the cases above (file order): none of them may have hurt the engine.
    still_serving(client)
    assert chat(client, **GOOD, temperature=0)["choices"][0]["message"]["content"]
    metrics = client.get("/metrics").text
    server_errors = sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
                        if line.startswith("chatapi_http_requests_total")
                        and re.search(r'status="5\d\d"', line))
    assert server_errors == len(KNOWN_SERVER_ERRORS), (KNOWN_SERVER_ERRORS, metrics)
