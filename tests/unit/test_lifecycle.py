"""The request lifecycle middleware over a small app: deadlines, draining, cutting streams,
header limits and the access log (the real server: tests/hardening)."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Iterator

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse
from fastapi.testclient import TestClient

from chatapi.api.middleware import (
    AccessLog,
    BodyLimitMiddleware,
    Lifecycle,
    LifecycleMiddleware,
    RequestIdMiddleware,
)
from chatapi.api.usage import UsageRecord

TIMEOUT_S = 0.5


class App:
    def __init__(self, request_timeout: float = TIMEOUT_S) -> None:
        self.lifecycle = Lifecycle(request_timeout)
        self.access = AccessLog()
        self.closed: list[str] = []
        app = FastAPI()
        sink = self.access.usage_sink(lambda record: None)

        @app.get("/sleep")
        async def sleep(seconds: float = 5.0) -> dict:
            await asyncio.sleep(seconds)
            return {"slept": seconds}

        @app.get("/stream")
        async def stream() -> StreamingResponse:
            async def events() -> AsyncIterator[bytes]:
                try:
                    for i in range(1000):
                        yield f"data: {json.dumps({'i': i})}\n\n".encode()
                        await asyncio.sleep(0.05)
                finally:
                    self.closed.append("stream")
            return StreamingResponse(events(), media_type="text/event-stream")

        @app.post("/record")
        async def record(request: Request) -> dict:
            sink(UsageRecord(request_id=request.state.request_id, endpoint="chat.completions",
                             model="gpt-4", key_id="sk-AbCd", prompt_tokens=7,
                             completion_tokens=3, finish_reason="stop"))
            return {}

        @app.get("/metrics")
        async def metrics() -> dict:
            return {"metrics": True}

        app.add_middleware(BodyLimitMiddleware, max_bytes=1000, max_header_bytes=4096,
                           max_headers=20)
        app.add_middleware(LifecycleMiddleware, lifecycle=self.lifecycle)
        app.add_middleware(RequestIdMiddleware, access=self.access)
        self.app = app


@pytest.fixture
def app() -> App:
    return App()


@pytest.fixture
def client(app: App) -> Iterator[TestClient]:
    with TestClient(app.app) as http:
        yield http


def error_of(response) -> dict:  # noqa: ANN001
    return response.json()["error"]


def test_a_request_past_its_deadline_is_a_408(client: TestClient) -> None:
    started = time.monotonic()
    response = client.get("/sleep")
    assert time.monotonic() - started < TIMEOUT_S + 1
    assert response.status_code == 408
    assert error_of(response)["code"] == "request_timeout"
    assert "0.5 s" in error_of(response)["message"]
    assert client.get("/sleep", params={"seconds": 0}).json() == {"slept": 0}


def test_no_deadline_when_the_timeout_is_zero() -> None:
    with TestClient(App(request_timeout=0).app) as http:
        assert http.get("/sleep", params={"seconds": 0.7}).status_code == 200


def test_a_stream_past_its_deadline_ends_with_an_error_event_and_done(app: App,
                                                                      client: TestClient
                                                                      ) -> None:
    with client.stream("GET", "/stream") as response:
        assert response.status_code == 200
        lines = [line for line in response.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    error = json.loads(lines[-2][len("data: "):])["error"]
    assert error["code"] == "request_timeout"
    assert 3 <= len(lines) - 2 < 20  # about TIMEOUT_S / 0.05 events came first
    assert app.closed == ["stream"]  # the generator was closed: its work stops


def test_draining_refuses_new_requests_but_metrics(app: App, client: TestClient) -> None:
    app.lifecycle.start_draining()
    response = client.get("/sleep", params={"seconds": 0})
    assert response.status_code == 503
    assert response.headers["retry-after"] == "5"
    assert response.headers["connection"] == "close"
    assert error_of(response)["code"] == "server_shutting_down"
    assert response.headers["x-request-id"].startswith("req_")
    assert client.get("/metrics").status_code == 200


def test_cut_all_ends_requests_in_flight(app: App, client: TestClient) -> None:
    app.lifecycle.request_timeout = 0  # no deadline: only the cut ends it

    @app.app.get("/cut-soon")
    async def cut_soon() -> dict:
        asyncio.get_running_loop().call_later(0.2, app.lifecycle.cut_all)
        await asyncio.sleep(5)
        return {}

    started = time.monotonic()
    response = client.get("/cut-soon")
    assert time.monotonic() - started < 2
    assert response.status_code == 503
    assert error_of(response)["code"] == "server_shutting_down"
    assert not app.lifecycle.active


@pytest.mark.parametrize("headers", [{f"x-h{i}": "v" for i in range(30)},
                                     {"x-big": "a" * 5000}], ids=["count", "size"])
def test_headers_over_the_limits_are_a_431(client: TestClient, headers: dict) -> None:
    response = client.get("/sleep", params={"seconds": 0}, headers=headers)
    assert response.status_code == 431
    assert error_of(response)["code"] == "request_header_fields_too_large"


def test_one_access_log_line_per_request(client: TestClient,
                                         caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="chatapi.access"):
        client.post("/record")
        client.get("/sleep%0A{\"forged\": 1}", params={"seconds": 0})  # a decoded newline
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "chatapi.access"]
    assert len(lines) == 2 and all("\n" not in r.getMessage() for r in caplog.records)
    first = lines[0]
    assert first["id"].startswith("req_") and first["status"] == 200
    assert (first["method"], first["path"]) == ("POST", "/record")
    assert (first["key"], first["model"], first["prompt_tokens"],
            first["completion_tokens"], first["finish_reason"]) == (
        "sk-AbCd", "gpt-4", 7, 3, "stop")
    assert isinstance(first["ms"], int)
    assert "model" not in lines[1] and lines[1]["status"] == 404
