"""Throughput benchmark: chatapi against raw llama.cpp batched decode, measured in one run.

Starts `chatapi serve` on 127.0.0.1 as a subprocess, drives it with N concurrent streaming
clients (httpx, /v1/chat/completions, temperature 0, max_tokens 64), and measures total
completion tok/s and time to first content chunk. The reference ("ceiling") is llama.cpp's
batched decode of the same N prompts through llama-cpp-python's low-level API in a separate
process (bench/raw_decode.py). Sides alternate within each round and the order flips every
round (A B, B A, ...) so drift on a noisy machine hits both; ratios are taken per round and
the median over rounds is reported.

Optional peers, off by default: llama.cpp's C++ llama-server (--llama-server PATH, see
bench/build_llama_server.sh) and llama-cpp-python's server (--llama-cpp-python-server).

    .venv/bin/python bench/throughput.py                      # 1,4,8,16 clients, 3 rounds
    .venv/bin/python bench/throughput.py --concurrency 1,4 --rounds 1
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import importlib.util
import json
import os
import platform
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

SYSTEM = "You are a helpful assistant."
TOPICS = [
    "the history of the printing press", "how rivers shape landscapes",
    "the life cycle of stars", "the causes of the French Revolution",
    "how vaccines train the immune system", "the invention of the steam engine",
    "the ecology of coral reefs", "the architecture of Gothic cathedrals",
    "how compilers turn source code into machine code", "the migration of monarch butterflies",
    "the role of bees in agriculture", "the development of the telephone",
    "plate tectonics and earthquakes", "the Silk Road and ancient trade",
    "how the internet routes packets", "the water cycle and climate",
]
PROMPTS = [f"Write a detailed essay about {t}." for t in TOPICS]
WARMUP_PROMPT = "Say hello."
RAW_WORKER = Path(__file__).with_name("raw_decode.py")
LIMITS = {"concurrency": 64, "rounds": 10, "requests_per_client": 16, "max_tokens": 512}


def render_chatml(prompt: str) -> str:
    """The prompt text the model's own template makes of [system, user] (Qwen2.5 ChatML)."""
    return (f"<|im_start|>system\n{SYSTEM}<|im_end|>\n"
            f"<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n")


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


# --- servers -----------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    """One OpenAI-compatible server started by this benchmark, on 127.0.0.1."""

    name: str
    command: list[str]
    port: int
    health_path: str = "/health"
    proc: subprocess.Popen | None = None
    log: Path | None = None
    model_id: str = ""

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float) -> None:
        fd, log = tempfile.mkstemp(prefix=f"bench-{self.name}-", suffix=".log")
        self.log = Path(log)
        print(f"# starting {self.name}: {shlex.join(self.command)}", file=sys.stderr)
        self.proc = subprocess.Popen(self.command, stdout=fd, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        os.close(fd)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n"
                                   + self.log_tail())
            try:
                if httpx.get(self.base_url + self.health_path, timeout=2).status_code == 200:
                    models = httpx.get(self.base_url + "/v1/models", timeout=5).json()
                    self.model_id = models["data"][0]["id"]
                    return
            except (httpx.HTTPError, KeyError, IndexError, ValueError):
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"{self.name} not ready after {timeout_s:.0f}s:\n" + self.log_tail())

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)  # its own session: only what we started
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def log_tail(self, lines: int = 20) -> str:
        if self.log is None or not self.log.exists():
            return ""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


# --- client load -------------------------------------------------------------------------------

@dataclass
class Load:
    """One measurement of one side at one concurrency."""

    tok_s: float
    ttfts: list[float] = field(default_factory=list)
    tokens_per_request: float = 0.0
    errors: int = 0
    counted_by: str = "usage"  # "chunks" when the server sent no usage (one token per chunk)
    prefill_s: float | None = None  # raw side only


async def _one_request(client: httpx.AsyncClient, model: str, prompt: str, max_tokens: int
                       ) -> tuple[float, float | None, int, str]:
    """Stream one chat completion; return (start, ttft, completion tokens, counted_by)."""
    body = {"model": model, "temperature": 0, "max_tokens": max_tokens, "stream": True,
            "stream_options": {"include_usage": True},
            "messages": [{"role": "system", "content": SYSTEM},
                         {"role": "user", "content": prompt}]}
    start = time.perf_counter()
    ttft, chunks, usage_tokens = None, 0, None
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
            if event.get("usage"):
                usage_tokens = event["usage"].get("completion_tokens")
            for choice in event.get("choices") or []:
                if (choice.get("delta") or {}).get("content"):
                    chunks += 1
                    if ttft is None:
                        ttft = time.perf_counter() - start
    if usage_tokens is not None:
        return start, ttft, usage_tokens, "usage"
    return start, ttft, chunks, "chunks"


