"""Throughput benchmark: chatapi against raw llama.cpp batched decode, measured in one run.

Starts `chatapi serve` on 127.0.0.1 as a subprocess, drives it with N concurrent streaming
clients (httpx, /v1/chat/completions, temperature 0), and measures total completion tok/s and
time to first content chunk. The reference ("ceiling") is llama.cpp's batched decode of the
same N prompts through llama-cpp-python's low-level API in a separate process
(bench/raw_decode.py). Sides alternate within each round and the order flips every round
(A B, B A, ...) so drift on a noisy machine hits both; ratios are taken per round and the
median over rounds is reported. Prompts come from a workload (bench/workloads.py): `essay`
(default) or `code-edit` (answers that mostly copy the prompt).

Optional peers, off by default: llama.cpp's C++ llama-server (--llama-server PATH, see
bench/build_llama_server.sh) and llama-cpp-python's server (--llama-cpp-python-server).

    .venv/bin/python bench/throughput.py                      # 1,4,8,16 clients, 3 rounds
    .venv/bin/python bench/throughput.py --concurrency 1,4 --rounds 1
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
from common import (
    Server,
    add_repack_option,
    add_tiled_options,
    append_markdown,
    apply_tiled_options,
    chatapi_server,
    command_line,
    default_model,
    llama_cpp_python_server,
    llama_server,
    machine_line,
    missing_server_extras,
    percentile,
)
from workloads import WORKLOADS, Workload

Messages = list[dict[str, str]]
WARMUP = [{"role": "user", "content": "Say hello."}]
BENCH_DIR = Path(__file__).parent
RAW_WORKER = BENCH_DIR / "raw_decode.py"
LIMITS = {"concurrency": 64, "rounds": 10, "requests_per_client": 16, "max_tokens": 512}


# --- client load -------------------------------------------------------------------------------

@dataclass
class Stream:
    """One streamed chat completion as the client saw it (times from time.perf_counter)."""

    start: float
    chunk_times: list[float] = field(default_factory=list)  # chunks with content
    text: str = ""
    usage: dict[str, Any] | None = None

    @property
    def ttft(self) -> float | None:
        return self.chunk_times[0] - self.start if self.chunk_times else None

    def decode_rate(self, tokens: int) -> float | None:
        """Tokens per second after the first one reached the client (prefill left out)."""
        if len(self.chunk_times) < 2 or tokens < 2:
            return None
        span = self.chunk_times[-1] - self.chunk_times[0]
        return (tokens - 1) / span if span > 0 else None


async def stream_chat(client: httpx.AsyncClient, body: dict[str, Any]) -> Stream:
    """POST a streaming /v1/chat/completions and record the arrival of each content chunk."""
    body = {**body, "stream": True, "stream_options": {"include_usage": True}}
    result = Stream(start=time.perf_counter())
    async with client.stream("POST", "/v1/chat/completions", json=body) as resp:
        if resp.status_code != 200:
            await resp.aread()
            raise RuntimeError(f"HTTP {resp.status_code}: {resp.text[:200]}")
        async for line in resp.aiter_lines():
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                break
            event = json.loads(data)
            if event.get("error"):  # an error after the 200, e.g. a server-side timeout
                raise RuntimeError(f"error event: {json.dumps(event['error'])[:200]}")
            if event.get("usage"):
                result.usage = event["usage"]
            for choice in event.get("choices") or []:
                content = (choice.get("delta") or {}).get("content")
                if content:
                    result.chunk_times.append(time.perf_counter())
                    result.text += content
    return result


@dataclass
class Load:
    """One measurement of one side at one concurrency."""

    tok_s: float
    ttfts: list[float] = field(default_factory=list)
    tokens_per_request: float = 0.0
    errors: int = 0
    counted_by: str = "usage"  # "chunks" when the server sent no usage (one token per chunk)
    prefill_s: float | None = None  # raw side only
    stream_rates: list[float] = field(default_factory=list)  # per request, after 1st token


def _completion_tokens(stream: Stream) -> tuple[int, str]:
    if stream.usage and stream.usage.get("completion_tokens") is not None:
        return int(stream.usage["completion_tokens"]), "usage"
    return len(stream.chunk_times), "chunks"


async def _client_load(server: Server, concurrency: int, per_client: int, max_tokens: int,
                       timeout_s: float, conversations: Sequence[Messages]) -> Load:
    streams: list[Stream] = []
    errors: list[str] = []

    async def one_client(client: httpx.AsyncClient, c: int) -> None:
        for r in range(per_client):
            messages = conversations[(c * per_client + r) % len(conversations)]
            body = {"model": server.model_id, "temperature": 0, "max_tokens": max_tokens,
                    "messages": messages}
            try:
                streams.append(await stream_chat(client, body))
            except (httpx.HTTPError, RuntimeError, ValueError) as exc:
                errors.append(f"{type(exc).__name__}: {exc}")

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=server.base_url, limits=limits,
                                 timeout=httpx.Timeout(timeout_s, connect=10)) as client:
        t0 = time.perf_counter()
        tasks = [asyncio.create_task(one_client(client, c)) for c in range(concurrency)]
        done, pending = await asyncio.wait(tasks, timeout=timeout_s)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        wall = time.perf_counter() - t0
    if pending:
        errors.append(f"{len(pending)} clients still running after {timeout_s:.0f}s")
    if errors:
        print(f"#   {server.name}: {len(errors)} errors, first: {errors[0]}", file=sys.stderr)
    counts = [_completion_tokens(s) for s in streams]
    tokens = sum(n for n, _ in counts)
    return Load(tok_s=tokens / wall if wall > 0 else 0.0,
                ttfts=[s.ttft for s in streams if s.ttft is not None],
                tokens_per_request=tokens / len(streams) if streams else 0.0,
                stream_rates=[r for s, (n, _) in zip(streams, counts, strict=True)
                              if (r := s.decode_rate(n)) is not None],
                errors=len(errors) + sum(1 for s in streams if s.ttft is None),
                counted_by="chunks" if any(by == "chunks" for _, by in counts) else "usage")


def conversations(workload: Workload) -> list[Messages]:
    return [workload.messages(p) for p in workload.prompts]


def measure_server(server: Server, args: argparse.Namespace, concurrency: int) -> Load:
    return asyncio.run(_client_load(server, concurrency, args.requests_per_client,
                                    args.max_tokens, args.timeout, conversations(args.workload)))


def measure_raw(args: argparse.Namespace, concurrency: int) -> Load:
    convs = conversations(args.workload)
    job = {"model": args.model, "max_tokens": args.max_tokens, "threads": args.threads,
           "ctx_size": args.ctx_size, "batch_size": 512, "repack": args.repack,
           # the first conversation of each client, rendered by the model's template
           "conversations": [convs[(c * args.requests_per_client) % len(convs)]
                             for c in range(concurrency)]}
    done = subprocess.run([sys.executable, str(RAW_WORKER)], input=json.dumps(job), text=True,
                          capture_output=True, timeout=args.timeout)
    if done.returncode != 0:
        raise RuntimeError(f"raw decode failed:\n{done.stderr[-2000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return Load(tok_s=result["decode_tok_s"], tokens_per_request=float(args.max_tokens),
                prefill_s=result["prefill_s"], counted_by="exact")


# --- report ------------------------------------------------------------------------------------

@dataclass
class Row:
    """One line of the report: one side at one concurrency, over all rounds."""

    clients: int
    side: str
    tok_s: float
    ttft_p50: float | None
    ttft_p90: float | None
    stream_tok_s: float | None  # median per-request decode rate after the first token
    prefill_s: float | None
    tokens_per_request: float
    counted_by: str
    vs_raw: float | None
    chatapi_vs: float | None
    errors: int


def _median_ratio(rounds: list[dict[str, Load]], num: str, den: str) -> float | None:
    ratios = [r[num].tok_s / r[den].tok_s for r in rounds
              if num in r and den in r and r[den].tok_s > 0]
    return statistics.median(ratios) if ratios else None


def _median_stream_rate(loads: list[Load], raw: bool) -> float | None:
    if raw:  # every raw sequence decodes at the batch's rate: tok/s over the clients
        return None
    rates = [r for load in loads for r in load.stream_rates]
    return statistics.median(rates) if rates else None


def summarize(results: dict[int, list[dict[str, Load]]], sides: list[str]) -> list[Row]:
    rows = []
    for n, rounds in results.items():
        for side in sides:
            loads = [r[side] for r in rounds if side in r]
            if not loads:
                continue
            ttfts = [t for load in loads for t in load.ttfts]
            raw = side == "raw"
            rows.append(Row(
                clients=n, side=side, tok_s=statistics.median(ld.tok_s for ld in loads),
                ttft_p50=None if raw or not ttfts else percentile(ttfts, 0.5),
                ttft_p90=None if raw or not ttfts else percentile(ttfts, 0.9),
                stream_tok_s=_median_stream_rate(loads, raw),
                prefill_s=statistics.median(ld.prefill_s or 0.0 for ld in loads) if raw else None,
                tokens_per_request=statistics.mean(ld.tokens_per_request for ld in loads),
                counted_by=loads[0].counted_by,
                vs_raw=1.0 if raw else _median_ratio(rounds, side, "raw"),
                chatapi_vs=None if side == "chatapi" else _median_ratio(rounds, "chatapi", side),
                errors=sum(ld.errors for ld in loads)))
    return rows


def _fmt(x: float | None, spec: str = ".2f") -> str:
    return "–" if x is None else format(x, spec)


def markdown_table(rows: list[Row]) -> str:
    lines = ["| clients | side | tok/s (median) | TTFT p50 s | TTFT p90 s "
             "| one stream after 1st token, tok/s | tokens/req "
             "| side / raw | chatapi / side | errors |",
             "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        p50 = f"prefill {r.prefill_s:.2f}" if r.side == "raw" else _fmt(r.ttft_p50)
        counted = " (chunks)" if r.counted_by == "chunks" else ""
        lines.append(f"| {r.clients} | {r.side} | {r.tok_s:.1f} | {p50} | {_fmt(r.ttft_p90)} "
                     f"| {_fmt(r.stream_tok_s, '.1f')} | {r.tokens_per_request:.1f}{counted} "
                     f"| {_fmt(r.vs_raw)} "
                     f"| {_fmt(r.chatapi_vs)} | {r.errors} |")
    return "\n".join(lines)


def header_line(args: argparse.Namespace) -> str:
    extra = f"; chatapi args `{shlex.join(args.chatapi_args)}`" if args.chatapi_args else ""
    return (f"{args.machine}; workload {args.workload.name}; max_tokens {args.max_tokens}, "
            f"temperature 0, {args.requests_per_client} requests per client, "
            f"{args.rounds} rounds; weight repacking {'on' if args.repack else 'off'}; "
            f"{args.tiled_line}{extra}")


NOTES = """\
- tok/s: chatapi and peers = completion tokens of all requests / wall time of the whole load
  (prefill, HTTP and queueing included); raw = N x max_tokens / batched decode time only
  (the ceiling; its prefill of the N prompts, one llama_decode each, is shown apart).
