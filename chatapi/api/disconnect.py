"""Non-streaming requests: stop generating when the client goes away."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response

CLIENT_CLOSED = 499  # nginx's code: nobody reads this response


async def _disconnected(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def json_unless_disconnected(request: Request, body: Coroutine[Any, Any, dict],
                                   on_disconnect: Callable[[], None]) -> Response:
    """Await `body`; if the client disconnects first, cancel it and call `on_disconnect`."""
    work = asyncio.ensure_future(body)
    watcher = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({work, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        work.cancel()
        on_disconnect()
        raise
    finally:
        watcher.cancel()
    if work.done():
        return JSONResponse(work.result())
    work.cancel()
    on_disconnect()
    return Response(status_code=CLIENT_CLOSED)
