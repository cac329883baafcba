"""With keys on, nothing but the allow-list answers without a key: every route of the app is
walked, and the usual bypasses (Host headers, `//v1/...`, trailing slashes, dot segments,
percent-encoding, HEAD/OPTIONS, absolute-form targets) are tried on the wire."""

from __future__ import annotations

import http.client
import json
import re
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest
from fastapi.routing import iter_route_contexts
from starlette.routing import Mount

from chatapi.api.app import create_app
from chatapi.config import Settings

from .server import Server, chatapi_server

STATIC = "sk-static-hardening-1"
ADMIN = "sk-admin-hardening-1"
OPEN_ROUTES = {"/", "/health", "/metrics"}  # and the Playground's static files
OPEN_MOUNTS = {"/playground"}


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    directory = tmp_path_factory.mktemp("keyed-server")
    with chatapi_server(directory, "--api-key", STATIC, "--admin-key", ADMIN,
                        "--parallel", "2", "--ctx-size", "256") as server:
        yield server


def send(server: Server, method: str, target: str, headers: dict[str, str] | None = None,
         body: bytes | None = None) -> tuple[int, bytes]:
    """One request with `target` sent exactly as given (no normalization by a client)."""
    parts = urlsplit(server.url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        conn.putrequest(method, target, skip_host="host" in {k.lower() for k in headers or {}},
                        skip_accept_encoding=True)
        for name, value in (headers or {}).items():
            conn.putheader(name, value)
        if body is not None:
            conn.putheader("Content-Type", "application/json")
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def assert_401(status: int, payload: bytes, method: str = "GET") -> None:
    assert status == 401, (status, payload[:300])
    if method != "HEAD":
        assert json.loads(payload)["error"]["code"] == "invalid_api_key"


def concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "x", path)


def app_routes() -> list[tuple[str, str]]:
    """(method, concrete path) of every route the real app has, routers' prefixes included."""
    app = create_app(Settings(database_url="sqlite:///:memory:"))
    found = []
    for context in iter_route_contexts(app.routes):  # app.routes, with included routers expanded
        if isinstance(context.original_route, Mount):
            assert context.path in OPEN_MOUNTS, f"unexpected mount {context.path}"
            continue
        assert context.methods, f"a route without methods: {context.path}"
        for method in sorted(context.methods):
            found.append((method, concrete(context.path)))
    assert ("POST", "/v1/chat/completions") in found and ("GET", "/v1/models") in found
    return found


ROUTES = app_routes()


@pytest.mark.parametrize(("method", "path"), ROUTES, ids=[f"{m} {p}" for m, p in ROUTES])
def test_every_route_but_the_allow_list_needs_a_key(keyed: Server, method: str,
                                                    path: str) -> None:
    body = b"{}" if method in ("POST", "PUT", "PATCH") else None
    status, payload = send(keyed, method, path, body=body)
    if path in OPEN_ROUTES:
        assert status < 400, (status, payload[:300])
        return
    assert_401(status, payload, method)
    assert_401(*send(keyed, method, path, bearer("sk-wrong"), body=body), method)
    # With the admin key (allowed everywhere) the same request gets past auth.
    status, payload = send(keyed, method, path, bearer(ADMIN), body=body)
    assert status not in (401, 403), (status, payload[:300])


def test_the_playground_is_open_and_the_api_is_not(keyed: Server) -> None:
    assert send(keyed, "GET", "/playground/")[0] == 200
    assert_401(*send(keyed, "GET", "/v1/models"))
    assert send(keyed, "GET", "/v1/models", bearer(STATIC))[0] == 200


BYPASS_TARGETS = [
    "//v1/models", "///v1/models", "/v1//models", "/v1/models/", "/v1/models//",
    "/./v1/models", "/v1/./models", "/health/../v1/models", "/metrics/../v1/models",
    "/health/", "/health//", "/metrics/", "/%76%31/models", "/v1/%6dodels", "/v1/models%2F",
    "/health%2F..%2Fv1%2Fmodels", "/health%2f%2e%2e%2fv1%2fmodels", "/v1/models%00",
    "/v1/models;/health", "/V1/MODELS", "/v1/models?/health", "/v1/models?x=/health",
    "http://127.0.0.1/v1/models", "http://127.0.0.1/health/../v1/models",
    "/docs", "/openapi.json", "/admin/keys", "/v1/usage",
]


