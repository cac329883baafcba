"""Does a row's numbers depend on its batch mates, and what does each ggml GEMM path cost?

Drives chatapi's Runner (llama.cpp's low-level API) directly, no server:
- exactness: 16 different prompts decoded together, 8 steps on their lone greedy tokens,
  against each decoded alone (max |logit difference|); and a sequence's next K+1 tokens in one
  ubatch (how speculation verifies a draft), alone and beside 3 others, against one by one;
- speed: a 480-token prompt in one llama_decode, and decode steps of 1 / 4 / 8 / 16 rows.

ggml reads GGML_CPU_TILED_MM once per process, so each setting needs its own run:
    .venv/bin/python bench/kernels.py --tiled-matmul off
    .venv/bin/python bench/kernels.py --tiled-matmul on
    .venv/bin/python bench/kernels.py --tiled-matmul force   # tiled GEMM even for one row
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

STEPS = 8  # decode steps compared
TOPICS = "cat dog robot river king queen ship tree lamp city star moon bird fish car train"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiled-matmul", choices=["on", "off", "force"], default="off")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--model", help="GGUF path (default: the embedded model)")
    args = p.parse_args()
    if args.tiled_matmul == "force":
        os.environ["GGML_CPU_TILED_MM"] = "1"
        os.environ["GGML_CPU_TILED_MM_FORCE"] = "1"
    import llama_cpp as lc
    from common import default_model

    from chatapi.engine.runner import Row, Runner, RunnerConfig

    runner = Runner(RunnerConfig(
        model_path=args.model or default_model(), ctx_size=1024, num_slots=16,
        batch_size=512, threads=args.threads,
        tiled_matmul="on" if args.tiled_matmul == "force" else args.tiled_matmul))
    prompts = [runner.tokenize(f"Write a short story number {i} about a {word}.")
               for i, word in enumerate(TOPICS.split())]

    def logits(row: int) -> np.ndarray:
        ptr = lc.llama_get_logits_ith(runner.ctx, row)
        return np.ctypeslib.as_array(ptr, shape=(runner.n_vocab,)).copy()

    def prefill(slot: int) -> None:
        tokens = prompts[slot]
        runner.clear_slot(slot)
        runner.decode([Row(t, p, slot, p == len(tokens) - 1) for p, t in enumerate(tokens)])

    def inputs(slot: int, count: int) -> list[Row]:
        """The slot's next `count` rows: a fixed first token, then its lone greedy tokens."""
        tokens = [1000 + slot] + [int(row.argmax()) for row in lone[slot][:count - 1]]
        return [Row(t, len(prompts[slot]) + j, slot, True) for j, t in enumerate(tokens)]

    lone: list[list[np.ndarray]] = []
    for slot in range(16):
        prefill(slot)
        lone.append([])
        for step in range(STEPS):
            runner.decode([inputs(slot, step + 1)[-1]])
            lone[slot].append(logits(0))

    for slot in range(16):
        prefill(slot)
    worst = 0.0
    for step in range(STEPS):
        runner.decode([inputs(slot, step + 1)[-1] for slot in range(16)])
        worst = max(worst, *(float(np.abs(logits(s) - lone[s][step]).max()) for s in range(16)))
    print(f"16 sequences decoded together vs alone, {STEPS} steps: max |dlogit| {worst:.4f}")

    for draft in (1, 3, 7):
        for slots in ([0], [0, 1, 2, 3]):
            for slot in slots:
                prefill(slot)
            runner.decode([row for slot in slots for row in inputs(slot, draft + 1)])
            worst = max(float(np.abs(logits(i * (draft + 1) + j) - lone[slot][j]).max())
                        for i, slot in enumerate(slots) for j in range(draft + 1))
            print(f"{draft + 1} tokens of {len(slots)} sequence(s) in one ubatch vs one by one: "
                  f"max |dlogit| {worst:.4f}")

    long_prompt = (prompts[0] * 40)[:480]
    for _ in range(2):
        runner.clear_slot(0)
        started = time.perf_counter()
        runner.decode([Row(t, p, 0, p == len(long_prompt) - 1)
                       for p, t in enumerate(long_prompt)])
        print(f"prompt of {len(long_prompt)} tokens: "
              f"{len(long_prompt) / (time.perf_counter() - started):.0f} tok/s")
    for rows in (1, 4, 8, 16):
        for slot in range(rows):
            prefill(slot)
        positions = [len(prompts[slot]) for slot in range(rows)]
        steps = 24
        started = time.perf_counter()
        for _ in range(steps):
            runner.decode([Row(1000, positions[s], s, True) for s in range(rows)])
            positions = [p + 1 for p in positions]
        print(f"decode of {rows} sequences: "
              f"{rows * steps / (time.perf_counter() - started):.1f} tok/s")


if __name__ == "__main__":
    main()
