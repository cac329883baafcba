"""POST /v1/completions, the legacy text endpoint."""

from __future__ import annotations

import httpx
from openai import OpenAI

from tests.openapi import validate

from .helpers import complete, stream_complete, validate_completion_chunk

MODEL = "gpt-3.5-turbo"
# A prompt the model keeps continuing: it does not stop within 16 tokens.
COUNTING = "1, 2, 3, 4, 5, 6,"


def test_string_prompt(client: httpx.Client) -> None:
    body = complete(client, model=MODEL, prompt=COUNTING, max_tokens=8, temperature=0)
    assert body["object"] == "text_completion" and body["model"] == MODEL
    (choice,) = body["choices"]
    assert choice["index"] == 0 and choice["text"].strip()
    assert choice["finish_reason"] == "length"
    usage = body["usage"]
    assert usage["completion_tokens"] == 8
    assert usage["total_tokens"] == usage["prompt_tokens"] + 8


def test_two_prompts_with_n_two_give_four_choices(client: httpx.Client) -> None:
    prompts = [COUNTING, "def add(a, b):"]
    body = complete(client, model=MODEL, prompt=prompts, n=2, max_tokens=6, temperature=0)
    choices = body["choices"]
    assert [c["index"] for c in choices] == [0, 1, 2, 3]
    texts = [c["text"] for c in choices]
    # choices are grouped by prompt; greedy choices of one prompt are equal
    assert texts[0] == texts[1] and texts[2] == texts[3] and texts[0] != texts[2]
    alone = complete(client, model=MODEL, prompt=prompts[1], max_tokens=6, temperature=0)
    assert alone["choices"][0]["text"] == texts[2]
    assert choices[0]["finish_reason"] == choices[1]["finish_reason"] == "length"
    usage = body["usage"]
    assert usage["completion_tokens"] == 2 * 6 + 2 * alone["usage"]["completion_tokens"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_echo_prefixes_the_prompt(client: httpx.Client) -> None:
    plain = complete(client, model=MODEL, prompt=COUNTING, max_tokens=4, temperature=0)
    echoed = complete(client, model=MODEL, prompt=COUNTING, max_tokens=4, temperature=0,
                      echo=True)
    assert echoed["choices"][0]["text"] == COUNTING + plain["choices"][0]["text"]


def test_default_max_tokens_is_16(client: httpx.Client) -> None:
    body = complete(client, model=MODEL, prompt=COUNTING, temperature=0)
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 16


def test_stream_matches_non_stream(client: httpx.Client) -> None:
    request = dict(model=MODEL, prompt=COUNTING, max_tokens=8, temperature=0)
    plain = complete(client, **request)
    chunks = stream_complete(client, **request, stream_options={"include_usage": True})
    *content, last = chunks
    assert last["choices"] == [] and last["usage"] == plain["usage"]
    assert "".join(c["choices"][0]["text"] for c in content) == plain["choices"][0]["text"]
    finishes = [c["choices"][0]["finish_reason"] for c in content]
    assert finishes[-1] == "length" and not any(finishes[:-1])
    assert all(c["object"] == "text_completion" and c["id"] == content[0]["id"] for c in content)


def test_openai_client_completions(base_url: str) -> None:
    client = OpenAI(base_url=f"{base_url}/v1", api_key="sk-none", max_retries=0)
    reply = client.completions.create(model=MODEL, prompt=COUNTING, max_tokens=6, temperature=0)
    validate("CreateCompletionResponse", reply.model_dump(mode="json", exclude_unset=True))
    assert reply.object == "text_completion"
    assert reply.choices[0].text.strip() and reply.choices[0].finish_reason == "length"
    assert reply.usage is not None and reply.usage.completion_tokens == 6

    stream = client.completions.create(model=MODEL, prompt=COUNTING, max_tokens=6,
                                       temperature=0, stream=True)
    chunks = [chunk.model_dump(mode="json", exclude_unset=True) for chunk in stream]
    for chunk in chunks:
        validate_completion_chunk(chunk)
    assert "".join(c["choices"][0]["text"] for c in chunks) == reply.choices[0].text
