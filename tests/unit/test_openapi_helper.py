"""The OpenAPI test helper accepts OpenAI-shaped bodies and names the path of each mistake."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from tests.openapi import spec_path, to_json_schema, validate

pytestmark = pytest.mark.skipif(
    not spec_path().is_file(), reason=f"OpenAI OpenAPI spec not found at {spec_path()}"
)

CHAT_COMPLETION: dict[str, Any] = {
    "id": "chatcmpl-123",
    "object": "chat.completion",
    "created": 1_700_000_000,
    "model": "local-model",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Hello!", "refusal": None},
            "logprobs": None,
            "finish_reason": "stop",
        }
    ],
    "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7},
}


def chunk(delta: dict[str, Any], finish_reason: str | None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-123",
        "object": "chat.completion.chunk",
        "created": 1_700_000_000,
        "model": "local-model",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
        "usage": None,
    }


def test_minimal_chat_completion_is_valid() -> None:
    validate("CreateChatCompletionResponse", CHAT_COMPLETION)


def test_bogus_finish_reason_is_reported_with_its_path() -> None:
    body = copy.deepcopy(CHAT_COMPLETION)
    body["choices"][0]["finish_reason"] = "bogus"
    with pytest.raises(AssertionError, match=r"\$\.choices\[0\]\.finish_reason") as info:
        validate("CreateChatCompletionResponse", body)
    assert "'bogus' is not one of" in str(info.value)


def test_every_failing_path_is_listed() -> None:
    body = copy.deepcopy(CHAT_COMPLETION)
    del body["created"]
    body["choices"][0]["message"]["role"] = "user"
    with pytest.raises(AssertionError) as info:
        validate("CreateChatCompletionResponse", body)
    message = str(info.value)
    assert "'created' is a required property" in message
    assert "$.choices[0].message.role" in message


def test_chat_completion_chunks_are_valid() -> None:
    # finish_reason and usage are null here: the spec marks them with OpenAPI's `nullable`.
    first = chunk({"role": "assistant", "content": ""}, None)
    for body in (first, chunk({"content": "Hel"}, None), chunk({}, "stop")):
        validate("CreateChatCompletionStreamResponse", body)


def test_chunk_with_bogus_finish_reason_fails() -> None:
    with pytest.raises(AssertionError, match=r"\$\.choices\[0\]\.finish_reason"):
        validate("CreateChatCompletionStreamResponse", chunk({}, "done"))


def test_error_response_is_valid() -> None:
    body = {"error": {"message": "x", "type": "invalid_request_error", "param": None, "code": None}}
    validate("ErrorResponse", body)


def test_error_response_needs_param_and_code() -> None:
    with pytest.raises(AssertionError, match=r"'param' is a required property"):
        validate("ErrorResponse", {"error": {"message": "x", "type": "t", "code": None}})


def test_completion_and_model_list_are_valid() -> None:
    completion = {
        "id": "cmpl-1",
        "object": "text_completion",
        "created": 1_700_000_000,
        "model": "local-model",
        "choices": [{"text": "hi", "index": 0, "logprobs": None, "finish_reason": "length"}],
    }
    validate("CreateCompletionResponse", completion)
    model = {"id": "local-model", "object": "model", "created": 0, "owned_by": "chatapi"}
    validate("ListModelsResponse", {"object": "list", "data": [model]})


def test_unknown_schema_name_is_an_error() -> None:
    with pytest.raises(KeyError, match="NoSuchSchema"):
        validate("NoSuchSchema", {})


def test_openapi_30_keywords_are_translated() -> None:
    assert to_json_schema({"type": "string", "nullable": True}) == {
        "anyOf": [{"type": "string"}, {"type": "null"}]
    }
    assert to_json_schema({"type": "number", "minimum": 0, "exclusiveMinimum": True}) == {
        "type": "number",
        "exclusiveMinimum": 0,
    }
    assert to_json_schema({"maximum": 2, "exclusiveMaximum": False}) == {"maximum": 2}


def test_any_of_failures_name_the_closest_branch() -> None:
    body = copy.deepcopy(CHAT_COMPLETION)
    body["choices"][0]["message"]["content"] = 3
    with pytest.raises(AssertionError, match=r"closest: .*3 is not of type 'string'"):
        validate("CreateChatCompletionResponse", body)
