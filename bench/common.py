"""What both benchmarks share: the servers they start on 127.0.0.1 (chatapi and its peers),
the machine line of a report, and markdown output."""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import os
import platform
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


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


def chatapi_server(model: str, parallel: int, threads: int, ctx_size: int, repack: bool,
                   extra: Sequence[str] = ()) -> Server:
    port = free_port()
    return Server("chatapi", [sys.executable, "-m", "chatapi", "serve", "--host", "127.0.0.1",
                              "--port", str(port), "--model", model, "--parallel", str(parallel),
                              "--threads", str(threads), "--ctx-size", str(ctx_size),
                              "--log-level", "warning", "--repack", "on" if repack else "off",
                              *extra], port)


def llama_server(binary: str, model: str, parallel: int, threads: int, ctx_size: int,
                 repack: bool = True) -> Server:
    port = free_port()
    return Server("llama-server", [
        binary, "-m", model, "--host", "127.0.0.1", "--port", str(port),
        "--parallel", str(parallel), "-t", str(threads), "-tb", str(threads),
        "-c", str(ctx_size * parallel), "-fa", "off", "--no-webui",
        *([] if repack else ["--no-repack"])], port)


# `python -m llama_cpp.server` with llama.cpp's weight repacking off: its CLI has no such option.
_NO_REPACK_LAUNCHER = """\
import runpy, llama_cpp.llama_cpp as lc
_defaults = lc.llama_model_default_params
def _no_repack():
    params = _defaults()
    params.use_extra_bufts = False
    return params
lc.llama_model_default_params = _no_repack
runpy.run_module("llama_cpp.server", run_name="__main__", alter_sys=True)
"""


def llama_cpp_python_server(model: str, threads: int, ctx_size: int,
                            repack: bool = True) -> Server:
    """llama-cpp-python's server: one Llama behind a global lock, so one request at a time."""
    port = free_port()
    launch = ["-m", "llama_cpp.server"] if repack else ["-c", _NO_REPACK_LAUNCHER]
    return Server("llama-cpp-python", [
        sys.executable, *launch, "--model", model,
        "--host", "127.0.0.1", "--port", str(port),
        "--n_threads", str(threads), "--n_threads_batch", str(threads), "--n_ctx", str(ctx_size),
        # its default cuts a running stream off when the next request arrives
        "--interrupt_requests", "False"], port, health_path="/v1/models")


def add_repack_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--repack", action="store_true",
                   help="let every side repack llama.cpp weights (chatapi's --repack on); off "
                        "by default, as in chatapi")


def add_tiled_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tiled-matmul", choices=["off", "on"], default="off",
                   help="chatapi's --tiled-matmul (default off, as in chatapi)")
    p.add_argument("--peers-tiled-matmul", choices=["stock", "same"], default="stock",
                   help="stock: the peers (raw, llama-server, llama-cpp-python) use ggml's tiled "
                        "K-quant GEMM as llama.cpp ships (on); same: as chatapi "
                        "(GGML_CPU_TILED_MM in their environment)")


def apply_tiled_options(args: argparse.Namespace) -> tuple[list[str], str]:
    """Set the peers' GGML_CPU_TILED_MM (they inherit this process's environment); return
    chatapi's arguments and a line for the report."""
    if args.peers_tiled_matmul == "same":
        os.environ["GGML_CPU_TILED_MM"] = "1" if args.tiled_matmul == "on" else "0"
    else:
        os.environ.pop("GGML_CPU_TILED_MM", None)
    peers = args.tiled_matmul if args.peers_tiled_matmul == "same" else "on (stock)"
    return (["--tiled-matmul", args.tiled_matmul],
            f"tiled K-quant GEMM: chatapi {args.tiled_matmul}, peers {peers}")


def machine_line(model: str, threads: int) -> str:
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
            f"model {Path(model).name}; --threads {threads}")


def command_line() -> str:
    python = os.path.relpath(sys.executable)
    return shlex.join([python if not python.startswith("..") else "python", *sys.argv])


def append_markdown(path: str, body: str) -> None:
    stamp = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    with open(path, "a", encoding="utf-8") as f:
        f.write(f"\n## {stamp}\n\n`{command_line()}`\n\n{body}\n")


def default_model() -> str:
    out = subprocess.run([sys.executable, "-m", "chatapi", "model-path"], check=True,
                         capture_output=True, text=True, timeout=1800)
    return out.stdout.strip().splitlines()[-1]


def missing_server_extras() -> list[str]:
    modules = ("uvicorn", "fastapi", "sse_starlette", "starlette_context", "pydantic_settings")
    return [m for m in modules if importlib.util.find_spec(m) is None]
