"""Request parsing: every bad input is a 400 naming the parameter."""

from __future__ import annotations

import json

import pytest

from chatapi.api.errors import APIError
from chatapi.api.protocol import ChatCompletionRequest, CompletionRequest, parse_request

GOOD = {"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}]}


def parse(body: object) -> ChatCompletionRequest:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return parse_request(ChatCompletionRequest, raw)


def bad(body: object) -> APIError:
    with pytest.raises(APIError) as info:
        parse(body)
    assert info.value.status == 400
    assert info.value.type == "invalid_request_error"
    return info.value


def test_good_request_and_content_parts() -> None:
    req = parse({**GOOD, "messages": [{"role": "user", "content": [
        {"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]})
    assert req.messages[0].text == "ab"
    assert req.completion_limit is None


def test_max_completion_tokens_wins() -> None:
    assert parse({**GOOD, "max_tokens": 9, "max_completion_tokens": 3}).completion_limit == 3


@pytest.mark.parametrize("field,value", [
    ("temperature", "hot"), ("temperature", 5), ("temperature", -1), ("top_p", 1.5),
    ("n", 0), ("n", 1000), ("n", True), ("max_tokens", -1), ("max_tokens", 2**70),
    ("max_tokens", 1.5), ("presence_penalty", 3), ("seed", 2**64), ("stream", "yes"),
    ("logit_bias", {"1": 500}), ("stop", 5),
])
def test_bad_values_name_the_param(field: str, value: object) -> None:
    err = bad({**GOOD, field: value})
    assert err.param is not None and err.param.startswith(field)
    assert field in err.message


@pytest.mark.parametrize("raw", [b"NaN", b"[]", b'"x"', b"42", b"null", b"{", b""])
def test_body_must_be_a_json_object(raw: bytes) -> None:
    bad(raw)


def test_nan_and_infinity_are_refused() -> None:
    for literal in ("NaN", "Infinity", "-Infinity"):
        raw = ('{"model": "m", "messages": [{"role": "user", "content": "x"}], '
               f'"temperature": {literal}}}').encode()
        assert bad(raw).param == "temperature"


def test_missing_and_empty_fields() -> None:
    assert bad({"messages": GOOD["messages"]}).param == "model"
    assert bad({"model": "m", "messages": []}).param == "messages"
    err = bad({"model": "m", "messages": [{"role": "wizard", "content": "x"}]})
    assert err.param == "messages[0].role"


def test_completion_prompt_forms() -> None:
    for prompt in ("a", ["a", "b"], [1, 2, 3], [[1, 2], [3]]):
        body = json.dumps({"model": "m", "prompt": prompt}).encode()
        req = parse_request(CompletionRequest, body)
        assert req.prompt == prompt
    with pytest.raises(APIError):
        parse_request(CompletionRequest, b'{"model": "m", "prompt": {"x": 1}}')