async def _client_load(server: Server, concurrency: int, per_client: int, max_tokens: int,
                       timeout_s: float, prompts: list[str] = PROMPTS) -> Load:
    results: list[tuple[float, float | None, int, str]] = []
    errors: list[str] = []

    async def one_client(client: httpx.AsyncClient, c: int) -> None:
        for r in range(per_client):
            prompt = prompts[(c * per_client + r) % len(prompts)]
            try:
                results.append(await _one_request(client, server.model_id, prompt, max_tokens))
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
    tokens = sum(r[2] for r in results)
    return Load(tok_s=tokens / wall if wall > 0 else 0.0,
                ttfts=[r[1] for r in results if r[1] is not None],
                tokens_per_request=tokens / len(results) if results else 0.0,
                errors=len(errors) + sum(1 for r in results if r[1] is None),
                counted_by="chunks" if any(r[3] == "chunks" for r in results) else "usage")


def measure_server(server: Server, args: argparse.Namespace, concurrency: int) -> Load:
    return asyncio.run(_client_load(server, concurrency, args.requests_per_client,
                                    args.max_tokens, args.timeout))


def measure_raw(args: argparse.Namespace, concurrency: int) -> Load:
    job = {"model": args.model, "max_tokens": args.max_tokens, "threads": args.threads,
           "ctx_size": args.ctx_size, "batch_size": 512,
           # the first prompt of each client
           "prompts": [render_chatml(PROMPTS[(c * args.requests_per_client) % len(PROMPTS)])
                       for c in range(concurrency)]}
    done = subprocess.run([sys.executable, str(RAW_WORKER)], input=json.dumps(job), text=True,
                          capture_output=True, timeout=args.timeout)
    if done.returncode != 0:
        raise RuntimeError(f"raw decode failed:\n{done.stderr[-2000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return Load(tok_s=result["decode_tok_s"], tokens_per_request=float(args.max_tokens),
                prefill_s=result["prefill_s"], counted_by="exact")


# --- report ------------------------------------------------------------------------------------

def _median_ratio(rounds: list[dict[str, Load]], num: str, den: str) -> float | None:
    ratios = [r[num].tok_s / r[den].tok_s for r in rounds
              if num in r and den in r and r[den].tok_s > 0]
    return statistics.median(ratios) if ratios else None


def _fmt(x: float | None, spec: str = ".2f") -> str:
    return "–" if x is None else format(x, spec)


def markdown_table(results: dict[int, list[dict[str, Load]]], sides: list[str]) -> str:
    lines = ["| clients | side | tok/s (median) | TTFT p50 s | TTFT p90 s | tokens/req "
             "| side / raw | chatapi / side | errors |",
             "|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for n, rounds in results.items():
        for side in sides:
            loads = [r[side] for r in rounds if side in r]
            if not loads:
                continue
            tok_s = statistics.median(load.tok_s for load in loads)
            ttfts = [t for load in loads for t in load.ttfts]
            if side == "raw":
                p50 = p90 = None
                prefill = statistics.median(load.prefill_s or 0.0 for load in loads)
                ttft_cells = f"prefill {prefill:.2f}", "–"
            else:
                p50, p90 = percentile(ttfts, 0.5), percentile(ttfts, 0.9)
                ttft_cells = _fmt(p50), _fmt(p90)
            tokens = statistics.mean(load.tokens_per_request for load in loads)
            counted = "" if loads[0].counted_by in ("usage", "exact") else " (chunks)"
            vs_raw = _median_ratio(rounds, side, "raw") if side != "raw" else 1.0
            chatapi_vs = _median_ratio(rounds, "chatapi", side) if side != "chatapi" else None
            errors = sum(load.errors for load in loads)
            lines.append(f"| {n} | {side} | {tok_s:.1f} | {ttft_cells[0]} | {ttft_cells[1]} "
                         f"| {tokens:.1f}{counted} | {_fmt(vs_raw)} | {_fmt(chatapi_vs)} "
                         f"| {errors} |")
    return "\n".join(lines)


def machine_line(args: argparse.Namespace) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"{os.cpu_count()} CPUs ({cpu}), load average at start {load:.2f}; "
            f"model {Path(args.model).name}; --threads {args.threads}; "
            f"max_tokens {args.max_tokens}, temperature 0, "
            f"{args.requests_per_client} requests per client, {args.rounds} rounds")


NOTES = """\
- tok/s: chatapi and peers = completion tokens of all requests / wall time of the whole load
  (prefill, HTTP and queueing included); raw = N x max_tokens / batched decode time only
  (the ceiling; its prefill of the N prompts, one llama_decode each, is shown apart).
- side / raw and chatapi / side: ratio per round, median over rounds (sides alternate, order
  flipped each round). TTFT = time to the first content chunk, pooled over rounds.
- tokens/req below max_tokens means some answers ended at end-of-text (raw never stops early).
  "(chunks)": the server sent no usage, tokens counted as content chunks."""


