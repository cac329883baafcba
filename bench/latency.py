"""Latency benchmark: the three latency targets of issue 4, on chatapi (and llama-server).

- followup: a ~1,500-token conversation sent cold, then re-sent with the reply and one new
  user message appended; TTFT of both, their ratio (target >= 10x) and usage's cached_tokens.
- itl: 8 streaming clients generate ~200 tokens each; ~3 s in, a 9th request with a
  ~3,000-token prompt arrives. Inter-chunk gaps of the 8 streams: median, p99, p99 / median
  (target <= 2), max; and the long request's TTFT.
- rss: the server's peak resident memory (VmHWM) after those loads, against the budget
  model file + KV cache (ctx-size x parallel) + 300 MB.

Servers are started as in bench/throughput.py (same Server class), on 127.0.0.1, one at a time.

    .venv/bin/python bench/latency.py                          # all three parts, chatapi
    .venv/bin/python bench/latency.py --only followup --repeats 5
    .venv/bin/python bench/latency.py --llama-server ~/.cache/chatapi-bench/llama-server
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import itertools
import random
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from common import (
    Server,
    add_repack_option,
    add_tiled_options,
    append_markdown,
    apply_tiled_options,
    chatapi_server,
    default_model,
    llama_server,
    machine_line,
    percentile,
)
from throughput import WARMUP, Messages, Stream, stream_chat
from workloads import WORKLOADS

PARTS = ("followup", "itl", "rss")
CHARS_PER_TOKEN = 5.8  # of the text below, Qwen2.5 tokenizer (measured); usage tells exactly
TOKENS_PER_MESSAGE = 5  # the chat template's role markers
RSS_MARGIN = 300 * 2**20
KV_ELEMENT_BYTES = 2  # f16 K and V, llama.cpp's default cache type (chatapi sets no other)

# --- deterministic plain text ------------------------------------------------------------------

SUBJECTS = ("The build server", "Our payment service", "The mobile team", "The nightly import",
            "The search index", "The onboarding flow", "The support queue", "The data warehouse",
            "The billing report", "The staging cluster", "The release checklist", "The API gateway")
VERBS = ("now handles", "occasionally drops", "was rewritten to process", "depends on",
         "reports", "slows down on", "caches", "retries", "no longer validates", "summarizes")
OBJECTS = ("about twelve thousand requests a minute", "the invoices of the last quarter",
           "every message that arrives after midnight", "large file uploads",
           "the weekly usage figures", "customer addresses from the old system",
           "the results of the load test", "duplicate orders", "expired session tokens",
           "the translations for the new markets", "the audit log of each account")
CLAUSES = ("after the last release", "according to the dashboard", "unless the queue is full",
           "during the morning peak", "since we moved to the new region",
           "which surprised the engineer on call", "as the design document predicted",
           "when two deployments overlap", "because of a missing index",
           "although nobody changed its configuration", "at least on weekdays")
QUESTIONS = ("Can you explain why {s} {v} {o}?", "What should we check first if {s} {v} {o}?",
             "Is it a problem that {s} {v} {o}?", "How would you document that {s} {v} {o}?")


def _sentence(rng: random.Random) -> str:
    return (f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)} "
            f"{rng.choice(CLAUSES)}.")


def _question(rng: random.Random) -> str:
    return rng.choice(QUESTIONS).format(s=rng.choice(SUBJECTS).lower(), v=rng.choice(VERBS),
                                        o=rng.choice(OBJECTS))


def _paragraph(rng: random.Random, sentences: int) -> str:
    return " ".join(_sentence(rng) for _ in range(sentences))


def conversation(seed: int, tokens: int) -> Messages:
    """system + user/assistant turns + a last user question, about `tokens` tokens long; the
    system message starts with the seed, so conversations of different seeds share no prefix."""
    rng = random.Random(seed)
    messages = [{"role": "system", "content": f"Session {seed}. You are the assistant of an "
                 "operations team. Answer in plain text, briefly and precisely."}]
    while True:
        turn = [{"role": "user", "content": _question(rng)},
                {"role": "assistant", "content": _paragraph(rng, rng.randint(5, 9))}]
        if _estimate(messages + turn) > tokens:
            return messages + turn[:1]
        messages += turn


def _estimate(messages: Messages) -> float:
    return sum(len(m["content"]) / CHARS_PER_TOKEN + TOKENS_PER_MESSAGE for m in messages)


def long_prompt(seed: int, tokens: int) -> Messages:
    rng = random.Random(seed)
    notes: list[str] = []
    while sum(len(n) for n in notes) < tokens * CHARS_PER_TOKEN:
        notes.append(_paragraph(rng, 6))
    text = "\n\n".join(notes)
    return [{"role": "system", "content": f"Report {seed}. You summarize meeting notes."},
            {"role": "user", "content": f"Meeting notes:\n\n{text}\n\nSummarize them in one "
             "sentence."}]


# --- followup ----------------------------------------------------------------------------------

@dataclass
class Followup:
    prompt_tokens: int
    cold_ttft: float
    followup_ttft: float
    cached_tokens: int | None

    @property
    def ratio(self) -> float:
        return self.cold_ttft / self.followup_ttft if self.followup_ttft > 0 else float("nan")


def _cached_tokens(stream: Stream) -> int | None:
    details = (stream.usage or {}).get("prompt_tokens_details") or {}
    return details.get("cached_tokens")


async def _followup_once(client: httpx.AsyncClient, model: str, seed: int, tokens: int
                         ) -> Followup:
    messages = conversation(seed, tokens)
    body = {"model": model, "temperature": 0, "max_tokens": 16}
    cold = await stream_chat(client, {**body, "messages": messages})
    more = [{"role": "assistant", "content": cold.text},
            {"role": "user", "content": "Thanks. Now say the same in one short sentence."}]
    warm = await stream_chat(client, {**body, "messages": messages + more})
    if cold.ttft is None or warm.ttft is None:
        raise RuntimeError("a followup request streamed no content")
    return Followup(prompt_tokens=int((cold.usage or {}).get("prompt_tokens", 0)),
                    cold_ttft=cold.ttft, followup_ttft=warm.ttft,
                    cached_tokens=_cached_tokens(warm))


async def run_followup(server: Server, args: argparse.Namespace) -> list[Followup]:
    results = []
    async with httpx.AsyncClient(base_url=server.base_url, timeout=args.timeout) as client:
        for k in range(args.repeats):
            one = await _followup_once(client, server.model_id, 1000 + k, args.followup_tokens)
            print(f"#   {server.name} followup {k + 1}: {one.prompt_tokens} tokens, cold "
                  f"{one.cold_ttft:.2f} s, follow-up {one.followup_ttft:.3f} s "
                  f"({one.ratio:.1f}x), cached {one.cached_tokens}", file=sys.stderr)
            results.append(one)
    return results


def followup_table(rows: dict[str, list[Followup]]) -> str:
    lines = ["| side | prompt tokens | cold TTFT s | follow-up TTFT s | cold / follow-up "
             "| cached_tokens | runs |", "|---|---:|---:|---:|---:|---:|---:|"]
    for side, runs in rows.items():
        cached = [r.cached_tokens for r in runs if r.cached_tokens is not None]
        cached_cell = f"{statistics.median(cached):.0f}" if cached else "–"
        lines.append(f"| {side} | {statistics.median(r.prompt_tokens for r in runs):.0f} "
                     f"| {statistics.median(r.cold_ttft for r in runs):.2f} "
                     f"| {statistics.median(r.followup_ttft for r in runs):.3f} "
                     f"| {statistics.median(r.ratio for r in runs):.1f}x "
                     f"| {cached_cell} | {len(runs)} |")
    return "\n".join(lines)


# --- itl ---------------------------------------------------------------------------------------

@dataclass
class Itl:
    gaps: list[float]
    prefill_gaps: list[float]  # the gaps that overlap the long request's prefill
    tokens_per_chunk: float
    long_ttft: float | None
    long_tokens: int
    errors: list[str] = field(default_factory=list)


def _gaps(streams: Sequence[Stream], window: tuple[float, float]
          ) -> tuple[list[float], list[float]]:
    """All inter-chunk gaps of the streams (TTFT excluded), and those that overlap `window`."""
    gaps, during = [], []
    for s in streams:
        for a, b in itertools.pairwise(s.chunk_times):
            gaps.append(b - a)
            if b > window[0] and a < window[1]:
                during.append(b - a)
    return gaps, during


async def run_itl(server: Server, args: argparse.Namespace) -> Itl:
    limits = httpx.Limits(max_connections=args.itl_clients + 1)
    async with httpx.AsyncClient(base_url=server.base_url, timeout=args.timeout,
                                 limits=limits) as client:
        essay = WORKLOADS["essay"]
        tasks = [asyncio.create_task(stream_chat(client, {
                    "model": server.model_id, "temperature": 0,
                    "max_tokens": args.itl_max_tokens, "messages": essay.messages(prompt)}))
                 for prompt in essay.prompts[:args.itl_clients]]
        await asyncio.sleep(args.long_delay)
        long_body = {"model": server.model_id, "temperature": 0, "max_tokens": 16,
                     "messages": long_prompt(2000, args.long_tokens)}
        failures: list[BaseException] = []
        long_sent = time.perf_counter()
        try:
            long = await stream_chat(client, long_body)
        except (httpx.HTTPError, RuntimeError, ValueError) as exc:
            long = Stream(start=long_sent)  # no TTFT: the gaps window runs to the end
            failures.append(exc)
        done = await asyncio.gather(*tasks, return_exceptions=True)
    streams = [s for s in done if isinstance(s, Stream)]
    failures += [e for e in done if isinstance(e, BaseException)]
    errors = [f"{type(e).__name__}: {e}" for e in failures]
    for error in errors:
        print(f"#   {server.name} itl error: {error}", file=sys.stderr)
    window = (long.start, long.chunk_times[0] if long.chunk_times else time.perf_counter())
    gaps, during = _gaps(streams, window)
    tokens = sum(int((s.usage or {}).get("completion_tokens") or len(s.chunk_times))
                 for s in streams)
    chunks = sum(len(s.chunk_times) for s in streams)
    return Itl(gaps=gaps, prefill_gaps=during, tokens_per_chunk=tokens / chunks if chunks else 0,
               long_ttft=long.ttft, long_tokens=int((long.usage or {}).get("prompt_tokens", 0)),
               errors=errors)


def itl_table(rows: dict[str, Itl]) -> str:
    lines = ["| side | gaps | median gap ms | p99 gap ms | p99 / median | max gap ms "
             "| max gap during long prefill ms | tokens/chunk | long prompt tokens "
             "| long TTFT s | errors |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for side, r in rows.items():
        med, p99 = percentile(r.gaps, 0.5), percentile(r.gaps, 0.99)
        during = max(r.prefill_gaps, default=float("nan"))
        ttft = "–" if r.long_ttft is None else f"{r.long_ttft:.2f}"
        lines.append(f"| {side} | {len(r.gaps)} | {med * 1e3:.0f} | {p99 * 1e3:.0f} "
                     f"| {p99 / med:.2f} | {max(r.gaps, default=float('nan')) * 1e3:.0f} "
                     f"| {during * 1e3:.0f} | {r.tokens_per_chunk:.2f} | {r.long_tokens} "
                     f"| {ttft} | {len(r.errors)} |")
    return "\n".join(lines)


# --- rss ---------------------------------------------------------------------------------------

def peak_rss(pid: int) -> int | None:
    """Peak resident set size (VmHWM) of a process, in bytes; None where /proc has none."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def kv_bytes_per_token(model: str) -> tuple[int, str]:
    """K and V bytes of one token over all layers, from the GGUF's metadata."""
    import logging

    import llama_cpp as lc

    logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)
    params = lc.llama_model_default_params()
    params.vocab_only = True  # metadata and vocabulary, no weights
    handle = lc.llama_model_load_from_file(model.encode(), params)
    if not handle:
        raise RuntimeError(f"cannot read {model}")
    buf = ctypes.create_string_buffer(128)

    def meta(key: str) -> int | None:
        n = lc.llama_model_meta_val_str(handle, key.encode(), buf, len(buf))
        return int(buf.value) if n > 0 and buf.value.isdigit() else None

    try:
        n = lc.llama_model_meta_val_str(handle, b"general.architecture", buf, len(buf))
        arch = buf.value.decode() if n > 0 else ""
        layers, heads = meta(f"{arch}.block_count"), meta(f"{arch}.attention.head_count")
        kv_heads, embd = meta(f"{arch}.attention.head_count_kv"), meta(f"{arch}.embedding_length")
        if not (layers and heads and embd):
            raise RuntimeError(f"{model}: no layer/head metadata for {arch!r}")
        kv_heads = kv_heads or heads
        k_dim = meta(f"{arch}.attention.key_length") or embd // heads
        v_dim = meta(f"{arch}.attention.value_length") or embd // heads
    finally:
        lc.llama_model_free(handle)
    per_token = layers * kv_heads * (k_dim + v_dim) * KV_ELEMENT_BYTES
    return per_token, (f"{layers} layers x {kv_heads} KV heads x ({k_dim} + {v_dim}) x "
                       f"{KV_ELEMENT_BYTES} bytes = {per_token:,} bytes/token")


