"""Request models, fields in the order of OpenAI's API reference. Every field is bounded.

Extensions that OpenAI does not have are grouped at the end of each model and marked.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

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


class ChatMessage(_Strict):
    model_config = ConfigDict(strict=True, allow_inf_nan=False, extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[TextPart] | None = None
    name: str | None = Field(default=None, max_length=256)

    @property
    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


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

    @property
    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    model: str = Field(min_length=1, max_length=256)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=INT64)
    # Accepted so that clients sending them get a clear answer (see NOT_SUPPORTED_CHAT).
    tools: Any = None
    tool_choice: Any = None
    functions: Any = None
    function_call: Any = None
    response_format: Any = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)

    @property
    def completion_limit(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens else self.max_tokens


class CompletionRequest(SamplingFields):
    model: str = Field(min_length=1, max_length=256)
    prompt: str | list[str] | list[int] | list[list[int]]
    echo: bool | None = False
    best_of: int | None = Field(default=None, ge=1, le=128)
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
    first = exc.errors(include_url=False)[0]
    loc = [str(part) for part in first["loc"]]
    param = _param_name(loc)
    given = first.get("input")
    given_text = "" if first["type"] == "missing" else f", got {_short(given)}"
    if first["type"] == "missing":
        message = f"Missing required parameter: '{param}'."
    else:
        message = f"Invalid value for '{param}': {first['msg']}{given_text}."
    return invalid_request(message, param=param)


def _param_name(loc: list[str]) -> str:
    # drop pydantic's union-branch labels like "str" or "list[TextPart]"
    parts = [p for p in loc if not any(c in p for c in "[]") and p not in {"str", "int", "float"}]
    out = ""
    for part in parts:
        out += f"[{part}]" if part.isdigit() else (f".{part}" if out else part)
    return out or "body"


def _short(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 80 else text[:77] + "..."
