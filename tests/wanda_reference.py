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

Any family autoprune exports (LLaMA, Qwen2, Gemma 3) works the same way; `CALIB_WINDOWS=N` and
`EVAL_WINDOWS=N` reduce the protocol's 32 calibration and 64 evaluation windows (give autoprune
the same `--calib-windows` to compare masks), e.g. for Qwen2.5-Coder-0.5B:

    autoprune prune --model data/qwen2.5/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf \
        --metric candidates/magnitude.rs --sparsity 0 --skip-dense --eval-windows 1 --out runs/q0
    autoprune prune --model data/qwen2.5/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf \
        --metric candidates/wanda.rs --calib-windows 4 --eval-windows 2 --out runs/qw
    CALIB_WINDOWS=4 EVAL_WINDOWS=2 python3 tests/wanda_reference.py runs/q0/model 0.5 runs/qw/model

`METHOD=magnitude` runs the same repository's `prune_magnitude` instead (one threshold per
matrix, everything at or below it pruned: autoprune's `--metric candidates/magnitude.rs
--pattern layer`), and `METHOD=sparsegpt` its `prune_sparsegpt` with `lib/sparsegpt.py`
(block size 128, 1 % damping, weight updates: autoprune's `--method sparsegpt`).

Needs `pip install torch transformers`. `THREADS=N` sets torch's thread count (default 2).
"""
import inspect
import math
import os
import pathlib
import sys
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import sotu_stream

export = pathlib.Path(sys.argv[1])
mode = sys.argv[2]
method = os.environ.get("METHOD", "wanda")
assert method in ("wanda", "magnitude", "sparsegpt"), method
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
# Special tokens as the exported tokenizer adds them (none for SmolLM2 and Qwen2, a BOS at the
# start of each stream for Gemma 3), as autoprune does.
calib = tok(sotu_stream.text("calib"))["input_ids"]
evals = tok(sotu_stream.text("eval"))["input_ids"]
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
rotary = model.model.rotary_emb
layer_types = getattr(model.config, "layer_types", None)
per_type = "layer_type" in inspect.signature(rotary.forward).parameters


def masked(window):
    # Causal, and (Gemma 3's sliding layers) no key `window` or more positions back.
    i = torch.arange(seq)
    bad = (i[None, :] > i[:, None]) | (i[:, None] - i[None, :] >= (window or seq + 1))
    return torch.zeros(seq, seq).masked_fill(bad, float("-inf"))[None, None]


def run_block(layer, x, i):
    kind = layer_types[i] if layer_types else "full_attention"
    pe = rotary(x[:1], position_ids, kind) if per_type else rotary(x[:1], position_ids)
    window = model.config.sliding_window if kind == "sliding_attention" else None
    mask = masked(window)
    out = torch.empty_like(x)
    for j in range(x.shape[0]):
        y = layer(x[j:j + 1], attention_mask=mask, position_ids=position_ids,
                  position_embeddings=pe)
        out[j] = y[0] if isinstance(y, tuple) else y
    return out


class SparseGPT:
    """locuslab/wanda `lib/sparsegpt.py` (from IST-DASLab/sparsegpt), CPU, float32."""

    def __init__(self, layer):
        self.layer = layer
        self.rows, self.columns = layer.weight.shape
        self.H = torch.zeros((self.columns, self.columns))
        self.nsamples = 0

    def add_batch(self, inp):
        inp = inp.reshape((-1, inp.shape[-1])).t().float()
        tmp = 1
        self.H *= self.nsamples / (self.nsamples + tmp)
        self.nsamples += tmp
        inp = math.sqrt(2 / self.nsamples) * inp
        self.H += inp.matmul(inp.t())

    def fasterprune(self, sparsity, prune_n=0, prune_m=0, blocksize=128, percdamp=.01):
        W = self.layer.weight.data.clone().float()
        H = self.H
        dead = torch.diag(H) == 0
        H[dead, dead] = 1
        W[:, dead] = 0
        damp = percdamp * torch.mean(torch.diag(H))
        diag = torch.arange(self.columns)
        H[diag, diag] += damp
        H = torch.linalg.cholesky(H)
        H = torch.cholesky_inverse(H)
        Hinv = torch.linalg.cholesky(H, upper=True)
        for i1 in range(0, self.columns, blocksize):
            i2 = min(i1 + blocksize, self.columns)
            count = i2 - i1
            W1 = W[:, i1:i2].clone()
            Q1 = torch.zeros_like(W1)
            Err1 = torch.zeros_like(W1)
            Hinv1 = Hinv[i1:i2, i1:i2]
            if prune_n == 0:
                tmp = W1 ** 2 / (torch.diag(Hinv1).reshape((1, -1))) ** 2
                thresh = torch.sort(tmp.flatten())[0][int(tmp.numel() * sparsity)]
                mask1 = tmp <= thresh
            else:
                mask1 = torch.zeros_like(W1) == 1
            for i in range(count):
                w = W1[:, i]
                d = Hinv1[i, i]
                if prune_n != 0 and i % prune_m == 0:
                    tmp = W1[:, i:(i + prune_m)] ** 2 / (torch.diag(Hinv1)[i:(i + prune_m)].reshape((1, -1))) ** 2
                    mask1.scatter_(1, i + torch.topk(tmp, prune_n, dim=1, largest=False)[1], True)
                q = w.clone()
                q[mask1[:, i]] = 0
                Q1[:, i] = q
                err1 = (w - q) / d
                W1[:, i:] -= err1.unsqueeze(1).matmul(Hinv1[i, i:].unsqueeze(0))
                Err1[:, i] = err1
            W[:, i1:i2] = Q1
            W[:, i2:] -= Err1.matmul(Hinv[i1:i2, i2:])
        self.layer.weight.data = W


def nm_mask(metric):
    W_mask = torch.zeros_like(metric) == 1
    for ii in range(metric.shape[1]):
        if ii % prune_m == 0:
            tmp = metric[:, ii:(ii + prune_m)].float()
            W_mask.scatter_(1, ii + torch.topk(tmp, prune_n, dim=1, largest=False)[1], True)
    return W_mask


for i, layer in enumerate(layers):
    linears = {name: m for name, m in layer.named_modules() if isinstance(m, torch.nn.Linear)}
    if method == "magnitude":  # lib/prune.py `prune_magnitude`: no calibration
        for name, m in linears.items():
            W = m.weight.data
            metric = torch.abs(W)
            if prune_n != 0:
                W_mask = nm_mask(metric)
            else:
                thresh = torch.sort(metric.flatten())[0][int(W.numel() * sparsity)]
                W_mask = metric <= thresh
            W[W_mask] = 0
        continue
    scaler = {name: torch.zeros(m.in_features) for name, m in linears.items()}
    count = {name: 0 for name in linears}
    gpts = {name: SparseGPT(m) for name, m in linears.items()} if method == "sparsegpt" else {}

    def hook(name):
        def add_batch(_, inp, out):
            if method == "sparsegpt":
                gpts[name].add_batch(inp[0].data)
                return
            x = inp[0].reshape(-1, inp[0].shape[-1]).t().float()
            tmp = 1  # WrappedGPT counts samples (batch rows), one window per call here
            scaler[name] *= count[name] / (count[name] + tmp)
            count[name] += tmp
            scaler[name] += torch.norm(x, p=2, dim=1) ** 2 / count[name]
        return add_batch

    handles = [m.register_forward_hook(hook(name)) for name, m in linears.items()]
    run_block(layer, inps, i)
    for h in handles:
        h.remove()
    for name, m in linears.items():
        if method == "sparsegpt":
            gpts[name].fasterprune(sparsity, prune_n, prune_m)
            continue
        W = m.weight.data
        metric = torch.abs(W) * torch.sqrt(scaler[name].reshape((1, -1)))
        W_mask = torch.zeros_like(metric) == 1
        if prune_n != 0:
            W_mask = nm_mask(metric)
        else:
            sort_res = torch.sort(metric, dim=-1, stable=True)
            W_mask.scatter_(1, sort_res[1][:, :int(metric.shape[1] * sparsity)], True)
        W[W_mask] = 0
    inps = run_block(layer, inps, i)
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
ppl = sotu_stream.perplexity(model, evals, n_eval, seq)
print(f"{method} {mode}: perplexity {ppl:.4f}, sparsity {zeros / total:.6f}, "
      f"prune {prune_s:.0f} s, eval {time.time() - t1:.0f} s")
