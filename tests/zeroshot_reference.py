#!/usr/bin/env python3
"""Independent zero-shot scorer: the same JSONL tasks scored with PyTorch + transformers, the way
lm-evaluation-harness scores multiple-choice log-likelihood tasks (acc, acc_norm).

    python tests/zeroshot_reference.py --model runs/x/model --tasks tasks.jsonl [--json]
    python tests/zeroshot_reference.py --gguf data/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf --tasks t.jsonl

--model: a Hugging Face folder (autoprune's export: config.json, model.safetensors, tokenizer.json).
--gguf: a GGUF file, loaded and dequantised by transformers itself (its own tokenizer too).
"""
import argparse
import json
import os
import sys
import time

import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast


def load(args):
    if args.gguf:
        d, f = os.path.split(os.path.abspath(args.gguf))
        tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
        model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, torch_dtype=torch.float32)
    else:
        tok = PreTrainedTokenizerFast(tokenizer_file=os.path.join(args.model, "tokenizer.json"))
        model = AutoModelForCausalLM.from_pretrained(args.model, torch_dtype=torch.float32)
    model.eval()
    return tok, model


def encode_pair(tok, context, continuation):
    # lm-evaluation-harness: trailing whitespace of the context moves to the continuation.
    n = len(context) - len(context.rstrip())
    if n > 0:
        continuation = context[-n:] + continuation
        context = context[:-n]
    whole = tok.encode(context + continuation, add_special_tokens=False)
    ctx = tok.encode(context, add_special_tokens=False)
    return ctx, whole[len(ctx):]


@torch.no_grad()
def loglikelihood(model, ctx, cont, max_len):
    inp = (ctx + cont)[-(max_len + 1):][:-1]
    logits = model(torch.tensor([inp])).logits[0].float()
    lsm = F.log_softmax(logits, dim=-1)
    n = len(cont)
    rows = lsm[len(inp) - n:]
    return float(rows.gather(1, torch.tensor(cont).unsqueeze(1)).sum())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model")
    ap.add_argument("--gguf")
    ap.add_argument("--tasks", required=True)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    tok, model = load(args)
    max_len = getattr(model.config, "max_position_embeddings", 2048)
    items = [json.loads(l) for l in open(args.tasks) if l.strip()]
    t = time.time()
    acc = acc_norm = 0
    logliks = []
    for it in items:
        ll = []
        for c in it["choices"]:
            ctx, cont = encode_pair(tok, it["context"], c)
            ll.append(loglikelihood(model, ctx, cont, max_len))
        logliks.append(ll)
        # numpy.argmax: the first maximum.
        best = max(range(len(ll)), key=lambda i: (ll[i], -i))
        norm = [l / len(c) for l, c in zip(ll, it["choices"])]
        best_norm = max(range(len(norm)), key=lambda i: (norm[i], -i))
        acc += best == it["gold"]
        acc_norm += best_norm == it["gold"]
    n = len(items)
    out = {"items": n, "acc": acc / n, "acc_norm": acc_norm / n,
           "seconds": time.time() - t, "loglik": logliks}
    if args.json:
        print(json.dumps(out))
    else:
        print(f"acc {out['acc']:.4f} acc_norm {out['acc_norm']:.4f} ({n} items, {out['seconds']:.1f} s)")


if __name__ == "__main__":
    sys.exit(main())
