"""Settings for llama.cpp's kernels: from the command line and the environment, checked."""

from __future__ import annotations

import os

import pytest

from chatapi.cli import build_parser, settings_from_args
from chatapi.config import settings_from_env
from chatapi.engine.runner import set_tiled_matmul


def _serve(*argv: str, environ: dict[str, str] | None = None):
    args = build_parser().parse_args(["serve", *argv])
    return settings_from_args(args, settings_from_env(environ or {}))


def test_kernel_defaults_keep_a_row_independent_of_its_batch() -> None:
    settings = _serve()
    assert (settings.tiled_matmul, settings.repack) == ("off", "off")


def test_tiled_matmul_from_flag_and_environment() -> None:
    assert _serve("--tiled-matmul", "on").tiled_matmul == "on"
    assert _serve(environ={"CHATAPI_TILED_MATMUL": "on"}).tiled_matmul == "on"
    # the flag wins over the environment
    assert _serve("--tiled-matmul", "off",
                  environ={"CHATAPI_TILED_MATMUL": "on"}).tiled_matmul == "off"


def test_bad_kernel_settings_are_refused() -> None:
    with pytest.raises(SystemExit, match="tiled-matmul must be on or off"):
        _serve(environ={"CHATAPI_TILED_MATMUL": "fast"})
    with pytest.raises(SystemExit):  # argparse refuses it before any setting is built
        build_parser().parse_args(["serve", "--tiled-matmul", "maybe"])


def test_set_tiled_matmul_sets_ggml_switch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GGML_CPU_TILED_MM", raising=False)
    set_tiled_matmul("off")
    assert os.environ["GGML_CPU_TILED_MM"] == "0"
    set_tiled_matmul("on")
    assert os.environ["GGML_CPU_TILED_MM"] == "1"
