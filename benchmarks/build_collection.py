"""Build a collection of LoRA task vectors, one per task: resumable and cached.

Usage:
    python benchmarks/build_collection.py --out runs/collection \
        [--tasks sst2,mnli,qnli,qqp,rte,mrpc,cola,trec,ag_news] [--steps 150] [--batch-size 8] \
        [--lr 1e-3] [--lora-r 8] [--lora-alpha 16] [--warmup-steps 0] [--schedule constant] \
        [--eval-limit 500] [--model smollm2-135m]

For each task: LoRA fine-tuning on the train split *minus a held-out slice* (the last
``--holdout`` examples of a seeded permutation, split ``train_fit``; the slice is where
``taskvec search`` chooses merging coefficients), extraction of the exact low-rank vector
(``<out>/<task>.safetensors``), and evaluation of the fine-tuned model and of the zero-shot base
model on the task's eval split (``<out>/<task>.json``). The base model is loaded once; the LoRA
modules are removed after each task.

Caching: a task is skipped when its vector and JSON exist with the same training recipe and
the same evaluation settings; with the same recipe but other evaluation settings only the
evaluations are redone (the saved vector is applied in memory). An interrupted fine-tuning run
(``<out>/runs/<task>/``) resumes from its last checkpoint; a finished but unevaluated one is
evaluated from its adapter. A run directory made with another recipe is deleted and redone.
``<out>/collection.json`` summarises every task (the denominators of normalized accuracy).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from taskvec.eval import evaluate
from taskvec.weights.finetune import DEFAULT_TARGETS, finetune, unload_adapters

ALL_TASKS = ("sst2", "mnli", "qnli", "qqp", "rte", "mrpc", "cola", "trec", "ag_news")
Log = Callable[[str], None]


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object from ``path``, or None if missing or unreadable (a cut-off write)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def load_collection(cdir: Path, prog: str) -> dict[str, Any] | None:
    """``<cdir>/collection.json``, or None after printing the one-line error of script ``prog``."""
    coll = read_json(Path(cdir) / "collection.json")
    if coll is None:
        print(f"{prog}: error: {cdir}/collection.json not found: run build_collection.py first.", file=sys.stderr)
    return coll


def mean(xs: list[float | None]) -> float | None:
    """Mean of the values that are not None (None if there are none)."""
    vals = [x for x in xs if x is not None]
    return sum(vals) / len(vals) if vals else None


def write_json(path: Path, data: dict[str, Any]) -> None:
    from taskvec.io_utils import atomic_path

    with atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def make_recipe(model: str, steps: int = 150, batch_size: int = 8, lr: float = 1e-3, lora_r: int = 8,
                lora_alpha: float = 16, warmup_steps: int = 0, seed: int = 0, max_length: int = 128,
                holdout: int = 200, holdout_seed: int = 0, schedule: str = "constant",
                eval_every: int = 0, patience: int = 0) -> dict[str, Any]:
    """The training recipe that identifies a cached vector (JSON-comparable).

    Early stopping (``eval_every`` > 0) adds its two keys; without it the recipe is the one of
    collections built before the option existed, so they stay cached.
    """
    early = {"eval_every": eval_every, "patience": patience} if eval_every else {}
    return early | {"model": model, "steps": steps, "batch_size": batch_size, "lr": lr, "lora_r": lora_r,
            "lora_alpha": lora_alpha, "warmup_steps": warmup_steps, "schedule": schedule, "seed": seed,
            "max_length": max_length,
            "targets": list(DEFAULT_TARGETS), "holdout": holdout, "holdout_seed": holdout_seed}


def build_task(model: Any, tok: Any, name: str, out: Path, recipe: dict[str, Any], eval_limit: int | None,
               base_fingerprint: str, progress: bool = True, log: Log = print) -> tuple[dict[str, Any], Any]:
    """Make (or reuse) one task's vector and accuracies; returns ``(row, base model)``."""
    from taskvec.tasks import get_task
    from taskvec.weights import TaskVector
    from taskvec.weights.search import FIT_SPLIT, applied, with_holdout

    task = with_holdout(get_task(name), recipe["holdout"], recipe["holdout_seed"])
    json_path, vec_path = out / f"{name}.json", out / f"{name}.safetensors"
    ev = {"split": task.eval_split, "limit": eval_limit}
    old = read_json(json_path)
    if old and vec_path.exists() and old.get("recipe") == recipe:
        if old.get("tensors_sha256") not in (None, tensors_sha256(vec_path)):
            from taskvec.errors import UserInputError

            raise UserInputError(f"{vec_path} is not the vector {json_path.name} was measured with "
                                 "(its tensors' sha256 differs): restore the file, or delete both to "
                                 "rebuild the task.")
        if old.get("eval") == ev:
            log(f"{name}: cached ({vec_path})")
            return old | {"status": "cached"}, model
        log(f"{name}: same recipe, new evaluation settings: re-evaluating the saved vector")
        vec = TaskVector.load(vec_path)
        zs = evaluate(model, tok, task, limit=eval_limit, progress=progress)
        with applied(model, vec):
            ft = evaluate(model, tok, task, limit=eval_limit, progress=progress)
        row = _row(task, zs, ft, old.get("train_seconds"), recipe, ev, vec_path)
        write_json(json_path, row)
        return row | {"status": "re-evaluated"}, model

    # A committed row whose vector file is gone (a new machine: vectors are rebuilt, not downloaded)
    # is kept to check that the rebuild reproduces it.
    previous = old if old and old.get("recipe") == recipe and old.get("eval") == ev else None
    run_dir = out / "runs" / name
    marker = run_dir / "collection_recipe.json"
    if run_dir.exists() and read_json(marker) != recipe:
        log(f"{name}: {run_dir} was made with another recipe: starting over")
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if not marker.exists():
        write_json(marker, recipe)
    log(f"{name}: zero-shot base on {task.eval_split}")
    zs = evaluate(model, tok, task, limit=eval_limit, progress=progress)
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    if (run_dir / "recipe.json").exists():
        log(f"{name}: fine-tuning already finished in {run_dir}: evaluating its adapter")
        from peft import PeftModel

        ft_model = PeftModel.from_pretrained(model, str(run_dir / "adapter"))
        unload = partial(unload_adapters, ft_model)
        train_seconds = (read_json(run_dir / "recipe.json") or {}).get("seconds")
    else:
        resuming = (run_dir / "checkpoints").exists()
        log(f"{name}: LoRA fine-tuning, {recipe['steps']} steps x batch {recipe['batch_size']}"
            + (" (resuming)" if resuming else ""))
        res = finetune(
            model, tok, task, run_dir, steps=recipe["steps"], batch_size=recipe["batch_size"], lr=recipe["lr"],
            lora_r=recipe["lora_r"], lora_alpha=recipe["lora_alpha"], targets=recipe["targets"],
            warmup_steps=recipe["warmup_steps"], schedule=recipe["schedule"], seed=recipe["seed"],
            max_length=recipe["max_length"], eval_every=recipe.get("eval_every", 0),
            patience=recipe.get("patience", 0), holdout=recipe["holdout"] if recipe.get("eval_every") else 0,
            holdout_seed=recipe["holdout_seed"], split=FIT_SPLIT, resume=True, progress=progress,
        )
        ft_model, unload, train_seconds = res.model, res.unload, res.seconds
    try:
        log(f"{name}: fine-tuned model on {task.eval_split}")
        ft = evaluate(ft_model, tok, task, limit=eval_limit, progress=progress)
    finally:
        model = unload()
        for n, p in model.named_parameters():
            if n in flags:
                p.requires_grad_(flags[n])
        model.eval()
    ft_recipe = read_json(run_dir / "recipe.json") or {}
    meta = {"base_model": recipe["model"], "base_fingerprint": base_fingerprint, "task": name,
            "recipe": ft_recipe | {"holdout": recipe["holdout"], "holdout_seed": recipe["holdout_seed"]}}
    TaskVector.from_peft(run_dir / "adapter", metadata=meta).save(vec_path)
    row = _row(task, zs, ft, train_seconds, recipe, ev, vec_path)
    if ft_recipe.get("early_stopping"):
        es = ft_recipe["early_stopping"]
        row["early_stopping"] = {k: es[k] for k in ("best_step", "best_accuracy", "last_step", "stopped_early")}
    if previous is not None:
        row["rebuild"] = compare_rebuild(previous, row)  # with this run's times
        if row["rebuild"]["reproduced"]:  # the same results: the row keeps the times it reported
            row |= {k: previous.get(k) for k in ("train_seconds", "eval_seconds")}
        log(f"{name}: rebuilt; " + ("reproduces the previous build" if row["rebuild"]["reproduced"] else
                                     f"DIFFERS from the previous build in {', '.join(row['rebuild']['differs'])}"))
    write_json(json_path, row)
    return row | {"status": "trained"}, model


