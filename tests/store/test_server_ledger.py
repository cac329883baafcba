"""The usage ledger against a real server: 50 concurrent requests (plain, streamed, aborted
mid-stream, bad) leave exactly one row per accepted request, with the figures the clients
got; a SIGTERM under load loses no row. On SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from .server import Server, chatapi_server, create_key, ledger_rows, ledger_writes_held

pytestmark = pytest.mark.model
# uvicorn shuts down gracefully on SIGTERM, then raises the signal again to exit with it.
CLEAN_EXIT = (0, -signal.SIGTERM)
TOPICS = ["a color", "a fruit", "a planet", "a tree", "a metal", "an ocean", "a city", "a bird"]


@dataclass
class Outcome:
    """What one client saw."""
    request_id: str
    endpoint: str
    model: str
    aborted: bool = False
    usage: dict[str, Any] | None = None
    finish_reason: str | None = None
    ended: float = 0.0


@pytest.fixture(params=["sqlite", "postgresql"])
def backend_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'ledger.db'}"
    return request.getfixturevalue("pg_url")


def chat_body(i: int, **extra: Any) -> dict[str, Any]:
    return {"model": ["gpt-3.5-turbo", "gpt-4"][i % 2], "temperature": 0,
            "max_tokens": 1 + i % 8,
            "messages": [{"role": "user", "content": f"Name {TOPICS[i % len(TOPICS)]}."}],
            **extra}


def completion_body(i: int, **extra: Any) -> dict[str, Any]:
    return {"model": "gpt-3.5-turbo", "prompt": f"The name of {TOPICS[i % len(TOPICS)]} is",
            "max_tokens": 1 + i % 8, "temperature": 0, **extra}


async def plain(client: httpx.AsyncClient, path: str, body: dict) -> Outcome:
    response = await client.post(path, json=body)
    assert response.status_code == 200, response.text
    data = response.json()
    return Outcome(response.headers["x-request-id"], path, body["model"], usage=data["usage"],
                   finish_reason=data["choices"][0]["finish_reason"], ended=time.monotonic())


async def streamed(client: httpx.AsyncClient, path: str, body: dict,
                   started: asyncio.Event | None = None) -> Outcome:
    body = {**body, "stream": True, "stream_options": {"include_usage": True}}
    async with client.stream("POST", path, json=body) as response:
        assert response.status_code == 200, await response.aread()
        outcome = Outcome(response.headers["x-request-id"], path, body["model"])
        async for line in response.aiter_lines():
            if not line.startswith("data:") or line.endswith("[DONE]"):
                continue
            event = json.loads(line[5:])
            assert "error" not in event, event
            if started is not None and event["choices"]:
                started.set()
            outcome.usage = event.get("usage") or outcome.usage
            for choice in event["choices"]:
                outcome.finish_reason = choice.get("finish_reason") or outcome.finish_reason
    outcome.ended = time.monotonic()
    return outcome


async def aborted(client: httpx.AsyncClient, i: int) -> Outcome:
    """A long generation, dropped by the client after its first generated text."""
    body = {**chat_body(i), "max_tokens": 200, "stream": True}
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200, await response.aread()
        async for line in response.aiter_lines():
            if line.startswith("data:") and '"content":"' in line and '"content":""' not in line:
                break  # leaving the block closes the connection mid-stream
    return Outcome(response.headers["x-request-id"], "/v1/chat/completions", body["model"],
                   aborted=True)


BAD_REQUESTS: list[tuple[str, Any]] = [
    ("/v1/chat/completions", {**chat_body(0), "temperature": 5}),
    ("/v1/chat/completions", {**chat_body(0), "model": "no-such-model"}),
    ("/v1/chat/completions", {**chat_body(0), "max_tokens": 5000}),  # beyond the context
    ("/v1/chat/completions", {**chat_body(0), "n": 1000}),
    ("/v1/chat/completions", {"model": "gpt-4"}),
    ("/v1/chat/completions", "{not json"),
    ("/v1/completions", {**completion_body(0), "prompt": [10**9]}),
    ("/v1/completions", {**completion_body(0), "max_tokens": -1}),
]


async def bad(client: httpx.AsyncClient, path: str, body: Any) -> str:
    if isinstance(body, str):
        response = await client.post(path, content=body,
                                     headers={"Content-Type": "application/json"})
    else:
        response = await client.post(path, json=body)
    assert 400 <= response.status_code < 500, response.text
    return response.headers["x-request-id"]


async def fifty(server: Server, secret: str) -> tuple[list[Outcome], list[str]]:
    async with httpx.AsyncClient(base_url=server.url, timeout=300,
                                 headers={"Authorization": f"Bearer {secret}"}) as client:
        jobs = ([plain(client, "/v1/chat/completions", chat_body(i)) for i in range(16)]
                + [streamed(client, "/v1/chat/completions", chat_body(i)) for i in range(10)]
                + [plain(client, "/v1/completions", completion_body(i)) for i in range(5)]
                + [streamed(client, "/v1/completions", completion_body(i)) for i in range(5)]
                + [aborted(client, i) for i in range(6)])
        bad_jobs = [bad(client, path, body) for path, body in BAD_REQUESTS]
        results = await asyncio.gather(*jobs, *bad_jobs)
    return list(results[:len(jobs)]), list(results[len(jobs):])


def check_rows(rows: dict[str, Any], outcomes: list[Outcome], prefix: str) -> None:
    """Each outcome's row holds what its client saw."""
    for o in outcomes:
        row = rows[o.request_id]
        assert row.key_id == prefix and row.model == o.model
        assert row.endpoint == ("chat.completions" if "chat" in o.endpoint else "completions")
        if o.aborted:
            assert row.finish_reason == "aborted", row
            assert 1 <= row.completion_tokens < 200, row
            continue
        assert o.usage is not None, o
        assert (row.prompt_tokens, row.completion_tokens) == (
            o.usage["prompt_tokens"], o.usage["completion_tokens"]), (row, o)
        cached = (o.usage.get("prompt_tokens_details") or {}).get("cached_tokens")
        if cached is not None:
            assert row.cached_tokens == cached, (row, o)
        assert row.finish_reason == o.finish_reason, (row, o)
        assert row.latency_s > 0 and row.ttft_s is not None and row.ttft_s <= row.latency_s


