"""One table: exception -> (HTTP status, OpenAI error type, code). Every error leaves as
`{"error": {"message", "type", "param", "code"}}`."""

from __future__ import annotations

import logging

from fastapi.responses import JSONResponse

from chatapi.chat.template import TemplateError
from chatapi.engine.engine import EngineDeadError
from chatapi.engine.scheduler import QueueFullError
from chatapi.models.registry import ModelNotFoundError

log = logging.getLogger("chatapi.api")


class APIError(Exception):
    """An error the client should see as is."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None, inner: dict | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers or {}
        self.inner = inner  # Azure OpenAI's `innererror` (content filter results)


def invalid_request(message: str, param: str | None = None, code: str | None = None
                    ) -> APIError:
    return APIError(400, message, param=param, code=code)


def context_length_exceeded(prompt_tokens: int, max_tokens: int, ctx_size: int) -> APIError:
    return APIError(
        400,
        f"This model's maximum context length is {ctx_size} tokens. However, you requested "
        f"{prompt_tokens + max_tokens} tokens ({prompt_tokens} in the messages, {max_tokens} in "
        "the completion). Please reduce the length of the messages or completion.",
        param="messages", code="context_length_exceeded")


# exception class -> (status, type, code, extra headers)
_TABLE: list[tuple[type[BaseException], int, str, str | None, dict[str, str]]] = [
    (ModelNotFoundError, 404, "invalid_request_error", "model_not_found", {}),
    (TemplateError, 400, "invalid_request_error", "invalid_prompt", {}),
    (QueueFullError, 429, "server_busy", "queue_full", {"Retry-After": "1"}),
    (EngineDeadError, 503, "server_error", "engine_unavailable", {"Retry-After": "5"}),
]

HANDLED_ERRORS = tuple(row[0] for row in _TABLE)


def to_api_error(exc: BaseException) -> APIError:
    if isinstance(exc, APIError):
        return exc
    for cls, status, type_, code, headers in _TABLE:
        if isinstance(exc, cls):
            param = "model" if isinstance(exc, ModelNotFoundError) else None
            return APIError(status, str(exc), type=type_, param=param, code=code,
                            headers=headers)
    log.exception("unexpected error", exc_info=exc)
    # Internal details stay in the log, never in the response.
    return APIError(500, "The server had an error while processing your request.",
                    type="server_error", code="internal_error")


def error_body(err: APIError) -> dict:
    body = {"message": err.message, "type": err.type, "param": err.param, "code": err.code}
    if err.inner is not None:
        body["innererror"] = err.inner
    return {"error": body}


def error_response(exc: BaseException) -> JSONResponse:
    err = to_api_error(exc)
    return JSONResponse(error_body(err), status_code=err.status, headers=err.headers)
