"""Logprobs (chat and legacy), logit_bias, the sampling extensions, best_of and suffix, with the
real default model."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from tests.openapi import validate

from .helpers import assert_error, chat, chunk_text, sse_events, stream_chat, text_of

MODEL = "gpt-3.5-turbo"
HI = [{"role": "user", "content": "Say hello to the world."}]
GREEDY = dict(model=MODEL, messages=HI, temperature=0, max_tokens=8)
COUNTING = "1, 2, 3, 4, 5, 6,"


@pytest.fixture(scope="module")
def token_id() -> Iterator[Callable[[str], int]]:
    """The default model's id of a one-token text (its vocabulary only, loaded here)."""
    import llama_cpp as lc

    from chatapi.models.default import ensure_default_model

    params = lc.llama_model_default_params()
    params.vocab_only = True
    model = lc.llama_model_load_from_file(str(ensure_default_model(progress=False)).encode(),
                                          params)
    vocab = lc.llama_model_get_vocab(model)

    def lookup(text: str) -> int:
        raw = text.encode()
        buf = (lc.llama_token * 16)()
        n = lc.llama_tokenize(vocab, raw, len(raw), buf, len(buf), False, False)
        assert n == 1, f"{text!r} is {n} tokens"
        return buf[0]

    yield lookup
    lc.llama_model_free(model)


def completion_body(body: dict[str, Any]) -> None:
    """OpenAI returns null for the first echoed token's logprob, which the published schema
    does not allow for (as with stream finish_reason null): validate the rest."""
    choices = []
    for choice in body["choices"]:
        lp = choice.get("logprobs")
        if lp:
            lp = {**lp, "token_logprobs": [0.0 if v is None else v for v in lp["token_logprobs"]],
                  "top_logprobs": [{} if v is None else v for v in lp["top_logprobs"]]}
        choices.append({**choice, "logprobs": lp, "finish_reason": choice["finish_reason"]
                        or "stop"})
    validate("CreateCompletionResponse", {**body, "choices": choices})


def legacy(client: httpx.Client, **request: Any) -> dict[str, Any]:
    response = client.post("/v1/completions", json={"model": MODEL, **request})
    assert response.status_code == 200, response.text
    body = response.json()
    completion_body(body)
    return body


# --- chat ---------------------------------------------------------------------------------------

def test_top_logprobs_gives_alternatives_below_the_greedy_choice(client: httpx.Client) -> None:
    body = chat(client, **GREEDY, logprobs=True, top_logprobs=3)
    content = body["choices"][0]["logprobs"]["content"]
    assert len(content) == body["usage"]["completion_tokens"]
    assert "".join(entry["token"] for entry in content) == text_of(body)
    for entry in content:
        assert entry["logprob"] <= 0 and bytes(entry["bytes"]) == entry["token"].encode()
        top = entry["top_logprobs"]
        assert len(top) == 3
        assert all(entry["logprob"] >= alt["logprob"] - 1e-6 for alt in top)
        assert top[0]["token"] == entry["token"]  # greedy: the most likely token
        assert [t["logprob"] for t in top] == sorted((t["logprob"] for t in top), reverse=True)


def test_logprobs_stream_per_chunk(client: httpx.Client) -> None:
    chunks = stream_chat(client, **GREEDY, logprobs=True, top_logprobs=2)
    entries = [entry for chunk in chunks for choice in chunk["choices"]
               if choice.get("logprobs") for entry in choice["logprobs"]["content"]]
    assert "".join(e["token"] for e in entries) == chunk_text(chunks)
    assert all(len(e["top_logprobs"]) == 2 for e in entries)
    plain = chat(client, **GREEDY, logprobs=True, top_logprobs=2)
    tokens = [e["token"] for e in plain["choices"][0]["logprobs"]["content"]]
    assert [e["token"] for e in entries] == tokens


def test_logprobs_off_by_default_and_zero_top(client: httpx.Client) -> None:
    assert chat(client, **GREEDY)["choices"][0]["logprobs"] is None
    content = chat(client, **GREEDY, logprobs=True)["choices"][0]["logprobs"]["content"]
    assert content and all(e["top_logprobs"] == [] for e in content)


@pytest.mark.parametrize(("extra", "param"), [
    ({"top_logprobs": 2}, "top_logprobs"),
    ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
])
def test_bad_logprobs_requests(client: httpx.Client, extra: dict, param: str) -> None:
    assert_error(client.post("/v1/chat/completions", json={**GREEDY, **extra}), 400,
                 param=param)


def test_logit_bias_minus_100_keeps_a_token_out(client: httpx.Client,
                                                token_id: Callable[[str], int]) -> None:
    plain = chat(client, **GREEDY, logprobs=True)
    first = plain["choices"][0]["logprobs"]["content"][0]["token"]
    banned = token_id(first)
    body = chat(client, **GREEDY, logprobs=True, logit_bias={str(banned): -100})
    tokens = [e["token"] for e in body["choices"][0]["logprobs"]["content"]]
    assert first not in tokens, (first, tokens)


