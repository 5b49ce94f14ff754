#!/usr/bin/env bash
# The streaming benchmark of docs/STREAMING.md: a model with LLaMA-2-7B's shapes (random f16
# weights, SmolLM2's tokenizer) pruned with Wanda by `prune --stream`, reduced windows; prints
# peak RSS against the goal and seconds per block across depth.
#
#   docs/stream_bench.sh [DIR]     # DIR defaults to runs/stream-bench (13.8 GB at 32 blocks)
#
# Environment: LAYERS (32), CALIB_WINDOWS (4), EVAL_WINDOWS (2), SEQLEN (512), OUT (unset: the
# pruned model is not written; set a folder to write it as f16, as much again on disk).
set -euo pipefail
cd "$(dirname "$0")/.."
DIR="${1:-runs/stream-bench}"
AP="${AUTOPRUNE:-target/release/autoprune}"
LAYERS="${LAYERS:-32}"
mkdir -p "$DIR"
if [ ! -s "$DIR/model/model.safetensors" ] || [ "$(cat "$DIR/layers" 2>/dev/null)" != "$LAYERS" ]; then
  rm -rf "$DIR/model"
  /usr/bin/time -f "synthetic model written in %e s" "$AP" bench --synthetic-7b "$DIR/model" --layers "$LAYERS"
  echo "$LAYERS" > "$DIR/layers"
fi
out=()
[ -n "${OUT:-}" ] && out=(--out "$OUT" --save-dtype f16)
"$AP" prune --stream --model "$DIR/model" --metric candidates/wanda.rs --sparsity 0.5 \
  --calib-windows "${CALIB_WINDOWS:-4}" --eval-windows "${EVAL_WINDOWS:-2}" --seqlen "${SEQLEN:-512}" \
  "${out[@]}" --json > "$DIR/report.json"
python3 - "$DIR/report.json" <<'PY'
import json, statistics, sys
r = json.load(open(sys.argv[1]))
s, p = r["stream"], r["protocol"]
mb = lambda b: b / 1e6
blocks = s["blocks"]
secs = [b["seconds"] for b in blocks]
n = len(secs)
q = max(1, n // 4)
print(f"{n} blocks, {p['calib_windows']} calibration and {p['eval_windows']} evaluation windows of {p['seq_len']} tokens")
print(f"peak RSS {mb(r['peak_rss_bytes']):.0f} MB; goal 1.5 x (block {mb(s['block_bytes']):.0f} MB"
      f" + activations {mb(s['activation_bytes']):.0f} MB) = {mb(s['goal_bytes']):.0f} MB;"
      f" ratio {r['peak_rss_bytes'] / s['goal_bytes']:.3f}")
print(f"seconds per block: median {statistics.median(secs):.2f}, min {min(secs):.2f}, max {max(secs):.2f};"
      f" first {q} blocks {statistics.mean(secs[:q]):.2f}, last {q} {statistics.mean(secs[-q:]):.2f}")
rss = [b["rss_bytes"] for b in blocks if b.get("rss_bytes")]
if rss:
    print(f"RSS after each block: {mb(min(rss)):.0f}-{mb(max(rss)):.0f} MB")
read = statistics.median(b["read_seconds"] for b in blocks)
print(f"read per block (median) {read:.2f} s; dense ppl {r['perplexity']['dense']['ppl']:.4g}, "
      f"pruned {r['perplexity']['pruned']['ppl']:.4g}; total {r['timings']['total_seconds']:.0f} s")
PY
