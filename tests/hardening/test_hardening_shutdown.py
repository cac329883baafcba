"""SIGTERM with 8 streams in flight: the short ones finish, the long ones end cleanly (an
error event, then [DONE]) at --shutdown-timeout; requests arriving meanwhile get 503 with
Retry-After; the server exits 0, leaves no process behind and a usage row for every stream.
And --request-timeout ends a request that runs too long the same clean way."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from tests.integration.helpers import assert_error, wait_idle
from tests.openapi import validate

from .server import Server, chatapi_server

SHUTDOWN_TIMEOUT_S = 15.0
REQUEST_TIMEOUT_S = 3.0
SHORT = {"model": "gpt-4o-mini", "max_tokens": 6, "temperature": 0,
         "messages": [{"role": "user", "content": "Name a color."}]}
# The end-of-turn tokens of the default model (Qwen2.5) banned: it cannot stop before 900.
NO_END = {"151643": -100, "151645": -100}
LONG = {"model": "gpt-4o-mini", "max_tokens": 900, "temperature": 0, "logit_bias": NO_END,
        "messages": [{"role": "user", "content": "Count from 1 to 1000, one number per line."}]}


@dataclass
class Stream:
    request_id: str = ""
    events: list[Any] = field(default_factory=list)  # parsed chunks, and "[DONE]"
    ended_at: float = 0.0

    @property
    def finish(self) -> str | None:
        return next((c["finish_reason"] for e in self.events if isinstance(e, dict)
                     for c in e.get("choices", ()) if c["finish_reason"]), None)

    @property
    def errors(self) -> list[dict[str, Any]]:
        return [e["error"] for e in self.events if isinstance(e, dict) and "error" in e]


async def stream(client: httpx.AsyncClient, body: dict[str, Any], accepted: asyncio.Event,
                 out: Stream) -> Stream:
    async with client.stream("POST", "/v1/chat/completions",
                             json={**body, "stream": True}) as response:
        assert response.status_code == 200, await response.aread()
        out.request_id = response.headers["x-request-id"]
        accepted.set()
        async for line in response.aiter_lines():
            if line.startswith("data:"):
                payload = line[5:].strip()
                out.events.append(payload if payload == "[DONE]" else json.loads(payload))
    out.ended_at = time.monotonic()
    return out


def process_group_gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


async def sigterm_under_load(server: Server) -> tuple[list[Stream], list[httpx.Response],
                                                     float]:
    async with httpx.AsyncClient(base_url=server.url, timeout=120) as client:
        bodies = [SHORT] * 4 + [LONG] * 4
        accepted = [asyncio.Event() for _ in bodies]
        streams = [Stream() for _ in bodies]
        tasks = [asyncio.create_task(stream(client, b, e, s))
                 for b, e, s in zip(bodies, accepted, streams, strict=True)]
        # All 8 accepted (their headers came) and none near its end: 8 in flight.
        await asyncio.wait_for(asyncio.gather(*(e.wait() for e in accepted)), 120)
        server.proc.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        await asyncio.sleep(0.5)
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as late:
            refused = [await late.post("/v1/chat/completions", json=SHORT),
                       await late.get("/v1/models"), await late.get("/health")]
        await asyncio.gather(*tasks)
    return streams, refused, signalled


def test_sigterm_drains_then_exits_zero(tmp_path_factory: pytest.TempPathFactory) -> None:
    directory = tmp_path_factory.mktemp("shutdown-server")
    with chatapi_server(directory, "--parallel", "8", "--ctx-size", "1024",
                        "--shutdown-timeout", str(SHUTDOWN_TIMEOUT_S)) as server:
        streams, refused, signalled = asyncio.run(sigterm_under_load(server))
        exit_code = server.stop(timeout=SHUTDOWN_TIMEOUT_S + 30)
        exited = time.monotonic()

    assert exit_code == 0, server.tail()
    assert process_group_gone(server.proc.pid), "a process of the server outlived it"
    for response in refused:
        assert_error(response, 503, type="server_error", code="server_shutting_down")
        assert int(response.headers["retry-after"]) > 0
    for s in streams:
        assert s.events[-1] == "[DONE]", s.events[-3:]
        assert s.ended_at > signalled  # in flight when the signal came
    short, long_ = streams[:4], streams[4:]
    for s in short:  # finished on their own, untouched by the shutdown
        assert not s.errors and s.finish in ("length", "stop"), s.events[-3:]
    for s in long_:  # ended at the timeout: an error event, then [DONE]
        assert s.finish is None and len(s.errors) == 1, s.events[-3:]
        validate("ErrorResponse", {"error": s.errors[0]})
        assert s.errors[0]["code"] == "server_shutting_down"
        assert SHUTDOWN_TIMEOUT_S - 1 <= s.ended_at - signalled <= SHUTDOWN_TIMEOUT_S + 10
    assert exited - signalled < SHUTDOWN_TIMEOUT_S + 25

    rows = {row["request_id"]: row for row in server.ledger()}  # written out before the exit
    assert [rows[s.request_id]["finish_reason"] for s in short] == [s.finish for s in short]
    assert {rows[s.request_id]["finish_reason"] for s in long_} == {"aborted"}
    assert "Traceback" not in server.tail(10**8)


def test_request_timeout_ends_requests_cleanly(tmp_path_factory: pytest.TempPathFactory
                                               ) -> None:
    directory = tmp_path_factory.mktemp("timeout-server")
    with chatapi_server(directory, "--parallel", "2", "--ctx-size", "1024",
                        "--request-timeout", str(REQUEST_TIMEOUT_S)) as server:
        with server.client() as http:
            started = time.monotonic()
            response = http.post("/v1/chat/completions", json=LONG)
            elapsed = time.monotonic() - started
            assert_error(response, 408, code="request_timeout")
            assert REQUEST_TIMEOUT_S <= elapsed < REQUEST_TIMEOUT_S + 5, elapsed

            got = asyncio.run(_one_stream(server, LONG))
            assert got.events[-1] == "[DONE]" and got.finish is None
            assert [e["code"] for e in got.errors] == ["request_timeout"]

            wait_idle(http, timeout=30)  # both generations were aborted
            assert http.post("/v1/chat/completions", json=SHORT).status_code == 200
        assert server.stop() == 0
    finishes = sorted(row["finish_reason"] for row in server.ledger())
    assert finishes == ["aborted", "aborted", "length"]


async def _one_stream(server: Server, body: dict[str, Any]) -> Stream:
    async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
        return await stream(client, body, asyncio.Event(), Stream())