# --- main --------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--concurrency", default="1,4,8,16",
                   help="comma-separated numbers of concurrent clients (default 1,4,8,16)")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds per concurrency")
    p.add_argument("--requests-per-client", type=int, default=2)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--threads", type=int, default=2, help="CPU threads of every side")
    p.add_argument("--ctx-size", type=int, default=4096, help="context of one sequence")
    p.add_argument("--model", help="GGUF path (default: `chatapi model-path`)")
    p.add_argument("--timeout", type=float, default=900,
                   help="seconds allowed for one measurement (default 900)")
    p.add_argument("--startup-timeout", type=float, default=180)
    p.add_argument("--llama-server", metavar="PATH",
                   help="also run llama.cpp's llama-server binary (bench/build_llama_server.sh)")
    p.add_argument("--llama-cpp-python-server", action="store_true",
                   help="also run `python -m llama_cpp.server` (needs its [server] extras)")
    p.add_argument("--markdown-out", metavar="FILE",
                   help="append the table, command line and date to FILE")
    args = p.parse_args(argv)
    try:
        args.concurrency_list = sorted({int(x) for x in args.concurrency.split(",") if x.strip()})
    except ValueError:
        p.error("--concurrency takes comma-separated integers, e.g. 1,4,8,16")
    for name, high in LIMITS.items():
        values = args.concurrency_list if name == "concurrency" else [getattr(args, name)]
        if not values or min(values) < 1 or max(values) > high:
            p.error(f"--{name.replace('_', '-')} must be between 1 and {high}")
    if args.threads < 1:
        p.error("--threads must be >= 1")
    return args


def default_model() -> str:
    out = subprocess.run([sys.executable, "-m", "chatapi", "model-path"], check=True,
                         capture_output=True, text=True, timeout=1800)
    return out.stdout.strip().splitlines()[-1]


def build_servers(args: argparse.Namespace) -> list[Server]:
    parallel = max(args.concurrency_list)
    servers = [Server("chatapi", [sys.executable, "-m", "chatapi", "serve", "--host", "127.0.0.1",
                                  "--port", str(port := free_port()), "--model", args.model,
                                  "--parallel", str(parallel), "--threads", str(args.threads),
                                  "--ctx-size", str(args.ctx_size), "--log-level", "warning"],
                      port)]
    if args.llama_server:
        if not os.access(args.llama_server, os.X_OK):
            print(f"# skipping llama-server: {args.llama_server} is not an executable",
                  file=sys.stderr)
        else:
            servers.append(Server("llama-server", [
                args.llama_server, "-m", args.model, "--host", "127.0.0.1",
                "--port", str(port := free_port()), "--parallel", str(parallel),
                "-t", str(args.threads), "-tb", str(args.threads),
                "-c", str(args.ctx_size * parallel), "-kvu", "-fa", "off", "--no-webui"], port))
    if args.llama_cpp_python_server:
        missing = [m for m in ("uvicorn", "fastapi", "sse_starlette", "starlette_context",
                               "pydantic_settings") if importlib.util.find_spec(m) is None]
        if missing:
            print(f"# skipping llama-cpp-python server: missing {', '.join(missing)} "
                  "(pip install 'llama-cpp-python[server]' extras)", file=sys.stderr)
        else:
            servers.append(Server("llama-cpp-python", [
                sys.executable, "-m", "llama_cpp.server", "--model", args.model,
                "--host", "127.0.0.1", "--port", str(port := free_port()),
                "--n_threads", str(args.threads), "--n_threads_batch", str(args.threads),
                "--n_ctx", str(args.ctx_size),
                # its default cuts a running stream off when the next request arrives
                "--interrupt_requests", "False"], port, health_path="/v1/models"))
    return servers


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.model = args.model or default_model()
    servers = build_servers(args)
    started: list[Server] = []
    results: dict[int, list[dict[str, Load]]] = {}
    try:
        for server in servers:
            try:
                server.start(args.startup_timeout)
                # warm-up, not measured; a prompt of its own so no prefix cache favours round 1
                asyncio.run(_client_load(server, 1, 1, 8, 300, prompts=[WARMUP_PROMPT]))
                started.append(server)
            except RuntimeError as exc:
                if server.name == "chatapi":
                    raise
                print(f"# skipping {server.name}: {exc}", file=sys.stderr)
        sides = ["chatapi", "raw"] + [s.name for s in started if s.name != "chatapi"]
        by_name = {s.name: s for s in started}
        for n in args.concurrency_list:
            results[n] = []
            for rnd in range(args.rounds):
                order = sides if rnd % 2 == 0 else sides[::-1]
                measured: dict[str, Load] = {}
                for side in order:
                    load = (measure_raw(args, n) if side == "raw"
                            else measure_server(by_name[side], args, n))
                    measured[side] = load
                    print(f"# clients {n} round {rnd + 1}/{args.rounds} {side}: "
                          f"{load.tok_s:.1f} tok/s", file=sys.stderr)
                results[n].append(measured)
    finally:
        for server in servers:
            server.stop()
    table = markdown_table(results, sides)
    print(f"\n{machine_line(args)}\n\n{table}\n\n{NOTES}")
    if args.markdown_out:
        python = os.path.relpath(sys.executable)
        command = shlex.join([python if not python.startswith("..") else "python", *sys.argv])
        stamp = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
        with open(args.markdown_out, "a", encoding="utf-8") as f:
            f.write(f"\n## {stamp}\n\n`{command}`\n\n{machine_line(args)}\n\n{table}\n\n"
                    f"{NOTES}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
