"""Function calling with the real default model: tools and legacy functions, enforced and
free choice, streamed in OpenAI's exact shape, and tool results in the history."""

from __future__ import annotations

import json
from typing import Any

import httpx
import jsonschema
import pytest
from openai import OpenAI

from .helpers import assert_error, chat, chunk_finish, stream_chat

MODEL = "gpt-3.5-turbo"
WEATHER_PARAMS = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "description": "The city, e.g. Paris"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
    },
    "required": ["city", "unit"],
    "additionalProperties": False,
}
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Get the current weather in a city",
    "parameters": WEATHER_PARAMS}}
ADD_PARAMS = {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
              "required": ["a", "b"]}
ADD = {"type": "function", "function": {"name": "add", "description": "Add two integers",
                                        "parameters": ADD_PARAMS}}
PARAMS = {"get_weather": WEATHER_PARAMS, "add": ADD_PARAMS}
ASK = [{"role": "user", "content": "What's the weather like in Paris today?"}]
NAMED = {"type": "function", "function": {"name": "get_weather"}}
BASE = dict(model=MODEL, temperature=0, max_tokens=48)


def assert_valid_call(call: dict[str, Any], name: str | None = None) -> dict[str, Any]:
    assert call["type"] == "function" and call["id"].startswith("call_")
    function = call["function"]
    if name is not None:
        assert function["name"] == name
    arguments = json.loads(function["arguments"])
    jsonschema.validate(arguments, PARAMS[function["name"]])
    return arguments