@dataclass
class Rss:
    peak: int | None
    model: int
    kv: int

    @property
    def budget(self) -> int:
        return self.model + self.kv + RSS_MARGIN


def rss_table(rows: dict[str, Rss], kv_note: str, args: argparse.Namespace) -> str:
    mib = 2**20
    lines = [f"KV cache: {kv_note}, x ctx-size {args.ctx_size} x parallel {args.parallel}.", "",
             "| side | peak RSS MiB (VmHWM) | model MiB | KV MiB | budget MiB (+300) "
             "| within budget |", "|---|---:|---:|---:|---:|---|"]
    for side, r in rows.items():
        peak = "–" if r.peak is None else f"{r.peak / mib:.0f}"
        verdict = "–" if r.peak is None else ("yes" if r.peak <= r.budget else "no")
        lines.append(f"| {side} | {peak} | {r.model / mib:.0f} | {r.kv / mib:.0f} "
                     f"| {r.budget / mib:.0f} | {verdict} |")
    return "\n".join(lines)


# --- main --------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", default=",".join(PARTS),
                   help="comma-separated parts: followup,itl,rss (default all; rss alone "
                   "runs the itl load first)")
    p.add_argument("--repeats", type=int, default=3, help="followup: distinct conversations")
    p.add_argument("--followup-tokens", type=int, default=1500)
    p.add_argument("--itl-clients", type=int, default=8, help="at most 16 (essay topics)")
    p.add_argument("--itl-max-tokens", type=int, default=200)
    p.add_argument("--long-tokens", type=int, default=3000, help="itl: the late long prompt")
    p.add_argument("--long-delay", type=float, default=3.0,
                   help="itl: seconds after the streams start that the long prompt arrives")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--ctx-size", type=int, default=4096, help="context of one sequence")
    p.add_argument("--parallel", type=int, help="server slots (default itl-clients + 1)")
    p.add_argument("--model", help="GGUF path (default: `chatapi model-path`)")
    p.add_argument("--chatapi-arg", action="append", dest="chatapi_args", default=[],
                   metavar="ARG", help="extra `chatapi serve` argument, repeatable "
                   "(--chatapi-arg=--no-prefix-cache)")
    p.add_argument("--llama-server", metavar="PATH", help="also measure llama.cpp's llama-server")
    p.add_argument("--timeout", type=float, default=600, help="seconds per request")
    p.add_argument("--startup-timeout", type=float, default=180)
    p.add_argument("--markdown-out", metavar="FILE", help="append the section to FILE")
    add_repack_option(p)
    add_tiled_options(p)
    args = p.parse_args(argv)
    args.tiled_args, args.tiled_line = apply_tiled_options(args)
    args.parts = [x.strip() for x in args.only.split(",") if x.strip()]
    if not args.parts or set(args.parts) - set(PARTS):
        p.error(f"--only takes a comma-separated subset of {','.join(PARTS)}")
    args.parallel = args.parallel or args.itl_clients + 1
    bounds = {"repeats": (1, 20), "followup_tokens": (100, 16000), "itl_clients": (1, 16),
              "itl_max_tokens": (8, 1024), "long_tokens": (100, 32000), "threads": (1, 256),
              "parallel": (args.itl_clients + 1, 64), "timeout": (1, 3600)}
    for name, (low, high) in bounds.items():
        if not low <= getattr(args, name) <= high:
            p.error(f"--{name.replace('_', '-')} must be between {low} and {high}")
    longest = max(args.followup_tokens if "followup" in args.parts else 0, args.long_tokens)
    if args.ctx_size < longest + 256:
        p.error("--ctx-size must exceed --followup-tokens and --long-tokens by 256")
    return args


