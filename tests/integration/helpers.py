"""Shared helpers: start a server subprocess, post requests, read SSE streams, check errors.

Every response body and every stream chunk that passes through these helpers is validated
against OpenAI's published OpenAPI schemas.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.openapi import validate

REPO_ROOT = Path(__file__).resolve().parents[2]
STARTUP_TIMEOUT_S = 120.0
REQUEST_TIMEOUT_S = 180.0
CTX_SIZE = 2048


def thread_args() -> list[str]:
    """`--threads 1` unless $CHATAPI_THREADS says otherwise.

    llama.cpp's worker threads spin while they wait for each other: on 2 cores shared with
    other work, 2 threads took 26-47 s for a 32-token answer that 1 thread gave in 5 s.
    """
    return [] if os.environ.get("CHATAPI_THREADS") else ["--threads", "1"]


SEED_MESSAGES: list[dict[str, str]] = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Who won the world series in 2020?"},
    {"role": "assistant", "content": "The Los Angeles Dodgers won the World Series in 2020."},
    {"role": "user", "content": "Where was it played?"},
]

# A request the model answers at length: it does not stop within a few dozen tokens.
STORY = [{"role": "user", "content": "Write a long story about a dragon."}]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def running_server(log_path: Path, *extra_args: str) -> Iterator[str]:
    """Run `python -m chatapi serve` on a free port; yield its base URL once /health answers."""
    port = free_port()
    cmd = [sys.executable, "-m", "chatapi", "serve", "--host", "127.0.0.1", "--port", str(port),
           *extra_args]
    # The user's model cache (and $CHATAPI_HOME if set) is used as is: assembling costs time.
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    # A ledger of its own: keys a developer created in the default database must not
    # turn these servers into keyed ones.
    env.setdefault("CHATAPI_DATABASE_URL", f"sqlite:///{log_path.with_suffix('.db')}")
    with log_path.open("wb") as log:
        proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    base_url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(proc, base_url, log_path)
        yield base_url
    finally:
        _stop(proc)


@contextmanager
def temp_server(factory: pytest.TempPathFactory, name: str, *extra_args: str) -> Iterator[str]:
    """A server for a session or module fixture: its log in a fresh temporary directory, the
    tests' context size and thread count."""
    log = factory.mktemp(name) / "server.log"
    with running_server(log, "--ctx-size", str(CTX_SIZE), *extra_args, *thread_args()) as url:
        yield url


def _wait_healthy(proc: subprocess.Popen, base_url: str, log_path: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"server exited with {proc.returncode} before it was healthy; log:\n"
                        f"{_tail(log_path)}", pytrace=False)
        try:
            if httpx.get(f"{base_url}/health", timeout=2.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.25)
    pytest.fail(f"server not healthy after {STARTUP_TIMEOUT_S:.0f} s; log:\n{_tail(log_path)}",
                pytrace=False)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=15)


def _tail(path: Path, chars: int = 6000) -> str:
    text = path.read_text(errors="replace") if path.exists() else "(no log)"
    return text[-chars:]


# --- requests ------------------------------------------------------------------------------


def chat(client: httpx.Client, **body: Any) -> dict[str, Any]:
    """POST /v1/chat/completions (not streamed); assert 200 and a valid response body."""
    response = client.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    data = response.json()
    validate("CreateChatCompletionResponse", data)
    return data


def complete(client: httpx.Client, **body: Any) -> dict[str, Any]:
    """POST /v1/completions (not streamed); assert 200 and a valid response body."""
    response = client.post("/v1/completions", json=body)
    assert response.status_code == 200, response.text
    data = response.json()
    validate("CreateCompletionResponse", data)
    return data


def sse_events(client: httpx.Client, path: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    """POST a streamed request; return its data events, checking it ends with [DONE]."""
    events: list[dict[str, Any]] = []
    done = False
    with client.stream("POST", path, json={**body, "stream": True}) as response:
        assert response.status_code == 200, response.read().decode()
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if not line.startswith("data:"):
                assert not line.strip() or line.startswith(":"), f"not SSE: {line!r}"
                continue
            payload = line[len("data:"):].strip()
            assert not done, "data after [DONE]"
            if payload == "[DONE]":
                done = True
                continue
            event = json.loads(payload)
            assert "error" not in event, f"error event in stream: {event}"
            events.append(event)
    assert done, "stream ended without data: [DONE]"
    return events


def stream_chat(client: httpx.Client, **body: Any) -> list[dict[str, Any]]:
    chunks = sse_events(client, "/v1/chat/completions", body)
    for chunk in chunks:
        validate("CreateChatCompletionStreamResponse", chunk)
    return chunks


def stream_complete(client: httpx.Client, **body: Any) -> list[dict[str, Any]]:
    chunks = sse_events(client, "/v1/completions", body)
    for chunk in chunks:
        validate_completion_chunk(chunk)
    return chunks


def validate_completion_chunk(chunk: dict[str, Any]) -> None:
    """A legacy completion chunk is a CreateCompletionResponse, except that OpenAI streams
    `finish_reason: null` until a choice ends, which that (shared) schema does not allow."""
    choices = [{**c, "finish_reason": c["finish_reason"] or "stop"} if "finish_reason" in c
               else c for c in chunk.get("choices", [])]
    validate("CreateCompletionResponse", {**chunk, "choices": choices})


def chunk_text(chunks: list[dict[str, Any]], index: int = 0) -> str:
    """The assistant text of choice `index`, joined from chat stream chunks."""
    return "".join(choice["delta"].get("content") or ""
                   for chunk in chunks for choice in chunk["choices"]
                   if choice["index"] == index)


def chunk_finish(chunks: list[dict[str, Any]], index: int = 0) -> str | None:
    """The one finish_reason that choice `index` ended with in a stream."""
    reasons = [choice["finish_reason"] for chunk in chunks for choice in chunk["choices"]
               if choice["index"] == index and choice["finish_reason"]]
    assert len(reasons) == 1, f"choice {index} finished {len(reasons)} times: {reasons}"
    return reasons[0]


def text_of(body: dict[str, Any], index: int = 0) -> str:
    choice = body["choices"][index]
    assert choice["index"] == index
    return choice["message"]["content"]


def assert_error(response: httpx.Response, status: int, *, type: str | None = None,
                 code: str | None = None, param: Any = ...) -> dict[str, Any]:
    """Assert an OpenAI-shaped error; return its `error` object."""
    assert response.status_code == status, (response.status_code, response.text)
    body = response.json()
    validate("ErrorResponse", body)
    error = body["error"]
    assert error["message"], body
    if type is not None:
        assert error["type"] == type, body
    if code is not None:
        assert error["code"] == code, body
    if param is not ...:
        assert error["param"] == param, body
    return error


def health(client: httpx.Client) -> dict[str, Any]:
    response = client.get("/health")
    assert response.status_code == 200, response.text
    return response.json()


@contextmanager
def idle_client(base_url: str) -> Iterator[httpx.Client]:
    """An httpx client on base_url, handed out once the server is idle, so that slot counts
    and timings in the test are its own."""
    with httpx.Client(base_url=base_url, timeout=REQUEST_TIMEOUT_S) as http:
        wait_idle(http, timeout=30)
        yield http


def wait_idle(client: httpx.Client, timeout: float) -> dict[str, Any]:
    """Poll /health until nothing runs or waits; fail with the last reading on timeout."""
    deadline = time.monotonic() + timeout
    state = health(client)
    while state["running"] or state["waiting"]:
        if time.monotonic() > deadline:
            pytest.fail(f"slots still busy {timeout} s later: {state}")
        time.sleep(0.1)
        state = health(client)
    return state
