"""The original Wanda algorithm in PyTorch float32 on the SOTU-512 protocol, as an independent
check of autoprune's numbers (not part of `cargo test`; a documented command).

It follows locuslab/wanda `lib/prune.py` + `lib/layerwrapper.py` step by step: per block, hooks
on every linear accumulate `scaler_row` as WrappedGPT does (f32 running mean of squared input
norms), the dense block runs on all calibration windows, every linear is pruned with
`|W| * sqrt(scaler_row)` (per row: `torch.sort(stable=True)` and the first `int(cols * s)`;
N:M: `torch.topk(largest=False)` per group of M columns), the pruned block runs again and its
outputs feed the next block. Then perplexity on the 64 evaluation windows.

The model is an autoprune f32 export of the dense SmolLM2 (transformers loads it; the GGUF
itself is not a format transformers reads):

    autoprune prune --metric candidates/magnitude.rs --sparsity 0 --skip-dense \\
        --eval-windows 1 --out runs/dense-export
    python3 tests/wanda_reference.py runs/dense-export/model 2:4     # or 0.5, 0.7, 4:8
    python3 tests/wanda_reference.py runs/dense-export/model 2:4 runs/x/model   # and compare
                                                          # masks with an autoprune export

Any family autoprune exports (LLaMA, Qwen2) works the same way; `CALIB_WINDOWS=N` and
`EVAL_WINDOWS=N` reduce the protocol's 32 calibration and 64 evaluation windows (give autoprune
the same `--calib-windows` to compare masks), e.g. for Qwen2.5-Coder-0.5B:

    autoprune prune --model data/qwen2.5/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf \
        --metric candidates/magnitude.rs --sparsity 0 --skip-dense --eval-windows 1 --out runs/q0
    autoprune prune --model data/qwen2.5/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf \
        --metric candidates/wanda.rs --calib-windows 4 --eval-windows 2 --out runs/qw
    CALIB_WINDOWS=4 EVAL_WINDOWS=2 python3 tests/wanda_reference.py runs/q0/model 0.5 runs/qw/model

Needs `pip install torch transformers`. `THREADS=N` sets torch's thread count (default 2).
"""
import math
import os
import pathlib
import sys
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

export = pathlib.Path(sys.argv[1])
mode = sys.argv[2]
if ":" in mode:
    prune_n, prune_m = map(int, mode.split(":"))
    sparsity = prune_n / prune_m
else:
    prune_n = prune_m = 0
    sparsity = float(mode)
torch.set_grad_enabled(False)
torch.set_num_threads(int(os.environ.get("THREADS", "2")))
model = AutoModelForCausalLM.from_pretrained(export, dtype=torch.float32, attn_implementation="eager")
model.eval()
tok = AutoTokenizer.from_pretrained(export)

