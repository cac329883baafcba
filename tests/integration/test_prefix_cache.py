"""Prefix reuse: a follow-up turn reuses the first turn's KV and says so in `cached_tokens`,
and greedy output is the same as on a server that recomputes everything."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from .helpers import REQUEST_TIMEOUT_S, chat, temp_server, text_of

DOC = (
    "chatapi is a self-hosted implementation of the OpenAI ChatCompletion API. An application "
    "written for OpenAI points its base URL at chatapi and works unchanged, answered by an open "
    "model running locally. Requests are validated, rendered through the model's chat template, "
    "tokenized and handed to an engine thread that owns llama.cpp. The scheduler admits requests "
    "first come first served, decodes every running sequence in one batched call per step, and "
    "keeps the KV cache of finished requests so that a follow-up turn only pays for its new "
    "tokens. Streaming uses server-sent events; errors use OpenAI's error object. "
) * 3


def first_turn() -> list[dict[str, str]]:
    return [{"role": "system", "content": "You are a concise assistant."},
            {"role": "user", "content": f"Read this:\n{DOC}\nWhat does the scheduler do?"}]


@pytest.fixture(scope="module")
def uncached_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with temp_server(tmp_path_factory, "nocache", "--parallel", "4", "--no-prefix-cache") as url:
        yield url


def conversation(client: httpx.Client) -> tuple[dict, dict, list[dict[str, str]]]:
    messages = first_turn()
    one = chat(client, model="gpt-4o", messages=messages, temperature=0, max_tokens=16)
    messages += [{"role": "assistant", "content": text_of(one)},
                 {"role": "user", "content": "And what happens to finished requests?"}]
    two = chat(client, model="gpt-4o", messages=messages, temperature=0, max_tokens=16)
    return one, two, messages


def test_follow_up_turn_reuses_the_first_turn(client: httpx.Client) -> None:
    one, two, _ = conversation(client)
    first_prompt = one["usage"]["prompt_tokens"]
    cached = two["usage"]["prompt_tokens_details"]["cached_tokens"]
    assert first_prompt > 200
    # The whole first prompt is shared and reused; the first reply's tokens are computed again
    # (their KV came from one-token steps, whose numbers differ from a prompt chunk's).
    assert cached == first_prompt


def test_greedy_text_is_the_same_without_the_prefix_cache(client: httpx.Client,
                                                          uncached_url: str) -> None:
    _, cached_answer, messages = conversation(client)
    with httpx.Client(base_url=uncached_url, timeout=REQUEST_TIMEOUT_S) as other:
        fresh = chat(other, model="gpt-4o", messages=messages, temperature=0, max_tokens=16)
    assert fresh["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    assert text_of(fresh) == text_of(cached_answer)


def test_sixteen_concurrent_identical_requests_agree(client: httpx.Client) -> None:
    body = {"model": "gpt-4o", "temperature": 0, "max_tokens": 12,
            "messages": [{"role": "user", "content": "Name three prime numbers."}]}
    with ThreadPoolExecutor(16) as pool:
        texts = list(pool.map(lambda _: text_of(chat(client, **body)), range(16)))
    assert len(set(texts)) == 1
