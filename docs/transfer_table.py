"""Markdown tables from the reports `docs/transfer.sh OUT` wrote: perplexity per model, method
and setting, and zero-shot accuracy where it was measured.

    python3 docs/transfer_table.py runs/transfer
"""
import json
import pathlib
import sys

out = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "runs/transfer")
settings = ["0.5", "2of4", "0.7", "0.7+sdsa"]
methods = ["magnitude", "wanda", "ria", "sparsegpt", "discovered"]
for model in sorted(p for p in out.iterdir() if p.is_dir()):
    def cell(s, m):
        f = model / f"{s}-{m}.json"
        return json.loads(f.read_text()) if f.exists() else None

    dense = cell("dense", "magnitude")
    print(f"\n### {model.name}\n")
    if dense:
        d = dense["perplexity"]["pruned"]
        print(f"Dense perplexity {d['ppl']:.2f} ({d['windows']} windows)", end="")
        for t in dense.get("zero_shot", []):
            print(f"; {t['task']} acc {t['acc']:.3f} / acc_norm {t['acc_norm']:.3f} ({t['items']} items)", end="")
        print(".\n")
    print("| method | " + " | ".join(s.replace("of", ":") for s in settings) + " |")
    print("|---|" + "---|" * len(settings))
    for m in methods:
        row = []
        for s in settings:
            r = cell(s, m)
            if r is None:
                row.append("not run")
                continue
            text = f"{r['perplexity']['pruned']['ppl']:.2f}"
            for t in r.get("zero_shot", []):
                text += f" (acc {t['acc']:.3f})"
            row.append(text)
        print(f"| {m} | " + " | ".join(row) + " |")
