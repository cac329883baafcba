"""The scheduler does not change greedy text: prompts read in small chunks beside running
streams, 16 sequences decoded together, and prompt-lookup speculative decoding all give the text
a lone request gets. (Correctness, not speed: speed is measured in bench/.)"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from .helpers import (
    REQUEST_TIMEOUT_S,
    STORY,
    chat,
    health,
    idle_client,
    temp_server,
    text_of,
)

CODE = '''def merge_intervals(intervals):
    """Merge overlapping intervals."""
    if not intervals:
        return []
    intervals.sort(key=lambda x: x[0])
    merged = [intervals[0]]
    for start, end in intervals[1:]:
        last = merged[-1]
        if start <= last[1]:
            last[1] = max(last[1], end)
        else:
            merged.append([start, end])
    return merged
'''
CODE_EDIT = [{"role": "user", "content": "Rename the variable `merged` to `result` in this code "
                                         f"and return the whole code:\n```python\n{CODE}```"}]
LONG_PROMPT = [{"role": "user", "content": "Here are some notes:\n" + "\n".join(
    f"Note {i}: the meeting about topic {i * 7 % 13} moved to room {i % 5}." for i in range(40))
    + "\nWhich room is note 3 in?"}]
TOPICS = ["rivers", "stars", "bees", "bridges", "clocks", "maps", "glass", "salt", "tea", "wind",
          "ice", "paper", "bells", "ships", "coins", "lamps"]
STEP_TOKENS = 16


@pytest.fixture(scope="module")
def plain_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A server without speculation or prefix cache (every prompt is read in full), reading
    prompts 16 tokens per step beside running streams."""
    with temp_server(tmp_path_factory, "plain", "--parallel", "16", "--speculative", "off",
                     "--step-tokens", str(STEP_TOKENS), "--no-prefix-cache") as url:
        yield url


@pytest.fixture(scope="module")
def spec_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with temp_server(tmp_path_factory, "spec", "--parallel", "4", "--speculative",
                     "ngram") as url:
        yield url


@pytest.fixture
def plain(plain_url: str) -> Iterator[httpx.Client]:
    with idle_client(plain_url) as http:
        yield http


def greedy(messages: list[dict[str, str]], max_tokens: int) -> dict:
    return {"model": "gpt-4o", "messages": messages, "temperature": 0, "max_tokens": max_tokens}


def spec_counters(client: httpx.Client) -> tuple[float, float]:
    text = client.get("/metrics").text
    drafted = re.search(r"^chatapi_spec_draft_tokens_total (\S+)$", text, re.M)
    kept = re.search(r"^chatapi_spec_accepted_tokens_total (\S+)$", text, re.M)
    assert drafted and kept, "the speculation counters are missing from /metrics"
    return float(drafted.group(1)), float(kept.group(1))


def test_speculation_drafts_code_edits_and_keeps_their_greedy_text(
        client: httpx.Client, spec_url: str) -> None:
    # Verified drafts are computed in several-token ubatches, whose logits differ a little from
    # one-token steps: the text stays the same unless two tokens are nearly tied. A code edit
    # copies its prompt, far from ties (measured); free text can differ, so it is not compared.
    body = greedy(CODE_EDIT, 96)
    with httpx.Client(base_url=spec_url, timeout=REQUEST_TIMEOUT_S) as spec:
        before = spec_counters(spec)
        speculated = chat(spec, **body)
        after = spec_counters(spec)
    reference = chat(client, **body)
    assert text_of(speculated) == text_of(reference)
    for field in ("prompt_tokens", "completion_tokens"):
        assert speculated["usage"][field] == reference["usage"][field]
    drafted, kept = after[0] - before[0], after[1] - before[1]
    assert drafted > 0, "no draft was verified on a request that copies its prompt"
    assert kept > drafted / 2, f"only {kept:.0f} of {drafted:.0f} draft tokens kept"


def test_prompt_read_in_chunks_beside_a_stream_scores_as_alone(plain: httpx.Client) -> None:
    body = {**greedy(LONG_PROMPT, 2), "logprobs": True, "top_logprobs": 3}
    alone = chat(plain, **body)  # nothing else running: the prompt is read in one chunk
    assert alone["usage"]["prompt_tokens"] > 8 * STEP_TOKENS
    stream_started = threading.Event()

    def story() -> dict:
        stream_started.set()
        return chat(plain, **greedy(STORY, 160))

    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(story)
        stream_started.wait()
        while health(plain)["running"] < 1:
            pass
        beside = chat(plain, **body)  # read 16 tokens per step between the story's steps
        assert not running.done(), "the story ended before the prompt was read beside it"
        running.result()
    assert beside["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    # the same logits bit for bit: the first token and its log-probabilities are identical
    first = [c["logprobs"]["content"][0] for c in (alone["choices"][0], beside["choices"][0])]
    assert first[0] == first[1]


def test_sixteen_different_prompts_read_and_decoded_together_as_alone(
        plain: httpx.Client) -> None:
    # Prompts read together (chunks of one length in shared llama_decode calls, or a little
    # per step beside the first one's decoding) and then decoded together, 16 rows a step, give
    # bit for bit the logits they give alone: every token and its log-probabilities are
    # identical. This rests on --tiled-matmul off (the default): ggml's tiled GEMM, which it
    # takes for 8 or more rows only, rounds differently from one row, and with it on some of
    # these answers part from their lone text.
    bodies = [{**greedy([{"role": "user", "content": f"Write a paragraph about {t}."}], 24),
               "logprobs": True, "top_logprobs": 2} for t in TOPICS]

    def answer(body: dict) -> tuple[str, list]:
        choice = chat(plain, **body)["choices"][0]
        return choice["message"]["content"], choice["logprobs"]["content"]

    with ThreadPoolExecutor(16) as pool:
        together = list(pool.map(answer, bodies))
    alone = [answer(b) for b in bodies]
    assert min(len(lp) for _, lp in together) >= 8  # they shared their first decode steps
    assert together == alone


def test_concurrent_speculative_requests_keep_their_text(client: httpx.Client,
                                                         spec_url: str) -> None:
    # Several sequences verify their drafts in one batch, each in its own rows. A verified
    # draft is a several-token row block, whose attention llama.cpp computes on another kernel
    # than a one-token row's, so its logits are not bit for bit the plain ones: the copies are
    # compared over their first half, far from any near-tie in copied code.
    bodies = [greedy(CODE_EDIT, 48),
              greedy([{"role": "user", "content": "Repeat exactly: " + CODE[:300]}], 48),
              greedy(STORY, 24), greedy(CODE_EDIT, 32)]
    with httpx.Client(base_url=spec_url, timeout=REQUEST_TIMEOUT_S) as spec, \
            ThreadPoolExecutor(4) as pool:
        together = list(pool.map(lambda b: chat(spec, **b), bodies))
        assert health(spec)["status"] == "ok"
    assert all(a["choices"][0]["finish_reason"] in ("stop", "length") for a in together)
    for body, answer in zip(bodies[:2], together[:2], strict=True):
        reference = text_of(chat(client, **body))
        half = len(reference) // 2
        assert text_of(answer)[:half] == reference[:half]
