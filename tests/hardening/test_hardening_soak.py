"""A bounded soak: 32 concurrent clients for CHATAPI_SOAK_S seconds (default 45) of chat and
legacy requests, streamed and not; a third of the clients drop their requests at random
points, and bad requests are mixed in. Afterwards: nothing runs, waits or holds a slot; every
accepted request left exactly one usage row (and no refused one did); no 5xx; the server's
resident memory is back within 10% of where it started."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from tests.integration.helpers import wait_idle

from .server import Server, chatapi_server

SOAK_S = float(os.environ.get("CHATAPI_SOAK_S", "45"))
WIND_DOWN_S = 5.0  # then requests still open are dropped by their clients
CLIENTS = 32
DROPPERS = CLIENTS // 3
ADMIN = "sk-admin-soak"
CTX_SIZE = 512
RSS_SLACK = 1.10
GENERATION_PATHS = ("/v1/chat/completions", "/v1/completions")
TOPICS = ["a color", "a fruit", "a planet", "a tree", "a metal", "an ocean", "a city", "a bird",
          "a river", "a poet", "a game", "a tool"]
BAD: list[tuple[str, Any]] = [
    ("/v1/chat/completions", {"model": "gpt-4", "messages": [], "max_tokens": 2}),
    ("/v1/chat/completions", {"model": "no-such-model", "max_tokens": 2,
                              "messages": [{"role": "user", "content": "hi"}]}),
    ("/v1/chat/completions", {"model": "gpt-4", "temperature": 9,
                              "messages": [{"role": "user", "content": "hi"}]}),
    ("/v1/chat/completions", {"model": "gpt-4", "max_tokens": CTX_SIZE * 4,
                              "messages": [{"role": "user", "content": "hi"}]}),
    ("/v1/chat/completions", {"model": "gpt-4", "stop": ["x"] * 100,
                              "messages": [{"role": "user", "content": "hi"}]}),
    ("/v1/completions", {"model": "gpt-4", "prompt": [10**9], "max_tokens": 2}),
    ("/v1/chat/completions", "{not json"),
    ("/v1/chat/completions", "[]"),
]


@dataclass
class Tally:
    """What the clients saw."""
    answered: dict[str, dict[str, Any]] = field(default_factory=dict)  # id -> usage + finish
    dropped_streams: set[str] = field(default_factory=set)  # accepted, then disconnected
    cancelled: int = 0  # non-streamed requests given up on before any answer: maybe accepted
    refused: set[str] = field(default_factory=set)  # ids of 4xx answers
    busy: int = 0  # 429 (queue full): refused too
    failures: list[str] = field(default_factory=list)  # anything a client should never see


def chat_body(rng: random.Random) -> tuple[str, dict[str, Any]]:
    topic = rng.choice(TOPICS)
    if rng.random() < 0.3:
        return "/v1/completions", {"model": "gpt-3.5-turbo", "prompt": f"The name of {topic} is",
                                   "max_tokens": rng.randint(1, 12),
                                   "temperature": rng.choice([0, 0.7])}
    return "/v1/chat/completions", {
        "model": rng.choice(["gpt-3.5-turbo", "gpt-4o-mini"]), "max_tokens": rng.randint(1, 12),
        "temperature": rng.choice([0, 0.7]), "n": rng.choice([1, 1, 1, 2]),
        "messages": [{"role": "user", "content": f"Name {topic}, in one word."}]}


async def streamed(client: httpx.AsyncClient, tally: Tally, path: str, body: dict[str, Any],
                   drop_after: int | None) -> None:
    body = {**body, "stream": True, "stream_options": {"include_usage": True}}
    async with client.stream("POST", path, json=body) as response:
        if response.status_code != 200:
            await response.aread()
            return note_refusal(tally, response)
        request_id = response.headers["x-request-id"]
        usage, finish, events, done = None, None, 0, False
        lines = response.aiter_lines()
        while True:
            try:
                line = await anext(lines)
            except StopAsyncIteration:
                break
            except asyncio.CancelledError:  # the soak is over: drop it
                tally.dropped_streams.add(request_id)
                raise
            if not line.startswith("data:"):
                continue
            if drop_after is not None and events >= drop_after:
                tally.dropped_streams.add(request_id)
                return  # leaving the block drops the connection mid-stream
            events += 1
            payload = line[5:].strip()
            if payload == "[DONE]":
                done = True
                continue
            chunk = json.loads(payload)
            if "error" in chunk:
                tally.failures.append(f"error event {chunk}")
                continue
            usage = chunk.get("usage") or usage
            finish = next((c["finish_reason"] for c in chunk["choices"]
                           if c["index"] == 0 and c["finish_reason"]), finish)
    if not done:
        tally.failures.append(f"stream {request_id} ended without [DONE]")
    tally.answered[request_id] = {"usage": usage, "finish": finish}


async def plain(client: httpx.AsyncClient, tally: Tally, path: str, body: dict[str, Any],
                patience_s: float | None) -> None:
    try:
        response = await asyncio.wait_for(client.post(path, json=body), patience_s)
    except (TimeoutError, asyncio.CancelledError) as exc:
        tally.cancelled += 1  # the connection is closed: the server aborts the request
        if isinstance(exc, asyncio.CancelledError):
            raise
        return
    if response.status_code != 200:
        return note_refusal(tally, response)
    data = response.json()
    tally.answered[response.headers["x-request-id"]] = {
        "usage": data["usage"], "finish": data["choices"][0]["finish_reason"]}


def note_refusal(tally: Tally, response: httpx.Response) -> None:
    if response.status_code == 429:
        tally.busy += 1
    elif 400 <= response.status_code < 500:
        tally.refused.add(response.headers["x-request-id"])
    else:
        tally.failures.append(f"{response.status_code} {response.text[:300]}")


async def bad(client: httpx.AsyncClient, tally: Tally, rng: random.Random) -> None:
    path, body = rng.choice(BAD)
    content = body if isinstance(body, str) else json.dumps(body)
    response = await client.post(path, content=content,
                                 headers={"content-type": "application/json"})
    if not 400 <= response.status_code < 500 or response.status_code == 429:
        tally.failures.append(f"bad request answered {response.status_code}: {body}")
    else:
        tally.refused.add(response.headers["x-request-id"])


async def one_client(server: Server, tally: Tally, seed: int, deadline: float) -> None:
    rng = random.Random(seed)
    dropper = seed < DROPPERS
    async with httpx.AsyncClient(base_url=server.url, timeout=120) as client:
        while time.monotonic() < deadline:
            try:
                if rng.random() < 0.1:
                    await bad(client, tally, rng)
                    continue
                path, body = chat_body(rng)
                if rng.random() < 0.5:
                    drop_after = rng.randint(0, 6) if dropper else None
                    await streamed(client, tally, path, body, drop_after)
                else:
                    await plain(client, tally, path, body,
                                rng.uniform(0.05, 3.0) if dropper else None)
            except httpx.HTTPError as exc:
                tally.failures.append(f"{type(exc).__name__}: {exc}")


async def soak(server: Server, seconds: float) -> Tally:
    """Clients start requests until `seconds` have passed; requests still open WIND_DOWN_S
    later are dropped (and counted as such)."""
    tally = Tally()
    deadline = time.monotonic() + seconds
    clients = [asyncio.create_task(one_client(server, tally, seed, deadline))
               for seed in range(CLIENTS)]
    _, open_ = await asyncio.wait(clients, timeout=seconds + WIND_DOWN_S)
    for task in open_:
        task.cancel()
    await asyncio.gather(*clients, return_exceptions=True)
    return tally


def finished_records(metrics: str) -> float:
    """Usage records handed to the ledger, as counted by /metrics."""
    return sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
               if line.startswith("chatapi_requests_finished_total"))


def gauge(metrics: str, name: str) -> float:
    return next(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
                if line.startswith(name + " "))


def settled_ledger(server: Server, expected: float, timeout: float = 30) -> list[Any]:
    """The ledger's rows once it holds `expected` of them (written in batches, off the
    request path)."""
    deadline = time.monotonic() + timeout
    rows = server.ledger()
    while len(rows) < expected and time.monotonic() < deadline:
        time.sleep(0.25)
        rows = server.ledger()
    return rows


@pytest.fixture(scope="module")
def soak_server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    directory = tmp_path_factory.mktemp("soak-server")
    with chatapi_server(directory, "--parallel", "8", "--ctx-size", str(CTX_SIZE),
                        "--max-queue", "64", "--admin-key", ADMIN) as server:
        yield server


def test_soak_leaves_no_trace(soak_server: Server) -> None:
    server = soak_server
    # Warm up first: the first batches allocate llama.cpp's buffers once and for all.
    warm = asyncio.run(soak(server, 0.1))
    assert not warm.failures, warm.failures
    with server.client() as http:
        wait_idle(http, timeout=60)
        rss_before = server.rss_bytes()
        records_before = finished_records(http.get("/metrics").text)

        tally = asyncio.run(soak(server, SOAK_S))

        state = wait_idle(http, timeout=60)  # zero running, zero waiting
        metrics = http.get("/metrics").text
        rss_after = server.rss_bytes()
        usage = http.get("/v1/usage", headers={"Authorization": f"Bearer {ADMIN}"})

    assert not tally.failures, tally.failures[:20]
    accepted = len(tally.answered) + len(tally.dropped_streams)
    print(f"soak {SOAK_S:g} s: {accepted} accepted ({len(tally.dropped_streams)} streams "
          f"dropped), {tally.cancelled} given up before an answer, {len(tally.refused)} "
          f"refused, {tally.busy} busy; RSS {rss_before >> 20} -> {rss_after >> 20} MiB")
    assert accepted > CLIENTS, f"too little traffic to mean anything: {accepted} requests"
    assert tally.dropped_streams and tally.cancelled and tally.refused, tally
    assert state == {"status": "ok", "running": 0, "waiting": 0}
    assert gauge(metrics, "chatapi_slots_busy") == 0
    assert gauge(metrics, "chatapi_sequences_running") == 0

    records = finished_records(metrics)
    rows = {row["request_id"]: row for row in settled_ledger(server, records)}
    assert len(rows) == records  # every record reached the ledger
    assert usage.status_code == 200 and usage.json()["total"]["requests"] == len(rows)
    soak_rows = len(rows) - records_before
    known = set(tally.answered) | tally.dropped_streams
    assert known <= set(rows), f"{len(known - set(rows))} accepted requests have no usage row"
    assert not tally.refused & set(rows), "a refused request left a usage row"
    # Requests given up on before any answer may or may not have been accepted.
    assert accepted <= soak_rows <= accepted + tally.cancelled, (
        accepted, soak_rows, tally.cancelled)
    for request_id, seen in tally.answered.items():
        row = rows[request_id]
        assert row["finish_reason"] == seen["finish"], (row, seen)
        assert row["completion_tokens"] == seen["usage"]["completion_tokens"], (row, seen)
    for request_id in tally.dropped_streams:
        assert rows[request_id]["finish_reason"] in ("aborted", "stop", "length"), \
            dict(rows[request_id])
    assert any(rows[r]["finish_reason"] == "aborted" for r in tally.dropped_streams)

    # The access log tells the same story: a line per request, usage on the accepted ones.
    lines = [line for line in server.access_lines()
             if line["method"] == "POST" and line["path"] in GENERATION_PATHS]
    assert {line["id"] for line in lines if "finish_reason" in line} == set(rows)
    assert all("finish_reason" in line for line in lines if line["status"] == 200)
    assert not any("finish_reason" in line for line in lines
                   if 400 <= (line["status"] or 0) < 500 and line["status"] != 499)

    assert rss_after <= rss_before * RSS_SLACK, (
        f"RSS grew from {rss_before >> 20} MiB to {rss_after >> 20} MiB")
    assert '"status": 5' not in server.tail(10**8)  # no 5xx in the access log
    assert server.stop(signal.SIGINT, timeout=30) == 0  # Ctrl-C on an idle server: exit 0
