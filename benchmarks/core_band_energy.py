"""How much of each task vector breadcrumbs' mask removes, on the dense weights and on the cores.

Usage: python benchmarks/core_band_energy.py [--collection DIR] [--density 0.9] [--gamma 0.01] [--json]

Breadcrumbs (``weights/merge/breadcrumbs.py``) keeps, per tensor and task, the entries whose
magnitude lies in a middle band: it drops the largest ``gamma`` fraction and everything below
the top ``gamma + density`` fraction. With ``space: core`` (the LoRA-native row
``breadcrumbs_core`` of the merge reports) the same mask acts on each task's core
``C_i = U^T B_i A_i V`` in the shared core space of the module (``weights/core_space.py``)
instead of on the dense delta ``B_i A_i``. ``U`` and ``V`` are orthonormal, so the squared
Frobenius norm a mask removes from a core is exactly what it removes from the task's delta,
and the masked task keeps a cosine of ``sqrt(1 - removed)`` with the original in both spaces.

This script measures, per task (summed over the 2-D tensors) and per module kind, the fraction
of ``||delta_i||^2`` that the top cut (``gamma``) and the bottom cut remove, dense vs core.
It loads only the vector files (no model); exact up to float rounding; about a minute on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from taskvec.weights.core_space import CoreSpace  # noqa: E402
from taskvec.weights.lowrank import LowRankDelta  # noqa: E402
from taskvec.weights.merge.breadcrumbs import band  # noqa: E402
from taskvec.weights.vector import TaskVector, module_kind  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def removed(x: torch.Tensor, density: float, gamma: float) -> tuple[float, float, float]:
    """(total energy, energy above the band, energy below the band) of one tensor."""
    f = x.reshape(-1).double()
    t_lo, t_hi = band(f, density, gamma)
    a, e = f.abs(), f.square()
    return float(e.sum()), float(e[a >= t_hi].sum()), float(e[a < t_lo].sum())


def measure(vectors: dict[str, TaskVector], density: float, gamma: float) -> dict[str, Any]:
    """Energy removed by the top and bottom cuts, per task and per (task, module kind)."""
    tasks = list(vectors)
    names = [n for n in vectors[tasks[0]].names if isinstance(vectors[tasks[0]][n], LowRankDelta)]
    acc: dict[str, dict[str, list[float]]] = {sp: defaultdict(lambda: [0.0, 0.0, 0.0]) for sp in ("dense", "core")}
    sizes: dict[str, list[int]] = defaultdict(list)
    for name in names:
        deltas = [vectors[t][name] for t in tasks]
        cs = CoreSpace.of(deltas)  # type: ignore[arg-type]
        sizes[module_kind(name)].append(int(cs.cores[0].numel()))
        for t, d, c in zip(tasks, deltas, cs.cores):
            for space, x in (("dense", d.to_dense(torch.float64)), ("core", c)):  # type: ignore[union-attr]
                tot, hi, lo = removed(x, density, gamma)
                for key in (t, f"{t}/{module_kind(name)}"):
                    row = acc[space][key]
                    row[0] += tot
                    row[1] += hi
                    row[2] += lo

    def frac(row: list[float]) -> dict[str, float]:
        return {"top": row[1] / row[0], "bottom": row[2] / row[0], "kept_cosine": ((row[0] - row[1] - row[2]) / row[0]) ** 0.5}

    per_task = {t: {sp: frac(acc[sp][t]) for sp in acc} for t in tasks}
    per_kind = {k: {sp: frac(acc[sp][k]) for sp in acc} for k in acc["dense"] if "/" in k}
    return {"tasks": tasks, "tensors": len(names), "density": density, "gamma": gamma,
            "core_entries": {k: sorted(set(v)) for k, v in sizes.items()},
            "per_task": per_task, "per_task_kind": per_kind}


def markdown(r: dict[str, Any]) -> str:
    """One row per task: energy removed by the top / bottom cut, dense vs core."""
    lines = [
        f"| task | top {r['gamma']:g} cut, dense | top cut, core | bottom cut, dense | bottom cut, core | "
        "cosine kept, dense | cosine kept, core |",
        "|---|---|---|---|---|---|---|",
    ]
    for t in r["tasks"]:
        d, c = r["per_task"][t]["dense"], r["per_task"][t]["core"]
        lines.append(f"| {t} | {d['top']:.1%} | {c['top']:.1%} | {d['bottom']:.2%} | {c['bottom']:.2%} | "
                     f"{d['kept_cosine']:.3f} | {c['kept_cosine']:.3f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--collection", default=str(RESULTS / "collection-v2-own"))
    p.add_argument("--density", type=float, default=0.9)
    p.add_argument("--gamma", type=float, default=0.01)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    cdir = Path(args.collection)
    coll = json.loads((cdir / "collection.json").read_text())
    t0 = time.perf_counter()
    vectors = {t: TaskVector.load(cdir / info["vector"]) for t, info in coll["tasks"].items()}
    r = measure(vectors, args.density, args.gamma)
    r["collection"] = str(cdir.relative_to(RESULTS.parent.parent)) if cdir.is_relative_to(RESULTS.parent.parent) else str(cdir)
    r["seconds"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(r, indent=1) if args.json else markdown(r))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
