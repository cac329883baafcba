"""Settings: every limit and default in one place.

Values come from the defaults below, then `CHATAPI_*` environment variables, then CLI flags.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chatapi.models.registry import DEFAULT_ALIASES


@dataclass
class Settings:
    # server
    host: str = "127.0.0.1"
    port: int = 8000
    shutdown_timeout: float = 30.0  # seconds in-flight requests may finish after SIGTERM/SIGINT
    api_keys: list[str] = field(default_factory=list)
    # keys, usage ledger, rate limits (chatapi.store)
    database_url: str | None = None  # None = SQLite file chatapi.db in the home directory
    admin_keys: list[str] = field(default_factory=list)  # may manage keys over /admin/keys
    require_key: bool = False  # refuse requests without a key even before any key exists
    # model
    model: str | None = None  # path to a GGUF; None = the embedded default model
    served_model_name: str | None = None
    aliases: list[str] = field(default_factory=lambda: list(DEFAULT_ALIASES))
    home: Path | None = None  # model cache and data; None = $CHATAPI_HOME or ~/.cache/chatapi
    # engine
    parallel: int = 8  # sequences decoded together; each n>1 choice takes one
    ctx_size: int = 4096  # context window of one sequence (prompt + completion)
    threads: int = 0  # 0 = all cores
    batch_size: int = 512  # max tokens per llama_decode (prefill chunk size)
    max_queue: int = 64  # requests waiting for a slot before 429
    prefix_cache: bool = True  # finished requests leave their KV for a later common prefix
    prefix_align: int = 1  # reuse cached prompt tokens in multiples of this
    step_tokens: int = 32  # prompt tokens prefilled per engine step beside the decode rows
    speculative: str = "off"  # ngram: prompt-lookup drafts verified in the decode batch
    spec_draft: int = 4  # most draft tokens per sequence per step
    repack: str = "off"  # llama.cpp weight repacking (extra buffer types): off | on | auto
    tiled_matmul: str = "off"  # ggml's tiled K-quant GEMM for batches of 8+ rows: off | on
    seed: int | None = None  # default sampling seed when a request gives none
    # request limits
    max_body_bytes: int = 2 * 1024 * 1024
    max_header_bytes: int = 32 * 1024  # request line and headers together (431 above)
    max_headers: int = 100  # header fields in one request (431 above)
    max_messages: int = 2048
    max_message_chars: int = 1_000_000
    max_n: int = 8
    max_stop: int = 4
    max_stop_chars: int = 256
    max_logit_bias: int = 1024  # logit_bias entries per request
    max_prompts: int = 64  # prompts in one legacy /v1/completions request
    # long conversations and the content policy (chatapi.chat.truncation, chatapi.moderation)
    truncation: str = "disabled"  # request default: disabled | auto | summarize
    moderation_policy: str | None = None  # a TOML policy file, or "default"; None = off
    request_timeout: float = 600.0  # seconds a request may take in all; 0 = no limit
    # logging
    log_level: str = "info"

    def with_overrides(self, **values: Any) -> Settings:
        """A copy with the given fields replaced; None values are skipped."""
        clean = {k: v for k, v in values.items() if v is not None}
        return dataclasses.replace(self, **clean)


def _parse(kind: type, raw: str) -> Any:
    if kind is bool:
        return raw.strip().lower() in {"1", "true", "yes", "on"}
    if kind is list:
        return [item.strip() for item in raw.split(",") if item.strip()]
    if kind is Path:
        return Path(raw).expanduser()
    return kind(raw)


_FIELD_KINDS: dict[str, type] = {
    "host": str, "port": int, "shutdown_timeout": float, "api_keys": list, "database_url": str,
    "admin_keys": list, "require_key": bool, "model": str, "served_model_name": str,
    "aliases": list, "home": Path, "parallel": int, "ctx_size": int, "threads": int,
    "batch_size": int, "max_queue": int, "prefix_cache": bool, "prefix_align": int, "seed": int,
    "step_tokens": int, "speculative": str, "spec_draft": int, "repack": str,
    "tiled_matmul": str,
    "max_body_bytes": int, "max_header_bytes": int, "max_headers": int,
    "max_messages": int, "max_message_chars": int, "max_n": int, "max_stop": int,
    "max_stop_chars": int, "max_logit_bias": int, "max_prompts": int,
    "request_timeout": float, "log_level": str,
    "truncation": str, "moderation_policy": str,
}


def settings_from_env(environ: dict[str, str] | None = None) -> Settings:
    """Defaults overridden by `CHATAPI_<FIELD>` environment variables."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for name, kind in _FIELD_KINDS.items():
        raw = environ.get(f"CHATAPI_{name.upper()}")
        if raw is not None and raw != "":
            values[name] = _parse(kind, raw)
    return Settings(**values)
