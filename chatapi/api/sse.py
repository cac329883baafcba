"""Server-sent events: chunk encoding, the [DONE] sentinel, error events."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi.responses import StreamingResponse

from chatapi.api.errors import error_body, to_api_error

DONE = b"data: [DONE]\n\n"


def event(payload: dict) -> bytes:
    return b"data: " + json.dumps(payload, ensure_ascii=False,
                                  separators=(",", ":")).encode() + b"\n\n"


async def _with_error_event(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """Once streaming has begun an HTTP status can no longer change: errors become an event."""
    try:
        async for chunk in chunks:
            yield chunk
    except Exception as exc:  # noqa: BLE001 - every failure must reach the client as an event
        yield event(error_body(to_api_error(exc)))
    yield DONE


class _ClosingStreamingResponse(StreamingResponse):
    """Calls `on_close` however the response ends: the body iterator may never even start
    when the client is gone before the headers are sent."""

    def __init__(self, content: AsyncIterator[bytes], on_close: Callable[[], None],
                 **kwargs: Any) -> None:
        super().__init__(content, **kwargs)
        self._on_close = on_close

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._on_close()


def sse_response(chunks: AsyncIterator[bytes], on_close: Callable[[], None],
                 headers: dict[str, str] | None = None) -> StreamingResponse:
    return _ClosingStreamingResponse(
        _with_error_event(chunks), on_close, media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **(headers or {})})
