"""Truncation modes over a fake tokenizer (one token per word, 4 per message): which turns are
left out, what is always kept, the errors, and the summary cache."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from chatapi.chat.truncation import (
    NOTE,
    ContextOverflow,
    Summarizer,
    Summary,
    SummaryCache,
    fit,
    split_turns,
)

Messages = list[dict[str, Any]]


async def measure(messages: Messages) -> list[int]:
    count = 2 + sum(4 + len(str(m.get("content") or "").split()) for m in messages)
    return list(range(count))


def conversation(turns: int, words: int = 10) -> Messages:
    messages: Messages = [{"role": "system", "content": "You are terse."}]
    for i in range(turns):
        messages.append({"role": "user", "content": f"question {i} " + "w " * words})
        messages.append({"role": "assistant", "content": f"answer {i} " + "w " * words})
    messages.append({"role": "user", "content": "the latest question"})
    return messages


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_split_turns_keeps_system_and_latest_user() -> None:
    messages = conversation(3)
    head, turns, tail = split_turns(messages)
    assert head == 1 and tail == 7
    assert turns == [(1, 3), (3, 5), (5, 7)]
    assert split_turns([{"role": "user", "content": "hi"}]) == (0, [], 0)
    # no user message at all: the last message is kept
    only = [{"role": "system", "content": "s"}, {"role": "assistant", "content": "a"},
            {"role": "assistant", "content": "b"}]
    assert split_turns(only) == (1, [(1, 2)], 2)


def test_disabled_changes_nothing() -> None:
    messages = conversation(40)
    fitted = run(fit(messages, mode="disabled", ctx_size=100, max_tokens=10, measure=measure))
    assert len(fitted.tokens) == len(run(measure(messages)))
    assert fitted.report() is None and fitted.headers() == {}


def test_auto_drops_the_fewest_oldest_turns() -> None:
    messages = conversation(40)
    kept_prompts: list[Messages] = []

    async def spy(msgs: Messages) -> list[int]:
        kept_prompts.append(msgs)
        return await measure(msgs)

    fitted = run(fit(messages, mode="auto", ctx_size=200, max_tokens=16, measure=spy))
    assert len(fitted.tokens) + 16 <= 200
    assert fitted.first_dropped == 1 and fitted.dropped % 2 == 0 and fitted.dropped > 0
    kept = messages[:1] + messages[1 + fitted.dropped:]
    assert len(run(measure(kept))) == len(fitted.tokens)
    assert kept[0]["role"] == "system" and kept[-1]["content"] == "the latest question"
    # one more turn would have fitted no longer: dropping two fewer messages overflows
    more = messages[:1] + messages[fitted.dropped - 1:]
    assert len(run(measure(more))) + 16 > 200
    assert fitted.report() == {"truncation": "auto", "truncated_messages": fitted.dropped,
                               "truncated_from": 1, "summary_tokens": 0}
    assert fitted.headers()["x-chatapi-truncated-messages"] == str(fitted.dropped)
    assert len(kept_prompts) < 12  # a binary search, not one render per turn


def test_auto_fits_without_dropping_when_it_fits() -> None:
    fitted = run(fit(conversation(2), mode="auto", ctx_size=4096, max_tokens=16,
                     measure=measure))
    assert fitted.dropped == 0 and fitted.first_dropped is None


def test_tool_calls_stay_with_their_results() -> None:
    call = {"id": "call_1", "type": "function",
            "function": {"name": "weather", "arguments": '{"city": "Paris"}'}}
    messages: Messages = [{"role": "system", "content": "s"}]
    for i in range(12):
        messages += [{"role": "user", "content": f"q{i} " + "w " * 8},
                     {"role": "assistant", "content": "", "tool_calls": [call]},
                     {"role": "tool", "tool_call_id": "call_1", "content": "r " * 8},
                     {"role": "tool", "tool_call_id": "call_1", "content": "r " * 8},
                     {"role": "assistant", "content": "done " * 4}]
    messages.append({"role": "user", "content": "now?"})
    for ctx in range(60, 400, 7):
        fitted = run(fit(messages, mode="auto", ctx_size=ctx, max_tokens=8, measure=measure))
        kept = messages[:1] + messages[1 + fitted.dropped:]
        assert kept[1]["role"] == "user", ctx  # a turn starts with its user message
        for i, message in enumerate(kept):
            if message["role"] == "tool":
                assert any(m.get("tool_calls") for m in kept[:i]), ctx


def test_overflow_when_system_and_latest_user_do_not_fit() -> None:
    messages = conversation(5)
    messages[-1] = {"role": "user", "content": "w " * 300}
    with pytest.raises(ContextOverflow, match="latest user message"):
        run(fit(messages, mode="auto", ctx_size=256, max_tokens=16, measure=measure))
    with pytest.raises(ContextOverflow, match="max_tokens"):
        run(fit(conversation(5), mode="auto", ctx_size=256, max_tokens=250, measure=measure))


def test_without_max_tokens_a_quarter_is_kept_for_the_completion() -> None:
    fitted = run(fit(conversation(40), mode="auto", ctx_size=400, max_tokens=None,
                     measure=measure))
    assert len(fitted.tokens) <= 300


class FakeWriter:
    def __init__(self) -> None:
        self.prompts: list[int] = []

    async def __call__(self, tokens: list[int], max_tokens: int) -> tuple[str, int]:
        self.prompts.append(len(tokens))
        n = len(self.prompts)
        return f"summary number {n}", 3


def summarizer(writer: FakeWriter, cache: SummaryCache, ctx: int) -> Summarizer:
    return Summarizer(cache, writer, measure, ctx, max_tokens=24)


def test_summarize_adds_a_note_and_caches_by_history() -> None:
    cache, writer = SummaryCache(), FakeWriter()
    seen: list[Messages] = []

    async def spy(msgs: Messages) -> list[int]:
        seen.append(msgs)
        return await measure(msgs)

    messages = conversation(40)
    first = run(fit(messages, mode="summarize", ctx_size=256, max_tokens=16, measure=spy,
                    summarizer=summarizer(writer, cache, 256)))
    assert first.dropped > 0 and first.summary_tokens == 3 and not first.summary_cached
    assert len(first.tokens) + 16 <= 256
    final = [m for m in seen if len(run(measure(m))) == len(first.tokens)][-1]
    assert final[0]["role"] == "system" and NOTE in final[0]["content"]
    assert final[0]["content"].startswith("You are terse.")
    assert final[-1]["content"] == "the latest question"
    calls = len(writer.prompts)
    assert calls >= 2  # 40 turns do not fit one summarizing prompt of 256 tokens
    assert all(p + 24 <= 256 for p in writer.prompts)

    # the same history again: nothing new to summarize
    again = run(fit(messages, mode="summarize", ctx_size=256, max_tokens=16, measure=measure,
                    summarizer=summarizer(writer, cache, 256)))
    assert again.summary_cached and len(writer.prompts) == calls
    assert again.report()["summary_cached"] is True

    # the next turn: only the newly dropped turns are folded into the cached summary
    longer = messages + [{"role": "assistant", "content": "answer " + "w " * 10},
                         {"role": "user", "content": "one more " + "w " * 10}]
    nxt = run(fit(longer, mode="summarize", ctx_size=256, max_tokens=16, measure=measure,
                  summarizer=summarizer(writer, cache, 256)))
    assert nxt.dropped >= first.dropped and not nxt.summary_cached
    assert len(writer.prompts) == calls + 1


def test_summary_of_one_huge_turn_is_clipped_to_fit() -> None:
    cache, writer = SummaryCache(), FakeWriter()
    messages = [{"role": "system", "content": "s"},
                {"role": "user", "content": "w " * 2000},
                {"role": "assistant", "content": "ok"},
                {"role": "user", "content": "and now?"}]
    fitted = run(fit(messages, mode="summarize", ctx_size=256, max_tokens=16, measure=measure,
                     summarizer=summarizer(writer, cache, 256)))
    assert fitted.dropped == 2 and writer.prompts and writer.prompts[0] + 24 <= 256


def test_summary_cache_is_bounded() -> None:
    cache = SummaryCache(capacity=2)
    for key in "abc":
        cache.put(key, Summary(key, 1))
    assert len(cache) == 2 and cache.get("a") is None and cache.get("c") is not None


def test_engine_failure_falls_back_to_dropping() -> None:
    async def broken(tokens: list[int], max_tokens: int) -> tuple[str, int]:
        raise RuntimeError("engine gone")

    fitted = run(fit(conversation(40), mode="summarize", ctx_size=256, max_tokens=16,
                     measure=measure, summarizer=Summarizer(SummaryCache(), broken, measure,
                                                            256, max_tokens=24)))
    assert fitted.dropped > 0 and fitted.summary_tokens == 0
