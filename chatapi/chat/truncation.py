"""Fit a long conversation into the context: refuse, drop the oldest turns, or summarize them.

The request extension `truncation` (the name OpenAI's Responses API uses) picks the mode:

- `disabled`: nothing is changed; a prompt beyond the context is OpenAI's 400.
- `auto`: whole turns are left out, oldest first, after the leading system message(s), until
  the prompt plus `max_tokens` fits. A turn runs from one user message to the next, so a tool
  call is never parted from its result; the latest user message and all after it are kept.
- `summarize`: as `auto`, and the model writes a short summary of the turns left out, added to
  the system message as a note. Summaries are remembered by the history they cover, so the next
  request of the same conversation only summarizes what was newly left out.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from chatapi.engine.sampling import SamplingParams

if TYPE_CHECKING:
    from chatapi.api.state import ServerState
    from chatapi.engine.engine import AsyncEngine

log = logging.getLogger("chatapi.truncation")
MODES = ("disabled", "auto", "summarize")
Messages = list[dict[str, Any]]
Measure = Callable[[Messages], Awaitable[list[int]]]  # messages -> prompt token ids
Write = Callable[[list[int], int], Awaitable[tuple[str, int]]]  # (prompt, max) -> text, tokens

NOTE = ("Earlier turns of this conversation were left out to fit the context window. "
        "A summary of them:\n")


class ContextOverflow(ValueError):
    """Even the messages truncation must keep do not fit beside the completion."""


@dataclass(frozen=True)
class Fitted:
    """The prompt the model will see, and what truncation did to get it."""

    tokens: list[int]
    mode: str = "disabled"
    dropped: int = 0  # messages left out
    first_dropped: int | None = None  # index (in the request) of the first one
    summary_tokens: int = 0
    summary_cached: bool = False

    def report(self) -> dict[str, Any] | None:
        """The `chatapi` response field; None when truncation is disabled."""
        if self.mode == "disabled":
            return None
        report: dict[str, Any] = {"truncation": self.mode, "truncated_messages": self.dropped,
                                  "truncated_from": self.first_dropped,
                                  "summary_tokens": self.summary_tokens}
        if self.mode == "summarize":
            report["summary_cached"] = self.summary_cached
        return report

    def headers(self) -> dict[str, str]:
        if self.mode == "disabled":
            return {}
        return {"x-chatapi-truncated-messages": str(self.dropped),
                "x-chatapi-summary-tokens": str(self.summary_tokens)}


def completion_reserve(ctx_size: int, max_tokens: int | None) -> int:
    """Tokens kept free for the completion: max_tokens, else a quarter of the context."""
    return max_tokens if max_tokens is not None else max(1, ctx_size // 4)


def split_turns(messages: Messages) -> tuple[int, list[tuple[int, int]], int]:
    """(number of leading system messages, the droppable turns as (start, end) index ranges,
    index of the latest user message: it and all after it are kept)."""
    head = 0
    while head < len(messages) and messages[head].get("role") == "system":
        head += 1
    users = [i for i in range(head, len(messages)) if messages[i].get("role") == "user"]
    tail = users[-1] if users else max(head, len(messages) - 1)
    starts = [head] + [i for i in users if head < i < tail]
    ends = starts[1:] + [tail]
    return head, [(s, e) for s, e in zip(starts, ends, strict=True) if s < e], tail


def _with_note(head: Messages, summary: str | None) -> Messages:
    if summary is None:
        return head
    note = NOTE + summary
    if not head:
        return [{"role": "system", "content": note}]
    last = head[-1]
    return [*head[:-1], {**last, "content": f"{last.get('content') or ''}\n\n{note}"}]


async def fit(messages: Messages, *, mode: str, ctx_size: int, max_tokens: int | None,
              measure: Measure, summarizer: Summarizer | None = None) -> Fitted:
    """The prompt for `messages` under `mode`; raises ContextOverflow when what must be kept
    (system messages, the latest user message and after) cannot fit beside the completion."""
    tokens = await measure(messages)
    budget = ctx_size - completion_reserve(ctx_size, max_tokens)
    if mode == "disabled" or len(tokens) <= budget:
        return Fitted(tokens, mode)
    head_end, turns, tail = split_turns(messages)
    head, rest = messages[:head_end], messages[tail:]

    def kept(k: int, summary: str | None = None) -> Messages:
        middle = [m for start, end in turns[k:] for m in messages[start:end]]
        return _with_note(head, summary) + middle + rest

    minimal = await measure(kept(len(turns)))
    if len(minimal) > budget:
        raise ContextOverflow(_overflow_message(len(minimal), ctx_size, max_tokens))

    def fitted(k: int, tokens: list[int], summary: Summary | None = None) -> Fitted:
        dropped = turns[k - 1][1] - head_end
        if summary is None:
            return Fitted(tokens, mode, dropped, head_end)
        return Fitted(tokens, mode, dropped, head_end, summary.tokens, summary.cached)

    found = None
    if mode == "summarize" and summarizer is not None and turns:
        placeholder = " ".join(["x"] * summarizer.max_tokens)
        found = await _fewest(lambda k: kept(k, placeholder), 1, len(turns), budget, measure)
    if found is not None:
        try:
            summary = await summarizer.summarize([messages[s:e] for s, e in turns[:found[0]]])
        except RuntimeError as exc:  # the engine failed the summary: leave the turns out
            log.warning("%s; truncating without a summary", exc)
        else:
            # a summary longer than planned may leave out a few more turns, unsummarized
            found = await _fewest(lambda k: kept(k, summary.text), found[0], len(turns),
                                  budget, measure)
            if found is not None:
                return fitted(*found, summary)
    # auto, or a summary does not fit
    return fitted(*(await _fewest(kept, 1, len(turns), budget, measure) or (len(turns), minimal)))


async def _fewest(build: Callable[[int], Messages], low: int, high: int, budget: int,
                  measure: Measure) -> tuple[int, list[int]] | None:
    """The smallest k in [low, high] whose prompt fits the budget (fewer tokens as k grows),
    with that prompt; None when not even `high` fits."""
    best = await measure(build(high))
    if len(best) > budget:
        return None
    found = high
    while low < found:
        middle = (low + found) // 2
        tokens = await measure(build(middle))
        if len(tokens) <= budget:
            found, best = middle, tokens
        else:
            low = middle + 1
    return found, best


def _overflow_message(kept: int, ctx_size: int, max_tokens: int | None) -> str:
    completion = (f"{max_tokens} in the completion (max_tokens)" if max_tokens is not None
                  else f"{completion_reserve(ctx_size, None)} kept for the completion (a "
                       "quarter of the context when max_tokens is not set)")
    return (f"This model's maximum context length is {ctx_size} tokens. Even after truncation, "
            f"the system message(s) and the latest user message take {kept} tokens, plus "
            f"{completion}. Please shorten them or lower max_tokens.")


# --- summaries -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Summary:
    text: str
    tokens: int  # its length as generated
    cached: bool = False  # no generation was needed for this request


class SummaryCache:
    """Summaries by the hash of the turns they cover (least recently used dropped first)."""

    def __init__(self, capacity: int = 512) -> None:
        self.capacity = capacity
        self._items: OrderedDict[str, Summary] = OrderedDict()

    def get(self, key: str) -> Summary | None:
        item = self._items.get(key)
        if item is not None:
            self._items.move_to_end(key)
        return item

    def put(self, key: str, summary: Summary) -> None:
        self._items[key] = summary
        self._items.move_to_end(key)
        while len(self._items) > self.capacity:
            self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)


class Summarizer:
    """Writes the summary of a run of turns with the served model (greedy, at most
    `max_tokens` tokens), folding turns into the summary so far in batches that fit."""

    def __init__(self, cache: SummaryCache, write: Write, measure: Measure, ctx_size: int,
                 max_tokens: int | None = None) -> None:
        self.cache = cache
        self.write = write
        self.measure = measure
        self.ctx_size = ctx_size
        self.max_tokens = max_tokens or min(128, max(16, ctx_size // 8))

    def keys(self, turns: list[Messages]) -> list[str]:
        """Cache keys of each prefix of turns: keys[i] covers turns[:i + 1]."""
        digest = hashlib.sha256(f"chatapi-summary-v1:{self.max_tokens}".encode())
        keys = []
        for turn in turns:
            digest.update(json.dumps(turn, sort_keys=True, default=str).encode())
            keys.append(digest.copy().hexdigest())
        return keys

    async def summarize(self, turns: list[Messages]) -> Summary:
        keys = self.keys(turns)
        done, summary = 0, Summary("", 0)
        for i in range(len(turns), 0, -1):
            hit = self.cache.get(keys[i - 1])
            if hit is not None:
                done, summary = i, hit
                break
        if done == len(turns):
            return Summary(summary.text, summary.tokens, cached=True)
        while done < len(turns):
            end, prompt = await self._batch(summary.text, turns, done)
            text, count = await self.write(prompt, self.max_tokens)
            summary = Summary(text.strip() or "(nothing to note)", count)
            log.debug("summary of turns 1-%d: %s", end, summary.text)
            self.cache.put(keys[end - 1], summary)
            done = end
        return summary

    async def _batch(self, summary: str, turns: list[Messages], start: int
                     ) -> tuple[int, list[int]]:
        """The most turns from `start` that fit one summarizing prompt, and that prompt."""
        budget = self.ctx_size - self.max_tokens

        async def prompt(end: int, clip: int | None = None) -> list[int]:
            return await self.measure(self._messages(summary, turns[start:end], clip))

        best = await prompt(start + 1)
        clip = self.ctx_size * 2  # characters of transcript, when one turn alone is too long
        while len(best) > budget and clip >= 64:
            best, clip = await prompt(start + 1, clip), clip // 2
        if len(best) > budget:
            raise ContextOverflow("the context is too small to summarize the conversation")
        end, step = start + 1, 1
        while end < len(turns):  # gallop, then halve: few renders even for many short turns
            candidate = min(len(turns), end + step)
            tokens = await prompt(candidate)
            if len(tokens) > budget:
                if step == 1:
                    break
                step //= 2
                continue
            end, best, step = candidate, tokens, step * 2
        return end, best

    def _messages(self, summary: str, turns: list[Messages], clip: int | None) -> Messages:
        words = max(10, self.max_tokens * 2 // 3)
        transcript = "\n".join(_line(m) for turn in turns for m in turn)
        if clip is not None and len(transcript) > clip:
            transcript = transcript[:clip] + " …"
        earlier = f"Notes so far:\n{summary}\n\n" if summary else ""
        merge = " (merged with the notes so far)" if summary else ""
        return [
            {"role": "system", "content": "You take short, exact notes of conversations."},
            {"role": "user", "content": (
                f"{earlier}Conversation:\n{transcript}\n\nList the facts stated in this "
                f"conversation{merge}: names, numbers and what was decided, at most {words} "
                "words, separated by semicolons. Write only the list.")},
        ]


def _line(message: dict[str, Any]) -> str:
    role = message.get("role", "user")
    text = str(message.get("content") or "")
    calls = message.get("tool_calls") or []
    called = "; ".join(f"called {c.get('function', {}).get('name')}"
                       f"({c.get('function', {}).get('arguments', '')})" for c in calls)
    return f"{role}: {' '.join(p for p in (text, called) if p)}"


# --- serving ---------------------------------------------------------------------------------


def engine_writer(engine: AsyncEngine) -> Write:
    """Greedy generation of one completion on the serving engine."""

    async def write(tokens: list[int], max_tokens: int) -> tuple[str, int]:
        pieces, count = [], 0
        with engine.generate(tokens, [SamplingParams(max_tokens=max_tokens, temperature=0.0)],
                             "summary") as stream:
            async for outputs in stream:
                for out in outputs:
                    if out.error:
                        raise RuntimeError(f"summary generation failed: {out.error}")
                    pieces.append(out.text)
                    count = out.completion_tokens
        return "".join(pieces), count

    return write


def plain_measure(state: ServerState) -> Measure:
    """Render with the model's template (no tools) and tokenize."""

    async def measure(messages: Messages) -> list[int]:
        prompt = await asyncio.to_thread(state.template.render, messages,
                                         add_generation_prompt=True)
        return await state.tokenize(prompt, special=True)

    return measure


async def fit_chat(state: ServerState, messages: Messages, mode: str | None,
                   max_tokens: int | None, measure: Measure) -> Fitted:
    """fit() with the server's default mode and its summary cache and engine."""
    mode = mode or state.settings.truncation
    ctx = state.settings.ctx_size
    summarizer = (Summarizer(state.summaries, engine_writer(state.engine), plain_measure(state),
                             ctx) if mode == "summarize" else None)
    return await fit(messages, mode=mode, ctx_size=ctx, max_tokens=max_tokens,
                     measure=measure, summarizer=summarizer)
