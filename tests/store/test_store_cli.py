"""`chatapi keys …`, `chatapi usage`, `chatapi db upgrade` (in-process)."""

from __future__ import annotations

import asyncio

import pytest

from chatapi.api.usage import UsageRecord
from chatapi.cli import main
from chatapi.store import Store


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_keys_lifecycle(database_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    db = ("--database-url", database_url)
    code, out, err = run(capsys, "keys", "create", "--name", "ci bot", "--rpm", "5", "--tpm",
                         "1000", "--models", "gpt-4, gpt-3.5-turbo", "--expires", "30d", *db)
    assert code == 0
    secret = out.strip()
    assert secret.startswith("sk-") and "\n" not in secret
    assert secret[:11] in err and "only this once" in err

    code, out, _ = run(capsys, "keys", "list", *db)
    assert code == 0 and secret not in out and secret[11:] not in out
    line = next(line for line in out.splitlines() if line.startswith(secret[:11]))
    assert "ci bot" in line and "active" in line and "gpt-4,gpt-3.5-turbo" in line

    assert run(capsys, "keys", "revoke", secret[:11], *db)[0] == 0
    assert "revoked" in run(capsys, "keys", "list", *db)[1]
    code, _, err = run(capsys, "keys", "revoke", "sk-unknown", *db)
    assert code == 1 and "no key" in err


def test_bad_arguments_are_refused(sqlite_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["keys", "create", "--name", "x", "--rpm", "0"],
                 ["keys", "create", "--name", "x", "--expires", "someday"],
                 ["usage", "--by", "week"]):
        with pytest.raises(SystemExit) as exit_:
            main([*argv, "--database-url", sqlite_url])
        assert exit_.value.code == 2
    assert run(capsys, "db", "upgrade", "--database-url", "mysql://x/y")[0] == 2


def test_an_expired_date_warns(sqlite_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "keys", "create", "--name", "old", "--expires", "2001-01-01",
                       "--database-url", sqlite_url)
    assert code == 0 and "already expired" in err
    assert "expired" in run(capsys, "keys", "list", "--database-url", sqlite_url)[1]


def test_usage_table(database_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    async def fill() -> None:
        store = await Store(database_url).open()
        key, _ = await store.keys.create("team")
        for i, key_id in enumerate([key.prefix, key.prefix, None]):
            store.record_usage(UsageRecord(request_id=f"r{i}", endpoint="chat.completions",
                                           model="gpt-4", key_id=key_id, prompt_tokens=10,
                                           completion_tokens=5, finish_reason="stop"))
        await store.close()

    asyncio.run(fill())
    code, out, _ = run(capsys, "usage", "--by", "key", "--since", "1d", "--database-url",
                       database_url)
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["KEY", "REQUESTS", "PROMPT_TOKENS"]
    assert "(team)" in lines[1] and lines[1].split()[2:5] == ["2", "20", "10"]
    assert lines[2].split()[:2] == ["(no", "key)"]
    assert lines[-1].split()[:5] == ["TOTAL", "3", "30", "15", "45"]


def test_db_upgrade(sqlite_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "db", "upgrade", "--database-url", sqlite_url)
    assert code == 0 and "migrated from empty to m001" in out
    assert "already at m001" in run(capsys, "db", "upgrade", "--database-url", sqlite_url)[1]


def test_environment_chooses_the_database(tmp_path, monkeypatch: pytest.MonkeyPatch,  # noqa: ANN001
                                          capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("CHATAPI_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("CHATAPI_DATABASE_URL", raising=False)
    assert run(capsys, "db", "upgrade")[0] == 0
    assert (tmp_path / "home" / "chatapi.db").is_file()
    monkeypatch.setenv("CHATAPI_DATABASE_URL", f"sqlite:///{tmp_path / 'env.db'}")
    assert run(capsys, "db", "upgrade")[0] == 0
    assert (tmp_path / "env.db").is_file()
