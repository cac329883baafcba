"""Running the app on uvicorn: a draining shutdown that exits 0, and OpenAI-shaped errors for
requests the HTTP parser refuses (malformed, or headers over the limit).

On SIGTERM or SIGINT the server keeps listening but answers new requests 503 with
`Retry-After`; requests in flight get `shutdown_timeout` seconds to finish, then are ended
(an error response, or an error event and `[DONE]` for a stream). Then uvicorn stops, the
lifespan stops the engine and writes the usage ledger out. A second signal ends the wait.
"""

from __future__ import annotations

import json
import logging
import time
from http import HTTPStatus
from types import FrameType

import h11
import uvicorn
from fastapi import FastAPI
from uvicorn.protocols.http.h11_impl import H11Protocol

from chatapi.api.errors import APIError, error_body
from chatapi.api.middleware import Lifecycle
from chatapi.config import Settings

log = logging.getLogger("chatapi.server")
CUT_GRACE_S = 5.0  # after cutting, how long requests may take to wind down before uvicorn stops


class _H11Protocol(H11Protocol):
    """uvicorn's h11 protocol, answering what h11 refuses with an OpenAI error object."""

    def send_400_response(self, msg: str) -> None:
        limit = self.config.h11_max_incomplete_event_size or h11.DEFAULT_MAX_INCOMPLETE_EVENT_SIZE
        if len(self.conn.trailing_data[0]) > limit:
            err = APIError(431, f"Request headers too large: the limit is {limit} bytes.",
                           code="request_header_fields_too_large")
        else:
            err = APIError(400, "Invalid HTTP request received.", code="invalid_http_request")
        body = json.dumps(error_body(err)).encode()
        headers = [(b"content-type", b"application/json"), (b"connection", b"close")]
        reason = HTTPStatus(err.status).phrase.encode()
        for event in (h11.Response(status_code=err.status, headers=headers, reason=reason),
                      h11.Data(data=body), h11.EndOfMessage()):
            self.transport.write(self.conn.send(event))
        self.transport.close()


class DrainingServer(uvicorn.Server):
    """uvicorn's server with the draining shutdown described above. It never re-raises the
    signal it caught (uvicorn does, which makes the exit status -15): a clean stop exits 0."""

    def __init__(self, config: uvicorn.Config, lifecycle: Lifecycle,
                 shutdown_timeout: float) -> None:
        super().__init__(config)
        self.lifecycle = lifecycle
        self.shutdown_timeout = shutdown_timeout
        self._drain_deadline: float | None = None
        self._cut_at: float | None = None
        self._cut_requested = False

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # Runs as a signal handler: set flags only; on_tick does the work on the event loop.
        if not self.started:
            self.should_exit = True
        elif self._drain_deadline is None:
            self._drain_deadline = time.monotonic() + self.shutdown_timeout
            self.lifecycle.start_draining()
        elif not self._cut_requested:
            self._cut_requested = True
        else:
            self.should_exit = self.force_exit = True

    async def on_tick(self, counter: int) -> bool:
        if self._drain_deadline is not None and not self.should_exit:
            self._drain_step()
        return await super().on_tick(counter)

    def _drain_step(self) -> None:
        now = time.monotonic()
        if not self.lifecycle.active:
            self.should_exit = True
            return
        deadline = self._drain_deadline or now
        if self._cut_at is None and (self._cut_requested or now >= deadline):
            log.warning("shutdown: ending %d requests still in flight",
                        len(self.lifecycle.active))
            self._cut_at = now
            self.lifecycle.cut_all()
        elif self._cut_at is not None and now - self._cut_at > CUT_GRACE_S:
            self.should_exit = True  # uvicorn cancels what is left


def run(app: FastAPI, settings: Settings) -> None:
    """Serve `app` until SIGTERM/SIGINT, then drain (see the module docstring)."""
    lifecycle: Lifecycle = app.state.lifecycle
    config = uvicorn.Config(
        app, host=settings.host, port=settings.port, log_level=settings.log_level,
        http=_H11Protocol, h11_max_incomplete_event_size=settings.max_header_bytes,
        access_log=False,  # chatapi.access writes one line per request instead
        timeout_graceful_shutdown=CUT_GRACE_S)
    server = DrainingServer(config, lifecycle, settings.shutdown_timeout)
    server.run()
    if server.started:
        log.info("stopped")
