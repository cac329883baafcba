"""A server started with --api-key refuses requests without that bearer key."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import openai
import pytest
from openai import OpenAI

from tests.openapi import validate

from .helpers import assert_error, running_server, thread_args

KEY = "sk-test-123"
CHAT = {"model": "gpt-3.5-turbo", "messages": [{"role": "user", "content": "Say hi."}],
        "max_tokens": 2, "temperature": 0}


@pytest.fixture(scope="module")
def keyed_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    log = tmp_path_factory.mktemp("keyed-server") / "server.log"
    args = ["--api-key", KEY, "--parallel", "1", "--ctx-size", "512", *thread_args()]
    with running_server(log, *args) as url:
        yield url


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer sk-wrong"},
                                     {"Authorization": KEY}, {"Authorization": "Basic " + KEY}],
                         ids=["none", "wrong", "no-scheme", "basic"])
@pytest.mark.parametrize(("method", "path"), [("POST", "/v1/chat/completions"),
                                              ("GET", "/v1/models")])
def test_missing_or_wrong_key_is_a_401(keyed_url: str, headers: dict[str, str], method: str,
                                       path: str) -> None:
    response = httpx.request(method, keyed_url + path, headers=headers,
                             json=CHAT if method == "POST" else None, timeout=30)
    assert_error(response, 401, code="invalid_api_key")


def test_right_key_works_through_the_openai_client(keyed_url: str) -> None:
    client = OpenAI(base_url=f"{keyed_url}/v1", api_key=KEY, max_retries=0)
    reply = client.chat.completions.create(**CHAT)
    validate("CreateChatCompletionResponse", reply.model_dump(mode="json", exclude_unset=True))
    assert reply.choices[0].message.content
    assert "gpt-3.5-turbo" in [m.id for m in client.models.list()]

    wrong = OpenAI(base_url=f"{keyed_url}/v1", api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        wrong.chat.completions.create(**CHAT)


def test_health_needs_no_key(keyed_url: str) -> None:
    response = httpx.get(f"{keyed_url}/health", timeout=30)
    assert response.status_code == 200
    assert response.json()["status"] == "ok"
