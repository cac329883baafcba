"""POST /v1/chat/completions: messages -> prompt -> engine -> one JSON body or SSE chunks."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from chatapi.api.errors import APIError, invalid_request
from chatapi.api.protocol import ChatCompletionRequest, ChatMessage
from chatapi.api.sse import event
from chatapi.api.state import ServerState, new_id, now
from chatapi.api.usage import UsageTracker
from chatapi.engine.engine import GenerationStream
from chatapi.engine.sequence import SeqOutput

# Parts of the request that belong to later work: refuse them clearly instead of ignoring them.
_UNSUPPORTED = ("tools", "functions")


def check_chat_request(state: ServerState, req: ChatCompletionRequest) -> None:
    limits = state.settings
    if len(req.messages) > limits.max_messages:
        raise invalid_request(
            f"Invalid value for 'messages': at most {limits.max_messages} messages, got "
            f"{len(req.messages)}.", param="messages")
    for i, message in enumerate(req.messages):
        if len(message.text) > limits.max_message_chars:
            raise invalid_request(
                f"Invalid value for 'messages[{i}].content': at most "
                f"{limits.max_message_chars} characters, got {len(message.text)}.",
                param=f"messages[{i}].content")
    for name in _UNSUPPORTED:
        if getattr(req, name):
            raise invalid_request(f"'{name}' is not supported by this server yet.", param=name)
    fmt = req.response_format
    if fmt is not None and not (isinstance(fmt, dict) and fmt.get("type") == "text"):
        raise invalid_request("Only response_format {'type': 'text'} is supported yet.",
                              param="response_format")
    if req.logprobs:
        raise invalid_request("'logprobs' is not supported by this server yet.",
                              param="logprobs")
    state.check_sampling(req, req.n or 1)


def template_messages(messages: list[ChatMessage]) -> list[dict[str, Any]]:
    out = []
    for message in messages:
        item = message.model_dump(exclude_none=True)
        item["role"] = "system" if message.role == "developer" else message.role
        item["content"] = message.text
        out.append(item)
    return out


async def prepare_chat(state: ServerState, req: ChatCompletionRequest
                       ) -> tuple[list[int], int]:
    """Validate, render and tokenize; returns (prompt tokens, max_tokens)."""
    state.registry.resolve(req.model)
    check_chat_request(state, req)
    prompt = await asyncio.to_thread(state.template.render, template_messages(req.messages),
                                     add_generation_prompt=True)
    tokens = await state.tokenize(prompt, special=True)
    return tokens, state.completion_budget(len(tokens), req.completion_limit)


class ChatCompletion:
    """One accepted chat request: its id, its stream from the engine, its response shapes.

    Whatever happens (finished, client gone, error), `close()` runs once and the request leaves
    exactly one usage record.
    """

    def __init__(self, state: ServerState, req: ChatCompletionRequest, stream: GenerationStream,
                 tracker: UsageTracker) -> None:
        self.state = state
        self.req = req
        self.stream = stream
        self.tracker = tracker
        self.id = new_id("chatcmpl-")
        self.created = now()
        self.n = req.n or 1
        self.prompt_tokens = 0
        self.cached_tokens = 0
        self.completion_tokens = [0] * self.n
        self.finish: list[str | None] = [None] * self.n
        tracker.count(stream.num_prompt_tokens, 0)

    def usage(self) -> dict[str, Any]:
        completion = sum(self.completion_tokens)
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": completion,
                "total_tokens": self.prompt_tokens + completion,
                "prompt_tokens_details": {"cached_tokens": self.cached_tokens},
                "completion_tokens_details": {"reasoning_tokens": 0}}

    def close(self) -> None:
        """Release the engine stream and write the usage record (aborted if unfinished)."""
        self.stream.close()
        done = all(self.finish)
        self.tracker.finish(self.finish[0] if done else "aborted")

    def _head(self, object_: str) -> dict[str, Any]:
        return {"id": self.id, "object": object_, "created": self.created,
                "model": self.req.model, "system_fingerprint": self.state.fingerprint}

    async def _outputs(self) -> AsyncIterator[SeqOutput]:
        try:
            async for outputs in self.stream:
                for out in outputs:
                    if out.error:
                        raise APIError(500, out.error, type="server_error", code="engine_error")
                    self.tracker.first_token()
                    self.prompt_tokens = out.prompt_tokens
                    self.cached_tokens = max(self.cached_tokens, out.cached_tokens)
                    self.completion_tokens[out.index] = out.completion_tokens
                    self.finish[out.index] = out.finish_reason or self.finish[out.index]
                    self.tracker.count(self.prompt_tokens, sum(self.completion_tokens),
                                       self.cached_tokens)
                    yield out
        except Exception:
            self.tracker.finish("error")
            raise
        finally:
            self.close()

    async def body(self) -> dict[str, Any]:
        texts: list[list[str]] = [[] for _ in range(self.n)]
        async for out in self._outputs():
            texts[out.index].append(out.text)
        choices = [{"index": i,
                    "message": {"role": "assistant", "content": "".join(texts[i]),
                                "refusal": None},
                    "logprobs": None, "finish_reason": self.finish[i]} for i in range(self.n)]
        return {**self._head("chat.completion"), "choices": choices, "usage": self.usage()}

    async def chunks(self) -> AsyncIterator[bytes]:
        include_usage = bool(self.req.stream_options and self.req.stream_options.include_usage)
        extra = {"usage": None} if include_usage else {}
        head = self._head("chat.completion.chunk")

        def chunk(index: int, delta: dict, finish: str | None = None) -> bytes:
            choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
            return event({**head, "choices": [choice], **extra})

        for i in range(self.n):
            yield chunk(i, {"role": "assistant", "content": "", "refusal": None})
        async for out in self._outputs():
            if out.text:
                yield chunk(out.index, {"content": out.text})
            if out.finish_reason:
                yield chunk(out.index, {}, out.finish_reason)
        if include_usage:
            yield event({**head, "choices": [], "usage": self.usage()})
