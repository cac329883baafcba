"""chatapi command line: serve, keys, usage, db, model-path, --version."""

from __future__ import annotations

import argparse
import logging
import sys

from chatapi import __version__
from chatapi.config import Settings, settings_from_env
from chatapi.store import commands as store_commands


def _serve_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="start the OpenAI-compatible server")
    p.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default 8000)")
    p.add_argument("--model", help="path of a GGUF model (default: the embedded model)")
    p.add_argument("--served-model-name", help="model id clients use (default: from the model)")
    p.add_argument("--alias", action="append", dest="aliases", metavar="NAME",
                   help="another name for the model (repeatable; replaces the default aliases "
                        "gpt-3.5-turbo, gpt-4, gpt-4o, gpt-4o-mini)")
    p.add_argument("--api-key", action="append", dest="api_keys", metavar="KEY",
                   help="require this bearer key (repeatable)")
    p.add_argument("--database-url", help="keys and usage database: sqlite:///PATH or "
                   "postgresql+asyncpg://USER@HOST/DB (default: chatapi.db in $CHATAPI_HOME)")
    p.add_argument("--admin-key", action="append", dest="admin_keys", metavar="KEY",
                   help="a key that may manage keys over /admin/keys and read /v1/usage "
                        "(repeatable)")
    p.add_argument("--require-key", action="store_true", default=None,
                   help="refuse requests without a valid key even before any key exists")
    p.add_argument("--parallel", type=int, help="sequences generated at once (default 8)")
    p.add_argument("--ctx-size", type=int, help="context of one request in tokens (default 4096)")
    p.add_argument("--threads", type=int, help="CPU threads (default: all cores)")
    p.add_argument("--batch-size", type=int, help="tokens per llama_decode call (default 512)")
    p.add_argument("--max-queue", type=int, help="requests waiting before 429 (default 64)")
    p.add_argument("--request-timeout", type=float, metavar="SECONDS",
                   help="wall-clock limit of one request, queueing included (default 600; "
                        "0 = none)")
    p.add_argument("--shutdown-timeout", type=float, metavar="SECONDS",
                   help="on SIGTERM/SIGINT, how long requests in flight may finish before "
                        "they are ended (default 30)")
    p.add_argument("--truncation", choices=["disabled", "auto", "summarize"],
                   help="what to do with a conversation longer than the context when a request "
                        "does not say (extension field `truncation`; default disabled: 400)")
    p.add_argument("--moderation-policy", "--moderation", dest="moderation_policy",
                   metavar="PATH|default",
                   help="content policy: a TOML file, or `default` for the built-in one "
                        "(default: off)")
    p.add_argument("--no-prefix-cache", dest="prefix_cache", action="store_const", const=False,
                   help="process every prompt from scratch (no KV reuse between requests)")
    p.add_argument("--step-tokens", type=int, metavar="N",
                   help="prompt tokens prefilled per engine step beside the running streams' "
                        "decode (default 32): lower keeps streams smoother while a long "
                        "prompt is read, higher reads it sooner")
    p.add_argument("--speculative", choices=["ngram", "off"],
                   help="prompt-lookup speculative decoding (default off): draft tokens by "
                        "matching the output against the prompt, verify them in the batch; "
                        "faster on text that repeats its prompt (code edits), but greedy text "
                        "may differ where two tokens are nearly tied")
    p.add_argument("--spec-draft", type=int, metavar="N",
                   help="most draft tokens per sequence and step (default 4)")
    p.add_argument("--repack", choices=["auto", "on", "off"],
                   help="llama.cpp weight repacking (default off: its GEMM computes a row "
                        "by where it falls in the batch, so a prompt's logits would depend "
                        "on how it was chunked; auto: on unless llama.cpp was built with AMX, "
                        "whose kernels crash on machines that advertise AMX without it)")
    p.add_argument("--tiled-matmul", choices=["on", "off"],
                   help="ggml's tiled K-quant GEMM for batches of 8 or more rows (default off: "
                        "a row's numbers then do not depend on how many rows share its step, "
                        "so greedy text does not depend on the load; decode of 8 streams is "
                        "faster, prompts are read about 20%% slower; on: llama.cpp's default)")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="chatapi", description=__doc__)
    parser.add_argument("--version", action="version", version=f"chatapi {__version__}")
    sub = parser.add_subparsers(dest="command")
    _serve_parser(sub)
    sub.add_parser("model-path", help="assemble the embedded default model; print its path")
    store_commands.add_parsers(sub)
    return parser


def settings_from_args(args: argparse.Namespace, base: Settings | None = None) -> Settings:
    base = base or settings_from_env()
    fields = ("host", "port", "model", "served_model_name", "aliases", "api_keys", "parallel",
              "ctx_size", "threads", "batch_size", "max_queue", "prefix_cache", "log_level",
              "database_url", "admin_keys", "require_key", "request_timeout",
              "shutdown_timeout", "truncation", "moderation_policy", "step_tokens", "speculative",
              "spec_draft", "repack", "tiled_matmul")
    settings = base.with_overrides(**{f: getattr(args, f, None) for f in fields})
    problems = [f"--{name.replace('_', '-')} must be >= {low}"
                for name, low in (("parallel", 1), ("ctx_size", 64), ("batch_size", 1),
                                  ("max_queue", 0), ("threads", 0), ("step_tokens", 1),
                                  ("spec_draft", 0), ("request_timeout", 0),
                                  ("shutdown_timeout", 0))
                if not getattr(settings, name) >= low]  # `not >=`: NaN is refused too
    if settings.truncation not in ("disabled", "auto", "summarize"):
        problems.append("truncation must be disabled, auto or summarize")
    if settings.speculative not in ("ngram", "off"):
        problems.append("speculative must be ngram or off")
    if settings.repack not in ("auto", "on", "off"):
        problems.append("repack must be auto, on or off")
    if settings.tiled_matmul not in ("on", "off"):
        problems.append("tiled-matmul must be on or off")
    if problems:
        raise SystemExit("chatapi: " + "; ".join(problems))
    return settings


def serve(settings: Settings) -> None:
    from chatapi.api.app import create_app, resolve_model_path
    from chatapi.api.server import run

    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Assemble the default model before the server starts, with its progress bar.
    path, model_id = resolve_model_path(settings)
    settings = settings.with_overrides(model=path, served_model_name=model_id)
    run(create_app(settings), settings)  # returns after a clean SIGTERM/SIGINT drain


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        serve(settings_from_args(args))
        return 0
    if args.command == "model-path":
        from chatapi.models.default import ensure_default_model

        print(ensure_default_model())
        return 0
    if args.command in store_commands.COMMANDS:
        return store_commands.run(args)
    build_parser().print_help()
    return 1


if __name__ == "__main__":
    sys.exit(main())