@pytest.mark.parametrize("target", BYPASS_TARGETS)
def test_crafted_paths_need_a_key(keyed: Server, target: str) -> None:
    assert_401(*send(keyed, "GET", target))


@pytest.mark.parametrize("target", [
    "/playground/../v1/models", "/playground/..%2Fv1%2Fmodels", "/playground/%2e%2e/v1/models",
    "/playground//../../v1/models", "/playground/../admin/keys",
])
def test_the_open_playground_prefix_leads_nowhere_else(keyed: Server, target: str) -> None:
    status, payload = send(keyed, "GET", target)
    assert status == 404, (status, payload[:300])
    assert json.loads(payload)["error"]["code"] == "not_found"  # an error, not the models


@pytest.mark.parametrize("headers", [
    {"Host": "127.0.0.1"}, {"Host": "localhost/health"}, {"Host": "127.0.0.1/health?"},
    {"X-Forwarded-Host": "localhost", "X-Forwarded-For": "127.0.0.1"},
    {"X-Original-URL": "/health"}, {"X-Rewrite-URL": "/health"},
    {"X-Forwarded-Prefix": "/playground"}, {"X-Forwarded-Proto": "https"},
    {"Authorization": "Bearer"}, {"Authorization": f"Basic {STATIC}"},
    {"Authorization": STATIC}, {"Authorization": f"Bearer {STATIC[:-1]}"},
    {"Authorization": f"Bearer {STATIC}x"}, {"X-Api-Key": STATIC}, {"Api-Key": STATIC},
], ids=lambda h: "+".join(f"{k}:{v}" for k, v in h.items())[:60])
def test_crafted_headers_need_a_key(keyed: Server, headers: dict[str, str]) -> None:
    assert_401(*send(keyed, "GET", "/v1/models", headers))
    assert_401(*send(keyed, "POST", "/v1/chat/completions", headers, body=b"{}"))


@pytest.mark.parametrize("method", ["HEAD", "OPTIONS", "PUT", "DELETE", "PATCH", "TRACE"])
@pytest.mark.parametrize("path", ["/v1/models", "/v1/chat/completions", "/admin/keys"])
def test_other_methods_need_a_key(keyed: Server, method: str, path: str) -> None:
    headers = {"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"}
    assert_401(*send(keyed, method, path, headers), method)


def test_key_in_the_query_string_is_not_a_key(keyed: Server) -> None:
    assert_401(*send(keyed, "GET", f"/v1/models?api_key={STATIC}"))
    assert_401(*send(keyed, "GET", f"/v1/models?key={STATIC}&Authorization=Bearer%20{STATIC}"))


@pytest.mark.parametrize("target", [
    "/admin/keys", "/admin/keys/", "//admin/keys", "/admin//keys", "/%61dmin/keys",
    "/admin/keys/x", "/admin/keys/%2e%2e", "/v1/usage", "/v1/usage/", "//v1/usage",
    "/v1//usage", "/v1/%75sage", "/ADMIN/keys",
])
def test_admin_routes_need_an_admin_key(keyed: Server, target: str) -> None:
    status, payload = send(keyed, "GET", target, bearer(STATIC))
    # 403 where it names an admin route; other spellings route nowhere. Never the data.
    assert status in (403, 404, 307), (status, payload[:300])
    if status != 307:  # a redirect to the canonical path, which answers 403
        assert set(json.loads(payload)) == {"error"}, payload[:300]


def test_keys_are_not_logged(keyed: Server) -> None:
    assert STATIC not in keyed.tail(10**8) and ADMIN not in keyed.tail(10**8)


def test_route_list_is_complete() -> None:
    # A new route shows up in ROUTES (and so in the walk above) without editing this file.
    paths = {path for _, path in ROUTES}
    assert {"/v1/completions", "/admin/keys", "/v1/usage", "/v1/models/x"} <= paths
