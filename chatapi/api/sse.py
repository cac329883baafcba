"""Server-sent events: chunk encoding, the [DONE] sentinel, error events."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

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


def sse_response(chunks: AsyncIterator[bytes], headers: dict[str, str] | None = None
                 ) -> StreamingResponse:
    return StreamingResponse(
        _with_error_event(chunks), media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **(headers or {})})
