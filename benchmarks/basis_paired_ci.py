"""Paired differences of every basis addition vs the full collection (95% normal intervals), from the basis report cache."""
import json
import math
import sys
from pathlib import Path

d = Path(sys.argv[1] if len(sys.argv) > 1 else 'runs/collection/basis_report')
full = json.load(open(d / 'full.json'))
tasks = list(full['tasks'])
def pooled(r): return [c for t in tasks for c in r['tasks'][t]['correct']]
fc = pooled(full); n = len(fc); fa = sum(fc) / n
print(f"full {fa:.3f} n={n}")
for m in ['pca', 'autoencoder', 'random', 'random_sample']:
    for M in [2, 4, 8]:
        p = d / f'{m}-m{M}.json'
        if not p.exists(): continue
        r = json.load(open(p))
        if r.get('key', {}).get('format') != 2: continue
        for kind in ('addition', 'source_addition'):
            c = pooled(r[kind]); a = sum(c) / n
            b = sum(1 for x, y in zip(c, fc) if x and not y); cc = sum(1 for x, y in zip(c, fc) if y and not x)
            diff = (b - cc) / n
            se = math.sqrt(max((b + cc) - (b - cc) ** 2 / n, 0)) / n
            lo, hi = diff - 1.96 * se, diff + 1.96 * se
            print(f"{m} M={M} {kind:16s} acc {a:.3f} diff {diff:+.3f} [{lo:+.3f}, {hi:+.3f}]  kept(pooled) {a/fa:.1%} lower {(fa+lo)/fa:.1%}")
