"""ASGI middleware: request ids, timing headers and the access log; request size limits;
per-request deadlines and the draining shutdown (API keys: api/auth.py).

Security decisions use `scope["path"]` (already percent-decoded by the server), never a URL
rebuilt from the Host header.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from chatapi.api.errors import APIError, error_body
from chatapi.api.usage import UsageRecord, UsageSink

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

OPEN_PATHS = frozenset({"/", "/health", "/metrics", "/playground"})
access_log = logging.getLogger("chatapi.access")


def is_open_path(path: str) -> bool:
    return path in OPEN_PATHS or path.startswith("/playground/")


async def send_error(send: Send, err: APIError, extra_headers: Iterable[tuple[bytes, bytes]] = ()
                     ) -> None:
    body = json.dumps(error_body(err)).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in err.headers.items()]
    await send({"type": "http.response.start", "status": err.status,
                "headers": headers + list(extra_headers)})
    await send({"type": "http.response.body", "body": body})


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return value
    return None


class AccessLog:
    """One JSON line per request on the `chatapi.access` logger: id, method, path, status, key
    prefix, model, tokens, finish reason, latency. The figures of accepted requests come from
    their usage record, caught on its way to the ledger by `usage_sink`."""

    def __init__(self) -> None:
        self._open: dict[str, dict[str, Any]] = {}  # request id -> its scope state, while open

    def usage_sink(self, downstream: UsageSink) -> UsageSink:
        def sink(record: UsageRecord) -> None:
            state = self._open.get(record.request_id)
            if state is not None:
                state["usage"] = record
            downstream(record)
        return sink

    def opened(self, request_id: str, state: dict[str, Any]) -> None:
        self._open[request_id] = state

    def closed(self, scope: Scope, status: int | None, latency_s: float) -> None:
        state = scope.get("state", {})
        self._open.pop(state.get("request_id", ""), None)
        if not access_log.isEnabledFor(logging.INFO):
            return
        usage: UsageRecord | None = state.get("usage")
        line = {"id": state.get("request_id"), "method": scope.get("method"),
                "path": (scope.get("path") or "")[:512], "status": status,
                "key": state.get("key_id") or (usage.key_id if usage else None),
                "model": usage.model if usage else None,
                "prompt_tokens": usage.prompt_tokens if usage else None,
                "completion_tokens": usage.completion_tokens if usage else None,
                "finish_reason": usage.finish_reason if usage else None,
                "ms": round(latency_s * 1000)}
        line = {k: v for k, v in line.items() if v is not None or k in ("id", "status")}
        # json.dumps escapes control characters: a decoded path cannot forge a log line.
        access_log.info(json.dumps(line, ensure_ascii=True))


class RequestIdMiddleware:
    """Adds `x-request-id` and OpenAI's `openai-processing-ms` to every response, and writes
    the access log line once the response is over."""

    def __init__(self, app: ASGIApp, access: AccessLog | None = None) -> None:
        self.app = app
        self.access = access

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        request_id = "req_" + secrets.token_hex(12)
        start = time.perf_counter()
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        state["started"] = time.monotonic()
        status: int | None = None

        async def send_with_headers(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                elapsed = int((time.perf_counter() - start) * 1000)
                message["headers"] = list(message.get("headers", [])) + [
                    (b"x-request-id", request_id.encode()),
                    (b"openai-processing-ms", str(elapsed).encode())]
            await send(message)

        if self.access is None:
            return await self.app(scope, receive, send_with_headers)
        self.access.opened(request_id, state)
        try:
            await self.app(scope, receive, send_with_headers)
        finally:
            self.access.closed(scope, status, time.perf_counter() - start)


class BodyLimitMiddleware:
    """Refuses requests over the size limits before they are parsed: more than `max_headers`
    header fields or `max_header_bytes` of them (431), a body over `max_bytes` (413)."""

    def __init__(self, app: ASGIApp, max_bytes: int, max_header_bytes: int | None = None,
                 max_headers: int | None = None) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.max_header_bytes = max_header_bytes
        self.max_headers = max_headers

    def _too_large(self) -> APIError:
        return APIError(413, f"Request body too large: the limit is {self.max_bytes} bytes.",
                        code="request_too_large")

    def _headers_error(self, scope: Scope) -> APIError | None:
        headers = scope.get("headers", [])
        if self.max_headers is not None and len(headers) > self.max_headers:
            return APIError(431, f"Too many header fields: the limit is {self.max_headers}, "
                                 f"got {len(headers)}.", code="request_header_fields_too_large")
        size = sum(len(name) + len(value) + 4 for name, value in headers)  # "name: value\r\n"
        if self.max_header_bytes is not None and size > self.max_header_bytes:
            return APIError(431, f"Request headers too large: the limit is "
                                 f"{self.max_header_bytes} bytes, got {size}.",
                            code="request_header_fields_too_large")
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers_error = self._headers_error(scope)
        if headers_error is not None:
            return await send_error(send, headers_error)
        length = _header(scope, b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            return await send_error(send, self._too_large())
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise self._too_large()  # chunked bodies have no length to check up front
            return message

        await self.app(scope, limited_receive, send)


# --- deadlines and the draining shutdown -----------------------------------------------------

DRAIN_RETRY_AFTER_S = 5
_SSE = b"text/event-stream"


class Lifecycle:
    """The requests in flight, and whether the server is draining (shutting down): then new
    requests get 503 with Retry-After while those in flight finish, until `cut_all()` ends
    them. Each request also has a wall-clock deadline of `request_timeout` seconds."""

    def __init__(self, request_timeout: float = 0.0) -> None:
        self.request_timeout = request_timeout
        self.draining = False
        self.active: set[_InFlight] = set()

    def start_draining(self) -> None:
        self.draining = True  # only a flag: this may run in a signal handler

    def cut_all(self) -> None:
        """End every request in flight now, as cleanly as its response allows."""
        for request in list(self.active):
            request.cut("shutdown")

    def deadline(self) -> float | None:
        if not 0 < self.request_timeout < float("inf"):
            return None
        return asyncio.get_running_loop().time() + self.request_timeout


class _InFlight:
    def __init__(self, timeout: asyncio.Timeout) -> None:
        self.timeout = timeout
        self.reason = "timeout"

    def cut(self, reason: str) -> None:
        self.reason = reason
        self.timeout.reschedule(asyncio.get_running_loop().time())


def _cut_error(reason: str, request_timeout: float) -> APIError:
    if reason == "shutdown":
        return APIError(503, "The server is shutting down. Retry shortly.", type="server_error",
                        code="server_shutting_down",
                        headers={"Retry-After": str(DRAIN_RETRY_AFTER_S), "Connection": "close"})
    return APIError(408, f"Request timed out: it ran past the limit of {request_timeout:g} s "
                         "(request_timeout).", type="timeout_error", code="request_timeout")


class LifecycleMiddleware:
    """Refuses new requests while draining; ends a request at its deadline or at the end of
    the drain: with an error response if none has started, else, for a stream, with an error
    event and `data: [DONE]`. Cancelling the handler aborts its generation and leaves its
    usage record (`aborted`)."""

    def __init__(self, app: ASGIApp, lifecycle: Lifecycle) -> None:
        self.app = app
        self.lifecycle = lifecycle

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        lifecycle = self.lifecycle
        if lifecycle.draining and scope["path"] != "/metrics":
            return await send_error(send, _cut_error("shutdown", lifecycle.request_timeout))
        started = streaming = ended = False

        async def tracked_send(message: Message) -> None:
            nonlocal started, streaming, ended
            if message["type"] == "http.response.start":
                started = True
                streaming = (_header(message, b"content-type") or b"").startswith(_SSE)
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                ended = True
            await send(message)

        request: _InFlight | None = None
        try:
            async with asyncio.timeout_at(lifecycle.deadline()) as timeout:
                request = _InFlight(timeout)
                lifecycle.active.add(request)
                try:
                    await self.app(scope, receive, tracked_send)
                finally:
                    lifecycle.active.discard(request)
        except TimeoutError:
            if request is None or not request.timeout.expired():
                raise
            if ended:
                return  # cut after its response was complete: nothing left to end
            err = _cut_error(request.reason, lifecycle.request_timeout)
            if not started:
                await send_error(send, err)
            elif streaming:
                await send({"type": "http.response.body", "more_body": False,
                            "body": b"data: " + json.dumps(error_body(err)).encode()
                            + b"\n\ndata: [DONE]\n\n"})
