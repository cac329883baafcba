"""The tables: API keys (hashed), the usage ledger, and rate-limit buckets.

This is the current shape, for queries. Migrations in `migrations/versions/` create it and are
frozen copies: change the schema by adding a migration, then updating this module to match.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    DateTime,
    Float,
    Integer,
    MetaData,
    String,
    Table,
)

metadata = MetaData()

# Times are naive UTC datetimes: the same on SQLite and PostgreSQL.
api_keys = Table(
    "api_keys", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("prefix", String(32), nullable=False, unique=True),  # visible part, e.g. sk-AbCd1234
    Column("key_hash", String(64), nullable=False, unique=True),  # sha256 hex of the whole key
    Column("name", String(200), nullable=False),
    Column("rpm", Integer),  # requests per minute; null = unlimited
    Column("tpm", Integer),  # tokens per minute; null = unlimited
    Column("models", JSON),  # list of model names; null = every model
    Column("created_at", DateTime, nullable=False),
    Column("expires_at", DateTime),
    Column("revoked_at", DateTime),
)

usage_ledger = Table(
    "usage_ledger", metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
           autoincrement=True),
    Column("request_id", String(64), nullable=False, unique=True),
    Column("created_at", DateTime, nullable=False, index=True),
    Column("key_id", String(32), index=True),  # the key's prefix; null = no key
    Column("endpoint", String(32), nullable=False),
    Column("model", String(256), nullable=False),
    Column("prompt_tokens", Integer, nullable=False),
    Column("completion_tokens", Integer, nullable=False),
    Column("cached_tokens", Integer, nullable=False),
    Column("finish_reason", String(32), nullable=False),
    Column("latency_s", Float, nullable=False),
    Column("ttft_s", Float),
)

# One token bucket per key: `requests` and `tokens` are the amounts in use at `updated`
# (unix seconds); they drain continuously at limit/60 per second.
rate_buckets = Table(
    "rate_buckets", metadata,
    Column("key_id", String(32), primary_key=True),
    Column("requests", Float, nullable=False),
    Column("tokens", Float, nullable=False),
    Column("updated", Float, nullable=False),
)
