"""A client that goes away frees its slot: the server stops generating for nobody.

The request counts to 1000 with max_tokens near the whole context, so left alone it would run
for about 1,900 engine steps; the slot must come free within a few steps of the disconnect.
How long a step takes is measured in the same test, so that a loaded machine does not make
the bound meaningless or the test flaky.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from .helpers import chat, health, wait_idle

COUNT: dict[str, Any] = {
    "model": "gpt-3.5-turbo", "temperature": 0, "max_tokens": 1900,
    "messages": [{"role": "user", "content": "Count from 1 to 1000, one number per line, "
                                             "with no other text."}]}
STEPS_TO_FREE = 10  # generous: one step to notice, one to abort, the rest is scheduling noise
MIN_BOUND_S = 5.0


def _bound(step_s: float, steps_left: int) -> float:
    """Seconds the slot may take to come free; checks that running on would take far longer."""
    bound = max(MIN_BOUND_S, STEPS_TO_FREE * step_s)
    assert steps_left * step_s > 5 * bound, "the request would end on its own too soon"
    return bound


def _stream_data_times(http: httpx.Client, body: dict[str, Any], count: int,
                       before_close: Callable[[], None] | None = None) -> list[float]:
    """Stream `body`, read `count` data events, note when each came, call `before_close` (the
    connection is still open then), then drop the connection."""
    times = []
    with http.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as resp:
        assert resp.status_code == 200
        for line in resp.iter_lines():
            if line.startswith("data:"):
                times.append(time.monotonic())
                if len(times) == count:
                    break
        if before_close is not None:
            before_close()
    return times


def _median_gap(times: list[float]) -> float:
    return statistics.median(b - a for a, b in zip(times[1:], times[2:], strict=False))


def _assert_running(client: httpx.Client) -> None:
    assert health(client)["running"] == 1


def _wait_running(client: httpx.Client, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while health(client)["running"] < 1:
        if time.monotonic() > deadline:
            pytest.fail("the request never started running")
        time.sleep(0.05)


def test_disconnected_stream_frees_its_slot(client: httpx.Client, base_url: str) -> None:
    with httpx.Client(base_url=base_url, timeout=120) as reader:
        # Still running while the stream is open; checked after the close, the server could
        # already have seen the disconnect (CI failed that way once).
        times = _stream_data_times(reader, COUNT, count=8,
                                   before_close=lambda: _assert_running(client))
    # The response and its client are closed: the connection is gone.
    disconnected = time.monotonic()
    bound = _bound(_median_gap(times), COUNT["max_tokens"] - len(times))
    wait_idle(client, timeout=bound)
    assert time.monotonic() - disconnected < bound
    assert chat(client, **{**COUNT, "max_tokens": 1})["choices"][0]["finish_reason"] == "length"


def test_non_stream_client_timeout_frees_its_slot(client: httpx.Client, base_url: str) -> None:
    step_s = _median_gap(_stream_data_times(client, {**COUNT, "max_tokens": 8}, count=8))
    wait_idle(client, timeout=30)
    patience_s = max(2.0, 10 * step_s)
    timed_out: list[float] = []

    def impatient_request() -> None:
        with httpx.Client(base_url=base_url, timeout=httpx.Timeout(60, read=patience_s)) as http:
            try:
                http.post("/v1/chat/completions", json=COUNT)
            except httpx.ReadTimeout:
                timed_out.append(time.monotonic())

    thread = threading.Thread(target=impatient_request)
    thread.start()
    _wait_running(client)
    thread.join(timeout=120)
    assert timed_out, "the request finished before the client's timeout"
    bound = _bound(step_s, COUNT["max_tokens"] - int(patience_s / step_s))
    wait_idle(client, timeout=max(0.0, bound - (time.monotonic() - timed_out[0])))
    assert chat(client, **{**COUNT, "max_tokens": 1})["choices"][0]["finish_reason"] == "length"