# The protocol's streams (PROTOCOL.md): files sorted by (year, name), stripped, joined.
sotu = pathlib.Path(__file__).resolve().parent.parent / "data" / "sotu"
speeches = sorted(
    ((int(f.name[:4]), f.name, f.read_text(encoding="utf-8").strip()) for f in sotu.glob("*.txt")),
    key=lambda s: (s[0], s[1]),
)
calib = tok("\n\n".join(t for y, _, t in speeches if y < 1990), add_special_tokens=False)["input_ids"]
evals = tok("\n\n".join(t for y, _, t in speeches if y >= 1990), add_special_tokens=False)["input_ids"]
seq = 512
n = int(os.environ.get("CALIB_WINDOWS", "32"))
n_eval = int(os.environ.get("EVAL_WINDOWS", "64"))
offsets = [k * (len(calib) - seq) // n for k in range(n)]
if model.config.vocab_size == 49152 and n == 32:  # SmolLM2: the protocol's pinned numbers
    assert len(calib) == 1_887_111 and len(evals) == 237_332, (len(calib), len(evals))
    assert offsets[1] == 58956 and offsets[-1] == 1827642

t0 = time.time()
layers = model.model.layers
inps = model.model.embed_tokens(torch.tensor([calib[o:o + seq] for o in offsets]))
position_ids = torch.arange(seq).unsqueeze(0)
position_embeddings = model.model.rotary_emb(inps[:1], position_ids)
mask = torch.full((seq, seq), float("-inf")).triu(1)[None, None]


def run_block(layer, x):
    out = torch.empty_like(x)
    for j in range(x.shape[0]):
        y = layer(x[j:j + 1], attention_mask=mask, position_ids=position_ids,
                  position_embeddings=position_embeddings)
        out[j] = y[0] if isinstance(y, tuple) else y
    return out


for i, layer in enumerate(layers):
    linears = {name: m for name, m in layer.named_modules() if isinstance(m, torch.nn.Linear)}
    scaler = {name: torch.zeros(m.in_features) for name, m in linears.items()}
    count = {name: 0 for name in linears}

    def hook(name):
        def add_batch(_, inp, out):
            x = inp[0].reshape(-1, inp[0].shape[-1]).t().float()
            tmp = 1  # WrappedGPT counts samples (batch rows), one window per call here
            scaler[name] *= count[name] / (count[name] + tmp)
            count[name] += tmp
            scaler[name] += torch.norm(x, p=2, dim=1) ** 2 / count[name]
        return add_batch

    handles = [m.register_forward_hook(hook(name)) for name, m in linears.items()]
    run_block(layer, inps)
    for h in handles:
        h.remove()
    for name, m in linears.items():
        W = m.weight.data
        metric = torch.abs(W) * torch.sqrt(scaler[name].reshape((1, -1)))
        W_mask = torch.zeros_like(metric) == 1
        if prune_n != 0:
            for ii in range(metric.shape[1]):
                if ii % prune_m == 0:
                    tmp = metric[:, ii:(ii + prune_m)].float()
                    W_mask.scatter_(1, ii + torch.topk(tmp, prune_n, dim=1, largest=False)[1], True)
        else:
            sort_res = torch.sort(metric, dim=-1, stable=True)
            W_mask.scatter_(1, sort_res[1][:, :int(metric.shape[1] * sparsity)], True)
        W[W_mask] = 0
    inps = run_block(layer, inps)
    print(f"block {i} pruned ({time.time() - t0:.0f} s)", file=sys.stderr)

if len(sys.argv) > 3:
    from safetensors.torch import load_file
    ours = load_file(str(pathlib.Path(sys.argv[3]) / "model.safetensors"))
    differ = 0
    for i, layer in enumerate(layers):
        for name, m in layer.named_modules():
            if isinstance(m, torch.nn.Linear):
                theirs = ours[f"model.layers.{i}.{name}.weight"] == 0
                d = int(((m.weight == 0) != theirs).sum())
                differ += d
                if d:
                    print(f"block {i} {name}: {d} mask entries differ", file=sys.stderr)
    print(f"mask entries that differ from {sys.argv[3]}: {differ}")

zeros = sum(int((m.weight == 0).sum()) for l in layers for m in l.modules() if isinstance(m, torch.nn.Linear))
total = sum(m.weight.numel() for l in layers for m in l.modules() if isinstance(m, torch.nn.Linear))
prune_s = time.time() - t0
t1 = time.time()
nll = 0.0
for w in range(n_eval):
    x = torch.tensor([evals[w * seq:(w + 1) * seq]])
    logits = model(x).logits[0, :-1]
    nll += torch.nn.functional.cross_entropy(logits, x[0, 1:], reduction="sum").item()
ppl = math.exp(nll / (n_eval * (seq - 1)))
print(f"wanda {mode}: perplexity {ppl:.4f}, sparsity {zeros / total:.6f}, "
      f"prune {prune_s:.0f} s, eval {time.time() - t1:.0f} s")