- side / raw and chatapi / side: ratio per round, median over rounds (sides alternate, order
  flipped each round). TTFT = time to the first content chunk, pooled over rounds.
- tokens/req below max_tokens means some answers ended at end-of-text (raw never stops early).
  "(chunks)": the server sent no usage, tokens counted as content chunks.
- llama-cpp-python's server runs one request at a time (a global lock); the others queue."""


def write_json(path: str, args: argparse.Namespace, rows: list[Row]) -> None:
    doc = {"benchmark": "throughput", "command": command_line(), "header": header_line(args),
           "workload": args.workload.name, "max_tokens": args.max_tokens,
           "rows": [asdict(r) for r in rows]}
    Path(path).write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")


# --- main --------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--concurrency", default="1,4,8,16",
                   help="comma-separated numbers of concurrent clients (default 1,4,8,16)")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds per concurrency")
    p.add_argument("--requests-per-client", type=int, default=2)
    p.add_argument("--workload", choices=sorted(WORKLOADS), default="essay",
                   help="prompt set (bench/workloads.py; default essay)")
    p.add_argument("--max-tokens", type=int,
                   help="per request (default: the workload's, essay 64, code-edit 256)")
    p.add_argument("--threads", type=int, default=2, help="CPU threads of every side")
    p.add_argument("--ctx-size", type=int, default=4096, help="context of one sequence")
    p.add_argument("--model", help="GGUF path (default: `chatapi model-path`)")
    p.add_argument("--chatapi-arg", action="append", dest="chatapi_args", default=[],
                   metavar="ARG", help="extra `chatapi serve` argument, repeatable; write it "
                   "with '=': --chatapi-arg=--no-prefix-cache")
    p.add_argument("--timeout", type=float, default=900,
                   help="seconds allowed for one measurement (default 900)")
    p.add_argument("--startup-timeout", type=float, default=180)
    p.add_argument("--llama-server", metavar="PATH",
                   help="also run llama.cpp's llama-server binary (bench/build_llama_server.sh)")
    p.add_argument("--llama-cpp-python-server", action="store_true",
                   help="also run `python -m llama_cpp.server` (needs the [bench] extra)")
    p.add_argument("--markdown-out", metavar="FILE",
                   help="append the table, command line and date to FILE")
    p.add_argument("--json-out", metavar="FILE", help="write the table as JSON (bench/plot.py)")
    p.add_argument("--plot", action="store_true",
                   help="draw the charts (bench/plot.py) into --plot-dir")
    p.add_argument("--plot-dir", default=str(BENCH_DIR),
                   help="where --plot writes throughput_tokps.png and throughput_ttft.png")
    add_repack_option(p)
    add_tiled_options(p)
    args = p.parse_args(argv)
    args.tiled_args, args.tiled_line = apply_tiled_options(args)
    try:
        args.concurrency_list = sorted({int(x) for x in args.concurrency.split(",") if x.strip()})
    except ValueError:
        p.error("--concurrency takes comma-separated integers, e.g. 1,4,8,16")
    args.workload = WORKLOADS[args.workload]
    args.max_tokens = args.max_tokens or args.workload.default_max_tokens
    for name, high in LIMITS.items():
        values = args.concurrency_list if name == "concurrency" else [getattr(args, name)]
        if not values or min(values) < 1 or max(values) > high:
            p.error(f"--{name.replace('_', '-')} must be between 1 and {high}")
    if args.threads < 1:
        p.error("--threads must be >= 1")
    return args