REPRODUCED_FIELDS = ("n", "finetuned_accuracy", "zero_shot_accuracy", "vs_zero_shot", "early_stopping")


def compare_rebuild(previous: dict[str, Any], row: dict[str, Any]) -> dict[str, Any]:
    """Whether a rebuilt task gives the previous build's results exactly (accuracies, McNemar
    counts, early-stopping step and held-out accuracy); the vector's hash is compared when both
    rows have one."""
    fields = REPRODUCED_FIELDS + (("tensors_sha256",) if "tensors_sha256" in previous else ())
    differs = [f for f in fields if previous.get(f) != row.get(f)]
    return {"reproduced": not differs, "differs": differs,
            "previous": {f: previous.get(f) for f in differs},
            "train_seconds": row.get("train_seconds"), "eval_seconds": row.get("eval_seconds")}


def tensors_sha256(path: Path) -> str:
    """SHA-256 of a safetensors file's tensors (names, dtypes, shapes, bytes), not of its metadata
    (which records the training time): equal for two bit-identical vectors."""
    import torch
    from safetensors.torch import load_file

    h = hashlib.sha256()
    for name, t in sorted(load_file(str(path)).items()):
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _row(task: Any, zs: Any, ft: Any, train_seconds: float | None, recipe: dict[str, Any],
         ev: dict[str, Any], vec_path: Path) -> dict[str, Any]:
    """One task's accuracies with 95% Wilson intervals and the exact McNemar test of fine-tuned
    vs zero-shot on the same examples (``above_zero_shot``: better and p < 0.05)."""
    from taskvec.eval.stats import mcnemar, wilson

    t = mcnemar(ft.correct, zs.correct)
    return {"task": task.name, "split": task.eval_split, "n": ft.n, "finetuned_accuracy": ft.accuracy,
            "zero_shot_accuracy": zs.accuracy, "finetuned_ci95": list(wilson(sum(ft.correct), ft.n)),
            "zero_shot_ci95": list(wilson(sum(zs.correct), zs.n)),
            "vs_zero_shot": {"only_finetuned": t.only_a, "only_zero_shot": t.only_b, "p_value": t.p_value,
                             "above_zero_shot": t.significant and ft.accuracy > zs.accuracy},
            "train_seconds": train_seconds, "recipe": recipe, "eval": ev,
            "vector": vec_path.name, "tensors_sha256": tensors_sha256(vec_path),
            "eval_seconds": round(zs.seconds + ft.seconds, 3)}


