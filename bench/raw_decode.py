"""Reference for bench/throughput.py: raw llama.cpp batched greedy decode, no server.

Run as a subprocess (its own memory and threads). Reads one JSON job on stdin:
    {"model": PATH, "conversations": [[{"role": ..., "content": ...}, ...], ...],
     "max_tokens": 64, "threads": 2, "ctx_size": 4096, "batch_size": 512, "repack": bool}
(one conversation per sequence, rendered with the model's own chat template through
llama.cpp's llama_chat_apply_template; or "prompts": [already rendered text, ...])
and prints one JSON result line on stdout:
    {"n_seq", "prefill_s", "decode_s", "decode_tok_s", "prompt_tokens", ...}

Context as chatapi's runner builds it: n_seq_max = N, one KV stream per sequence
(kv_unified off: with a unified cache every row attends over all sequences' cells, which
costs more as prompts grow), flash attention off,
n_ctx = ctx_size * N, n_batch = n_ubatch = max(batch_size, N). Each prompt is prefilled in
its own llama_decode calls of at most batch_size tokens (as chatapi does: chunk boundaries
independent of batch mates), then all N sequences decode together, one llama_decode of N rows
per step, `max_tokens` steps, with a greedy sampler per sequence and no end-of-generation
check (every sequence makes max_tokens).
"""

from __future__ import annotations

import ctypes
import json
import logging
import sys
import time

import llama_cpp as lc


def _tokenize(vocab: ctypes.c_void_p, text: str, add_bos: bool) -> list[int]:
    data = text.encode("utf-8")
    size = len(data) + 16
    buf = (lc.llama_token * size)()
    n = lc.llama_tokenize(vocab, data, len(data), buf, size, add_bos, True)
    if n < 0:
        raise RuntimeError(f"tokenize needs {-n} tokens")
    return list(buf[:n])


def _render(model: ctypes.c_void_p, messages: list[dict[str, str]]) -> str:
    """The prompt text of `messages` by the model's chat template, assistant turn opened."""
    template = lc.llama_model_chat_template(model, None)
    if not template:
        raise RuntimeError("the model has no chat template; pass rendered \"prompts\"")
    encoded = [(m["role"].encode(), m["content"].encode()) for m in messages]
    chat = (lc.llama_chat_message * len(encoded))()
    for i, (role, content) in enumerate(encoded):
        chat[i].role, chat[i].content = role, content
    size = sum(len(c) for _, c in encoded) * 2 + 1024
    buf = ctypes.create_string_buffer(size)
    n = lc.llama_chat_apply_template(template, chat, len(chat), True, buf, size)
    if n < 0 or n > size:
        raise RuntimeError(f"llama_chat_apply_template failed ({n})")
    return buf.raw[:n].decode("utf-8")


def _prefill(ctx: ctypes.c_void_p, batch: lc.llama_batch, toks: list[int], seq: int,
             chunk: int) -> None:
    for start in range(0, len(toks), chunk):
        part = toks[start:start + chunk]
        _fill(batch, [(t, start + i, seq, start + i == len(toks) - 1)
                      for i, t in enumerate(part)])
        if lc.llama_decode(ctx, batch) != 0:
            raise RuntimeError("prefill llama_decode failed")


def _fill(batch: lc.llama_batch, rows: list[tuple[int, int, int, bool]]) -> None:
    for i, (token, pos, seq, logits) in enumerate(rows):
        batch.token[i] = token
        batch.pos[i] = pos
        batch.n_seq_id[i] = 1
        batch.seq_id[i][0] = seq
        batch.logits[i] = logits
    batch.n_tokens = len(rows)


def run(job: dict) -> dict:
    logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)
    n_seq = len(job.get("conversations") or job["prompts"])
    max_tokens = int(job.get("max_tokens", 64))
    threads = int(job.get("threads", 2))
    ctx_size = int(job.get("ctx_size", 4096))
    batch_size = max(int(job.get("batch_size", 512)), n_seq)

    lc.llama_backend_init()
    mparams = lc.llama_model_default_params()
    mparams.use_extra_bufts = bool(job.get("repack", False))
    model = lc.llama_model_load_from_file(job["model"].encode(), mparams)
    if not model:
        raise RuntimeError(f"cannot load {job['model']}")
    vocab = lc.llama_model_get_vocab(model)
    add_bos = bool(lc.llama_vocab_get_add_bos(vocab))
    cparams = lc.llama_context_default_params()
    cparams.n_ctx = ctx_size * n_seq
    cparams.n_batch = batch_size
    cparams.n_ubatch = batch_size
    cparams.n_seq_max = n_seq
    cparams.n_threads = threads
    cparams.n_threads_batch = threads
    cparams.kv_unified = False
    cparams.no_perf = True
    cparams.flash_attn_type = lc.LLAMA_FLASH_ATTN_TYPE_DISABLED
    ctx = lc.llama_init_from_model(model, cparams)
    if not ctx:
        raise RuntimeError("cannot create context")
    memory = lc.llama_get_memory(ctx)
    batch = lc.llama_batch_init(batch_size, 0, 1)
    samplers = [lc.llama_sampler_init_greedy() for _ in range(n_seq)]
    prompts = ([_render(model, c) for c in job["conversations"]] if job.get("conversations")
               else job["prompts"])
    tokens = [_tokenize(vocab, p, add_bos) for p in prompts]
    if max(len(t) for t in tokens) + max_tokens + 1 > ctx_size:
        raise RuntimeError("prompt + max_tokens longer than ctx_size")

    # Warm-up (page in the weights, build the graphs), then clear the cache.
    _prefill(ctx, batch, tokens[0], 0, batch_size)
    lc.llama_memory_clear(memory, True)
    _fill(batch, [(tokens[s][0], 0, s, True) for s in range(n_seq)])
    lc.llama_decode(ctx, batch)
    lc.llama_memory_clear(memory, True)

    t0 = time.perf_counter()
    last: list[int] = []
    for seq, toks in enumerate(tokens):
        _prefill(ctx, batch, toks, seq, batch_size)
        last.append(lc.llama_sampler_sample(samplers[seq], ctx, batch.n_tokens - 1))
    t1 = time.perf_counter()
    pos = [len(t) for t in tokens]
    generated = [[t] for t in last]
    for _ in range(max_tokens):
        _fill(batch, [(last[s], pos[s], s, True) for s in range(n_seq)])
        if lc.llama_decode(ctx, batch) != 0:
            raise RuntimeError("decode llama_decode failed")
        for s in range(n_seq):
            last[s] = lc.llama_sampler_sample(samplers[s], ctx, s)
            generated[s].append(last[s])
            pos[s] += 1
    t2 = time.perf_counter()

    for smpl in samplers:
        lc.llama_sampler_free(smpl)
    lc.llama_batch_free(batch)
    lc.llama_free(ctx)
    lc.llama_model_free(model)
    decode_s = t2 - t1
    return {
        "n_seq": n_seq,
        "prompt_tokens": sum(len(t) for t in tokens),
        "max_tokens": max_tokens,
        "prefill_s": t1 - t0,
        "decode_s": decode_s,
        "decode_tok_s": n_seq * max_tokens / decode_s,
        "e2e_tok_s": n_seq * max_tokens / (t2 - t0),
        "distinct_outputs": len({tuple(g) for g in generated}),
    }


def main() -> int:
    result = run(json.loads(sys.stdin.read()))
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
