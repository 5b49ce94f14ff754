"""Markdown tables from the reports `docs/transfer.sh OUT` wrote: perplexity per model, method
and setting, and zero-shot accuracy where it was measured.

    python3 docs/transfer_table.py runs/transfer
"""
import json
import pathlib
import sys

out = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "runs/transfer")
settings = ["0.5", "2of4", "2of4p", "0.7", "0.7+sdsa"]
# The metrics search found on SmolLM2: `discovered` (2:4, wanda_mag_2of4), `disc24`
# (wanda_colmag_2of4), `disc24o` (colout_sqrtnorm_2of4), `disc50` (ria_lognorm_50, found at 50 %), `disc70` (wanda_rowmag_70sdsa,
# found at 70 % + SDSA). A row is printed when at least one of its cells was run.
methods = ["magnitude", "wanda", "ria", "sparsegpt", "discovered", "disc24", "disc24o", "disc50", "disc70"]
baselines = methods[:4]
for model in sorted(p for p in out.iterdir() if p.is_dir()):
    def cell(s, m):
        f = model / f"{s}-{m}.json"
        return json.loads(f.read_text()) if f.exists() else None

    def tasks(r):
        z = r.get("zero_shot") or {}
        return z.get("pruned", []) if isinstance(z, dict) else z

    dense = cell("dense", "magnitude")
    print(f"\n### {model.name}\n")
    if dense:
        d = dense["perplexity"]["pruned"]
        print(f"Dense perplexity {d['ppl']:.2f} ({d['windows']} windows)", end="")
        for t in tasks(dense):
            print(f"; {t['task']} acc {t['acc']:.3f} / acc_norm {t['acc_norm']:.3f} ({t['items']} items)", end="")
        print(".\n")
    print("| method | " + " | ".join(s.replace("of", ":") for s in settings) + " |")
    print("|---|" + "---|" * len(settings))
    for m in methods:
        if m not in baselines and not any(cell(s, m) for s in settings):
            continue
        row = []
        for s in settings:
            r = cell(s, m)
            if r is None:
                row.append("–" if m not in baselines else "not run")
                continue
            text = f"{r['perplexity']['pruned']['ppl']:.2f}"
            w = cell(s, "wanda")
            if m not in baselines and w:
                text += f" ({r['perplexity']['pruned']['ppl'] / w['perplexity']['pruned']['ppl']:.3f} × Wanda)"
            for t in tasks(r):
                text += f" (acc {t['acc']:.3f})"
            row.append(text)
        print(f"| {m} | " + " | ".join(row) + " |")
