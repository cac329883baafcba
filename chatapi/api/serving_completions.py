"""POST /v1/completions (legacy): prompt text in, text_completion out."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from typing import Any

from chatapi.api.errors import APIError, invalid_request
from chatapi.api.logprobs import LegacyLogprobs, merge_legacy
from chatapi.api.protocol import CompletionRequest
from chatapi.api.sse import event
from chatapi.api.state import ServerState, new_id, now
from chatapi.api.usage import UsageTracker
from chatapi.engine.engine import GenerationStream
from chatapi.engine.sequence import SeqOutput
from chatapi.moderation import check_prompt, output_guard

DEFAULT_MAX_TOKENS = 16  # OpenAI's default for the legacy endpoint


@dataclass(frozen=True)
class CompletionPlan:
    """Sequences generated per prompt (best_of, else n) and the logprobs asked for."""

    sequences: int
    logprobs: int | None  # None: none asked for
    echo_logprobs: bool
    prompts: tuple[tuple[int, ...], ...] = ()  # token ids, for echoed logprobs

    @property
    def ranks(self) -> bool:
        return self.sequences > 1 and self.logprobs is not None

    def engine_options(self) -> dict[str, Any]:
        return {"sequences": self.sequences, "logprobs": self.logprobs,
                "prompt_logprobs": self.logprobs if self.echo_logprobs else None}


def _prompts(req: CompletionRequest) -> list[str | list[int]]:
    prompt = req.prompt
    if isinstance(prompt, str):
        return [prompt]
    if prompt and all(isinstance(p, int) for p in prompt):
        return [prompt]  # one prompt given as token ids
    return list(prompt)


def _plan(req: CompletionRequest) -> CompletionPlan:
    n = req.n or 1
    best_of = req.best_of or n
    if best_of < n:
        raise invalid_request(f"Invalid value for 'best_of': must be >= n ({n}), got {best_of}.",
                              param="best_of")
    if req.stream and best_of > n:
        raise invalid_request("'best_of' greater than 'n' cannot be streamed: the best choices "
                              "are known only at the end.", param="best_of")
    logprobs = req.logprobs
    if best_of > n and logprobs is None:
        logprobs = 0  # ranking needs each token's logprob; not shown unless asked for
    return CompletionPlan(best_of, logprobs, bool(req.echo) and req.logprobs is not None)


async def prepare_completion(state: ServerState, req: CompletionRequest
                             ) -> tuple[list[list[int]], list[str], int]:
    """Validate and tokenize; returns (token lists, prompt texts for echo, max_tokens)."""
    state.registry.resolve(req.model)
    prompts = _prompts(req)
    limits = state.settings
    if not prompts or len(prompts) > limits.max_prompts:
        raise invalid_request(f"Invalid value for 'prompt': give 1 to {limits.max_prompts} "
                              f"prompts, got {len(prompts)}.", param="prompt")
    plan = _plan(req)
    runner = state.engine.runner
    fim = runner.fim_tokens() if req.suffix else None
    if req.suffix and fim is None:
        raise invalid_request("'suffix' is not supported by this model: it has no "
                              "fill-in-the-middle tokens.", param="suffix")
    if req.suffix and len(req.suffix) > limits.max_message_chars:
        raise invalid_request(f"Invalid value for 'suffix': at most {limits.max_message_chars} "
                              "characters.", param="suffix")
    state.check_sampling(req, plan.sequences * len(prompts))
    suffix = await state.tokenize(req.suffix, special=False) if fim and req.suffix else []
    token_lists, texts = [], []
    for prompt in prompts:
        if isinstance(prompt, str):
            if len(prompt) > limits.max_message_chars:
                raise invalid_request(f"Invalid value for 'prompt': at most "
                                      f"{limits.max_message_chars} characters.", param="prompt")
            tokens = await state.tokenize(prompt, special=False)
            text = prompt
        else:
            if any(t < 0 or t >= runner.n_vocab for t in prompt):
                raise invalid_request("Invalid value for 'prompt': token id out of range.",
                                      param="prompt")
            tokens = list(prompt)
            text = b"".join(runner.token_bytes(t) for t in tokens).decode("utf-8", "replace")
        if not tokens:
            raise invalid_request("Invalid value for 'prompt': the prompt is empty.",
                                  param="prompt")
        if fim:
            tokens = _fill_in_the_middle(tokens, suffix, fim, runner.bos_token, runner.add_bos)
        token_lists.append(tokens)
        texts.append(text)
    await check_prompt(state.moderation, texts + [req.suffix or ""], "prompt")
    req.set_plan(replace(plan, prompts=tuple(map(tuple, token_lists))))
    requested = req.max_tokens or DEFAULT_MAX_TOKENS
    budget = min(state.completion_budget(len(t), requested) for t in token_lists)
    return token_lists, texts, budget


def _fill_in_the_middle(prefix: list[int], suffix: list[int], fim: tuple[int, int, int],
                        bos: int, add_bos: bool) -> list[int]:
    """<fim_prefix>prefix<fim_suffix>suffix<fim_middle>: the model writes what goes between."""
    pre, suf, mid = fim
    head = [bos] if add_bos else []
    prefix = prefix[1:] if add_bos and prefix and prefix[0] == bos else prefix
    suffix = suffix[1:] if add_bos and suffix and suffix[0] == bos else suffix
    return [*head, pre, *prefix, suf, *suffix, mid]


@dataclass
class _Candidate:
    """One generated sequence: its text pieces, logprobs and score (for best_of)."""

    texts: list[str]
    logprobs: LegacyLogprobs
    parts: list[dict[str, list[Any]]]
    score: float = 0.0
    scored_tokens: int = 0

    @property
    def mean_logprob(self) -> float:
        return self.score / self.scored_tokens if self.scored_tokens else float("-inf")


class TextCompletion:
    def __init__(self, state: ServerState, req: CompletionRequest,
                 streams: list[GenerationStream], texts: list[str], tracker: UsageTracker
                 ) -> None:
        self.state = state
        self.req = req
        self.streams = streams
        self.texts = texts
        self.tracker = tracker
        self.plan: CompletionPlan = req.plan or CompletionPlan(req.n or 1, None, False)
        self.finish: dict[int, str] = {}
        tracker.count(sum(s.num_prompt_tokens for s in streams), 0)
        self.n = req.n or 1
        self.seqs = self.plan.sequences  # per prompt; more than n with best_of
        self.id = new_id("cmpl-")
        self.created = now()
        self.prompt_tokens = [0] * len(streams)
        self.completion_tokens: dict[int, int] = {}
        token_bytes = state.engine.runner.token_bytes
        self.guard = output_guard(state.moderation, len(streams) * self.seqs, token_bytes)
        self.candidates = [_Candidate([self._echo(i)], LegacyLogprobs(token_bytes), [])
                           for i in range(len(streams) * self.seqs)]
        self.prompt_scores: dict[int, list] = {}

    def usage(self) -> dict[str, int]:
        prompt, completion = sum(self.prompt_tokens), sum(self.completion_tokens.values())
        return {"prompt_tokens": prompt, "completion_tokens": completion,
                "total_tokens": prompt + completion}

    def close(self) -> None:
        """Release the engine streams and write the usage record (aborted if unfinished)."""
        for stream in self.streams:
            stream.close()
        count = len(self.streams) * self.seqs
        done = len(self.finish) == count
        self.tracker.finish(self.finish.get(0, "stop") if done else "aborted")

    def _head(self) -> dict[str, Any]:
        return {"id": self.id, "object": "text_completion", "created": self.created,
                "model": self.req.model, "system_fingerprint": self.state.fingerprint}

    async def _merged(self) -> AsyncIterator[tuple[int, SeqOutput]]:
        """Outputs of every prompt's stream as they come, tagged with the candidate index."""
        queue: asyncio.Queue[tuple[int, list[SeqOutput]] | None] = asyncio.Queue()

        async def pump(p: int, stream: GenerationStream) -> None:
            async for outputs in stream:
                await queue.put((p, outputs))
            await queue.put(None)

        tasks = [asyncio.create_task(pump(p, s)) for p, s in enumerate(self.streams)]
        try:
            done = 0
            while done < len(tasks):
                item = await queue.get()
                if item is None:
                    done += 1
                    continue
                p, outputs = item
                for out in outputs:
                    if out.error:
                        raise APIError(500, out.error, type="server_error", code="engine_error")
                    self.tracker.first_token()
                    self.prompt_tokens[p] = out.prompt_tokens
                    index = p * self.seqs + out.index
                    if self.finish.get(index) == "content_filter":
                        continue  # the rest of a filtered choice is never shown
                    self.completion_tokens[index] = out.completion_tokens
                    if out.finish_reason:
                        self.finish[index] = out.finish_reason
                    if self.guard and self.guard.apply(out, index):
                        self.finish[index] = "content_filter"
                    usage = self.usage()
                    self.tracker.count(usage["prompt_tokens"], usage["completion_tokens"])
                    self._record(p, index, out)
                    yield index, out
                if self.guard and len(self.finish) == len(self.candidates):
                    break  # a filtered choice may still be generating: close() aborts it
        except Exception:
            self.tracker.finish("error")
            raise
        finally:
            for task in tasks:
                task.cancel()
            self.close()

    def _echo(self, index: int) -> str:
        return self.texts[index // self.seqs] if self.req.echo else ""

    def _record(self, p: int, index: int, out: SeqOutput) -> None:
        """Text, logprobs and best_of score of one step of one candidate."""
        candidate = self.candidates[index]
        candidate.texts.append(out.text)
        if self.plan.logprobs is None:
            return
        if out.prompt_logprobs is not None:
            self.prompt_scores[p] = out.prompt_logprobs
        if self.plan.echo_logprobs and out.completion_tokens == 1:
            prompt = self.plan.prompts[p]
            for token, item in zip(prompt, self.prompt_scores.get(p, []), strict=False):
                candidate.logprobs.add(token, item)
        for item in out.logprobs or []:
            candidate.logprobs.add(item.token, item)
            candidate.score += item.logprob
            candidate.scored_tokens += 1

    def _chosen(self) -> list[int]:
        """Candidate indexes of the returned choices: all of them, or each prompt's n best."""
        if self.seqs == self.n:
            return list(range(len(self.candidates)))
        chosen = []
        for p in range(len(self.streams)):
            group = range(p * self.seqs, (p + 1) * self.seqs)
            ranked = sorted(group, key=lambda i: -self.candidates[i].mean_logprob)
            chosen += ranked[:self.n]
        return chosen

    def _logprobs_of(self, index: int) -> dict[str, list[Any]] | None:
        if self.req.logprobs is None:
            return None
        candidate = self.candidates[index]
        candidate.parts.append(candidate.logprobs.take())
        return merge_legacy(candidate.parts)

    async def body(self) -> dict[str, Any]:
        async for _ in self._merged():
            pass
        choices = [{"text": "".join(self.candidates[c].texts), "index": i,
                    "logprobs": self._logprobs_of(c), "finish_reason": self.finish.get(c)}
                   for i, c in enumerate(self._chosen())]
        return {**self._head(), "choices": choices, "usage": self.usage()}

    async def chunks(self) -> AsyncIterator[bytes]:
        include_usage = bool(self.req.stream_options and self.req.stream_options.include_usage)
        head = self._head()
        wants_logprobs = self.req.logprobs is not None

        def chunk(index: int, text: str, finish: str | None = None) -> bytes:
            logprobs = self.candidates[index].logprobs.take() if wants_logprobs else None
            choice = {"text": text, "index": index, "logprobs": logprobs,
                      "finish_reason": finish}
            return event({**head, "choices": [choice]})

        if self.req.echo and not self.plan.echo_logprobs:
            for i in range(len(self.streams) * self.n):
                yield chunk(i, self._echo(i))
        async for index, out in self._merged():
            text = out.text
            if self.plan.echo_logprobs and out.completion_tokens == 1:
                text = self._echo(index) + text  # the prompt's tokens come with this chunk
            if text or out.finish_reason or (wants_logprobs and out.logprobs):
                yield chunk(index, text, out.finish_reason)
        if include_usage:
            yield event({**head, "choices": [], "usage": self.usage()})
