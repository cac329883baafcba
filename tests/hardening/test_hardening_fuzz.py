"""Schemathesis fuzzing from OpenAI's own spec: POST /v1/chat/completions, POST /v1/completions
and GET /v1/models. Valid (positive) and invalid (negative) cases, a few hundred in all,
generated reproducibly: never a 5xx, and every 2xx conforms to the spec (streams chunk by
chunk). `CHATAPI_FUZZ_SCALE` multiplies the number of examples (default 1)."""

from __future__ import annotations

import json
import os
from typing import Any

import httpx
import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.checks import not_a_server_error, response_schema_conformance  # noqa: E402

from tests.integration.helpers import validate_completion_chunk  # noqa: E402
from tests.openapi import validate  # noqa: E402

from .openapi_cut import cut_spec  # noqa: E402
from .server import Server  # noqa: E402

SCALE = float(os.environ.get("CHATAPI_FUZZ_SCALE", "1"))
SERVED = ["gpt-3.5-turbo", "gpt-4", "gpt-4o", "gpt-4o-mini", "qwen2.5-coder-0.5b-instruct"]
MAX_TOKENS = 2  # generated requests are capped to this: the fuzzing is of the API, not the model
POSITIVE, NEGATIVE = GenerationMode.POSITIVE, GenerationMode.NEGATIVE
# (method, path, mode, examples)
PLAN = [
    ("POST", "/chat/completions", POSITIVE, 60),
    ("POST", "/chat/completions", NEGATIVE, 60),
    ("POST", "/completions", POSITIVE, 60),
    ("POST", "/completions", NEGATIVE, 40),
    ("GET", "/models", POSITIVE, 5),
]
STREAM_SCHEMAS = {"/chat/completions": "CreateChatCompletionStreamResponse"}


@pytest.fixture(scope="module")
def operations() -> dict[tuple[str, str], Any]:
    schema = schemathesis.openapi.from_dict(cut_spec(SERVED))
    found = {}
    for result in schema.get_all_operations():
        operation = result.ok()
        found[(operation.method.upper(), operation.path)] = operation
    return found


def cap_generation(case: Any) -> None:
    """Keep any valid request short: max_tokens at most MAX_TOKENS, and set when absent."""
    if not isinstance(case.body, dict):
        return
    limits = [k for k in ("max_tokens", "max_completion_tokens") if k in case.body]
    for key in limits:
        if isinstance(case.body[key], int) and not isinstance(case.body[key], bool):
            case.body[key] = min(case.body[key], MAX_TOKENS)
    if not limits:
        case.body["max_tokens"] = MAX_TOKENS


def check_stream(path: str, text: str) -> None:
    events = [line[len("data:"):].strip() for line in text.splitlines()
              if line.startswith("data:")]
    assert events and events[-1] == "[DONE]", text[-500:]
    for payload in events[:-1]:
        chunk = json.loads(payload)
        if "error" in chunk:  # an error after the stream began: the error shape, still no 5xx
            validate("ErrorResponse", chunk)
            assert not chunk["error"]["type"] == "server_error", chunk
        elif path in STREAM_SCHEMAS:
            validate(STREAM_SCHEMAS[path], chunk)
        else:
            validate_completion_chunk(chunk)


def describe(case: Any, response: Any) -> str:
    return f"{case.method} {case.path} {json.dumps(case.body, default=repr)[:2000]}\n" \
           f"-> {response.status_code} {response.text[:1000]}"


@pytest.mark.parametrize(("method", "path", "mode", "examples"), PLAN,
                         ids=[f"{m} {p} {mode.value}" for m, p, mode, _ in PLAN])
def test_fuzzed_requests_never_fail_the_server(open_server: Server, operations: dict,
                                               method: str, path: str, mode: GenerationMode,
                                               examples: int) -> None:
    operation = operations[(method, path)]
    statuses: dict[int, int] = {}

    examples = max(1, int(examples * SCALE))

    @settings(max_examples=examples, deadline=None, database=None,
              derandomize=True, phases=[Phase.explicit, Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy(generation_mode=mode))
    def exercise(case: Any) -> None:
        cap_generation(case)
        response = case.call(base_url=open_server.url + "/v1", timeout=60)
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
        assert response.status_code < 500, describe(case, response)
        if not 200 <= response.status_code < 300:
            return
        if response.headers.get("content-type", [""])[0].startswith("text/event-stream"):
            check_stream(path, response.text)
        else:
            case.validate_response(response, checks=[not_a_server_error,
                                                     response_schema_conformance])

    exercise()
    # The fuzzing must reach the engine, not stop at validation: some cases were answered.
    if mode is POSITIVE and examples >= 30:
        assert statuses.get(200), statuses
    with httpx.Client(base_url=open_server.url, timeout=30) as http:
        assert http.get("/health").json()["status"] == "ok"