@dataclass
class Report:
    followup: dict[str, list[Followup]] = field(default_factory=dict)
    itl: dict[str, Itl] = field(default_factory=dict)
    rss: dict[str, Rss] = field(default_factory=dict)


async def warm_up(server: Server) -> None:
    """One short request first (graphs built, weights paged in), on a prompt of its own."""
    async with httpx.AsyncClient(base_url=server.base_url, timeout=300) as client:
        await stream_chat(client, {"model": server.model_id, "max_tokens": 8, "messages": WARMUP})


def measure(server: Server, args: argparse.Namespace, report: Report, kv_per_token: int) -> None:
    """Start `server`, warm it up, run the selected parts on it, record its peak RSS, stop it."""
    try:
        server.start(args.startup_timeout)
        asyncio.run(warm_up(server))
        if "followup" in args.parts:
            report.followup[server.name] = asyncio.run(run_followup(server, args))
        if "itl" in args.parts or args.parts == ["rss"]:
            t0 = time.perf_counter()
            report.itl[server.name] = asyncio.run(run_itl(server, args))
            print(f"#   {server.name} itl load: {time.perf_counter() - t0:.1f} s",
                  file=sys.stderr)
        if "rss" in args.parts and server.proc is not None:
            report.rss[server.name] = Rss(
                peak=peak_rss(server.proc.pid), model=Path(args.model).stat().st_size,
                kv=kv_per_token * args.ctx_size * args.parallel)
    finally:
        server.stop()


