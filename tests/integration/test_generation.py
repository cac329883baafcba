"""What users notice about generated text: streaming, concurrency, limits, stops, n, seeds,
and UTF-8."""

from __future__ import annotations

import re
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from .helpers import (
    REQUEST_TIMEOUT_S,
    STORY,
    chat,
    chunk_finish,
    chunk_text,
    health,
    stream_chat,
    text_of,
    wait_idle,
)

MODEL = "gpt-3.5-turbo"
GREEDY = dict(model=MODEL, messages=STORY, max_tokens=24, temperature=0)
SAMPLED = dict(model=MODEL, max_tokens=12, temperature=1,
               messages=[{"role": "user", "content": "Name a random animal and say one thing "
                                                     "about it."}])


@pytest.fixture(scope="module")
def greedy(base_url: str) -> dict[str, Any]:
    """The greedy answer to GREEDY, generated alone on an idle server."""
    with httpx.Client(base_url=base_url, timeout=REQUEST_TIMEOUT_S) as http:
        wait_idle(http, timeout=30)
        body = chat(http, **GREEDY)
    assert body["choices"][0]["finish_reason"] == "length", "the story should run past 24 tokens"
    assert body["usage"]["completion_tokens"] == 24
    return body


def test_stream_gives_the_same_text_as_non_stream(client: httpx.Client,
                                                  greedy: dict[str, Any]) -> None:
    chunks = stream_chat(client, **GREEDY)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunk_text(chunks) == text_of(greedy)
    assert chunk_finish(chunks) == greedy["choices"][0]["finish_reason"]
    assert len({c["id"] for c in chunks}) == 1


def test_concurrent_identical_greedy_requests_match_the_lone_one(
        client: httpx.Client, greedy: dict[str, Any]) -> None:
    with ThreadPoolExecutor(max_workers=8) as pool:
        futures = [pool.submit(chat, client, **GREEDY) for _ in range(8)]
        most_running = 0
        while not all(f.done() for f in futures):
            most_running = max(most_running, health(client)["running"])
            time.sleep(0.05)
        bodies = [f.result() for f in futures]
    assert most_running >= 2, "the requests never ran together"
    texts = [text_of(body) for body in bodies]
    assert len(set(texts)) == 1, texts
    assert texts[0] == text_of(greedy)
    assert {b["usage"]["completion_tokens"] for b in bodies} == {24}
    assert len({b["id"] for b in bodies}) == 8


@pytest.mark.parametrize("limit", ["max_tokens", "max_completion_tokens"])
def test_token_limit_ends_with_length(client: httpx.Client, greedy: dict[str, Any],
                                      limit: str) -> None:
    request = {key: value for key, value in GREEDY.items() if key != "max_tokens"}
    body = chat(client, **request, **{limit: 5})
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 5
    text = text_of(body)
    assert text and text_of(greedy).startswith(text)


def _stop_inside(text: str) -> str:
    """A word from the second half of `text`, to use as a stop string."""
    words = re.findall(r"[A-Za-z]{3,}", text[len(text) // 2:])
    assert words, f"no word to stop at in {text!r}"
    return words[0]


def test_stop_string_ends_the_text_before_it(client: httpx.Client,
                                             greedy: dict[str, Any]) -> None:
    full = text_of(greedy)
    stop = _stop_inside(full)
    expected = full[:full.index(stop)]

    body = chat(client, **GREEDY, stop=[stop, "never-in-the-text"])
    assert body["choices"][0]["finish_reason"] == "stop"
    assert text_of(body) == expected
    assert stop not in text_of(body)
    assert body["usage"]["completion_tokens"] < 24

    chunks = stream_chat(client, **GREEDY, stop=stop)
    assert chunk_finish(chunks) == "stop"
    assert chunk_text(chunks) == expected
    assert all(stop not in (c["choices"][0]["delta"].get("content") or "") for c in chunks)


def test_n_greedy_choices_are_equal_and_counted(client: httpx.Client,
                                                greedy: dict[str, Any]) -> None:
    body = chat(client, **GREEDY, n=2)
    assert [c["index"] for c in body["choices"]] == [0, 1]
    assert text_of(body, 0) == text_of(body, 1) == text_of(greedy)
    usage = body["usage"]
    assert usage["prompt_tokens"] == greedy["usage"]["prompt_tokens"]
    assert usage["completion_tokens"] == 2 * greedy["usage"]["completion_tokens"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_n_sampled_choices_stream_with_their_indexes(client: httpx.Client) -> None:
    chunks = stream_chat(client, **SAMPLED, n=2, seed=7, stream_options={"include_usage": True})
    *content, last = chunks
    assert last["choices"] == [] and last["usage"] is not None
    assert all(c["usage"] is None for c in content)
    assert {choice["index"] for c in content for choice in c["choices"]} == {0, 1}
    finishes = [chunk_finish(content, i) for i in (0, 1)]
    assert all(chunk_text(content, i) for i in (0, 1))
    usage = last["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    if finishes == ["length", "length"]:
        assert usage["completion_tokens"] == 2 * SAMPLED["max_tokens"]
    else:
        assert 2 <= usage["completion_tokens"] < 2 * SAMPLED["max_tokens"]


def test_same_seed_repeats_the_text(client: httpx.Client) -> None:
    first, again = (text_of(chat(client, **SAMPLED, seed=1234)) for _ in range(2))
    assert first == again


def test_different_seeds_give_different_texts(client: httpx.Client) -> None:
    texts = {text_of(chat(client, **SAMPLED, seed=seed)) for seed in (1, 2, 3)}
    assert len(texts) > 1, f"three seeds gave one text: {texts}"


def test_chinese_streams_whole_characters(client: httpx.Client) -> None:
    chunks = stream_chat(client, model=MODEL, max_tokens=24, temperature=0,
                         messages=[{"role": "user", "content": "请用中文简单介绍一下北京。"}])
    pieces = [c["choices"][0]["delta"].get("content") or "" for c in chunks]
    assert not [p for p in pieces if "\ufffd" in p], pieces
    text = "".join(pieces)
    assert len(re.findall(r"[\u4e00-\u9fff]", text)) >= 5, text
