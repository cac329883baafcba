"""Conversations longer than the context, with the real model behind a server whose context is
512 tokens and whose default is `--truncation auto`."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from .helpers import (
    REQUEST_TIMEOUT_S,
    assert_error,
    chat,
    running_server,
    stream_chat,
    thread_args,
    wait_idle,
)

CTX = 512
MAX_TOKENS = 8
SYSTEM = {"role": "system", "content": "You are a helpful assistant. Answer briefly."}
CODEWORD = {"role": "user", "content": "Reply with only this word, in capitals: PAPAYA"}


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    log = tmp_path_factory.mktemp("truncation") / "server.log"
    args = ["--parallel", "2", "--ctx-size", str(CTX), "--truncation", "auto", *thread_args()]
    with running_server(log, *args) as url, \
            httpx.Client(base_url=url, timeout=REQUEST_TIMEOUT_S) as http:
        yield http


@pytest.fixture(autouse=True)
def idle(client: httpx.Client) -> None:
    wait_idle(client, timeout=30)


def conversation(turns: int = 40) -> list[dict[str, Any]]:
    """A 40-turn chat history (about 1,500 tokens) ending with a question about a codeword."""
    colors = ["red", "green", "blue", "yellow", "purple"]
    messages = [SYSTEM]
    for i in range(turns):
        color = colors[i % len(colors)]
        messages.append({"role": "user", "content": f"Box {i} is {color}. Remember that."})
        messages.append({"role": "assistant", "content": f"Noted: box {i} is {color}."})
    return [*messages, CODEWORD]


def body(messages: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {"model": "gpt-3.5-turbo", "messages": messages, "max_tokens": MAX_TOKENS,
            "temperature": 0, **extra}


def test_disabled_is_openais_context_length_error(client: httpx.Client) -> None:
    response = client.post("/v1/chat/completions",
                           json=body(conversation(), truncation="disabled"))
    error = assert_error(response, 400, type="invalid_request_error",
                         code="context_length_exceeded", param="messages")
    assert f"maximum context length is {CTX} tokens" in error["message"]


def test_auto_keeps_a_40_turn_conversation_working(client: httpx.Client) -> None:
    messages = conversation()
    response = client.post("/v1/chat/completions", json=body(messages))  # the server default
    assert response.status_code == 200, response.text
    data = response.json()
    report = data["chatapi"]
    assert report["truncation"] == "auto" and report["truncated_from"] == 1
    dropped = report["truncated_messages"]
    assert dropped > 0 and dropped % 2 == 0  # whole turns: a user message and its answer
    assert response.headers["x-chatapi-truncated-messages"] == str(dropped)
    usage = data["usage"]
    assert usage["prompt_tokens"] + MAX_TOKENS <= CTX
    assert "PAPAYA" in data["choices"][0]["message"]["content"].upper()

    # The model saw exactly the system message and the turns after the dropped ones: the
    # same messages sent untruncated make a prompt of the same length.
    kept = messages[:1] + messages[1 + dropped:]
    assert kept[0] == SYSTEM and kept[-1] == CODEWORD
    same = chat(client, **body(kept, truncation="disabled"))
    assert same["usage"]["prompt_tokens"] == usage["prompt_tokens"]
    assert "chatapi" not in same
    # and no more was dropped than needed: two more messages would not fit
    more = messages[:1] + messages[dropped - 1:]
    assert_error(client.post("/v1/chat/completions", json=body(more, truncation="disabled")),
                 400, code="context_length_exceeded")


def test_auto_streams_with_the_header(client: httpx.Client) -> None:
    with client.stream("POST", "/v1/chat/completions",
                       json=body(conversation(), stream=True)) as response:
        assert response.status_code == 200
        assert int(response.headers["x-chatapi-truncated-messages"]) > 0
        response.read()
    chunks = stream_chat(client, **body(conversation(), stream_options={"include_usage": True}))
    assert chunks[-1]["usage"]["prompt_tokens"] + MAX_TOKENS <= CTX


def test_summarize_replaces_dropped_turns_and_caches_the_summary(client: httpx.Client) -> None:
    messages = conversation()
    started = time.monotonic()
    first = chat(client, **body(messages, truncation="summarize"))
    cold = time.monotonic() - started
    report = first["chatapi"]
    assert report["truncation"] == "summarize" and report["truncated_messages"] > 0
    assert report["summary_tokens"] > 0 and report["summary_cached"] is False
    assert first["usage"]["prompt_tokens"] + MAX_TOKENS <= CTX
    assert "PAPAYA" in first["choices"][0]["message"]["content"].upper()

    started = time.monotonic()
    again = chat(client, **body(messages, truncation="summarize"))
    warm = time.monotonic() - started
    assert again["chatapi"]["summary_cached"] is True
    assert again["chatapi"]["summary_tokens"] == report["summary_tokens"]
    assert again["usage"]["prompt_tokens"] == first["usage"]["prompt_tokens"]
    assert warm < cold

    # the next turn of the same conversation keeps working
    longer = [*messages, {"role": "assistant", "content": "PAPAYA"},
              {"role": "user", "content": "Now reply with only the word: MANGO"}]
    nxt = chat(client, **body(longer, truncation="summarize"))
    assert nxt["chatapi"]["truncated_messages"] >= report["truncated_messages"]
    assert nxt["usage"]["prompt_tokens"] + MAX_TOKENS <= CTX
    assert "MANGO" in nxt["choices"][0]["message"]["content"].upper()


def test_what_must_be_kept_does_not_fit(client: httpx.Client) -> None:
    long_question = {"role": "user", "content": "Tell me about this: " + "lorem ipsum " * 300}
    response = client.post("/v1/chat/completions",
                           json=body([*conversation(5)[:-1], long_question]))
    error = assert_error(response, 400, code="context_length_exceeded", param="messages")
    assert "latest user message" in error["message"]
    assert f"maximum context length is {CTX} tokens" in error["message"]


def test_a_bad_truncation_value_is_a_400(client: httpx.Client) -> None:
    response = client.post("/v1/chat/completions",
                           json=body(conversation(1), truncation="sometimes"))
    assert_error(response, 400, param="truncation")