def render(report: Report, args: argparse.Namespace, kv_note: str) -> str:
    extra = f"; chatapi args `{' '.join(args.chatapi_args)}`" if args.chatapi_args else ""
    out = [f"{args.machine}; --parallel {args.parallel} --ctx-size {args.ctx_size}; "
           f"weight repacking {'on' if args.repack else 'off'}; {args.tiled_line}{extra}"]
    if report.followup:
        out += [f"**Follow-up turn** (~{args.followup_tokens}-token conversation, streaming, "
                f"max_tokens 16; median of {args.repeats}; target cold / follow-up >= 10x)",
                followup_table(report.followup)]
    if report.itl and "itl" in args.parts:
        out += [f"**Inter-token gaps under load** ({args.itl_clients} streams x "
                f"{args.itl_max_tokens} tokens; a ~{args.long_tokens}-token prompt arrives after "
                f"{args.long_delay:g} s; target p99 / median <= 2)", itl_table(report.itl)]
    if report.rss:
        out += ["**Peak RSS** after the loads (target: within model + KV + 300 MiB)",
                rss_table(report.rss, kv_note, args)]
    return "\n\n".join(out)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.model = args.model or default_model()
    args.machine = machine_line(args.model, args.threads)
    kv_per_token, kv_note = kv_bytes_per_token(args.model)
    servers = [chatapi_server(args.model, args.parallel, args.threads, args.ctx_size, args.repack,
                              [*args.tiled_args, *args.chatapi_args])]
    if args.llama_server:
        servers.append(llama_server(args.llama_server, args.model, args.parallel, args.threads,
                                    args.ctx_size, args.repack))
    report = Report()
    for server in servers:
        try:
            measure(server, args, report, kv_per_token)
        except (RuntimeError, httpx.HTTPError) as exc:
            if server.name == "chatapi":
                raise
            print(f"# skipping {server.name}: {exc}", file=sys.stderr)
    body = render(report, args, kv_note)
    print(f"\n{body}")
    if args.markdown_out:
        append_markdown(args.markdown_out, f"### Latency (`bench/latency.py`)\n\n{body}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
