"""Structured outputs with the real default model: response_format json_object and json_schema
constrain decoding, so the content always parses (and validates) whatever the prompt."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import jsonschema
import pytest

from .helpers import assert_error, chat, chunk_finish, chunk_text, stream_chat

MODEL = "gpt-3.5-turbo"
TOPICS = ["a cat", "the planet Mars", "a pizza", "the city of Tokyo", "a bicycle",
          "Albert Einstein", "a thunderstorm", "the Python language", "a violin", "coffee"]
PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 24},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "hobbies": {"type": "array", "items": {"type": "string", "maxLength": 16},
                    "maxItems": 3},
        "vegetarian": {"type": "boolean"},
    },
    "required": ["name", "age", "hobbies", "vegetarian"],
    "additionalProperties": False,
}
SCHEMA_FORMAT = {"type": "json_schema",
                 "json_schema": {"name": "person", "schema": PERSON, "strict": True}}


def _all(client: httpx.Client, bodies: list[dict[str, Any]]) -> list[dict[str, Any]]:
    with ThreadPoolExecutor(max_workers=len(bodies)) as pool:
        return list(pool.map(lambda body: chat(client, **body), bodies))


def test_json_object_parses_for_ten_prompts(client: httpx.Client) -> None:
    bodies = [dict(model=MODEL, temperature=0, max_tokens=160,
                   response_format={"type": "json_object"},
                   messages=[{"role": "system", "content": "Reply with a short JSON object."},
                             {"role": "user", "content": "Give the name and the usual color "
                                                         f"of {topic}."}])
              for topic in TOPICS]
    for topic, body in zip(TOPICS, _all(client, bodies), strict=True):
        choice = body["choices"][0]
        assert choice["finish_reason"] == "stop", (topic, choice)
        assert isinstance(json.loads(choice["message"]["content"]), dict), topic


def test_json_schema_validates_for_ten_prompts(client: httpx.Client) -> None:
    bodies = [dict(model=MODEL, temperature=0, max_tokens=120, response_format=SCHEMA_FORMAT,
                   messages=[{"role": "user",
                              "content": f"Invent a person who loves {topic}."}])
              for topic in TOPICS]
    for topic, body in zip(TOPICS, _all(client, bodies), strict=True):
        choice = body["choices"][0]
        assert choice["finish_reason"] == "stop", (topic, choice)
        jsonschema.validate(json.loads(choice["message"]["content"]), PERSON)


def test_json_schema_streamed(client: httpx.Client) -> None:
    request = dict(model=MODEL, temperature=0, max_tokens=120, response_format=SCHEMA_FORMAT,
                   messages=[{"role": "user", "content": "Invent a chess player."}])
    chunks = stream_chat(client, **request)
    assert chunk_finish(chunks) == "stop"
    jsonschema.validate(json.loads(chunk_text(chunks)), PERSON)


def test_nested_schema_with_refs_and_enums(client: httpx.Client) -> None:
    schema = {
        "$defs": {"step": {"type": "object", "properties": {
            "action": {"enum": ["mix", "bake", "serve"]},
            "minutes": {"type": "integer", "minimum": 1, "maximum": 90}},
            "required": ["action", "minutes"], "additionalProperties": False}},
        "type": "object",
        "properties": {"dish": {"type": "string", "maxLength": 30},
                       "steps": {"type": "array", "items": {"$ref": "#/$defs/step"},
                                 "minItems": 1, "maxItems": 3}},
        "required": ["dish", "steps"], "additionalProperties": False,
    }
    body = chat(client, model=MODEL, temperature=0, max_tokens=120,
                messages=[{"role": "user", "content": "A recipe for a cake."}],
                response_format={"type": "json_schema",
                                 "json_schema": {"name": "recipe", "schema": schema}})
    assert body["choices"][0]["finish_reason"] == "stop"
    jsonschema.validate(json.loads(body["choices"][0]["message"]["content"]), schema)


@pytest.mark.parametrize(("schema", "feature"), [
    ({"type": "object", "properties": {"zip": {"type": "string", "pattern": "^[0-9]{5}$"}}},
     "pattern"),
    ({"type": "array", "items": {"type": "integer"}, "uniqueItems": True}, "uniqueItems"),
    ({"type": "object", "properties": {"x": {"$ref": "https://example.com/x.json"}}}, "$ref"),
])
def test_unsupported_schema_feature_is_a_400_naming_it(client: httpx.Client,
                                                       schema: dict[str, Any],
                                                       feature: str) -> None:
    response = client.post("/v1/chat/completions", json={
        "model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4,
        "response_format": {"type": "json_schema", "json_schema": {"name": "x",
                                                                    "schema": schema}}})
    error = assert_error(response, 400, type="invalid_request_error",
                         param="response_format.json_schema.schema")
    assert feature in error["message"]


def test_response_format_text_and_bad_type(client: httpx.Client) -> None:
    body = chat(client, model=MODEL, temperature=0, max_tokens=4,
                messages=[{"role": "user", "content": "hi"}], response_format={"type": "text"})
    assert body["choices"][0]["message"]["content"]
    response = client.post("/v1/chat/completions", json={
        "model": MODEL, "messages": [{"role": "user", "content": "hi"}],
        "response_format": {"type": "xml"}})
    assert_error(response, 400, param="response_format")
