"""AuthMiddleware, /admin/keys and /v1/usage on the real app over a stand-in engine."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from fastapi import Request
from fastapi.testclient import TestClient

from chatapi.api.app import create_app
from chatapi.api.auth import admit
from chatapi.api.usage import UsageRecord
from chatapi.config import Settings
from chatapi.models.registry import ModelRegistry
from chatapi.store import Store
from chatapi.store.times import utcnow

ADMIN = "admin-secret-1"
STATIC = "static-secret-1"
VOLATILE_HEADERS = {"x-request-id", "openai-processing-ms", "content-length"}


class IdleEngine:
    def start(self) -> None: ...
    def stop(self) -> None: ...


def make_client(tmp_path: Path, **settings: Any) -> TestClient:
    state = SimpleNamespace(engine=IdleEngine(), usage_sink=lambda record: None,
                            registry=ModelRegistry("served-model", ["gpt-4", "gpt-3.5-turbo"]))
    app = create_app(Settings(database_url=f"sqlite:///{tmp_path / 'auth.db'}", **settings),
                     state=state)  # type: ignore[arg-type]

    @app.post("/v1/admit-test")
    async def admit_test(request: Request) -> dict:
        """Admits like the generation routes; `used` tokens: accepted, with a usage record."""
        body = await request.json()
        await admit(request, body["model"], body["tokens"])
        if "used" in body:
            server = request.app.state.chatapi
            server.usage_sink(UsageRecord(
                request_id=request.state.request_id, endpoint="test", model=body["model"],
                key_id=request.state.key_id, prompt_tokens=body["used"], finish_reason="stop"))
        return {"ok": True, "key_id": request.scope["state"]["key_id"]}

    return TestClient(app)


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    with make_client(tmp_path, admin_keys=[ADMIN], api_keys=[]) as http:
        yield http


def store_of(client: TestClient) -> Store:
    return client.app.state.store  # type: ignore[attr-defined]


def create_key(client: TestClient, **body: Any) -> dict:
    response = client.post("/admin/keys", json={"name": "k", **body},
                           headers={"Authorization": f"Bearer {ADMIN}"})
    assert response.status_code == 201, response.text
    return response.json()


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def shape(response: Any) -> tuple:
    headers = {k: v for k, v in response.headers.items() if k not in VOLATILE_HEADERS}
    return response.status_code, response.content, tuple(sorted(headers.items()))


def test_without_keys_the_server_is_open_and_closes_once_a_key_exists(client: TestClient
                                                                      ) -> None:
    assert client.get("/v1/models").status_code == 200
    assert client.post("/v1/admit-test", json={"model": "gpt-4", "tokens": 1}).json() == {
        "ok": True, "key_id": None}
    key = create_key(client)
    time.sleep(1.1)  # the open server looks for new keys once a second
    assert client.post("/v1/admit-test", json={"model": "gpt-4", "tokens": 1}
                       ).status_code == 401
    ok = client.post("/v1/admit-test", json={"model": "gpt-4", "tokens": 1},
                     headers=bearer(key["key"]))
    assert ok.json() == {"ok": True, "key_id": key["id"]}


def test_every_refusal_is_the_same_401(client: TestClient) -> None:
    revoked = create_key(client)
    assert client.delete(f"/admin/keys/{revoked['id']}", headers=bearer(ADMIN)).status_code == 200
    expired = create_key(client)
    _expire(client, expired["id"])
    valid = create_key(client)
    attempts = [{}, bearer("sk-wrong"), {"Authorization": valid["key"]},
                {"Authorization": "Basic " + valid["key"]}, bearer(revoked["key"]),
                bearer(expired["key"]), bearer(valid["id"]), bearer("sk-' OR '1'='1"),
                bearer("' OR 1=1; --"), bearer(valid["key"] + "x"), bearer("sk-" + "A" * 5000)]
    answers = [client.post("/v1/admit-test", json={"model": "gpt-4", "tokens": 1}, headers=h)
               for h in attempts]
    assert {shape(a) for a in answers} == {shape(answers[0])}
    first = answers[0]
    assert first.status_code == 401
    assert first.json()["error"]["code"] == "invalid_api_key"
    assert first.headers["www-authenticate"] == "Bearer"
    assert client.post("/v1/admit-test", json={"model": "gpt-4", "tokens": 1},
                       headers=bearer(valid["key"])).status_code == 200


def _expire(client: TestClient, prefix: str) -> None:
    from sqlalchemy import update

    from chatapi.store.schema import api_keys

    async def expire() -> None:
        async with store_of(client).engine.begin() as conn:
            await conn.execute(update(api_keys).where(api_keys.c.prefix == prefix)
                               .values(expires_at=utcnow() - timedelta(seconds=1)))

    client.portal.call(expire)  # type: ignore[attr-defined]


def test_open_paths_need_no_key(tmp_path: Path) -> None:
    with make_client(tmp_path, require_key=True) as client:
        assert client.get("/", follow_redirects=False).status_code in (302, 307)
        assert client.get("/playground/").status_code == 200
        assert client.post("/v1/admit-test", json={"model": "gpt-4", "tokens": 1}
                           ).status_code == 401


def test_admin_routes_need_an_admin_key(client: TestClient) -> None:
    ordinary = create_key(client)
    for method, path in (("GET", "/admin/keys"), ("POST", "/admin/keys"),
                         ("DELETE", f"/admin/keys/{ordinary['id']}"), ("GET", "/v1/usage")):
        assert client.request(method, path).status_code == 401
        forbidden = client.request(method, path, headers=bearer(ordinary["key"]))
        assert forbidden.status_code == 403, (method, path)
        assert forbidden.json()["error"]["code"] == "insufficient_permissions"
    assert client.get(f"/admin/keys/{ordinary['id']}", headers=bearer(ADMIN)).json()[
        "status"] == "active"


def test_static_key_works_beside_stored_keys_but_is_no_admin(tmp_path: Path) -> None:
    with make_client(tmp_path, api_keys=[STATIC], admin_keys=[ADMIN]) as client:
        body = {"model": "gpt-4", "tokens": 1}
        assert client.post("/v1/admit-test", json=body).status_code == 401
        assert client.post("/v1/admit-test", json=body, headers=bearer(STATIC)).json() == {
            "ok": True, "key_id": None}
        key = create_key(client)
        assert client.post("/v1/admit-test", json=body, headers=bearer(key["key"])
                           ).status_code == 200
        assert client.get("/admin/keys", headers=bearer(STATIC)).status_code == 403
        assert client.post("/v1/admit-test", json=body, headers=bearer(ADMIN)).json() == {
            "ok": True, "key_id": "admin"}


def test_admin_key_api(client: TestClient) -> None:
    created = create_key(client, name="team-a", rpm=60, tpm=10_000, models=["gpt-4"],
                         expires_at=int(time.time()) + 3600)
    assert created["key"].startswith(created["id"]) and created["status"] == "active"
    assert (created["rpm"], created["tpm"], created["models"]) == (60, 10_000, ["gpt-4"])
    listed = client.get("/admin/keys", headers=bearer(ADMIN)).json()
    assert [k["id"] for k in listed["data"]] == [created["id"]]
    assert "key" not in listed["data"][0] and created["key"] not in str(listed)
    revoked = client.delete(f"/admin/keys/{created['id']}", headers=bearer(ADMIN)).json()
    assert revoked["status"] == "revoked" and revoked["revoked_at"]
    missing = client.delete("/admin/keys/sk-nothere", headers=bearer(ADMIN))
    assert missing.status_code == 404
    for bad, param in (({"rpm": 0}, "rpm"), ({"name": ""}, "name"),
                       ({"expires_at": "2001-01-01"}, "expires_at"), ({"bogus": 1}, "bogus")):
        response = client.post("/admin/keys", json={"name": "x", **bad}, headers=bearer(ADMIN))
        assert response.status_code == 400, response.text
        assert response.json()["error"]["param"] == param


def test_model_restricted_key(client: TestClient) -> None:
    key = create_key(client, models=["gpt-4"])
    ok = client.post("/v1/admit-test", json={"model": "gpt-4", "tokens": 1},
                     headers=bearer(key["key"]))
    assert ok.status_code == 200
    other = client.post("/v1/admit-test", json={"model": "gpt-3.5-turbo", "tokens": 1},
                        headers=bearer(key["key"]))
    assert other.status_code == 404
    assert other.json()["error"] | {"message": ""} == {
        "message": "", "type": "invalid_request_error", "param": "model",
        "code": "model_not_found"}
    by_id = create_key(client, models=["served-model"])  # the served id covers its aliases
    assert client.post("/v1/admit-test", json={"model": "gpt-3.5-turbo", "tokens": 1},
                       headers=bearer(by_id["key"])).status_code == 200


def test_rate_limit_headers_and_429(client: TestClient) -> None:
    key = create_key(client, rpm=2, tpm=1000)
    body = {"model": "gpt-4", "tokens": 600, "used": 100}
    first = client.post("/v1/admit-test", json=body, headers=bearer(key["key"]))
    assert first.status_code == 200
    assert first.headers["x-ratelimit-limit-requests"] == "2"
    assert first.headers["x-ratelimit-remaining-requests"] == "1"
    assert first.headers["x-ratelimit-limit-tokens"] == "1000"
    assert first.headers["x-ratelimit-remaining-tokens"] == "400"
    # 600 were reserved but 100 used: the rest came back when the first request ended
    second = client.post("/v1/admit-test", json=body, headers=bearer(key["key"]))
    assert second.status_code == 200
    assert 298 <= int(second.headers["x-ratelimit-remaining-tokens"]) <= 310
    third = client.post("/v1/admit-test", json=body, headers=bearer(key["key"]))
    assert third.status_code == 429
    error = third.json()["error"]
    assert (error["type"], error["code"]) == ("requests", "rate_limit_exceeded")
    assert 1 <= int(third.headers["retry-after"]) <= 60
    assert third.headers["x-ratelimit-remaining-requests"] == "0"
    assert third.headers["x-ratelimit-reset-requests"].endswith("s")


def test_not_accepted_requests_do_not_count(client: TestClient) -> None:
    key = create_key(client, rpm=1)
    for _ in range(3):  # admitted, but no usage record: refused later (e.g. engine queue full)
        assert client.post("/v1/admit-test", json={"model": "gpt-4", "tokens": 1},
                           headers=bearer(key["key"])).status_code == 200
    assert client.post("/v1/admit-test", json={"model": "gpt-4", "tokens": 1, "used": 1},
                       headers=bearer(key["key"])).status_code == 200
    assert client.post("/v1/admit-test", json={"model": "gpt-4", "tokens": 1},
                       headers=bearer(key["key"])).status_code == 429


def test_usage_route(client: TestClient) -> None:
    store = store_of(client)
    for i in range(3):
        store.record_usage(UsageRecord(request_id=f"r{i}", endpoint="chat.completions",
                                       model="gpt-4", key_id="sk-AAAAAAAA", prompt_tokens=10,
                                       completion_tokens=i, finish_reason="stop"))
    client.portal.call(store.ledger.drain)  # type: ignore[attr-defined]
    usage = client.get("/v1/usage?by=model", headers=bearer(ADMIN)).json()
    assert usage["total"]["requests"] == 3 and usage["total"]["total_tokens"] == 33
    assert usage["data"] == [{"model": "gpt-4", **usage["total"]}]
    assert client.get("/v1/usage?since=7d&key=sk-AAAAAAAA", headers=bearer(ADMIN)).json()[
        "total"]["requests"] == 3
    bad = client.get("/v1/usage?since=yesterday", headers=bearer(ADMIN))
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "since"