def build(model: Any, tok: Any, tasks: list[str], out: Path, recipe: dict[str, Any], eval_limit: int | None,
          base_fingerprint: str, progress: bool = True, log: Log = print) -> dict[str, Any]:
    """Every task in turn, then ``<out>/collection.json``; returns the summary."""
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    rows: dict[str, dict[str, Any]] = {}
    for name in tasks:
        t_task = time.perf_counter()
        row, model = build_task(model, tok, name, out, recipe, eval_limit, base_fingerprint, progress, log)
        row["seconds_this_run"] = round(time.perf_counter() - t_task, 1)
        rows[name] = row
    summary = {
        "model": recipe["model"], "base_fingerprint": base_fingerprint, "recipe": recipe,
        "eval_limit": eval_limit, "holdout": {"n": recipe["holdout"], "seed": recipe["holdout_seed"]},
        "tasks": {k: {f: r.get(f) for f in ("split", "n", "finetuned_accuracy", "zero_shot_accuracy",
                                             "finetuned_ci95", "zero_shot_ci95", "vs_zero_shot", "early_stopping",
                                             "train_seconds", "vector", "tensors_sha256", "rebuild", "status",
                                             "seconds_this_run")}
                  for k, r in rows.items()},
        "train_seconds_total": round(sum(r.get("train_seconds") or 0.0 for r in rows.values()), 1),
        "seconds_this_run": round(time.perf_counter() - t0, 1),
    }
    write_json(out / "collection.json", summary)
    return summary


