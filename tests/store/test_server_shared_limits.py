"""Two server processes on one PostgreSQL database share each key's rate limit."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from .server import admit_then_send, chatapi_server, create_key

pytestmark = pytest.mark.model
CHAT = {"model": "gpt-3.5-turbo", "messages": [{"role": "user", "content": "Say hi."}],
        "max_tokens": 1, "temperature": 0}


def test_two_servers_share_one_rpm_limit(pg_url: str, tmp_path: Path) -> None:
    secret, _ = create_key(pg_url, "shared", rpm=5)
    with chatapi_server(tmp_path / "a.log", pg_url) as a, \
            chatapi_server(tmp_path / "b.log", pg_url) as b:
        headers, later, elapsed = asyncio.run(admit_then_send(
            [a.url, b.url, a.url, b.url, a.url], [b.url, a.url], secret, CHAT))
    # Five admissions, counted down in one bucket whichever process took them.
    assert sorted(int(h["x-ratelimit-remaining-requests"]) for h in headers) == [0, 1, 2, 3, 4]
    assert elapsed < 12, f"the requests took {elapsed:.1f} s: machine too slow"
    for response in later:  # one to each process: both see the bucket empty
        assert response.status_code == 429, response.text
        assert response.json()["error"]["code"] == "rate_limit_exceeded"
        assert response.headers["x-ratelimit-remaining-requests"] == "0"
        assert int(response.headers["retry-after"]) >= 1
