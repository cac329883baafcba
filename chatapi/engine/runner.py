"""Runner: the only module that imports llama_cpp. Load, batch decode, sample, KV operations.

Every method is called from the engine thread only.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import math
import os
import random
from dataclasses import dataclass

import llama_cpp as lc
import numpy as np

from chatapi.engine.sampling import SamplingParams, TokenLogprob

log = logging.getLogger("chatapi.runner")


class RunnerError(RuntimeError):
    """llama.cpp refused to load or to decode."""


@dataclass(frozen=True)
class RunnerConfig:
    model_path: str
    ctx_size: int  # context of one sequence
    num_slots: int  # sequences held in the KV cache at once
    batch_size: int
    threads: int = 0
    flash_attn: bool = False  # on: greedy text varies with batch mates (measured)
    # One KV stream per slot: a sequence's cells do not move with what other slots hold, so its
    # numbers (and greedy or seeded text) do not depend on them. Unified saves memory.
    kv_unified: bool = False
    repack: str = "off"  # weight repacking (llama.cpp's extra buffer types): off | on | auto
    tiled_matmul: str = "off"  # ggml's tiled K-quant GEMM for 8+ rows (see set_tiled_matmul)
    max_draft: int = 0  # speculative draft tokens per sequence a decode batch must hold


@dataclass(frozen=True)
class Row:
    """One token of a llama_decode batch."""

    token: int
    pos: int
    slot: int
    logits: bool


def _finite_logprob(value: float) -> float:
    # JSON has no -inf: OpenAI reports impossible tokens as -9999.0
    return value if value > -9999.0 else -9999.0


def _quiet_llama_log() -> None:
    # llama-cpp-python prints llama.cpp's log through its own logger; keep errors only.
    logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)


def use_repack(setting: str) -> bool:
    """Whether to let llama.cpp repack weights into its extra buffer types (default: no).

    Repacked weights are multiplied by a GEMM that takes the batch's rows in blocks of 16 and
    4 and the rest one by one, each path rounding differently: a prompt row's numbers then
    depend on where the chunk boundaries fall (measured on an AVX-512 EPYC: logits differ by
    up to 0.39 when a boundary is not a multiple of 4, or when prompts share a llama_decode),
    which would break the scheduler's promise that chunking and the prefix cache change no
    bit. It bought nothing measurable there (prompt 320 vs 336 tok/s, decode of 1 / 4 / 8
    sequences 65 / 79 / 117 vs 66 / 78 / 112 tok/s with and without). `auto` repacks unless the
    library was built with AMX, whose kernels crashed (SIGSEGV on the first multi-token batch)
    on a virtual machine that reports AMX without supporting it."""
    if setting in ("on", "off"):
        return setting == "on"
    return "AMX_INT8 = 1" not in lc.llama_print_system_info().decode(errors="replace")


def set_tiled_matmul(setting: str) -> None:
    """Choose whether ggml multiplies K-quant weights by its tiled GEMM (default: no).

    ggml takes its tiled kernel only for batches of 8 or more rows (GGML_CPU_TILED_MM, read
    once per process at the first matrix product), and one row at a time below that; the two
    round differently. With it, a sequence's logits depend on how many rows share its step:
    16 different prompts decoded together differed from their lone runs by up to 0.70 in a
    logit, and greedy answers parted. Without it they are identical bit for bit (measured
    through this runner on an AVX-512 EPYC, 16 sequences, 8 steps), so greedy and seeded text
    do not depend on the load. Speed there (2 threads, the default model): decode of 8
    sequences 97-102 tok/s without it against 79-80 with it, 1 / 4 / 16 sequences the same
    within noise, prompts 171-193 against 217-238 tok/s."""
    os.environ["GGML_CPU_TILED_MM"] = "1" if setting == "on" else "0"


class Runner:
    def __init__(self, config: RunnerConfig) -> None:
        _quiet_llama_log()
        set_tiled_matmul(config.tiled_matmul)
        lc.llama_backend_init()
        self.config = config
        mparams = lc.llama_model_default_params()
        mparams.use_extra_bufts = use_repack(config.repack)
        self.model = lc.llama_model_load_from_file(config.model_path.encode(), mparams)
        if not self.model:
            raise RunnerError(f"cannot load model {config.model_path}")
        self.vocab = lc.llama_model_get_vocab(self.model)
        self.n_vocab = lc.llama_vocab_n_tokens(self.vocab)
        self.n_ctx_train = lc.llama_model_n_ctx_train(self.model)
        threads = config.threads or os.cpu_count() or 1
        cparams = lc.llama_context_default_params()
        cparams.n_ctx = config.ctx_size * config.num_slots
        # a prompt chunk, or every slot's decode row with its draft tokens
        cparams.n_batch = max(config.batch_size, config.num_slots * (1 + config.max_draft), 16)
        cparams.n_ubatch = cparams.n_batch
        cparams.n_seq_max = config.num_slots
        cparams.n_threads = threads
        cparams.n_threads_batch = threads
        cparams.kv_unified = config.kv_unified
        cparams.no_perf = True
        cparams.flash_attn_type = (
            lc.LLAMA_FLASH_ATTN_TYPE_ENABLED if config.flash_attn
            else lc.LLAMA_FLASH_ATTN_TYPE_DISABLED
        )
        self.ctx = lc.llama_init_from_model(self.model, cparams)
        if not self.ctx:
            lc.llama_model_free(self.model)
            raise RunnerError("cannot create the llama.cpp context (out of memory?)")
        self.memory = lc.llama_get_memory(self.ctx)
        self.batch_capacity = cparams.n_batch
        self.batch = lc.llama_batch_init(self.batch_capacity, 0, 1)
        self._pieces: dict[int, bytes] = {}
        self._argmax: np.ndarray | None = None  # of the last decode's rows, when asked for
        self._every_row_scored = False
        self.chat_template = self._meta_str("tokenizer.chat_template")
        self.bos_text = self._special_text(lc.llama_vocab_bos(self.vocab))
        self.eos_text = self._special_text(lc.llama_vocab_eos(self.vocab))
        self.bos_token = lc.llama_vocab_bos(self.vocab)
        self.add_bos = bool(lc.llama_vocab_get_add_bos(self.vocab)) and self.bos_token >= 0

    def close(self) -> None:
        if self.ctx:
            lc.llama_batch_free(self.batch)
            lc.llama_free(self.ctx)
            lc.llama_model_free(self.model)
            self.ctx = None

    # --- vocabulary ---------------------------------------------------------------------------

    def tokenize(self, text: str | bytes, *, add_special: bool = False,
                 parse_special: bool = True) -> list[int]:
        data = text if isinstance(text, bytes) else text.encode("utf-8")
        size = len(data) + 16
        while True:
            buf = (lc.llama_token * size)()
            n = lc.llama_tokenize(self.vocab, data, len(data), buf, size, add_special,
                                  parse_special)
            if n >= 0:
                return list(buf[:n])
            size = -n

    def token_bytes(self, token: int) -> bytes:
        """The bytes a token stands for (special tokens render as nothing)."""
        piece = self._pieces.get(token)
        if piece is None:
            piece = self._piece(token, special=False)
            self._pieces[token] = piece
        return piece

    def is_eog(self, token: int) -> bool:
        return bool(lc.llama_vocab_is_eog(self.vocab, token))

    def _piece(self, token: int, *, special: bool) -> bytes:
        buf = ctypes.create_string_buffer(64)
        n = lc.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, special)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = lc.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, special)
        return buf.raw[:n]

    def _special_text(self, token: int) -> str:
        if token < 0:
            return ""
        return self._piece(token, special=True).decode("utf-8", errors="replace")

    def _meta_str(self, key: str) -> str | None:
        size = 65536
        while True:
            buf = ctypes.create_string_buffer(size)
            n = lc.llama_model_meta_val_str(self.model, key.encode(), buf, size)
            if n < 0:
                return None
            if n < size:
                return buf.value.decode("utf-8", errors="replace")
            size = n + 1

    # --- decoding -----------------------------------------------------------------------------

    def decode(self, rows: list[Row]) -> None:
        """Run one llama_decode over the rows; rows with logits=True can then be sampled
        by their index in `rows`."""
        if not rows or len(rows) > self.batch_capacity:
            raise RunnerError(f"batch of {len(rows)} rows (capacity {self.batch_capacity})")
        batch = self.batch
        outputs = 0
        for i, row in enumerate(rows):
            batch.token[i] = row.token
            batch.pos[i] = row.pos
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = row.slot
            batch.logits[i] = row.logits
            outputs += row.logits
        batch.n_tokens = len(rows)
        self._argmax = None
        self._every_row_scored = outputs == len(rows)
        status = lc.llama_decode(self.ctx, batch)
        if status != 0:
            raise RunnerError(f"llama_decode failed with status {status}")

    def sample(self, sampler: Sampler, row_index: int) -> int:
        if sampler.plain_greedy:
            return self._greedy(row_index)
        return sampler.sample(self.ctx, row_index)

    def _greedy(self, row_index: int) -> int:
        """What a plain greedy sampler picks (the first maximum), by numpy instead of one
        llama_sampler_sample per row (0.48 ms a row, measured). When every row of the decode
        has logits (a decode step), one argmax serves all rows (0.08 ms a row)."""
        if not self._every_row_scored:
            ptr = lc.llama_get_logits_ith(self.ctx, row_index)
            if not ptr:
                raise RunnerError(f"no logits for batch row {row_index}")
            return int(np.ctypeslib.as_array(ptr, shape=(self.n_vocab,)).argmax())
        if self._argmax is None:
            ptr = lc.llama_get_logits(self.ctx)
            rows = self.batch.n_tokens
            self._argmax = np.ctypeslib.as_array(ptr, shape=(rows, self.n_vocab)).argmax(axis=1)
        return int(self._argmax[row_index])

    # --- KV cache -----------------------------------------------------------------------------

    def clear_slot(self, slot: int) -> None:
        lc.llama_memory_seq_rm(self.memory, slot, -1, -1)

    def trim_slot(self, slot: int, keep: int) -> None:
        """Drop the slot's KV from position `keep` on (0 drops all of it)."""
        if keep <= 0:
            self.clear_slot(slot)
        elif not lc.llama_memory_seq_rm(self.memory, slot, keep, -1):
            self.clear_slot(slot)  # models that cannot cut a sequence lose the whole prefix
            raise RunnerError(f"cannot trim slot {slot} to {keep} tokens")

    def copy_slot(self, src: int, dst: int) -> None:
        lc.llama_memory_seq_cp(self.memory, src, dst, -1, -1)

    # --- samplers -----------------------------------------------------------------------------

    @functools.lru_cache(maxsize=256)  # noqa: B019 - one runner per process, kept for its life
    def grammar_ok(self, grammar: str) -> bool:
        """Whether llama.cpp accepts the grammar (no left recursion, no undefined rule)."""
        handle = lc.llama_sampler_init_grammar(self.vocab, grammar.encode(), b"root")
        if not handle:
            return False
        lc.llama_sampler_free(handle)
        return True

    def new_sampler(self, params: SamplingParams) -> Sampler:
        return Sampler(self, params)

    # --- log-probabilities --------------------------------------------------------------------

    def logprobs(self, row_index: int, token: int, top: int) -> TokenLogprob:
        """Log-softmax of the raw logits of a decoded row (the row `sample` just used): the
        log-probability of `token` and the `top` most likely tokens."""
        ptr = lc.llama_get_logits_ith(self.ctx, row_index)
        if not ptr:
            raise RunnerError(f"no logits for batch row {row_index}")
        logits = np.ctypeslib.as_array(ptr, shape=(self.n_vocab,))
        peak = float(logits.max())
        log_total = peak + math.log(float(np.exp(logits - peak).sum(dtype=np.float64)))
        chosen = _finite_logprob(float(logits[token]) - log_total)
        if top <= 0:
            return TokenLogprob(token, chosen)
        best = np.argpartition(logits, -top)[-top:]
        best = best[np.argsort(-logits[best], kind="stable")]
        return TokenLogprob(token, chosen, tuple(
            (int(t), _finite_logprob(float(logits[t]) - log_total)) for t in best))

    def fim_tokens(self) -> tuple[int, int, int] | None:
        """The model's fill-in-the-middle tokens (prefix, suffix, middle), if it has them."""
        tokens = (lc.llama_vocab_fim_pre(self.vocab), lc.llama_vocab_fim_suf(self.vocab),
                  lc.llama_vocab_fim_mid(self.vocab))
        return tokens if min(tokens) >= 0 else None


