#!/usr/bin/env bash
# The transfer table (docs/TRANSFER.md): dense, magnitude, Wanda, RIA and SparseGPT at 50 %,
# 2:4 and 70 % (uniform and SDSA) on every real model setup.sh fetches, perplexity on the SOTU
# evaluation windows and zero-shot accuracy on the built-in `sotu-next` task; and the metric
# search found on SmolLM2 at 2:4 (candidates/discovered/wanda_mag_2of4.rs) at 2:4 on each.
# CELLS="SETTING:METHOD ..." runs only those cells, e.g. the later discoveries under the setting
# each was found for: CELLS="0.5:disc50 2:4:disc24 0.7+sdsa:disc70 0.7:disc70". The setting
# `2:4p` is 2:4 with channel permutation (`--pattern 2:4p`).
#
#   docs/transfer.sh [OUT]            # OUT defaults to runs/transfer; resumable (done cells kept)
#
# Environment: CALIB_WINDOWS (32), EVAL_WINDOWS (64), TASK_ITEMS (200), TASK_SETTINGS (the
# settings whose pruned models are also scored zero-shot; default "dense 0.5"), MODELS (paths;
# default SmolLM2, Gemma-3-270M, Qwen2.5-Coder-0.5B in data/). Then
#   python3 docs/transfer_table.py OUT > table.md
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-runs/transfer}"
AP="${AUTOPRUNE:-target/release/autoprune}"
DATA="${AUTOPRUNE_DATA:-data}"
CALIB_WINDOWS="${CALIB_WINDOWS:-32}"
EVAL_WINDOWS="${EVAL_WINDOWS:-64}"
TASK_ITEMS="${TASK_ITEMS:-200}"
TASK_SETTINGS="${TASK_SETTINGS:-dense 0.5}"
MODELS="${MODELS:-$DATA/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf $DATA/gemma3/gemma-3-270m-q4_k_m.gguf $DATA/qwen2.5/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf}"

# setting name → flags (magnitude compares within a matrix, as published; the others per row)
setting_flags() {
  case "$1" in
    dense) echo "--sparsity 0" ;;
    0.5) echo "--sparsity 0.5" ;;
    2:4) echo "--pattern 2:4" ;;
    2:4p) echo "--pattern 2:4p" ;;
    0.7) echo "--sparsity 0.7" ;;
    0.7+sdsa) echo "--sparsity 0.7 --allocation sdsa" ;;
  esac
}
method_flags() {
  case "$1" in
    magnitude) echo "--metric candidates/magnitude.rs" ;;
    wanda) echo "--metric candidates/wanda.rs" ;;
    ria) echo "--metric candidates/ria.rs" ;;
    sparsegpt) echo "--method sparsegpt" ;;
    discovered) echo "--metric candidates/discovered/wanda_mag_2of4.rs" ;;
    disc24) echo "--metric candidates/discovered/wanda_colmag_2of4.rs" ;;
    disc24o) echo "--metric candidates/discovered/colout_sqrtnorm_2of4.rs" ;;
    disc50) echo "--metric candidates/discovered/ria_lognorm_50.rs" ;;
    disc70) echo "--metric candidates/discovered/wanda_rowmag_70sdsa.rs" ;;
  esac
}

for model in $MODELS; do
  name=$(basename "$model" .gguf)
  mkdir -p "$OUT/$name"
  if [ -n "${CELLS:-}" ]; then
    read -r -a cells <<< "$CELLS"
  else
    cells=("dense:magnitude")
    for s in 0.5 2:4 0.7 0.7+sdsa; do
      for m in magnitude wanda ria sparsegpt; do cells+=("$s:$m"); done
    done
    cells+=("2:4:discovered")
  fi
  for cell in "${cells[@]}"; do
    s="${cell%%:*}"; [ "$cell" = "2:4:${cell##*:}" ] && s="2:4"; [ "$cell" = "2:4p:${cell##*:}" ] && s="2:4p"
    m="${cell##*:}"
    file="$OUT/$name/${s/:/of}-$m.json"
    [ -s "$file" ] && continue
    flags="$(setting_flags "$s") $(method_flags "$m")"
    # Magnitude as published: one threshold per matrix (N:M stays per group).
    if [ "$m" = magnitude ] && [ "${s#2:4}" = "$s" ]; then flags="$flags --pattern layer"; fi
    tasks=""
    case " $TASK_SETTINGS " in *" $s "*) tasks="--tasks sotu-next --task-items $TASK_ITEMS" ;; esac
    echo "== $name $s $m" >&2
    # shellcheck disable=SC2086
    "$AP" prune --model "$model" $flags --skip-dense --calib-windows "$CALIB_WINDOWS" \
      --eval-windows "$EVAL_WINDOWS" $tasks --json > "$file.part"
    mv "$file.part" "$file"
  done
done
