#!/usr/bin/env bash
# Build llama.cpp's C++ `llama-server` from the llama.cpp source vendored in the
# llama-cpp-python sdist (same llama.cpp revision chatapi runs on), for use as a
# peer in bench/throughput.py (--llama-server PATH).
#
# The binary is cached OUTSIDE the repo; nothing fetched here is committed.
# Prints the binary's path on the last line of stdout.
#
#   bench/build_llama_server.sh                 # build (or reuse) and print path
#   JOBS=4 bench/build_llama_server.sh          # more build jobs
#   SDIST_DIR=/tmp/sdist/llama_cpp_python-0.3.36 bench/build_llama_server.sh   # reuse an extracted sdist
set -euo pipefail

VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
CACHE="${CHATAPI_BENCH_CACHE:-$HOME/.cache/chatapi-bench}"
JOBS="${JOBS:-2}"
BIN="$CACHE/llama-server"
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PIP="${PIP:-$REPO_ROOT/.venv/bin/pip}"
[ -x "$PIP" ] || PIP="pip"

if [ -x "$BIN" ] && [ "${REBUILD:-0}" != "1" ]; then
    echo "llama-server already built (REBUILD=1 to rebuild):" >&2
    echo "$BIN"
    exit 0
fi

mkdir -p "$CACHE"

if [ -z "${SDIST_DIR:-}" ]; then
    SDIST_DIR="$CACHE/llama_cpp_python-$VERSION"
    if [ ! -d "$SDIST_DIR/vendor/llama.cpp" ]; then
        echo "downloading llama-cpp-python==$VERSION sdist into $CACHE" >&2
        "$PIP" download --no-binary :all: --no-deps "llama-cpp-python==$VERSION" -d "$CACHE" >&2
        tar -xzf "$CACHE/llama_cpp_python-$VERSION.tar.gz" -C "$CACHE"
    fi
fi
if [ ! -d "$SDIST_DIR/vendor/llama.cpp" ]; then
    echo "no vendor/llama.cpp under $SDIST_DIR" >&2
    exit 1
fi

BUILD="$CACHE/build-$VERSION"
echo "configuring $SDIST_DIR/vendor/llama.cpp -> $BUILD" >&2
cmake -S "$SDIST_DIR/vendor/llama.cpp" -B "$BUILD" \
    -DLLAMA_CURL=OFF -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF \
    -DBUILD_SHARED_LIBS=OFF -DCMAKE_BUILD_TYPE=Release >&2
echo "building llama-server with -j$JOBS (several minutes on 2 cores)" >&2
cmake --build "$BUILD" --target llama-server -j"$JOBS" >&2

cp "$BUILD/bin/llama-server" "$BIN.tmp"
mv "$BIN.tmp" "$BIN"
echo "$BIN"