class SamplerError(ValueError):
    """llama.cpp refused a sequence's sampler (a grammar it cannot parse); only that
    sequence fails."""


_TOKEN_DATA = np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)])


class Sampler:
    """A llama.cpp sampler chain for one sequence; temperature 0 means greedy.

    Order: logit bias, penalties, then greedy, or top-k, top-p, min-p, temperature and a
    seeded draw. A grammar is checked apart from the chain, as llama.cpp's own server does:
    the token the chain picks is kept when the grammar allows it (one token to check instead of
    the whole vocabulary); otherwise the grammar masks the vocabulary and the chain picks again.
    Kept or re-picked, the token is distributed as if the grammar had masked first (greedy:
    the very same token).
    """

    def __init__(self, runner: Runner, params: SamplingParams) -> None:
        self.handle = lc.llama_sampler_chain_init(lc.llama_sampler_chain_default_params())
        self.grammar = None
        # argmax of the raw logits is all this chain does (no state to update)
        self.plain_greedy = (params.greedy and not params.logit_bias and not params.penalized
                             and params.grammar is None)
        if params.logit_bias:
            items = list(params.logit_bias.items())
            arr = (lc.llama_logit_bias * len(items))()
            for i, (token, bias) in enumerate(items):
                arr[i].token = token
                arr[i].bias = bias
            self._add(lc.llama_sampler_init_logit_bias(runner.n_vocab, len(items), arr))
        if params.penalized:
            self._add(lc.llama_sampler_init_penalties(
                runner.n_vocab, runner.config.ctx_size, params.repetition_penalty,
                params.frequency_penalty, params.presence_penalty))
        if params.greedy:
            self._add(lc.llama_sampler_init_greedy())
        else:
            seed = params.seed if params.seed is not None else random.getrandbits(32)
            if params.top_k > 0:
                self._add(lc.llama_sampler_init_top_k(params.top_k))
            if params.top_p < 1.0:
                self._add(lc.llama_sampler_init_top_p(params.top_p, 1))
            if params.min_p > 0.0:
                self._add(lc.llama_sampler_init_min_p(params.min_p, 1))
            self._add(lc.llama_sampler_init_temp(params.temperature))
            self._add(lc.llama_sampler_init_dist(seed & 0xFFFFFFFF))
        if params.grammar is not None:
            self.grammar = lc.llama_sampler_init_grammar(runner.vocab, params.grammar.encode(),
                                                         b"root")
            if not self.grammar:
                self.free()
                raise SamplerError("llama.cpp could not parse the generated grammar")
            self.n_vocab = runner.n_vocab
            self._ids = np.arange(runner.n_vocab, dtype=np.int32)
            self._cur = np.zeros(runner.n_vocab, dtype=_TOKEN_DATA)
            self._one = (lc.llama_token_data * 1)()

    def _add(self, sampler: object) -> None:
        lc.llama_sampler_chain_add(self.handle, sampler)

    def sample(self, ctx: object, row_index: int) -> int:
        if self.grammar is None:
            return lc.llama_sampler_sample(self.handle, ctx, row_index)
        ptr = lc.llama_get_logits_ith(ctx, row_index)
        if not ptr:
            raise RunnerError(f"no logits for batch row {row_index}")
        logits = np.ctypeslib.as_array(ptr, shape=(self.n_vocab,))
        token = self._pick(logits, masked=False)
        if not self._allows(token):
            token = self._pick(logits, masked=True)
        lc.llama_sampler_accept(self.grammar, token)
        lc.llama_sampler_accept(self.handle, token)
        return token

    def _pick(self, logits: np.ndarray, masked: bool) -> int:
        cur = self._cur
        cur["id"] = self._ids
        cur["logit"] = logits
        cur["p"] = 0.0
        arr = lc.llama_token_data_array(cur.ctypes.data_as(lc.llama_token_data_p),
                                        self.n_vocab, -1, False)
        if masked:
            lc.llama_sampler_apply(self.grammar, ctypes.byref(arr))
        lc.llama_sampler_apply(self.handle, ctypes.byref(arr))
        chosen = arr.data[arr.selected] if 0 <= arr.selected < arr.size else None
        if chosen is None or (masked and chosen.logit == float("-inf")):
            # accepting a token the grammar forbids would abort the whole process
            raise SamplerError("the grammar allows no token here")
        return int(chosen.id)

    def _allows(self, token: int) -> bool:
        one = self._one
        one[0].id, one[0].logit, one[0].p = token, 0.0, 0.0
        arr = lc.llama_token_data_array(one, 1, -1, False)
        lc.llama_sampler_apply(self.grammar, ctypes.byref(arr))
        return one[0].logit != float("-inf")

    def free(self) -> None:
        if self.handle:
            lc.llama_sampler_free(self.handle)
            self.handle = None
        if self.grammar:
            lc.llama_sampler_free(self.grammar)
            self.grammar = None
