"""The seed conversation through real OpenAI clients: the 2023 `openai==0.28.1` and today's."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from openai import AsyncOpenAI, OpenAI

from tests.openapi import validate

from .helpers import REPO_ROOT, SEED_MESSAGES

LEGACY_VERSION = "0.28.1"
LEGACY_DIR = Path.home() / ".cache" / "chatapi-test" / "openai028"
MAX_TOKENS = 32

LEGACY_SCRIPT = textwrap.dedent("""
    import json, sys
    import openai
    assert openai.version.VERSION == "0.28.1", openai.version.VERSION
    openai.api_base = sys.argv[1]
    openai.api_key = "sk-none"
    kwargs = dict(model="gpt-3.5-turbo", messages=json.loads(sys.argv[2]),
                  max_tokens=int(sys.argv[3]), temperature=0)
    plain = openai.ChatCompletion.create(**kwargs)
    chunks = [c.to_dict_recursive() for c in openai.ChatCompletion.create(stream=True, **kwargs)]
    print(json.dumps({"plain": plain.to_dict_recursive(), "chunks": chunks}))
""")


@pytest.fixture(scope="session")
def legacy_openai() -> Path:
    """A directory holding openai==0.28.1 and its dependencies, installed once and reused."""
    marker = LEGACY_DIR / f"openai-{LEGACY_VERSION}.dist-info"
    if marker.is_dir():
        return LEGACY_DIR
    LEGACY_DIR.parent.mkdir(parents=True, exist_ok=True)
    staging = LEGACY_DIR.with_name(f"{LEGACY_DIR.name}.partial-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    result = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
         "--target", str(staging), f"openai=={LEGACY_VERSION}"],
        capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        shutil.rmtree(staging, ignore_errors=True)
        pytest.skip(f"pip could not install openai=={LEGACY_VERSION}: "
                    f"{(result.stderr or result.stdout)[-800:]}")
    try:
        staging.rename(LEGACY_DIR)
    except OSError:  # another run installed it first
        shutil.rmtree(staging, ignore_errors=True)
    return LEGACY_DIR


def _check_reply(body: dict[str, Any]) -> str:
    assert body["object"] == "chat.completion"
    assert body["model"] == "gpt-3.5-turbo"
    (choice,) = body["choices"]
    assert choice["message"]["role"] == "assistant"
    assert choice["message"]["content"].strip()
    assert choice["finish_reason"] in ("stop", "length")
    usage = body["usage"]
    assert usage["prompt_tokens"] > 0 and 0 < usage["completion_tokens"] <= MAX_TOKENS
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    return choice["message"]["content"]


def _check_chunks(chunks: list[dict[str, Any]]) -> tuple[str, str]:
    """(streamed text, finish_reason) after checking every chunk's shape."""
    assert chunks, "no chunks"
    text, finish = [], []
    for chunk in chunks:
        validate("CreateChatCompletionStreamResponse", chunk)
        assert chunk["object"] == "chat.completion.chunk"
        assert chunk["model"] == "gpt-3.5-turbo"
        assert chunk["id"] == chunks[0]["id"]
        for choice in chunk["choices"]:
            text.append(choice["delta"].get("content") or "")
            if choice.get("finish_reason"):
                finish.append(choice["finish_reason"])
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert len(finish) == 1, finish
    return "".join(text), finish[0]


def test_seed_conversation_with_openai_0_28(base_url: str, legacy_openai: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(legacy_openai)}
    result = subprocess.run(
        [sys.executable, "-c", LEGACY_SCRIPT, f"{base_url}/v1", json.dumps(SEED_MESSAGES),
         str(MAX_TOKENS)],
        capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout)

    validate("CreateChatCompletionResponse", out["plain"])
    plain_text = _check_reply(out["plain"])
    streamed_text, finish = _check_chunks(out["chunks"])
    assert streamed_text == plain_text
    assert finish == out["plain"]["choices"][0]["finish_reason"]


def test_seed_conversation_with_current_openai(base_url: str) -> None:
    kwargs: dict[str, Any] = dict(model="gpt-3.5-turbo", messages=SEED_MESSAGES,
                                  max_tokens=MAX_TOKENS, temperature=0)
    client = OpenAI(base_url=f"{base_url}/v1", api_key="sk-none", max_retries=0)

    plain = client.chat.completions.create(**kwargs).model_dump(mode="json", exclude_unset=True)
    validate("CreateChatCompletionResponse", plain)
    text = _check_reply(plain)

    stream = client.chat.completions.create(stream=True, stream_options={"include_usage": True},
                                            **kwargs)
    chunks = [c.model_dump(mode="json", exclude_unset=True) for c in stream]
    *content_chunks, usage_chunk = chunks
    assert _check_chunks(content_chunks) == (text, plain["choices"][0]["finish_reason"])
    validate("CreateChatCompletionStreamResponse", usage_chunk)
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"]["completion_tokens"] == plain["usage"]["completion_tokens"]
    assert usage_chunk["usage"]["prompt_tokens"] == plain["usage"]["prompt_tokens"]

    async def with_async_client() -> tuple[dict[str, Any], list[dict[str, Any]]]:
        async with AsyncOpenAI(base_url=f"{base_url}/v1", api_key="sk-none",
                               max_retries=0) as aclient:
            body = await aclient.chat.completions.create(**kwargs)
            astream = await aclient.chat.completions.create(stream=True, **kwargs)
            achunks = [c.model_dump(mode="json", exclude_unset=True) async for c in astream]
        return body.model_dump(mode="json", exclude_unset=True), achunks

    async_plain, async_chunks = asyncio.run(with_async_client())
    validate("CreateChatCompletionResponse", async_plain)
    assert _check_reply(async_plain) == text
    assert _check_chunks(async_chunks)[0] == text
