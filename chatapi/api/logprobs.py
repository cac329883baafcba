"""Log-probabilities in OpenAI's two shapes: chat `logprobs.content[]` and legacy completions'
`tokens` / `token_logprobs` / `top_logprobs` / `text_offset`."""

from __future__ import annotations

import codecs
from collections.abc import Callable
from typing import Any

from chatapi.engine.sampling import TokenLogprob

TokenBytes = Callable[[int], bytes]


def token_text(raw: bytes) -> str:
    """A token's text; bytes that are part of a character show as \\xNN, as OpenAI does."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("utf-8", "backslashreplace")


def _entry(token_bytes: TokenBytes, token: int, logprob: float) -> dict[str, Any]:
    raw = token_bytes(token)
    return {"token": token_text(raw), "logprob": logprob, "bytes": list(raw)}


def chat_logprobs(token_bytes: TokenBytes, items: list[TokenLogprob]) -> list[dict[str, Any]]:
    """`choices[].logprobs.content` entries for the given tokens."""
    return [{**_entry(token_bytes, item.token, item.logprob),
             "top_logprobs": [_entry(token_bytes, t, lp) for t, lp in item.top]}
            for item in items]


class LegacyLogprobs:
    """Builds a legacy `logprobs` object token by token; `take()` returns what was added since
    the last take (one stream chunk's worth), with text offsets into the choice's whole text."""

    def __init__(self, token_bytes: TokenBytes) -> None:
        self.token_bytes = token_bytes
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._chars = 0
        self._new: dict[str, list[Any]] = self._empty()

    @staticmethod
    def _empty() -> dict[str, list[Any]]:
        return {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}

    def add(self, token: int, item: TokenLogprob | None) -> None:
        """One token; `item` None for the first prompt token, which has no logprob."""
        raw = self.token_bytes(token)
        new = self._new
        new["tokens"].append(token_text(raw))
        new["text_offset"].append(self._chars)
        self._chars += len(self._decoder.decode(raw))
        if item is None:
            new["token_logprobs"].append(None)
            new["top_logprobs"].append(None)
            return
        new["token_logprobs"].append(item.logprob)
        top = {token_text(self.token_bytes(t)): lp for t, lp in item.top}
        top.setdefault(new["tokens"][-1], item.logprob)  # the sampled token is always there
        new["top_logprobs"].append(top)

    def take(self) -> dict[str, list[Any]]:
        taken, self._new = self._new, self._empty()
        return taken


def merge_legacy(parts: list[dict[str, list[Any]]]) -> dict[str, list[Any]]:
    out = LegacyLogprobs._empty()
    for part in parts:
        for key, values in part.items():
            out[key] += values
    return out
