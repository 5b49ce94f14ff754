"""Dense perplexity of a GGUF model by an implementation that is not ours: Hugging Face
transformers loads and dequantises the GGUF itself, with its own tokenizer, and measures the
first WINDOWS windows of the SOTU evaluation stream; autoprune's `eval` of the same file on the
same windows is run and compared (relative difference, must be < 0.1 %). The token streams are
compared too (the sha256 of the ids as little-endian u32, which `eval --json` prints).

Usage (needs `pip install torch transformers gguf`; not part of `cargo test`):
    python3 tests/gguf_reference.py MODEL.gguf [WINDOWS]
"""
import hashlib
import json
import pathlib
import subprocess
import sys
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import sotu_stream

gguf = pathlib.Path(sys.argv[1]).resolve()
n = int(sys.argv[2]) if len(sys.argv) > 2 else 8
root = pathlib.Path(__file__).resolve().parent.parent
exe = root / "target" / "release" / "autoprune"

t0 = time.time()
out = subprocess.run(
    [str(exe), "eval", "--model", str(gguf), "--eval-windows", str(n), "--json"],
    check=True, capture_output=True, text=True,
).stdout
ours_report = json.loads(out)
ours = ours_report["perplexity"]["ppl"]
print(f"autoprune: {ours:.4f} ({time.time() - t0:.1f} s)")

tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
model.eval()
text = sotu_stream.text("eval")
# Special tokens as the GGUF asks (Gemma: one BOS first; SmolLM2, Qwen2: none), as autoprune.
ids = tok(text)["input_ids"]
digest = hashlib.sha256(b"".join(i.to_bytes(4, "little") for i in ids)).hexdigest()
print(f"transformers tokens: {len(ids)} (sha256 {digest}); "
      f"autoprune: {ours_report['eval_tokens']} (sha256 {ours_report['eval_tokens_sha256']})")
assert digest == ours_report["eval_tokens_sha256"], "token streams differ"
torch.set_num_threads(2)
t0 = time.time()
ppl = sotu_stream.perplexity(model, ids, n)
rel = abs(ppl - ours) / ours
print(f"transformers: {ppl:.4f} ({time.time() - t0:.1f} s); relative difference {rel:.2e}")
assert rel < 1e-3, "more than 0.1 % apart"
print("OK")