def print_summary(summary: dict[str, Any]) -> None:
    from taskvec.cli.output import print_table

    rows = [[k, r["split"], r["n"], r["zero_shot_accuracy"], r["finetuned_accuracy"],
             f"{r['train_seconds'] or 0:.0f}s", r["status"]] for k, r in summary["tasks"].items()]
    print_table(rows, ["task", "eval split", "n", "zero-shot", "fine-tuned", "train", "status"],
                title=f"collection of {len(rows)} vectors on {summary['model']}")
    print(f"\ntraining time {summary['train_seconds_total']:.0f}s in all; this run {summary['seconds_this_run']:.0f}s")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="collection directory (e.g. runs/collection)")
    p.add_argument("--tasks", default=",".join(ALL_TASKS), help="comma-separated tasks")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--device", default="cpu")
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--lora-r", type=int, default=8)
    p.add_argument("--lora-alpha", type=float, default=16)
    p.add_argument("--warmup-steps", type=int, default=0)
    p.add_argument("--schedule", default="constant", choices=("constant", "linear"),
                   help="learning rate after warmup: constant, or linear decay to 0 at --steps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--holdout", type=int, default=200, help="held-out train examples per task for coefficient search")
    p.add_argument("--eval-limit", type=int, default=500, help="eval examples per task (0: all)")
    p.add_argument("--eval-every", type=int, default=0,
                   help="early stopping: score the held-out slice every K steps, keep the best step (0: off)")
    p.add_argument("--patience", type=int, default=0, help="stop after P evaluations without improvement")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--json", action="store_true")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from taskvec.errors import TaskVecError, UserInputError
    from taskvec.models import fingerprint, load_model, model_dir
    from taskvec.tasks import get_task
    from taskvec.weights.finetune import check_finetune_args

    args = parse_args(argv)
    try:
        tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
        if not tasks:
            raise UserInputError("--tasks is empty.")
        for t in tasks:
            get_task(t)
        check_finetune_args(args.steps, args.batch_size, args.lr, args.lora_r, args.lora_alpha, 128, 50,
                            args.warmup_steps)
        if args.holdout < 1 or args.eval_limit < 0:
            raise UserInputError("--holdout must be >= 1 and --eval-limit >= 0.")
        recipe = make_recipe(args.model, args.steps, args.batch_size, args.lr, args.lora_r, args.lora_alpha,
                             args.warmup_steps, args.seed, holdout=args.holdout, schedule=args.schedule,
                             eval_every=args.eval_every, patience=args.patience)
        model, tok = load_model(args.model, device=args.device)
        fp = fingerprint(model_dir(args.model))
        log = (lambda s: print(s, file=sys.stderr)) if args.json else print
        summary = build(model, tok, tasks, Path(args.out), recipe, args.eval_limit or None, fp,
                        progress=not args.no_progress, log=log)
    except TaskVecError as exc:
        print(f"build_collection: error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print_summary(summary)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
