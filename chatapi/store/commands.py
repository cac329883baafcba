"""`chatapi keys create|list|revoke`, `chatapi usage`, `chatapi db upgrade`."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from chatapi.config import settings_from_env
from chatapi.store import Store, resolve_url
from chatapi.store.database import display_url
from chatapi.store.ledger import summarize
from chatapi.store.migrate import current_revision, head_revision, upgrade
from chatapi.store.times import parse_when, utcnow

COMMANDS = ("keys", "usage", "db")


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _date(future: bool) -> Any:
    def parse(text: str) -> datetime:
        try:
            return parse_when(text, future=future)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    return parse


def _database_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--database-url", help="sqlite:///PATH or postgresql+asyncpg://… "
                        "(default: $CHATAPI_DATABASE_URL, else chatapi.db in $CHATAPI_HOME)")


def add_parsers(sub: argparse._SubParsersAction) -> None:
    keys = sub.add_parser("keys", help="create, list and revoke API keys")
    key_sub = keys.add_subparsers(dest="keys_command", required=True)
    create = key_sub.add_parser("create", help="create a key and print it (shown only once)")
    create.add_argument("--name", required=True, help="who or what uses the key")
    create.add_argument("--rpm", type=_positive, help="requests per minute (default: no limit)")
    create.add_argument("--tpm", type=_positive, help="tokens per minute (default: no limit)")
    create.add_argument("--models", help="comma-separated model names the key may use "
                        "(default: all)")
    create.add_argument("--expires", type=_date(future=True), metavar="DATE",
                        help="2026-12-31 or 2026-12-31T18:00 (UTC), or 30d / 12h from now")
    listing = key_sub.add_parser("list", help="list keys (never their secrets)")
    revoke = key_sub.add_parser("revoke", help="revoke a key: refused from now on")
    revoke.add_argument("prefix", help="the key's id as `keys list` shows it (sk-XXXXXXXX)")
    for parser in (create, listing, revoke):
        _database_flag(parser)

    usage = sub.add_parser("usage", help="usage totals from the ledger")
    usage.add_argument("--key", metavar="PREFIX", help="only this key")
    usage.add_argument("--since", type=_date(future=False), metavar="DATE",
                       help="from this date or time (UTC), or 7d / 12h back")
    usage.add_argument("--by", choices=["day", "key", "model"], help="one row per group")
    _database_flag(usage)

    db = sub.add_parser("db", help="database maintenance")
    db_sub = db.add_subparsers(dest="db_command", required=True)
    _database_flag(db_sub.add_parser("upgrade", help="apply schema migrations and exit"))


def run(args: argparse.Namespace) -> int:
    env = settings_from_env()
    try:
        url = resolve_url(args.database_url or env.database_url, env.home)
        if args.command == "db":
            return asyncio.run(_db_upgrade(url))
        return asyncio.run(_with_store(url, args))
    except ValueError as exc:
        print(f"chatapi: {exc}", file=sys.stderr)
        return 2


async def _db_upgrade(url: Any) -> int:
    store = Store(url)
    try:
        before, after = await upgrade(store.engine)
        revision = await current_revision(store.engine)
    finally:
        await store.engine.dispose()
    state = "already at" if before == after else f"migrated from {before or 'empty'} to"
    print(f"{display_url(url)}: {state} {revision} (head {head_revision()})")
    return 0


async def _with_store(url: Any, args: argparse.Namespace) -> int:
    store = await Store(url).open()
    try:
        if args.command == "usage":
            return await _usage(store, args)
        return await {"create": _create, "list": _list, "revoke": _revoke}[args.keys_command](
            store, args)
    finally:
        await store.close()


async def _create(store: Store, args: argparse.Namespace) -> int:
    models = [m.strip() for m in args.models.split(",") if m.strip()] if args.models else None
    if args.expires is not None and args.expires <= utcnow():
        print("chatapi: warning: this key has already expired", file=sys.stderr)
    key, secret = await store.keys.create(args.name, rpm=args.rpm, tpm=args.tpm, models=models,
                                          expires_at=args.expires)
    print(secret)
    print(f"created key {key.prefix} ({key.name}); it is shown only this once: store it now.",
          file=sys.stderr)
    return 0


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M") if value else "-"


def _table(header: Sequence[str], rows: list[Sequence[Any]]) -> str:
    cells = [[str(c) for c in header]] + [["-" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
                     for row in cells)


async def _list(store: Store, args: argparse.Namespace) -> int:
    keys = await store.keys.list()
    print(_table(["ID", "NAME", "STATUS", "RPM", "TPM", "MODELS", "CREATED (UTC)", "EXPIRES"],
                 [[k.prefix, k.name, k.status(), k.rpm, k.tpm,
                   ",".join(k.models) if k.models else "all", _when(k.created_at),
                   _when(k.expires_at)] for k in keys]))
    return 0


async def _revoke(store: Store, args: argparse.Namespace) -> int:
    key = await store.keys.revoke(args.prefix)
    if key is None:
        print(f"chatapi: no key with id {args.prefix!r} (see `chatapi keys list`)",
              file=sys.stderr)
        return 1
    print(f"revoked {key.prefix} ({key.name}) at {_when(key.revoked_at)} UTC")
    return 0


async def _usage(store: Store, args: argparse.Namespace) -> int:
    window = {"key": args.key, "since": args.since}
    rows = await summarize(store.engine, by=args.by, **window) if args.by else []
    total = (await summarize(store.engine, **window))[0]
    names = {k.prefix: k.name for k in await store.keys.list()} if args.by == "key" else {}
    columns = ["requests", "prompt_tokens", "completion_tokens", "total_tokens",
               "cached_tokens", "aborted", "errors"]
    header = ([args.by.upper()] if args.by else []) + [c.upper() for c in columns]
    body = []
    for row in [*rows, {args.by: "TOTAL", **total} if args.by else total]:
        group = row.get(args.by) if args.by else None
        if args.by == "key" and group in names:
            group = f"{group} ({names[group]})"
        elif args.by == "key" and group is None:
            group = "(no key)"
        body.append(([group] if args.by else []) + [row[c] for c in columns])
    print(_table(header, body))
    return 0
