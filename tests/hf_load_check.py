"""Load a model exported by `autoprune prune --out DIR` with Hugging Face transformers and
check it: architecture, sparsity of the linear layers, and perplexity on a few SOTU windows
compared with the number autoprune wrote into DIR/report.json.

Usage (needs `pip install torch transformers`; not part of `cargo test`):
    python3 tests/hf_load_check.py runs/x [WINDOWS]

With WINDOWS (default 8) below the run's evaluation windows, autoprune's own `eval` of the
exported directory on the same first WINDOWS windows is the number compared against.
"""
import json
import pathlib
import subprocess
import sys

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import sotu_stream

run = pathlib.Path(sys.argv[1])
report = json.loads((run / "report.json").read_text())
model = AutoModelForCausalLM.from_pretrained(run / "model", dtype=torch.float32)
tok = AutoTokenizer.from_pretrained(run / "model")
model.eval()

zeros = total = 0
for name, p in model.named_parameters():
    if name.endswith("proj.weight"):
        zeros += int((p == 0).sum())
        total += p.numel()
sparsity = zeros / total
print(f"loaded {type(model).__name__}; linear sparsity {sparsity:.6f} (report: {report['sparsity_achieved']:.6f})")
assert abs(sparsity - report["sparsity_achieved"]) < 1e-6

# Perplexity on the same evaluation windows autoprune used (its token ids, re-tokenized here
# with the exported tokenizer.json to prove the tokenizer round-trips too).
proto = report["protocol"]
text = sotu_stream.text("eval")
ids = tok(text)["input_ids"]  # special tokens as autoprune adds them (Gemma: one BOS)
assert len(ids) == proto["eval_tokens"], (len(ids), proto["eval_tokens"])
seq = proto["seq_len"]
n = int(sys.argv[2]) if len(sys.argv) > 2 else 8
torch.set_num_threads(2)
ppl = sotu_stream.perplexity(model, ids, n, seq)
if n == proto["eval_windows"]:
    ours = report["perplexity"]["pruned"]["ppl"]
else:
    exe = pathlib.Path(__file__).resolve().parent.parent / "target" / "release" / "autoprune"
    out = subprocess.run(
        [str(exe), "eval", "--model", str(run / "model"), "--eval-windows", str(n), "--json"],
        check=True, capture_output=True, text=True,
    ).stdout
    ours = json.loads(out)["perplexity"]["ppl"]
print(f"transformers perplexity {ppl:.4f}; autoprune {ours:.4f}")
assert abs(ppl - ours) / ours < 2e-3
print("OK")
