"""Best-over-evaluations curves of search runs, read from their archives: after each proposal
(seeds excluded, in creation order), the best sequential ratio to Wanda so far; and how many
proposals each run needed to reach each target ratio.

    python3 docs/best_curve.py [--first N] [--targets 0.95,0.92,0.9] [--screen] RUN...

`--screen`: the best *screen* ratio instead (every screened or evaluated proposal has one), for
runs that stop every candidate at the screen (`--promote-ratio 0`), as the constant-tuning
comparison over seeds does.

A duplicate counts as a proposal that did not improve; a candidate stopped at the screen has no
sequential ratio. Used for the constant-tuning comparison in docs/SEARCH.md.
"""
import argparse
import sqlite3

ap = argparse.ArgumentParser()
ap.add_argument("runs", nargs="+")
ap.add_argument("--first", type=int, default=0, help="only the first N proposals (0: all)")
ap.add_argument("--targets", default="0.95,0.92,0.9")
ap.add_argument("--screen", action="store_true", help="best screen ratio instead of sequential")
a = ap.parse_args()
targets = [float(t) for t in a.targets.split(",")]

print(f"| run | proposals | best {'screen' if a.screen else 'sequential'} | " + " | ".join(f"to ≤ {t}" for t in targets) + " | curve (best after 5, 10, 15, …) |")
print("|---|---|---|" + "---|" * len(targets) + "---|")
for run in a.runs:
    db = sqlite3.connect(f"file:{run}/archive.sqlite?mode=ro", uri=True)
    rows = db.execute(
        "select status, proxy, fitness from nodes where operator != 'seed' and status != 'pending' order by id"
    ).fetchall()
    if a.first:
        rows = rows[: a.first]
    best, curve, reached = float("inf"), [], {}
    for i, (status, proxy, fitness) in enumerate(rows, 1):
        if a.screen:
            if status in ("screened", "evaluated") and proxy is not None:
                best = min(best, proxy)
        elif status == "evaluated" and fitness is not None:
            best = min(best, fitness)
        curve.append(best)
        for t in targets:
            if best <= t and t not in reached:
                reached[t] = i
    fmt = lambda x: "–" if x == float("inf") else f"{x:.4f}"
    marks = " ".join(fmt(curve[i - 1]) for i in range(5, len(curve) + 1, 5))
    print(
        f"| {run} | {len(rows)} | {fmt(best)} | "
        + " | ".join(str(reached.get(t, "not reached")) for t in targets)
        + f" | {marks} |"
    )