def test_fifty_concurrent_requests_leave_one_row_each(backend_url: str, tmp_path: Path) -> None:
    secret, prefix = create_key(backend_url, "ledger")
    with chatapi_server(tmp_path / "server.log", backend_url) as server:
        outcomes, bad_ids = asyncio.run(fifty(server, secret))
        exit_code = server.terminate()  # the ledger is drained at shutdown
    assert exit_code in CLEAN_EXIT, server.tail()
    rows = ledger_rows(backend_url)

    assert len(outcomes) + len(bad_ids) == 50
    assert set(rows) == {o.request_id for o in outcomes}  # and none for the bad requests
    check_rows(rows, outcomes, prefix)
    received = [o.usage for o in outcomes if not o.aborted]
    stored = [r for r in rows.values() if r.finish_reason != "aborted"]
    assert sum(r.prompt_tokens for r in stored) == sum(u["prompt_tokens"] for u in received)
    assert sum(r.completion_tokens for r in stored) == sum(
        u["completion_tokens"] for u in received)
    assert sum(r.finish_reason == "aborted" for r in rows.values()) == sum(
        o.aborted for o in outcomes) == 6


async def load_then_sigterm(server: Server, secret: str, database_url: str
                            ) -> tuple[list[Outcome | BaseException], float, bool]:
    """16 requests; SIGTERM once tokens flow. The ledger's database is kept busy meanwhile, so
    the last rows are still queued when the server shuts down: they must be drained."""
    started = asyncio.Event()
    async with ledger_writes_held(database_url), httpx.AsyncClient(
            base_url=server.url, timeout=300,
            headers={"Authorization": f"Bearer {secret}"}) as client:
        tasks = [asyncio.create_task(
            streamed(client, "/v1/chat/completions", chat_body(i), started) if i % 2
            else plain(client, "/v1/chat/completions", {**chat_body(i), "max_tokens": 8}))
            for i in range(16)]
        await asyncio.wait_for(started.wait(), 120)
        server.proc.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.sleep(1.0)
        waiting_for_ledger = server.proc.poll() is None
    return results, signalled, waiting_for_ledger


def test_sigterm_under_load_loses_no_row(backend_url: str, tmp_path: Path) -> None:
    secret, prefix = create_key(backend_url, "sigterm")
    with chatapi_server(tmp_path / "server.log", backend_url) as server:
        results, signalled, waited = asyncio.run(load_then_sigterm(server, secret, backend_url))
        exit_code = server.terminate()
    assert exit_code in CLEAN_EXIT, server.tail()
    assert waited, "the server exited before its queued usage rows could be written"
    outcomes = [r for r in results if isinstance(r, Outcome)]
    failed = [r for r in results if not isinstance(r, Outcome)]
    assert all(isinstance(f, httpx.TransportError) for f in failed), failed
    assert any(o.ended > signalled for o in outcomes), "nothing was in flight at SIGTERM"

    rows = ledger_rows(backend_url)
    check_rows(rows, outcomes, prefix)  # every answered request has its row
    extra = [r for r in rows.values() if r.request_id not in {o.request_id for o in outcomes}]
    # Only requests cut off by the shutdown timeout may have rows their clients never saw.
    assert len(extra) <= len(failed) and all(r.finish_reason == "aborted" for r in extra)
    assert "could not be written" not in server.tail(100_000)
