"""The protocol's SOTU streams and perplexity loop, shared by the Python reference scripts
(`gguf_reference.py`, `hf_load_check.py`, `wanda_reference.py`); see docs/PROTOCOL.md.

Files sorted by (year, name), each stripped, joined with a blank line; the calibration stream is
the speeches before 1990, the evaluation stream those from 1990 on.
"""
import math
import pathlib

import torch

SOTU = pathlib.Path(__file__).resolve().parent.parent / "data" / "sotu"
EVAL_FROM_YEAR = 1990


def text(kind):
    """The `calib` or `eval` stream as one string."""
    speeches = sorted(
        ((int(f.name[:4]), f.name, f.read_text(encoding="utf-8").strip()) for f in SOTU.glob("*.txt")),
        key=lambda s: (s[0], s[1]),
    )
    keep = (lambda y: y < EVAL_FROM_YEAR) if kind == "calib" else (lambda y: y >= EVAL_FROM_YEAR)
    return "\n\n".join(t for y, _, t in speeches if keep(y))


def perplexity(model, ids, windows, seq=512):
    """exp of the mean next-token loss over the first `windows` non-overlapping windows."""
    nll = 0.0
    with torch.no_grad():
        for w in range(windows):
            x = torch.tensor([ids[w * seq:(w + 1) * seq]])
            logits = model(x).logits[0, :-1]
            nll += torch.nn.functional.cross_entropy(logits, x[0, 1:], reduction="sum").item()
    return math.exp(nll / (windows * (seq - 1)))