def test_named_tool_call_validates_against_the_schema(client: httpx.Client) -> None:
    body = chat(client, **BASE, messages=ASK, tools=[WEATHER, ADD], tool_choice=NAMED)
    choice = body["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    message = choice["message"]
    assert message["content"] is None
    (call,) = message["tool_calls"]
    assert_valid_call(call, "get_weather")


def test_named_tool_call_streams_in_openai_shape(client: httpx.Client) -> None:
    chunks = stream_chat(client, **BASE, messages=ASK, tools=[WEATHER, ADD], tool_choice=NAMED)
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    calls = [d["tool_calls"] for d in deltas if d.get("tool_calls")]
    assert calls, deltas
    first, *rest = [item for items in calls for item in items]
    assert first["index"] == 0 and first["id"].startswith("call_")
    assert first["type"] == "function"
    assert first["function"] == {"name": "get_weather", "arguments": ""}
    assert rest, "arguments should come in later chunks"
    for item in rest:  # later chunks: only the index and an arguments fragment
        assert set(item) == {"index", "function"} and set(item["function"]) == {"arguments"}
        assert item["index"] == 0
    arguments = "".join(item["function"]["arguments"] for item in rest)
    jsonschema.validate(json.loads(arguments), WEATHER_PARAMS)
    assert not any(d.get("content") for d in deltas)
    assert chunk_finish(chunks) == "tool_calls"
    plain = chat(client, **BASE, messages=ASK, tools=[WEATHER, ADD], tool_choice=NAMED)
    assert plain["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"] == arguments


@pytest.mark.parametrize("prompt", [
    "What's the weather like in Paris today?",
    "What is 2 plus 40?",
    "Tell me a joke.",
])
def test_required_always_calls_a_tool(client: httpx.Client, prompt: str) -> None:
    body = chat(client, **BASE, messages=[{"role": "user", "content": prompt}],
                tools=[WEATHER, ADD], tool_choice="required", parallel_tool_calls=False)
    choice = body["choices"][0]
    assert choice["finish_reason"] == "tool_calls", choice
    (call,) = choice["message"]["tool_calls"]
    assert_valid_call(call)


def test_none_never_calls(client: httpx.Client) -> None:
    body = chat(client, **{**BASE, "max_tokens": 24}, messages=ASK, tools=[WEATHER],
                tool_choice="none")
    choice = body["choices"][0]
    assert "tool_calls" not in choice["message"] and choice["finish_reason"] != "tool_calls"
    assert isinstance(choice["message"]["content"], str) and choice["message"]["content"]


def test_legacy_function_call(client: httpx.Client) -> None:
    request = dict(**BASE, messages=ASK, functions=[WEATHER["function"]],
                   function_call={"name": "get_weather"})
    body = chat(client, **request)
    choice = body["choices"][0]
    assert choice["finish_reason"] == "function_call"
    call = choice["message"]["function_call"]
    assert call["name"] == "get_weather" and "tool_calls" not in choice["message"]
    jsonschema.validate(json.loads(call["arguments"]), WEATHER_PARAMS)

    chunks = stream_chat(client, **request)
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    parts = [d["function_call"] for d in deltas if "function_call" in d]
    assert parts[0] == {"name": "get_weather", "arguments": ""}
    assert all(set(p) == {"arguments"} for p in parts[1:])
    assert "".join(p["arguments"] for p in parts) == call["arguments"]
    assert chunk_finish(chunks) == "function_call"


def test_two_turns_with_a_tool_result(client: httpx.Client) -> None:
    first = chat(client, **BASE, messages=ASK, tools=[WEATHER], tool_choice="required")
    message = first["choices"][0]["message"]
    (call,) = message["tool_calls"]
    history = [*ASK, message,
               {"role": "tool", "tool_call_id": call["id"],
                "content": json.dumps({"temperature": 21, "unit": "celsius", "sky": "sunny"})}]
    second = chat(client, **{**BASE, "max_tokens": 32}, messages=history, tools=[WEATHER])
    choice = second["choices"][0]
    assert choice["finish_reason"] in ("stop", "length", "tool_calls")
    answer = choice["message"]
    assert answer["content"] or answer.get("tool_calls")


def test_legacy_function_result_in_history(client: httpx.Client) -> None:
    history = [*ASK,
               {"role": "assistant", "content": None,
                "function_call": {"name": "get_weather",
                                  "arguments": '{"city": "Paris", "unit": "celsius"}'}},
               {"role": "function", "name": "get_weather", "content": '{"temperature": 21}'}]
    body = chat(client, **{**BASE, "max_tokens": 24}, messages=history,
                functions=[WEATHER["function"]], function_call="none")
    choice = body["choices"][0]
    assert choice["message"]["content"] and "function_call" not in choice["message"]


def test_openai_client_tool_call(base_url: str) -> None:
    client = OpenAI(base_url=f"{base_url}/v1", api_key="sk-none", max_retries=0)
    reply = client.chat.completions.create(model=MODEL, messages=ASK, tools=[WEATHER],
                                           tool_choice="required", temperature=0, max_tokens=48)
    call = reply.choices[0].message.tool_calls[0]
    assert reply.choices[0].finish_reason == "tool_calls"
    jsonschema.validate(json.loads(call.function.arguments), WEATHER_PARAMS)

    stream = client.chat.completions.create(model=MODEL, messages=ASK, tools=[WEATHER],
                                            tool_choice="required", temperature=0,
                                            max_tokens=48, stream=True)
    arguments = "".join(tc.function.arguments or "" for chunk in stream for choice in
                        chunk.choices for tc in choice.delta.tool_calls or [])
    assert arguments == call.function.arguments


@pytest.mark.parametrize(("extra", "param"), [
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}},
     "tool_choice"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tools": [WEATHER], "functions": [WEATHER["function"]]}, "functions"),
    ({"tools": [{"type": "function", "function": {"name": "bad name!"}}]},
     "tools[0].function.name"),
    ({"tools": [{"type": "function", "function": {
        "name": "zip", "parameters": {"type": "object", "properties": {
            "code": {"type": "string", "pattern": "^[0-9]{5}$"}}}}}],
      "tool_choice": "required"}, "tools[0].function.parameters"),
    ({"messages": [*ASK, {"role": "tool", "content": "21"}]}, "messages[1].tool_call_id"),
])
def test_bad_tool_requests_are_400(client: httpx.Client, extra: dict[str, Any],
                                   param: str) -> None:
    response = client.post("/v1/chat/completions", json={**BASE, "messages": ASK, **extra})
    error = assert_error(response, 400, type="invalid_request_error", param=param)
    if "pattern" in json.dumps(extra):
        assert "pattern" in error["message"]
