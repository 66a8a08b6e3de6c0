"""Benchmark: k-shot evaluation with one shared set of demonstrations, KV prefix reused, vs zero-shot.

Usage:
    python benchmarks/bench_kshot.py [--model smollm2-135m] [--task sst2] [--shots 10] \
        [--check-limit 100] [--json-out benchmarks/results/kshot.json]

In one process, on the task's whole eval split (SST-2 validation: 872 examples):
(a) zero-shot;
(b) ``--shots``-shot with one seeded set of demonstrations (``--demos shared``), the shared prefix
    encoded once and its KV cache reused (the default for shared demonstrations);
(c) the same prompts without reuse on the first ``--check-limit`` examples (every prompt
    re-encodes its demonstrations: the old cost), to check that the predictions are equal
    and to time the plain path; its full-split time is extrapolated linearly (marked).
Reported: seconds, examples/s, accuracy with its 95% Wilson interval, the ratio (b) / (a),
and how many of the checked predictions agree between (b) and (c).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe, machine_info  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--task", default="sst2")
    p.add_argument("--shots", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--check-limit", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--json-out", type=Path, default=Path("benchmarks/results/kshot.json"))
    args = p.parse_args(argv)

    from taskvec.eval import evaluate
    from taskvec.models import load_model
    from taskvec.tasks import get_task

    model, tok = load_model(args.model)
    task = get_task(args.task)
    common = {"batch_size": args.batch_size, "progress": False, "seed": args.seed}
    evaluate(model, tok, task, limit=8, **common)  # warm-up
    runs = {}
    t0 = time.perf_counter()
    zero = evaluate(model, tok, task, **common)
    runs["zero-shot"] = (zero, time.perf_counter() - t0)
    t0 = time.perf_counter()
    shared = evaluate(model, tok, task, shots=args.shots, demos="shared", **common)
    runs[f"{args.shots}-shot shared, prefix reused"] = (shared, time.perf_counter() - t0)
    t0 = time.perf_counter()
    plain = evaluate(model, tok, task, shots=args.shots, demos="shared", reuse_prefix=False,
                     limit=args.check_limit, **common)
    plain_s = time.perf_counter() - t0
    agree = sum(a == b for a, b in zip(shared.predictions[: plain.n], plain.predictions))
    rows = []
    for name, (r, s) in runs.items():
        lo, hi = r.ci95
        rows.append({"run": name, "n": r.n, "seconds": round(s, 2), "examples_per_s": round(r.n / s, 2),
                     "accuracy": r.accuracy, "ci95": [lo, hi]})
    rows.append({"run": f"{args.shots}-shot shared, plain (first {plain.n})", "n": plain.n,
                 "seconds": round(plain_s, 2), "examples_per_s": round(plain.n / plain_s, 2),
                 "accuracy": plain.accuracy, "ci95": list(plain.ci95),
                 "full_split_seconds_extrapolated": round(plain_s * zero.n / plain.n, 1)})
    ratio = runs[f"{args.shots}-shot shared, prefix reused"][1] / runs["zero-shot"][1]
    info = machine_info()
    out = {"benchmark": "k-shot evaluation with shared-prefix KV reuse", "date": time.strftime("%Y-%m-%d"),
           "machine": info, "machine_line": describe(info), "model": args.model, "task": args.task,
           "split": task.eval_split, "shots": args.shots, "rows": rows, "ratio_kshot_to_zero_shot": round(ratio, 3),
           "checked_predictions": plain.n, "agreeing_predictions": agree}
    args.json_out.parent.mkdir(parents=True, exist_ok=True)
    args.json_out.write_text(json.dumps(out, indent=2) + "\n")
    print(describe(info))
    print("| run | n | seconds | examples/s | accuracy [95% CI] |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['run']} | {r['n']} | {r['seconds']} | {r['examples_per_s']} | "
              f"{r['accuracy']:.3f} [{r['ci95'][0]:.3f}, {r['ci95'][1]:.3f}] |")
    print(f"\n{args.shots}-shot / zero-shot time: {ratio:.2f}x; predictions equal to the plain path: {agree}/{plain.n}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
