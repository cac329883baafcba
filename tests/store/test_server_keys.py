"""Keys against a real server on a SQLite file: create → use → revoke, refusals, hash-only
storage, file mode, model-restricted keys, RPM limits, and the admin API."""

from __future__ import annotations

import asyncio
import os
import stat
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import openai
import pytest
from openai import OpenAI

from chatapi.cli import main
from chatapi.store.keys import hash_key
from chatapi.store.times import utcnow

from .server import Server, admit_then_send, chatapi_server, create_key

pytestmark = pytest.mark.model
ADMIN = "admin-test-secret"
CHAT = {"model": "gpt-3.5-turbo", "messages": [{"role": "user", "content": "Say hi."}],
        "max_tokens": 2, "temperature": 0}


@pytest.fixture(scope="module")
def db_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("keys") / "data" / "chatapi.db"


@pytest.fixture(scope="module")
def db_url(db_path: Path) -> str:
    return f"sqlite:///{db_path}"


@pytest.fixture(scope="module")
def server(db_url: str, db_path: Path) -> Iterator[Server]:
    create_key(db_url, "first")  # a key exists: every request needs one from the start
    with chatapi_server(db_path.parent.parent / "server.log", db_url, "--admin-key",
                        ADMIN) as running:
        yield running


def post(server: Server, secret: str | None, body: dict | None = None,
         path: str = "/v1/chat/completions") -> httpx.Response:
    headers = {"Authorization": f"Bearer {secret}"} if secret is not None else {}
    return httpx.post(server.url + path, json=body or CHAT, headers=headers, timeout=120)


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    assert main(list(argv)) == 0
    return capsys.readouterr().out.strip()


def test_create_use_revoke(server: Server, db_url: str, capsys: pytest.CaptureFixture[str]
                           ) -> None:
    secret = cli(capsys, "keys", "create", "--name", "app", "--database-url", db_url)
    client = OpenAI(base_url=f"{server.url}/v1", api_key=secret, max_retries=0)
    assert client.chat.completions.create(**CHAT).choices[0].message.content
    assert "gpt-3.5-turbo" in [m.id for m in client.models.list()]

    cli(capsys, "keys", "revoke", secret[:11], "--database-url", db_url)
    with pytest.raises(openai.AuthenticationError):
        client.chat.completions.create(**CHAT)
    assert post(server, secret).json()["error"]["code"] == "invalid_api_key"


def test_every_bad_key_gets_the_same_401(server: Server, db_url: str) -> None:
    revoked, prefix = create_key(db_url, "revoked")
    httpx.delete(f"{server.url}/admin/keys/{prefix}", headers={"Authorization": f"Bearer {ADMIN}"},
                 timeout=30).raise_for_status()
    expired, _ = create_key(db_url, "expired", expires_at=utcnow() - timedelta(seconds=1))
    valid, _ = create_key(db_url, "valid")
    answers = [post(server, token) for token in (
        None, "sk-wrong", revoked, expired, valid[:11], valid + "x", "sk-' OR '1'='1' --",
        "'; DROP TABLE api_keys; --")]
    assert {(a.status_code, a.content) for a in answers} == {(401, answers[0].content)}
    assert answers[0].json()["error"]["code"] == "invalid_api_key"
    assert post(server, valid).status_code == 200  # and the table is still there


def test_database_holds_hashes_only_and_is_private(server: Server, db_url: str, db_path: Path
                                                   ) -> None:
    secret, _ = create_key(db_url, "private")
    assert post(server, secret).status_code == 200
    assert stat.S_IMODE(os.stat(db_path).st_mode) == 0o600
    files = [f for f in db_path.parent.iterdir() if f.name.startswith(db_path.name)]
    stored = b"".join(f.read_bytes() for f in files)
    assert secret.encode() not in stored and secret[11:].encode() not in stored
    assert hash_key(secret).encode() in stored
    for f in files:
        assert stat.S_IMODE(os.stat(f).st_mode) & 0o077 == 0, f