def build_servers(args: argparse.Namespace) -> list[Server]:
    parallel = max(args.concurrency_list)
    servers = [chatapi_server(args.model, parallel, args.threads, args.ctx_size, args.repack,
                              [*args.tiled_args, *args.chatapi_args])]
    if args.llama_server:
        if os.access(args.llama_server, os.X_OK):
            servers.append(llama_server(args.llama_server, args.model, parallel, args.threads,
                                        args.ctx_size, args.repack))
        else:
            print(f"# skipping llama-server: {args.llama_server} is not an executable",
                  file=sys.stderr)
    if args.llama_cpp_python_server:
        if missing := missing_server_extras():
            print(f"# skipping llama-cpp-python server: missing {', '.join(missing)} "
                  "(.venv/bin/pip install -e '.[bench]')", file=sys.stderr)
        else:
            servers.append(llama_cpp_python_server(args.model, args.threads, args.ctx_size,
                                                   args.repack))
    return servers


def start_servers(servers: list[Server], timeout_s: float) -> list[Server]:
    """Start each server and warm it up; a peer that fails is skipped, chatapi is fatal."""
    started = []
    for server in servers:
        try:
            server.start(timeout_s)
            # warm-up, not measured; a prompt of its own so no prefix cache favours round 1
            asyncio.run(_client_load(server, 1, 1, 8, 300, [WARMUP]))
            started.append(server)
        except RuntimeError as exc:
            if server.name == "chatapi":
                raise
            print(f"# skipping {server.name}: {exc}", file=sys.stderr)
    return started


