"""lm-eval's ``taskvec`` model on the embedded model: the same predictions as ``taskvec eval``.

Usage (in the lm-eval environment, ``make test-lm-eval`` builds it):
    .venv-lmeval/bin/python benchmarks/lm_eval_check.py [--vector runs/collection/sst2.safetensors] \
        [--limit 200] [--out benchmarks/results/lm_eval_check.json]

SST-2 validation (first ``--limit`` examples) exported with ``write_lm_eval_task``, evaluated
offline by ``lm_eval.simple_evaluate`` with ``TaskvecLM`` (base + vector), and by
``taskvec.eval.evaluate`` on the same model and examples; the per-example correctness lists
are compared.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe, machine_info  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--vector", default=None)
    p.add_argument("--limit", type=int, default=200)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/lm_eval_check.json"))
    args = p.parse_args(argv)
    for k in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"):
        os.environ[k] = "1"
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    from taskvec.eval import evaluate
    from taskvec.integrations.lm_eval_harness import TaskvecLM
    from taskvec.integrations.lm_eval_task import write_lm_eval_task
    from taskvec.tasks import get_task

    task = get_task("sst2")
    lm = TaskvecLM(pretrained=args.model, vector=args.vector)
    t0 = time.perf_counter()
    ours = evaluate(lm.model, lm.tok, task, limit=args.limit, progress=False)
    t_ours = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        y = write_lm_eval_task(task, tmp, limit=args.limit)
        t0 = time.perf_counter()
        res = simple_evaluate(model=lm, tasks=[y.stem], task_manager=TaskManager(include_path=tmp), log_samples=True,
                              bootstrap_iters=0)
        t_lm = time.perf_counter() - t0
    samples = sorted(res["samples"][y.stem], key=lambda s: s["doc_id"])
    theirs = [bool(s["acc"]) for s in samples]
    info = machine_info()
    out = {"date": time.strftime("%Y-%m-%d"), "machine_line": describe(info), "model": args.model,
           "vector": args.vector, "task": "sst2", "split": task.eval_split, "n": ours.n,
           "taskvec_accuracy": ours.accuracy, "taskvec_ci95": list(ours.ci95),
           "lm_eval_accuracy": res["results"][y.stem]["acc,none"],
           "identical_correctness": sum(a == b for a, b in zip(ours.correct, theirs)), "compared": len(theirs),
           "seconds": {"taskvec": round(t_ours, 1), "lm_eval": round(t_lm, 1)}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))
    return 0 if out["identical_correctness"] == out["compared"] == ours.n else 1


if __name__ == "__main__":
    raise SystemExit(main())
