"""Request models, fields in the order of OpenAI's API reference. Every field is bounded.

Extensions that OpenAI does not have are grouped at the end of each model and marked.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError

from chatapi.api.errors import APIError, invalid_request

INT64 = 2**63 - 1
M = TypeVar("M", bound=BaseModel)
Penalty = Annotated[float, Field(ge=-2.0, le=2.0)]


class _Strict(BaseModel):
    # Strict: "0.5" is not a float and true is not an int; NaN and inf are refused.
    model_config = ConfigDict(strict=True, allow_inf_nan=False, extra="ignore")


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class StreamOptions(_Strict):
    include_usage: bool = False


FunctionName = Annotated[str, Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")]
MAX_TOOLS = 128  # OpenAI's limit on tools (and legacy functions) in one request


class FunctionCall(_Strict):
    """A call the assistant made, in a message of the history."""

    name: str = Field(max_length=256)
    arguments: str


class MessageToolCall(_Strict):
    id: str = Field(max_length=256)
    type: Literal["function"]
    function: FunctionCall


class ChatMessage(_Strict):
    model_config = ConfigDict(strict=True, allow_inf_nan=False, extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[TextPart] | None = None
    name: str | None = Field(default=None, max_length=256)
    tool_calls: list[MessageToolCall] | None = Field(default=None, max_length=MAX_TOOLS)
    tool_call_id: str | None = Field(default=None, max_length=256)
    function_call: FunctionCall | None = None  # legacy

    @property
    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class FunctionDefinition(_Strict):
    name: FunctionName
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ChatTool(_Strict):
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(_Strict):
    name: FunctionName


class NamedToolChoice(_Strict):
    type: Literal["function"]
    function: NamedFunction


class TextFormat(_Strict):
    type: Literal["text"]


class JSONObjectFormat(_Strict):
    type: Literal["json_object"]


class JSONSchemaSpec(_Strict):
    name: FunctionName
    description: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class JSONSchemaFormat(_Strict):
    type: Literal["json_schema"]
    json_schema: JSONSchemaSpec


ResponseFormat = Annotated[TextFormat | JSONObjectFormat | JSONSchemaFormat,
                           Field(discriminator="type")]


class SamplingFields(_Strict):
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, ge=0.0, le=1.0)
    n: int | None = Field(default=None, ge=1, le=128)
    stop: str | list[str] | None = None
    max_tokens: int | None = Field(default=None, ge=1, le=INT64)
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    logit_bias: dict[str, Annotated[float, Field(ge=-100, le=100)]] | None = None
    seed: int | None = Field(default=None, ge=-(2**63), le=INT64)
    user: str | None = Field(default=None, max_length=256)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    # Extensions (vLLM's names), not in OpenAI's API: off when absent.
    top_k: int | None = Field(default=None, ge=-1, le=1_000_000,
                              description="extension: sample from the k most likely tokens; "
                                          "0 or -1 = off")
    min_p: float | None = Field(default=None, ge=0.0, le=1.0,
                                description="extension: drop tokens below min_p times the "
                                            "probability of the most likely one")
    repetition_penalty: float | None = Field(default=None, gt=0.0, le=2.0,
                                             description="extension: divide the logits of "
                                                         "tokens already generated; 1 = off")

    # How serving decided to run this request (grammar, tools, logprobs): set by prepare_*.
    _plan: Any = PrivateAttr(default=None)

    @property
    def plan(self) -> Any:
        return self._plan

    def set_plan(self, plan: Any) -> None:
        self._plan = plan

    def engine_options(self) -> dict[str, Any]:
        """SamplingParams fields that come from the plan rather than from request fields."""
        return self._plan.engine_options() if self._plan is not None else {}

    @property
    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    model: str = Field(min_length=1, max_length=256)
    function_call: Literal["none", "auto"] | NamedFunction | None = None  # legacy
    functions: list[FunctionDefinition] | None = Field(default=None, min_length=1,
                                                       max_length=MAX_TOOLS)  # legacy
    logprobs: bool | None = None
    max_completion_tokens: int | None = Field(default=None, ge=1, le=INT64)
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    tools: list[ChatTool] | None = Field(default=None, min_length=1, max_length=MAX_TOOLS)
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    # Extension (the name of OpenAI's Responses API): a conversation longer than the context
    truncation: Literal["disabled", "auto", "summarize"] | None = Field(
        default=None, description="extension: disabled (400) | auto (drop the oldest turns) | "
                                  "summarize (replace them with a summary); server default")

    @property
    def completion_limit(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens else self.max_tokens


class CompletionRequest(SamplingFields):
    model: str = Field(min_length=1, max_length=256)
    prompt: str | list[str] | list[int] | list[list[int]]
    best_of: int | None = Field(default=None, ge=1, le=4)
    echo: bool | None = False
    logprobs: int | None = Field(default=None, ge=0, le=5)
    suffix: str | None = None


def parse_request(model: type[M], body: bytes) -> M:
    """Parse a JSON body into `model`, turning every problem into a 400 naming the param."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise invalid_request(f"We could not parse the JSON body of your request: {exc}") \
            from None
    if not isinstance(data, dict):
        raise invalid_request("The request body must be a JSON object, got "
                              f"{type(data).__name__}.")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise _validation_error(exc) from None
    except RecursionError:
        raise invalid_request("The request body is nested too deeply.") from None


def _validation_error(exc: ValidationError) -> APIError:
    # Of the alternatives of a union, the error that got furthest names the real problem.
    errors = exc.errors(include_url=False)
    first = max(errors, key=lambda e: len(_param_name([str(p) for p in e["loc"]]).split(".")))
    loc = [str(part) for part in first["loc"]]
    param = _param_name(loc)
    given = first.get("input")
    given_text = "" if first["type"] == "missing" else f", got {_short(given)}"
    if first["type"] == "missing":
        message = f"Missing required parameter: '{param}'."
    else:
        message = f"Invalid value for '{param}': {first['msg']}{given_text}."
    return invalid_request(message, param=param)


_UNION_TAGS = {"response_format": {"text", "json_object", "json_schema"}}


def _param_name(loc: list[str]) -> str:
    # drop pydantic's union-branch labels: "str", "list[TextPart]", "NamedToolChoice", tags
    if len(loc) > 1 and loc[1] in _UNION_TAGS.get(loc[0], ()):
        loc = [loc[0], *loc[2:]]
    parts = [p for p in loc if not any(c in p for c in "[]") and p not in {"str", "int", "float"}
             and not p[:1].isupper()]
    out = ""
    for part in parts:
        out += f"[{part}]" if part.isdigit() else (f".{part}" if out else part)
    return out or "body"


def _short(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 80 else text[:77] + "..."
