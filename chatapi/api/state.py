"""What every route needs: settings, engine, model names, template, and shared checks."""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import string
import time
from dataclasses import dataclass, field

from chatapi import __version__
from chatapi.api.errors import context_length_exceeded, invalid_request
from chatapi.api.protocol import SamplingFields
from chatapi.api.usage import UsageRecord, UsageSink, UsageTracker, log_sink
from chatapi.chat.template import ChatTemplate
from chatapi.chat.truncation import SummaryCache
from chatapi.config import Settings
from chatapi.engine.engine import AsyncEngine
from chatapi.engine.sampling import SamplingParams
from chatapi.models.registry import ModelRegistry
from chatapi.moderation import Policy

_ALPHABET = string.ascii_letters + string.digits


def new_id(prefix: str) -> str:
    return prefix + "".join(secrets.choice(_ALPHABET) for _ in range(29))


@dataclass
class ServerState:
    settings: Settings
    engine: AsyncEngine
    registry: ModelRegistry
    template: ChatTemplate
    model_path: str
    usage_sink: UsageSink = log_sink
    moderation: Policy | None = None  # the content policy; None = off
    summaries: SummaryCache = field(default_factory=SummaryCache)  # truncation="summarize"

    def track(self, request_state: dict, endpoint: str, model: str) -> UsageTracker:
        record = UsageRecord(request_id=request_state.get("request_id", ""), endpoint=endpoint,
                             model=model, key_id=request_state.get("key_id"))
        return UsageTracker(self.usage_sink, record, request_state.get("started"))

    @property
    def fingerprint(self) -> str:
        digest = hashlib.sha256(f"{self.model_path}:{__version__}".encode()).hexdigest()
        return "fp_" + digest[:10]

    async def tokenize(self, text: str, *, special: bool) -> list[int]:
        runner = self.engine.runner
        try:
            data = text.encode("utf-8")
        except UnicodeEncodeError as exc:  # JSON allows lone surrogates; UTF-8 does not
            raise invalid_request(f"The prompt contains invalid Unicode: {exc.reason} at "
                                  f"character {exc.start}.") from None
        # llama_tokenize releases the GIL: long prompts must not block the event loop.
        tokens = await asyncio.to_thread(runner.tokenize, data, add_special=False,
                                         parse_special=special)
        if runner.add_bos and (not tokens or tokens[0] != runner.bos_token):
            tokens.insert(0, runner.bos_token)
        return tokens

    def check_sampling(self, req: SamplingFields, n: int) -> None:
        limits = self.settings
        if n > limits.max_n:
            raise invalid_request(f"Invalid value for 'n': must be <= {limits.max_n}, got {n}.",
                                  param="n")
        if n > limits.parallel:
            raise invalid_request(
                f"Invalid value for 'n': this server runs {limits.parallel} sequences at once, "
                f"got {n}.", param="n")
        stops = req.stop_list
        if len(stops) > limits.max_stop:
            raise invalid_request(
                f"Invalid value for 'stop': at most {limits.max_stop} sequences, got "
                f"{len(stops)}.", param="stop")
        for stop in stops:
            if not stop or len(stop) > limits.max_stop_chars:
                raise invalid_request(
                    f"Invalid value for 'stop': each sequence must have 1 to "
                    f"{limits.max_stop_chars} characters, got {len(stop)}.", param="stop")
        bias = req.logit_bias or {}
        if len(bias) > limits.max_logit_bias:
            raise invalid_request(
                f"Invalid value for 'logit_bias': at most {limits.max_logit_bias} entries, got "
                f"{len(bias)}.", param="logit_bias")
        check_logit_bias(bias, self.engine.runner.n_vocab)

    def completion_budget(self, prompt_tokens: int, requested: int | None) -> int:
        """max_tokens for a prompt: the request's value if it fits, else a 400."""
        ctx = self.settings.ctx_size
        room = ctx - prompt_tokens
        if requested is None:
            if room < 1:
                raise context_length_exceeded(prompt_tokens, 1, ctx)
            return room
        if requested > room:
            raise context_length_exceeded(prompt_tokens, requested, ctx)
        return requested

    def sampling_params(self, req: SamplingFields, max_tokens: int, n: int
                        ) -> list[SamplingParams]:
        """One SamplingParams per sequence: n, or the plan's count (legacy best_of); the plan
        also sets engine-only fields (grammar, logprobs)."""
        extra = req.engine_options()
        n = extra.pop("sequences", n)
        temperature = 1.0 if req.temperature is None else req.temperature
        seed = req.seed if req.seed is not None else self.settings.seed
        bias = {int(k): v for k, v in (req.logit_bias or {}).items()}
        params = SamplingParams(
            max_tokens=max_tokens, temperature=temperature,
            top_p=1.0 if req.top_p is None else max(req.top_p, 1e-6),
            seed=None if seed is None else seed & 0xFFFFFFFF, stop=tuple(req.stop_list),
            presence_penalty=req.presence_penalty or 0.0,
            frequency_penalty=req.frequency_penalty or 0.0, logit_bias=bias,
            top_k=max(req.top_k or 0, 0), min_p=req.min_p or 0.0,
            repetition_penalty=req.repetition_penalty or 1.0, **extra)
        return [params] * n


def check_logit_bias(bias: dict[str, float], n_vocab: int) -> None:
    """400 naming every key that is not a token id of the model, and the vocabulary size."""
    bad = [key for key in bias
           if not (key.isascii() and key.isdigit() and len(key) < 12 and int(key) < n_vocab)]
    if not bad:
        return
    shown = ", ".join(repr(key[:24]) for key in bad[:100])
    more = f" and {len(bad) - 100} more" if len(bad) > 100 else ""
    raise invalid_request(
        f"Invalid keys in 'logit_bias': {shown}{more}: keys must be token ids of this model, "
        f"0 to {n_vocab - 1} (its vocabulary has {n_vocab} tokens).", param="logit_bias")


def now() -> int:
    return int(time.time())