def test_model_restricted_key(server: Server, db_url: str) -> None:
    secret, _ = create_key(db_url, "gpt-4 only", models=["gpt-4"])
    assert post(server, secret, {**CHAT, "model": "gpt-4"}).status_code == 200
    for path, body in (("/v1/chat/completions", CHAT),
                       ("/v1/completions", {"model": "gpt-3.5-turbo", "prompt": "Hi",
                                            "max_tokens": 1})):
        refused = post(server, secret, body, path)
        assert refused.status_code == 404
        assert refused.json()["error"]["code"] == "model_not_found"
        assert refused.json()["error"]["param"] == "model"
    # the key sees only its model in the list, and the others as if they did not exist
    client = OpenAI(base_url=server.url + "/v1", api_key=secret)
    assert [m.id for m in client.models.list()] == ["gpt-4"]
    assert client.models.retrieve("gpt-4").id == "gpt-4"
    with pytest.raises(openai.NotFoundError) as refused_model:
        client.models.retrieve("gpt-3.5-turbo")
    assert refused_model.value.body["code"] == "model_not_found"
    # an unrestricted key sees every name the server answers to
    everything, _ = create_key(db_url, "all models")
    names = [m.id for m in OpenAI(base_url=server.url + "/v1", api_key=everything).models.list()]
    assert {"gpt-4", "gpt-3.5-turbo"} <= set(names) and len(names) > 2


def test_best_of_reserves_tokens_for_every_sequence_generated(server: Server,
                                                              db_url: str) -> None:
    # best_of=3 generates (and bills) three sequences of up to 40 tokens: with up to 17 of a
    # 100-token minute used (refilled at 1.7 a second), 120 do not fit, one sequence's 41 would
    secret, _ = create_key(db_url, "tpm", tpm=100)
    body = {"model": "gpt-3.5-turbo", "prompt": "Hi", "temperature": 0}
    first = post(server, secret, {**body, "max_tokens": 16}, "/v1/completions")
    assert first.status_code == 200, first.text
    assert 1 < first.json()["usage"]["total_tokens"] <= 17  # charged; n-based reserving fits
    refused = post(server, secret, {**body, "max_tokens": 40, "n": 1, "best_of": 3},
                   "/v1/completions")
    assert refused.status_code == 429, refused.text
    assert refused.json()["error"]["type"] == "tokens"


def test_rpm_5_the_sixth_request_in_the_minute_gets_429(server: Server, db_url: str) -> None:
    secret, _ = create_key(db_url, "rpm", rpm=5, tpm=100_000)
    headers, [sixth], elapsed = asyncio.run(
        admit_then_send([server.url] * 5, [server.url], secret, CHAT))
    assert {h["x-ratelimit-limit-requests"] for h in headers} == {"5"}
    assert sorted(int(h["x-ratelimit-remaining-requests"]) for h in headers) == [0, 1, 2, 3, 4]
    assert {h["x-ratelimit-limit-tokens"] for h in headers} == {"100000"}

    # RPM 5 gives back one request every 12 s: a slower run would rightly be admitted.
    assert elapsed < 12, f"the six requests took {elapsed:.1f} s: machine too slow"
    assert sixth.status_code == 429, sixth.text
    error = sixth.json()["error"]
    assert (error["type"], error["code"]) == ("requests", "rate_limit_exceeded")
    assert 1 <= int(sixth.headers["retry-after"]) <= 12
    assert sixth.headers["x-ratelimit-limit-requests"] == "5"
    assert sixth.headers["x-ratelimit-remaining-requests"] == "0"
    assert sixth.headers["x-ratelimit-reset-requests"].endswith("s")
    for name in ("x-ratelimit-limit-tokens", "x-ratelimit-remaining-tokens",
                 "x-ratelimit-reset-tokens"):
        assert name in sixth.headers


def test_admin_api_manages_keys(server: Server) -> None:
    admin = {"Authorization": f"Bearer {ADMIN}"}
    created = httpx.post(f"{server.url}/admin/keys", json={"name": "over http", "rpm": 100},
                         headers=admin, timeout=30)
    assert created.status_code == 201, created.text
    key = created.json()
    assert post(server, key["key"]).status_code == 200
    assert httpx.get(f"{server.url}/admin/keys", headers={
        "Authorization": f"Bearer {key['key']}"}, timeout=30).status_code == 403
    listed = httpx.get(f"{server.url}/admin/keys", headers=admin, timeout=30).json()["data"]
    assert key["id"] in [k["id"] for k in listed] and key["key"] not in str(listed)

    usage = {}
    for _ in range(50):  # the ledger writes in the background
        usage = httpx.get(f"{server.url}/v1/usage", params={"key": key["id"]}, headers=admin,
                          timeout=30).json()
        if usage["total"]["requests"]:
            break
        time.sleep(0.1)
    assert usage["total"]["requests"] == 1 and usage["total"]["completion_tokens"] >= 1

    httpx.delete(f"{server.url}/admin/keys/{key['id']}", headers=admin,
                 timeout=30).raise_for_status()
    assert post(server, key["key"]).status_code == 401