def run_rounds(args: argparse.Namespace, started: list[Server], sides: list[str]
               ) -> dict[int, list[dict[str, Load]]]:
    by_name = {s.name: s for s in started}
    results: dict[int, list[dict[str, Load]]] = {}
    for n in args.concurrency_list:
        results[n] = []
        for rnd in range(args.rounds):
            measured: dict[str, Load] = {}
            for side in sides if rnd % 2 == 0 else sides[::-1]:
                load = (measure_raw(args, n) if side == "raw"
                        else measure_server(by_name[side], args, n))
                measured[side] = load
                print(f"# clients {n} round {rnd + 1}/{args.rounds} {side}: "
                      f"{load.tok_s:.1f} tok/s", file=sys.stderr)
            results[n].append(measured)
    return results


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.model = args.model or default_model()
    args.machine = machine_line(args.model, args.threads)
    servers = build_servers(args)
    try:
        started = start_servers(servers, args.startup_timeout)
        sides = ["chatapi", "raw"] + [s.name for s in started if s.name != "chatapi"]
        results = run_rounds(args, started, sides)
    finally:
        for server in servers:
            server.stop()
    rows = summarize(results, sides)
    body = f"{header_line(args)}\n\n{markdown_table(rows)}\n\n{NOTES}"
    print(f"\n{body}")
    if args.markdown_out:
        append_markdown(args.markdown_out, body)
    if args.json_out:
        write_json(args.json_out, args, rows)
    if args.plot:
        from plot import plot_rows  # matplotlib only when asked for
        title = f"workload {args.workload.name}, max_tokens {args.max_tokens}"
        for path in plot_rows([asdict(r) for r in rows], Path(args.plot_dir), title=title):
            print(f"# wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
