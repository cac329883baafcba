"""The content policy with the real model: prompts refused before the engine, generation stopped
with finish_reason "content_filter" before a blocked term reaches the client, and
/v1/moderations agreeing with both."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.openapi import validate

from .helpers import (
    REQUEST_TIMEOUT_S,
    assert_error,
    chat,
    chunk_finish,
    chunk_text,
    running_server,
    stream_chat,
    thread_args,
    wait_idle,
)

# "pineapple" stands in for a term nobody may be shown: a prompt may ask for it (input: allow),
# but generated text containing it is stopped (output: block).
POLICY = """
[categories.violence]
terms = ["kill you", "杀了你"]

[categories.illicit]
terms = ["pineapple"]
input = "allow"
output = "block"
"""
REPEAT = [{"role": "user",
           "content": "Repeat this sentence exactly, nothing else: I like pineapple pizza."}]


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    folder = tmp_path_factory.mktemp("content-filter")
    policy = folder / "policy.toml"
    policy.write_text(POLICY, encoding="utf-8")
    args = ["--parallel", "2", "--ctx-size", "1024", "--moderation-policy", str(policy),
            *thread_args()]
    with running_server(folder / "server.log", *args) as url, \
            httpx.Client(base_url=url, timeout=REQUEST_TIMEOUT_S) as http:
        yield http


@pytest.fixture(autouse=True)
def idle(client: httpx.Client) -> None:
    wait_idle(client, timeout=30)


def moderate(client: httpx.Client, data: object) -> dict:
    response = client.post("/v1/moderations", json={"input": data})
    assert response.status_code == 200, response.text
    body = response.json()
    validate("CreateModerationResponse", body)
    return body


@pytest.mark.parametrize("text", ["I will KILL YOU.", "Ｉ ｗｉｌｌ ｋｉｌｌ ｙｏｕ", "我要杀了你"])
def test_flagged_prompt_is_refused_before_the_engine(client: httpx.Client, text: str) -> None:
    response = client.post("/v1/chat/completions", json={
        "model": "gpt-3.5-turbo", "max_tokens": 4,
        "messages": [{"role": "system", "content": "Be nice."},
                     {"role": "user", "content": text}]})
    error = assert_error(response, 400, code="content_filter", param="messages")
    result = error["innererror"]["content_filter_result"]
    assert result["violence"] == {"filtered": True, "detected": True}
    assert result["illicit"] == {"filtered": False, "detected": False}
    assert client.get("/health").json()["running"] == 0
    assert moderate(client, text)["results"][0]["categories"]["violence"] is True


def test_streamed_output_stops_before_the_blocked_term(client: httpx.Client) -> None:
    chunks = stream_chat(client, model="gpt-3.5-turbo", messages=REPEAT, max_tokens=16,
                         temperature=0, stream_options={"include_usage": True})
    text = chunk_text(chunks)
    assert chunk_finish(chunks) == "content_filter"
    assert "pineapple" not in text.lower()
    assert text.lower().startswith("i like")
    usage = chunks[-1]["usage"]
    assert 0 < usage["completion_tokens"] < 16  # what was generated, up to the blocked term
    assert not moderate(client, text)["results"][0]["flagged"]
    wait_idle(client, timeout=5)  # the sequence was aborted, its slot is free


def test_output_stops_the_same_way_without_streaming(client: httpx.Client) -> None:
    data = chat(client, model="gpt-3.5-turbo", messages=REPEAT, max_tokens=16, temperature=0)
    choice = data["choices"][0]
    assert choice["finish_reason"] == "content_filter"
    assert "pineapple" not in choice["message"]["content"].lower()
    assert 0 < data["usage"]["completion_tokens"] < 16
    streamed = chunk_text(stream_chat(client, model="gpt-3.5-turbo", messages=REPEAT,
                                      max_tokens=16, temperature=0))
    assert choice["message"]["content"] == streamed


def test_clean_output_is_untouched(client: httpx.Client) -> None:
    data = chat(client, model="gpt-3.5-turbo", max_tokens=8, temperature=0,
                messages=[{"role": "user", "content": "Say hello."}])
    assert data["choices"][0]["finish_reason"] in ("stop", "length")
    assert data["choices"][0]["message"]["content"]


def test_moderations_endpoint_uses_the_policy(client: httpx.Client) -> None:
    body = moderate(client, ["I like PINEAPPLE pizza", "ｐｉｎｅａｐｐｌｅ", "pineapples",
                             "a clean sentence"])
    flagged = [r["flagged"] for r in body["results"]]
    assert flagged == [True, True, False, False]  # whole words only
    first = body["results"][0]
    assert first["categories"]["illicit"] is True and first["category_scores"]["illicit"] == 1.0
    assert first["categories"]["violence"] is False
    parts = moderate(client, [{"type": "text", "text": "I will kill"},
                              {"type": "text", "text": "you"}])
    assert len(parts["results"]) == 1 and not parts["results"][0]["flagged"]  # each on its own
    parts = moderate(client, [{"type": "text", "text": "hello"},
                              {"type": "text", "text": "kill you"}])
    assert parts["results"][0]["categories"]["violence"] is True
    image = client.post("/v1/moderations", json={"input": [
        {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]})
    assert_error(image, 400, param="input[0]")


def test_a_megabyte_is_moderated_in_well_under_a_second(client: httpx.Client) -> None:
    text = "ｋｉｌｌ ｙｏ" * 100_000 + " kill you"
    assert len(text.encode()) > 1_000_000
    started = time.monotonic()
    body = moderate(client, text)
    elapsed = time.monotonic() - started
    assert body["results"][0]["categories"]["violence"] is True
    assert elapsed < 1.0, elapsed


def test_without_a_policy_nothing_is_flagged(base_url: str) -> None:
    with httpx.Client(base_url=base_url, timeout=REQUEST_TIMEOUT_S) as plain:
        body = moderate(plain, "I will kill you")
    assert body["model"] == "chatapi-no-policy" and not body["results"][0]["flagged"]


def test_policy_file_errors_stop_the_server(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[categories.violent]\nterms = ['x']\n", encoding="utf-8")
    with pytest.raises(pytest.fail.Exception, match="unknown category"), \
            running_server(tmp_path / "server.log", "--moderation-policy", str(bad)):
        pass


def test_legacy_completions_are_filtered_too(client: httpx.Client) -> None:
    refused = client.post("/v1/completions", json={
        "model": "gpt-3.5-turbo", "prompt": "I will kill you", "max_tokens": 4})
    assert_error(refused, 400, code="content_filter", param="prompt")
    response = client.post("/v1/completions", json={
        "model": "gpt-3.5-turbo", "max_tokens": 16, "temperature": 0,
        "prompt": "I like pineapple pizza. I like pineapple pizza. I like"})
    assert response.status_code == 200, response.text
    choice = response.json()["choices"][0]
    assert choice["finish_reason"] == "content_filter"
    assert "pineapple" not in choice["text"].lower()