def test_logit_bias_bad_keys_are_all_named(client: httpx.Client) -> None:
    bias = {"abc": 1, "-3": 1, "999999999": 1, "5": 1, "1.5": 2}
    error = assert_error(client.post("/v1/chat/completions", json={**GREEDY, "logit_bias": bias}),
                         400, type="invalid_request_error", param="logit_bias")
    for key in ("abc", "-3", "999999999", "1.5"):
        assert repr(key) in error["message"]
    assert "'5'" not in error["message"]
    assert re.search(r"\b151936\b", error["message"]), error["message"]


def test_sampling_extensions(client: httpx.Client) -> None:
    greedy = text_of(chat(client, **GREEDY))
    assert text_of(chat(client, **{**GREEDY, "temperature": 1.5, "top_k": 1})) == greedy
    assert text_of(chat(client, **{**GREEDY, "temperature": 1.5, "min_p": 1.0})) == greedy
    assert chat(client, **GREEDY, repetition_penalty=1.3)["choices"][0]["message"]["content"]
    # penalties once stopped the engine thread (a llama.cpp binding called with 4 of 5 args)
    assert text_of(chat(client, **GREEDY, presence_penalty=1.5, frequency_penalty=1.0))
    assert_error(client.post("/v1/chat/completions", json={**GREEDY, "min_p": 2}), 400,
                 param="min_p")


# --- legacy completions -------------------------------------------------------------------------

def test_legacy_logprobs_shape(client: httpx.Client) -> None:
    body = legacy(client, prompt=COUNTING, max_tokens=5, temperature=0, logprobs=2)
    choice = body["choices"][0]
    lp = choice["logprobs"]
    n = body["usage"]["completion_tokens"]
    assert len(lp["tokens"]) == len(lp["token_logprobs"]) == len(lp["top_logprobs"]) == n
    assert "".join(lp["tokens"]) == choice["text"]
    assert lp["text_offset"] == [sum(map(len, lp["tokens"][:i])) for i in range(n)]
    for token, logprob, top in zip(lp["tokens"], lp["token_logprobs"], lp["top_logprobs"],
                                   strict=True):
        assert token in top and 2 <= len(top) <= 3  # the sampled token is always listed
        assert logprob == max(top.values())


def test_legacy_echo_with_logprobs_scores_the_prompt(client: httpx.Client) -> None:
    plain = legacy(client, prompt=COUNTING, max_tokens=3, temperature=0, logprobs=1)
    body = legacy(client, prompt=COUNTING, max_tokens=3, temperature=0, logprobs=1, echo=True)
    choice = body["choices"][0]
    lp = choice["logprobs"]
    assert choice["text"] == COUNTING + plain["choices"][0]["text"]
    assert "".join(lp["tokens"]) == choice["text"]
    prompt_tokens = body["usage"]["prompt_tokens"]
    assert len(lp["tokens"]) == prompt_tokens + 3
    assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
    assert all(isinstance(v, float) for v in lp["token_logprobs"][1:])
    assert lp["tokens"][prompt_tokens:] == plain["choices"][0]["logprobs"]["tokens"]

    chunks = sse_events(client, "/v1/completions", dict(
        model=MODEL, prompt=COUNTING, max_tokens=3, temperature=0, logprobs=1, echo=True))
    for chunk in chunks:
        completion_body(chunk)
    tokens = [t for c in chunks for ch in c["choices"] if ch["logprobs"]
              for t in ch["logprobs"]["tokens"]]
    assert tokens == lp["tokens"]


def test_best_of_returns_the_n_best(client: httpx.Client) -> None:
    body = legacy(client, prompt=COUNTING, max_tokens=4, temperature=1, seed=7, best_of=3, n=2)
    assert [c["index"] for c in body["choices"]] == [0, 1]
    assert all(c["logprobs"] is None for c in body["choices"])
    assert body["usage"]["completion_tokens"] > 2 * 4  # every candidate counts, not just n


@pytest.mark.parametrize(("extra", "param"), [
    ({"best_of": 2, "n": 3}, "best_of"),
    ({"best_of": 5}, "best_of"),
    ({"best_of": 2, "stream": True}, "best_of"),
])
def test_bad_best_of(client: httpx.Client, extra: dict, param: str) -> None:
    response = client.post("/v1/completions", json={"model": MODEL, "prompt": COUNTING,
                                                    "max_tokens": 2, **extra})
    assert_error(response, 400, param=param)


def test_suffix_fills_in_the_middle(client: httpx.Client) -> None:
    body = legacy(client, prompt="def area(r):\n    return ", suffix="\n\nprint(area(2.0))\n",
                  max_tokens=12, temperature=0)
    text = body["choices"][0]["text"]
    assert text.strip(), body
    assert "r" in text  # the body of area() uses its argument
