"""Charts of a bench/throughput.py run: total tok/s and TTFT p50 against concurrent clients.

Reads the JSON that `throughput.py --json-out FILE` writes and draws two PNGs, one line per
side (chatapi, raw, llama-server, llama-cpp-python):

    .venv/bin/python bench/plot.py results.json                 # bench/throughput_*.png
    .venv/bin/python bench/plot.py results.json --out-dir /tmp --prefix code-edit
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

STYLE = {  # side -> (label, line style, colour); the same in both charts
    "chatapi": ("chatapi", "o-", "tab:blue"),
    "raw": ("raw llama.cpp batched decode (ceiling)", "s--", "tab:orange"),
    "llama-server": ("llama.cpp llama-server", "^-", "tab:green"),
    "llama-cpp-python": ("llama-cpp-python server (one request at a time)", "v-", "tab:red"),
}


def _series(rows: Sequence[dict[str, Any]], key: str) -> dict[str, tuple[list[int], list[float]]]:
    """side -> (clients, values) for the rows that have `key`, in order of clients."""
    series: dict[str, tuple[list[int], list[float]]] = {}
    for row in sorted(rows, key=lambda r: r["clients"]):
        value = row.get(key)
        if value is None:
            continue
        xs, ys = series.setdefault(row["side"], ([], []))
        xs.append(row["clients"])
        ys.append(value)
    return series


def _chart(series: dict[str, tuple[list[int], list[float]]], ylabel: str, title: str,
           path: Path, labels: dict[str, str] | None = None) -> Path:
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    known = [s for s in STYLE if s in series] + [s for s in series if s not in STYLE]
    for side in known:
        label, style, colour = STYLE.get(side, (side, "x-", None))
        xs, ys = series[side]
        ax.plot(xs, ys, style, color=colour, label=(labels or {}).get(side, label))
    clients = sorted({x for xs, _ in series.values() for x in xs})
    ax.set_xscale("log", base=2)
    ax.set_xticks(clients, [str(c) for c in clients])
    ax.minorticks_off()
    ax.set_xlabel("concurrent clients")
    ax.set_ylabel(ylabel)
    ax.set_ylim(bottom=0)
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_rows(rows: Sequence[dict[str, Any]], out_dir: Path, prefix: str = "throughput",
              title: str = "") -> list[Path]:
    """Write {prefix}_tokps.png and {prefix}_ttft.png into out_dir; return their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    suffix = f"\n{title}" if title else ""
    ttft = _series(rows, "ttft_p50")
    if prefill := _series(rows, "prefill_s").get("raw"):
        ttft["raw"] = prefill  # raw has no TTFT: its prefill of all N prompts stands in
    return [
        _chart(_series(rows, "tok_s"), "total completion tok/s (median)",
               f"Throughput{suffix}", out_dir / f"{prefix}_tokps.png"),
        _chart(ttft, "time to first token, p50 (s)", f"Time to first token{suffix}",
               out_dir / f"{prefix}_ttft.png",
               labels={"raw": "raw llama.cpp: prefill of all N prompts, one after another"}),
    ]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("json_file", help="written by `bench/throughput.py --json-out FILE`")
    p.add_argument("--out-dir", default=str(Path(__file__).parent))
    p.add_argument("--prefix", default="throughput", help="file names: PREFIX_tokps.png, ...")
    args = p.parse_args(argv)
    doc = json.loads(Path(args.json_file).read_text(encoding="utf-8"))
    title = f"workload {doc.get('workload', '?')}, max_tokens {doc.get('max_tokens', '?')}"
    for path in plot_rows(doc["rows"], Path(args.out_dir), args.prefix, title):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
