"""POST /v1/chat/completions: messages -> prompt -> engine -> one JSON body or SSE chunks."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from typing import Any

from chatapi.api.errors import APIError, invalid_request
from chatapi.api.logprobs import chat_logprobs
from chatapi.api.protocol import ChatCompletionRequest, ChatMessage, NamedFunction
from chatapi.api.sse import event
from chatapi.api.state import ServerState, new_id, now
from chatapi.api.usage import UsageTracker
from chatapi.chat.tools import (
    CallArguments,
    CallStart,
    Content,
    Event,
    FunctionSpec,
    ToolCallParser,
    ToolFormat,
    call_grammar,
    detect_format,
    inline_history,
    openai_history,
    parse_tool_calls,
    template_takes_tools,
)
from chatapi.chat.truncation import ContextOverflow, Fitted, fit_chat
from chatapi.engine.engine import GenerationStream
from chatapi.engine.grammar import SchemaError, json_object_grammar, schema_grammar
from chatapi.engine.sequence import SeqOutput
from chatapi.moderation import check_prompt, output_guard


@dataclass(frozen=True)
class ToolPlan:
    """The functions offered to the model and how its output is read."""

    fmt: ToolFormat
    functions: tuple[FunctionSpec, ...]
    choice: str  # "none" | "auto" | "required" | "named"
    legacy: bool  # `functions` / `function_call` (one call, message.function_call)
    parallel: bool = True  # parallel_tool_calls: false keeps only the first call

    @property
    def names(self) -> frozenset[str]:
        return frozenset(f.name for f in self.functions)

    @property
    def parses(self) -> bool:
        return self.choice != "none"

    @property
    def max_calls(self) -> int | None:
        return None if self.parallel and not self.legacy else 1

    def finish_reason(self) -> str:
        return "function_call" if self.legacy else "tool_calls"


@dataclass(frozen=True)
class ChatPlan:
    """What prepare_chat decided beyond the prompt: grammar, tools, logprobs."""

    grammar: str | None = None
    tools: ToolPlan | None = None
    top_logprobs: int | None = None  # None: no logprobs
    truncation: Fitted | None = None  # what fitting the conversation into the context did

    def engine_options(self) -> dict[str, Any]:
        return {"grammar": self.grammar, "logprobs": self.top_logprobs}


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
        _check_message(i, message)
    _check_tool_schemas(req)
    if req.top_logprobs is not None and not req.logprobs:
        raise invalid_request("'top_logprobs' requires 'logprobs' to be true.",
                              param="top_logprobs")
    state.check_sampling(req, req.n or 1)


_JSON_TYPES = frozenset({"object", "array", "string", "number", "integer", "boolean", "null"})


def _check_message(i: int, message: ChatMessage) -> None:
    if message.content is None and message.role not in ("assistant", "function"):
        raise invalid_request(f"Missing required parameter: 'messages[{i}].content'.",
                              param=f"messages[{i}].content")
    if message.role == "tool" and not message.tool_call_id:
        raise invalid_request(f"Missing required parameter: 'messages[{i}].tool_call_id'.",
                              param=f"messages[{i}].tool_call_id")
    if message.role == "function" and not message.name:
        raise invalid_request(f"Missing required parameter: 'messages[{i}].name'.",
                              param=f"messages[{i}].name")
    if message.role != "assistant" and (message.tool_calls or message.function_call):
        raise invalid_request(f"Invalid value for 'messages[{i}]': only assistant messages "
                              "carry tool_calls or function_call.", param=f"messages[{i}]")


def tool_plan(state: ServerState, req: ChatCompletionRequest) -> ToolPlan | None:
    """Which functions the model is offered, and whether it may, must or must not call one."""
    if req.tools and req.functions:
        raise invalid_request("Use either 'tools' or the legacy 'functions', not both.",
                              param="functions")
    legacy = bool(req.functions) or (req.function_call is not None and not req.tools)
    choice_param = "function_call" if legacy else "tool_choice"
    choice = req.function_call if legacy else req.tool_choice
    if req.tools:
        functions = [FunctionSpec(t.function.name, t.function.description,
                                  t.function.parameters, bool(t.function.strict))
                     for t in req.tools]
    elif req.functions:
        functions = [FunctionSpec(f.name, f.description, f.parameters, bool(f.strict))
                     for f in req.functions]
    else:
        if choice is not None and choice != "none":
            what = "functions" if legacy else "tools"
            raise invalid_request(f"'{choice_param}' is only allowed when '{what}' are given.",
                                  param=choice_param)
        return None
    names = [f.name for f in functions]
    if len(set(names)) != len(names):
        raise invalid_request("Function names must be unique.",
                              param="functions" if legacy else "tools")
    if choice is None or isinstance(choice, str):
        kind = choice or "auto"
    else:
        name = choice.name if isinstance(choice, NamedFunction) else choice.function.name
        if name not in names:
            raise invalid_request(f"Invalid value for '{choice_param}': no function named "
                                  f"{name!r} in '{'functions' if legacy else 'tools'}'.",
                                  param=choice_param)
        functions = [f for f in functions if f.name == name] + \
                    [f for f in functions if f.name != name]
        kind = "named"
    return ToolPlan(detect_format(state.template.source), tuple(functions), kind, legacy,
                    req.parallel_tool_calls is not False)


def _check_tool_schemas(req: ChatCompletionRequest) -> None:
    """Every offered function's parameters must be an object schema with known types, whether
    or not a call is enforced (as OpenAI checks them)."""
    listed = ([(f"tools[{i}].function.parameters", t.function) for i, t in enumerate(req.tools)]
              if req.tools else
              [(f"functions[{i}].parameters", f) for i, f in enumerate(req.functions or [])])
    for param, definition in listed:
        schema = definition.parameters
        if schema is None:
            continue
        problem = None
        if schema.get("type", "object") != "object":
            problem = f"the parameters schema must have type 'object', got {schema['type']!r}"
        else:
            problem = _unknown_type(schema)
        if problem:
            raise invalid_request(f"Invalid value for '{param}': {problem}.", param=param)


def _unknown_type(schema: Any, depth: int = 0) -> str | None:
    """The first 'type' value that is not a JSON Schema type, searching nested schemas."""
    if depth > 64:
        return "the schema is nested too deeply"
    if isinstance(schema, list):
        return next((p for p in (_unknown_type(x, depth + 1) for x in schema) if p), None)
    if not isinstance(schema, dict):
        return None
    kind = schema.get("type")
    kinds = kind if isinstance(kind, list) else [kind] if kind is not None else []
    for k in kinds:
        if not isinstance(k, str) or k not in _JSON_TYPES:
            return f"{str(k)[:40]!r} is not a JSON Schema type"
    for key, value in schema.items():
        if key not in ("enum", "const", "default", "examples") and isinstance(value, dict | list):
            problem = _unknown_type(value, depth + 1)
            if problem:
                return problem
    return None


def _grammar(req: ChatCompletionRequest, tools: ToolPlan | None) -> str | None:
    """The grammar decoding must follow: an enforced call, or the response_format."""
    if tools is not None and tools.choice in ("required", "named"):
        functions = list(tools.functions[:1] if tools.choice == "named" else tools.functions)
        parallel = tools.choice == "required" and tools.max_calls is None
        try:
            return call_grammar(tools.fmt, functions, parallel=parallel)
        except SchemaError as exc:
            raise _parameters_error(req, functions, exc) from None
    fmt = req.response_format
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return json_object_grammar()
    try:
        return schema_grammar(fmt.json_schema.schema_ if fmt.json_schema.schema_ else {})
    except SchemaError as exc:
        raise invalid_request(f"Invalid value for 'response_format.json_schema.schema': {exc}",
                              param="response_format.json_schema.schema") from None


def _parameters_error(req: ChatCompletionRequest, functions: list[FunctionSpec],
                      exc: SchemaError) -> APIError:
    """A 400 naming the function whose parameters schema cannot be enforced."""
    listed = [t.function for t in req.tools] if req.tools else list(req.functions or [])
    names = {f.name for f in functions}
    position = 0
    for i, definition in enumerate(listed):
        if definition.name not in names:
            continue
        try:
            schema_grammar(definition.parameters or {"type": "object"})
        except SchemaError as culprit:
            position, exc = i, culprit
            break
    param = (f"functions[{position}].parameters" if req.functions
             else f"tools[{position}].function.parameters")
    return invalid_request(f"Invalid value for '{param}': {exc}", param=param)


def template_messages(messages: list[ChatMessage]) -> list[dict[str, Any]]:
    out = []
    for message in messages:
        item = message.model_dump(exclude_none=True)
        item["role"] = "system" if message.role == "developer" else message.role
        item["content"] = message.text
        out.append(item)
    return openai_history(out)


async def prepare_chat(state: ServerState, req: ChatCompletionRequest
                       ) -> tuple[list[int], int]:
    """Validate, render and tokenize; returns (prompt tokens, max_tokens). The grammar, tools
    and logprobs decided here are left on `req.plan`."""
    state.registry.resolve(req.model)
    check_chat_request(state, req)
    await check_prompt(state.moderation, [m.text for m in req.messages], "messages")
    tools = tool_plan(state, req)
    grammar = await asyncio.to_thread(_grammar, req, tools)
    if grammar is not None and not await asyncio.to_thread(state.engine.runner.grammar_ok,
                                                           grammar):
        param = ("response_format.json_schema.schema" if tools is None
                 or tools.choice not in ("required", "named") else "tools")
        raise invalid_request(f"Invalid value for '{param}': the schema cannot be turned into "
                              "a grammar (for example a '$ref' that refers only to itself).",
                              param=param)
    req.set_plan(ChatPlan(grammar, tools, (req.top_logprobs or 0) if req.logprobs else None))
    messages = template_messages(req.messages)
    offered = [f.as_tool() for f in tools.functions] if tools and tools.parses else None
    inline = not template_takes_tools(state.template.source)
    inlined = list(tools.functions) if offered and inline else []

    async def measure(history: list[dict[str, Any]]) -> list[int]:
        if inline:
            history = inline_history(history, inlined)
        prompt = await asyncio.to_thread(state.template.render, history,
                                         tools=None if inline else offered,
                                         add_generation_prompt=True)
        return await state.tokenize(prompt, special=True)

    try:
        fitted = await fit_chat(state, messages, req.truncation, req.completion_limit, measure)
    except ContextOverflow as exc:
        raise invalid_request(str(exc), param="messages", code="context_length_exceeded") \
            from None
    req.set_plan(replace(req.plan, truncation=fitted))
    return fitted.tokens, state.completion_budget(len(fitted.tokens), req.completion_limit)


class ChatCompletion:
    """One accepted chat request: its id, its stream from the engine, its response shapes.

    Whatever happens (finished, client gone, error), `close()` runs once and the request leaves
    exactly one usage record.
    """

    def __init__(self, state: ServerState, req: ChatCompletionRequest, stream: GenerationStream,
                 tracker: UsageTracker) -> None:
        self.state = state
        self.req = req
        self.plan: ChatPlan = req.plan or ChatPlan()
        self.stream = stream
        self.tracker = tracker
        self.id = new_id("chatcmpl-")
        self.created = now()
        self.n = req.n or 1
        self.prompt_tokens = 0
        self.cached_tokens = 0
        self.completion_tokens = [0] * self.n
        self.finish: list[str | None] = [None] * self.n
        tools = self.plan.tools
        self.parsers = [ToolCallParser(tools.fmt, tools.names) if tools and tools.parses
                        else None for _ in range(self.n)]
        self.guard = output_guard(state.moderation, self.n, state.engine.runner.token_bytes)
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
                    if self.finish[out.index] == "content_filter":
                        continue  # the rest of a filtered choice is never shown
                    self.tracker.first_token()
                    self.prompt_tokens = out.prompt_tokens
                    self.cached_tokens = max(self.cached_tokens, out.cached_tokens)
                    self.completion_tokens[out.index] = out.completion_tokens
                    self.finish[out.index] = out.finish_reason or self.finish[out.index]
                    if self.guard and self.guard.apply(out):
                        self.finish[out.index] = "content_filter"
                    self.tracker.count(self.prompt_tokens, sum(self.completion_tokens),
                                       self.cached_tokens)
                    yield out
                if self.guard and all(self.finish):
                    break  # a filtered choice may still be generating: close() aborts it
        except Exception:
            self.tracker.finish("error")
            raise
        finally:
            self.close()

    def _called(self, index: int, called: bool) -> None:
        """A choice that ended by itself after calling a function ends with tool_calls."""
        tools = self.plan.tools
        if called and tools and self.finish[index] == "stop":
            self.finish[index] = tools.finish_reason()

    def _logprobs(self, out: SeqOutput) -> list[dict[str, Any]]:
        if self.plan.top_logprobs is None or not out.logprobs:
            return []
        return chat_logprobs(self.state.engine.runner.token_bytes, out.logprobs)

    # --- one JSON body ----------------------------------------------------------------------

    async def body(self) -> dict[str, Any]:
        texts: list[list[str]] = [[] for _ in range(self.n)]
        logprobs: list[list[dict]] = [[] for _ in range(self.n)]
        messages: list[dict[str, Any]] = [{} for _ in range(self.n)]
        async for out in self._outputs():
            texts[out.index].append(out.text)
            logprobs[out.index] += self._logprobs(out)
            if out.finish_reason:
                messages[out.index] = self._message(out.index, "".join(texts[out.index]))
        choices = [{"index": i, "message": messages[i] or self._message(i, "".join(texts[i])),
                    "logprobs": self._choice_logprobs(logprobs[i]),
                    "finish_reason": self.finish[i]} for i in range(self.n)]
        report = self.plan.truncation.report() if self.plan.truncation else None
        return {**self._head("chat.completion"), "choices": choices, "usage": self.usage(),
                **({"chatapi": report} if report else {})}  # extension: what truncation did

    @property
    def headers(self) -> dict[str, str]:
        return self.plan.truncation.headers() if self.plan.truncation else {}

    def _message(self, index: int, text: str) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": text, "refusal": None}
        tools = self.plan.tools
        if tools is None or not tools.parses:
            return message
        parsed = parse_tool_calls(text, tools.fmt, tools.names)
        calls = parsed.calls[:tools.max_calls]
        self._called(index, bool(calls))
        if not calls:
            return message
        message["content"] = parsed.content
        if tools.legacy:
            message["function_call"] = {"name": calls[0].name, "arguments": calls[0].arguments}
        else:
            message["tool_calls"] = [call.as_openai() for call in calls]
        return message

    def _choice_logprobs(self, content: list[dict[str, Any]]) -> dict[str, Any] | None:
        if self.plan.top_logprobs is None:
            return None
        return {"content": content, "refusal": None}

    # --- SSE chunks -------------------------------------------------------------------------

    async def chunks(self) -> AsyncIterator[bytes]:
        include_usage = bool(self.req.stream_options and self.req.stream_options.include_usage)
        extra = {"usage": None} if include_usage else {}
        head = self._head("chat.completion.chunk")

        def chunk(index: int, delta: dict, finish: str | None = None,
                  logprobs: list[dict] | None = None) -> bytes:
            choice = {"index": index, "delta": delta,
                      "logprobs": self._choice_logprobs(logprobs) if logprobs else None,
                      "finish_reason": finish}
            return event({**head, "choices": [choice], **extra})

        tools = self.plan.tools
        first = {"role": "assistant", "content": None if tools and tools.parses else "",
                 "refusal": None}
        for i in range(self.n):
            yield chunk(i, first)
        pending: list[list[dict]] = [[] for _ in range(self.n)]
        async for out in self._outputs():
            i = out.index
            pending[i] += self._logprobs(out)
            for delta in self._deltas(i, out):
                yield chunk(i, delta, logprobs=pending[i])
                pending[i] = []
            if out.finish_reason:
                parser = self.parsers[i]
                self._called(i, bool(parser and parser.calls))
                yield chunk(i, {}, self.finish[i], logprobs=pending[i])
        if include_usage:
            yield event({**head, "choices": [], "usage": self.usage()})

    def _deltas(self, index: int, out: SeqOutput) -> list[dict[str, Any]]:
        parser = self.parsers[index]
        if parser is None:
            return [{"content": out.text}] if out.text else []
        events = parser.feed(out.text) if out.text else []
        if out.finish_reason:
            events += parser.finish()
        tools = self.plan.tools
        if tools is None:
            return []
        return [d for d in (_delta(e, tools) for e in events) if d]


def _delta(e: Event, tools: ToolPlan) -> dict[str, Any] | None:
    if isinstance(e, Content):
        return {"content": e.text}
    if tools.max_calls is not None and e.index >= tools.max_calls:
        return None
    if tools.legacy:
        if isinstance(e, CallStart):
            return {"function_call": {"name": e.name, "arguments": ""}}
        return {"function_call": {"arguments": e.fragment}}
    if isinstance(e, CallStart):
        return {"tool_calls": [{"index": e.index, "id": e.id, "type": "function",
                                "function": {"name": e.name, "arguments": ""}}]}
    if isinstance(e, CallArguments):
        return {"tool_calls": [{"index": e.index, "function": {"arguments": e.fragment}}]}
    return None
