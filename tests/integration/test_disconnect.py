"""A client that goes away frees its slot: the server stops generating for nobody."""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from .helpers import STORY, chat, health, wait_idle

LONG = dict(model="gpt-3.5-turbo", messages=STORY, max_tokens=1500, temperature=0)
FREED_WITHIN_S = 10.0


def _wait_running(client: httpx.Client, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while health(client)["running"] < 1:
        if time.monotonic() > deadline:
            pytest.fail("the request never started running")
        time.sleep(0.05)


def test_disconnected_stream_frees_its_slot(client: httpx.Client, base_url: str) -> None:
    with httpx.Client(base_url=base_url, timeout=60) as reader:
        with reader.stream("POST", "/v1/chat/completions", json={**LONG, "stream": True}) as resp:
            assert resp.status_code == 200
            received = 0
            for line in resp.iter_lines():
                received += line.startswith("data:")
                if received == 3:
                    break
            assert health(client)["running"] == 1
    # Both the response and the client are closed: the connection is gone.
    started = time.monotonic()
    wait_idle(client, timeout=FREED_WITHIN_S)
    assert time.monotonic() - started < FREED_WITHIN_S
    assert chat(client, **{**LONG, "max_tokens": 1})["choices"][0]["finish_reason"] == "length"


def test_non_stream_client_timeout_frees_its_slot(client: httpx.Client, base_url: str) -> None:
    outcome: list[BaseException] = []

    def impatient_request() -> None:
        with httpx.Client(base_url=base_url, timeout=httpx.Timeout(60, read=4.0)) as http:
            try:
                http.post("/v1/chat/completions", json=LONG)
            except httpx.ReadTimeout as exc:
                outcome.append(exc)

    thread = threading.Thread(target=impatient_request)
    thread.start()
    _wait_running(client)
    thread.join(timeout=120)
    assert outcome, "the 1,500-token request finished before the client's 4 s timeout"
    wait_idle(client, timeout=FREED_WITHIN_S)
    assert chat(client, **{**LONG, "max_tokens": 1})["choices"][0]["finish_reason"] == "length"
