"""POST /v1/completions (legacy): prompt text in, text_completion out."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from chatapi.api.errors import APIError, invalid_request
from chatapi.api.protocol import CompletionRequest
from chatapi.api.sse import event
from chatapi.api.state import ServerState, new_id, now
from chatapi.api.usage import UsageTracker
from chatapi.engine.engine import GenerationStream
from chatapi.engine.sequence import SeqOutput

DEFAULT_MAX_TOKENS = 16  # OpenAI's default for the legacy endpoint


def _prompts(req: CompletionRequest) -> list[str | list[int]]:
    prompt = req.prompt
    if isinstance(prompt, str):
        return [prompt]
    if prompt and all(isinstance(p, int) for p in prompt):
        return [prompt]  # one prompt given as token ids
    return list(prompt)


async def prepare_completion(state: ServerState, req: CompletionRequest
                             ) -> tuple[list[list[int]], list[str], int]:
    """Validate and tokenize; returns (token lists, prompt texts for echo, max_tokens)."""
    state.registry.resolve(req.model)
    prompts = _prompts(req)
    limits = state.settings
    if not prompts or len(prompts) > limits.max_prompts:
        raise invalid_request(f"Invalid value for 'prompt': give 1 to {limits.max_prompts} "
                              f"prompts, got {len(prompts)}.", param="prompt")
    if req.suffix:
        raise invalid_request("'suffix' is not supported by this model.", param="suffix")
    if req.logprobs:
        raise invalid_request("'logprobs' is not supported by this server yet.",
                              param="logprobs")
    if req.best_of is not None and req.best_of != (req.n or 1):
        raise invalid_request("'best_of' other than n is not supported yet.", param="best_of")
    n = req.n or 1
    state.check_sampling(req, n * len(prompts))
    runner = state.engine.runner
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
        token_lists.append(tokens)
        texts.append(text)
    requested = req.max_tokens or DEFAULT_MAX_TOKENS
    budget = min(state.completion_budget(len(t), requested) for t in token_lists)
    return token_lists, texts, budget


class TextCompletion:
    def __init__(self, state: ServerState, req: CompletionRequest,
                 streams: list[GenerationStream], texts: list[str], tracker: UsageTracker
                 ) -> None:
        self.state = state
        self.req = req
        self.streams = streams
        self.texts = texts
        self.tracker = tracker
        self.finish: dict[int, str] = {}
        tracker.count(sum(s.num_prompt_tokens for s in streams), 0)
        self.n = req.n or 1
        self.id = new_id("cmpl-")
        self.created = now()
        self.prompt_tokens = [0] * len(streams)
        self.completion_tokens: dict[int, int] = {}

    def usage(self) -> dict[str, int]:
        prompt, completion = sum(self.prompt_tokens), sum(self.completion_tokens.values())
        return {"prompt_tokens": prompt, "completion_tokens": completion,
                "total_tokens": prompt + completion}

    def close(self) -> None:
        """Release the engine streams and write the usage record (aborted if unfinished)."""
        for stream in self.streams:
            stream.close()
        count = len(self.streams) * self.n
        done = len(self.finish) == count
        self.tracker.finish(self.finish.get(0, "stop") if done else "aborted")

    def _head(self) -> dict[str, Any]:
        return {"id": self.id, "object": "text_completion", "created": self.created,
                "model": self.req.model, "system_fingerprint": self.state.fingerprint}

    async def _merged(self) -> AsyncIterator[tuple[int, SeqOutput]]:
        """Outputs of every prompt's stream as they come, tagged with the choice index."""
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
                    index = p * self.n + out.index
                    self.completion_tokens[index] = out.completion_tokens
                    if out.finish_reason:
                        self.finish[index] = out.finish_reason
                    usage = self.usage()
                    self.tracker.count(usage["prompt_tokens"], usage["completion_tokens"])
                    yield index, out
        except Exception:
            self.tracker.finish("error")
            raise
        finally:
            for task in tasks:
                task.cancel()
            self.close()

    def _echo(self, index: int) -> str:
        return self.texts[index // self.n] if self.req.echo else ""

    async def body(self) -> dict[str, Any]:
        count = len(self.streams) * self.n
        texts = [[self._echo(i)] for i in range(count)]
        async for index, out in self._merged():
            texts[index].append(out.text)
        choices = [{"text": "".join(texts[i]), "index": i, "logprobs": None,
                    "finish_reason": self.finish.get(i)} for i in range(count)]
        return {**self._head(), "choices": choices, "usage": self.usage()}

    async def chunks(self) -> AsyncIterator[bytes]:
        include_usage = bool(self.req.stream_options and self.req.stream_options.include_usage)
        head = self._head()

        def chunk(index: int, text: str, finish: str | None = None) -> bytes:
            choice = {"text": text, "index": index, "logprobs": None, "finish_reason": finish}
            return event({**head, "choices": [choice]})

        if self.req.echo:
            for i in range(len(self.streams) * self.n):
                yield chunk(i, self._echo(i))
        async for index, out in self._merged():
            if out.text or out.finish_reason:
                yield chunk(index, out.text, out.finish_reason)
        if include_usage:
            yield event({**head, "choices": [], "usage": self.usage()})
