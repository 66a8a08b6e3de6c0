"""``taskvec search | negate | compare``: task arithmetic on a collection of task vectors.

See docs/task_arithmetic.md for the protocols (which split chooses the coefficient, the 95%
control rule of negation, the definitions of cosine similarity and sign conflicts).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from taskvec.cli.common import (
    add_json,
    add_model,
    add_progress,
    new_command,
    print_json,
    print_table,
    show_progress,
)
from taskvec.errors import UserInputError

DEFAULT_GRID = "0.1:1.0:0.1"
DEFAULT_NEG_GRID = "0.1:2.0:0.1"


def register(sub: Any) -> None:
    _register_search(sub)
    _register_negate(sub)
    _register_compare(sub)


def _add_selection(p: argparse.ArgumentParser, grid: str) -> None:
    from taskvec.weights.search import DEFAULT_HOLDOUT

    p.add_argument("--grid", default=grid, help=f"coefficients: start:stop:step (stop included) or a,b,c (default {grid})")
    p.add_argument("--limit", type=int, default=None, help="at most N search examples per task")
    p.add_argument("--split", default=None,
                   help="choose on this named split instead of the held-out train slice (never the eval split)")
    p.add_argument("--holdout", type=int, default=DEFAULT_HOLDOUT,
                   help=f"size of the held-out train slice (default {DEFAULT_HOLDOUT}; as in build_collection)")
    p.add_argument("--seed", type=int, default=0, help="seed of the held-out slice (default 0)")
    p.add_argument("--batch-size", type=int, default=16, help="evaluation batch size (default 16)")
    p.add_argument("--force", action="store_true", help="use vectors whose base fingerprint differs from the model")


def _register_search(sub: Any) -> None:
    p = new_command(sub, "search", "choose the merging coefficient of task vectors on held-out data",
                    description="For each coefficient in --grid, merge --vectors with --method, apply the "
                    "result in memory and score every task on held-out examples (a train slice, never the "
                    "eval split); report the best mean accuracy. See docs/task_arithmetic.md.")
    add_model(p)
    p.add_argument("--vectors", nargs="+", required=True, metavar="FILE",
                   help="vector files, or basis files (all tasks; FILE#TASK for one)")
    p.add_argument("--method", default="task_arithmetic", help="merge method (default task_arithmetic)")
    p.add_argument("--tasks", nargs="+", default=None, metavar="TASK",
                   help="tasks to score (default: the vectors' recorded tasks)")
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                   help="merge parameter other than lambda, repeatable (e.g. density=0.2)")
    p.add_argument("--per-task", action="store_true", help="then a coordinate search of per-vector coefficients")
    p.add_argument("--passes", type=int, default=1, help="coordinate-search rounds with --per-task (default 1)")
    _add_selection(p, DEFAULT_GRID)
    p.add_argument("--out", default=None, help="write the best merged vector here (.safetensors)")
    p.add_argument("--results", default=None, help="write the full search result (every candidate) as JSON")
    add_progress(p)
    add_json(p)
    p.set_defaults(func=run_search)


def _register_negate(sub: Any) -> None:
    p = new_command(sub, "negate", "forget a task: subtract c x vector, keeping a control task at 95%",
                    description="Apply -c x --vector for c in --grid; choose the largest c whose control "
                    "accuracy (held-out train slice) stays >= 95% of the base model's, then report both "
                    "tasks on their eval splits. See docs/task_arithmetic.md.")
    add_model(p)
    p.add_argument("--vector", required=True, help="vector file, or BASIS#TASK")
    p.add_argument("--target", required=True, help="task to forget")
    p.add_argument("--control", required=True, help="task to keep")
    p.add_argument("--threshold", type=float, default=0.95, help="kept fraction of base control accuracy (0.95)")
    p.add_argument("--eval-limit", type=int, default=None, help="at most N eval examples per task (default: --limit)")
    _add_selection(p, DEFAULT_NEG_GRID)
    add_progress(p)
    add_json(p)
    p.set_defaults(func=run_negate)


def _register_compare(sub: Any) -> None:
    p = new_command(sub, "compare", "cosine similarities and sign conflicts of task vectors")
    p.add_argument("vectors", nargs="+", metavar="VECTOR", help="vector files or basis files (FILE#TASK for one task)")
    p.add_argument("--plot", default=None, help="write the cosine matrix as a heatmap (.png or .html)")
    p.add_argument("--no-signs", action="store_true", help="skip the sign-conflict pass (cosines only)")
    add_json(p)
    add_progress(p)  # accepted for consistency; compare shows no bar
    p.set_defaults(func=run_compare)


# -- helpers --------------------------------------------------------------------------------
def _positive(name: str, value: int | None) -> None:
    if value is not None and value < 1:
        raise UserInputError(f"--{name} must be a positive integer, got {value}.")


def load_vectors(paths: list[str]) -> tuple[list[Any], list[str]]:
    """Vectors from files or bases (a basis gives all its tasks), with labels."""
    from taskvec.basis import load_basis_or_vector

    vectors, labels = [], []
    for path in paths:
        got = load_basis_or_vector(path)
        for i, v in enumerate(got):
            vectors.append(v)
            task = v.metadata.get("task")
            labels.append(str(task) if task else (Path(path).stem if len(got) == 1 else f"{path}#{i}"))
    return vectors, labels


def _one_vector(path: str) -> Any:
    from taskvec.basis import load_one_vector

    return load_one_vector(path)


def _load_model(args: argparse.Namespace, vectors: list[Any]) -> tuple[Any, Any]:
    from taskvec.models import load_model
    from taskvec.models.loading import check_dtype_device

    check_dtype_device(args.dtype, args.device)
    model, tok = load_model(args.model, dtype=args.dtype, device=args.device)
    for v in vectors:
        v.check_base(model, force=args.force)
    return model, tok


def _check_selection(args: argparse.Namespace) -> list[float]:
    from taskvec.weights.search import parse_grid

    _positive("limit", args.limit)
    _positive("holdout", args.holdout)
    _positive("batch-size", args.batch_size)
    return parse_grid(args.grid)


def _fmt_acc(v: float | None) -> str:
    return "-" if v is None else f"{v:.4f}"


def _diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


# -- search -------------------------------------------------------------------------------
def run_search(args: argparse.Namespace) -> int:
    from taskvec.cli.cmd_merge import parse_params
    from taskvec.io_utils import atomic_path, check_writable
    from taskvec.tasks import get_task
    from taskvec.weights.merge import get_method
    from taskvec.weights.search import check_no_lambda, merged_at, search_coefficients

    _check_selection(args)
    _positive("passes", args.passes)
    method = get_method(args.method)
    params = check_no_lambda(parse_params(args.param))
    for path in (args.out, args.results):
        if path:
            check_writable(path, tuple(args.vectors))
    vectors, labels = load_vectors(args.vectors)
    method.validate(None, params, len(vectors))
    names = args.tasks or [v.metadata.get("task") for v in vectors]
    if not all(names):
        raise UserInputError("some vectors record no task: name the tasks to score with --tasks.")
    tasks = [get_task(str(n)) for n in dict.fromkeys(names)]
    model, tok = _load_model(args, vectors)
    res = search_coefficients(
        model, tok, vectors, tasks, method=method.name, grid=args.grid, params=params, split=args.split,
        limit=args.limit, holdout=args.holdout, seed=args.seed, per_task=args.per_task, passes=args.passes,
        batch_size=args.batch_size, progress=show_progress(args),
    )
    out = res.to_dict() | {"model": str(args.model), "vectors": labels, "inputs": list(args.vectors)}
    if args.out:
        best = merged_at(vectors, method.name, params, res.best)
        best.metadata["search"] = {"best": res.best.to_dict(), "grid": res.grid, "splits": res.splits, "n": res.n}
        out["out"] = str(best.save(args.out))
    if args.results:
        with atomic_path(args.results) as tmp:
            Path(tmp).write_text(json.dumps(out, indent=2), encoding="utf-8")
    if args.json:
        print_json(out)
        return 0
    coefs = (lambda c: [" ".join(f"{x:g}" for x in c.coefficients)]) if args.per_task else (lambda c: [])
    rows = [[c.stage, f"{c.lam:g}", *coefs(c), *[_fmt_acc(c.accuracy[t]) for t in res.tasks], f"{c.mean:.4f}",
             "*" if c is res.best else ""] for c in res.candidates]
    print_table(rows, ["stage", "lambda", *(["coefficients"] if args.per_task else []), *res.tasks, "mean", "best"],
                title=f"{res.method} on {', '.join(f'{t} ({res.splits[t]}, n={res.n[t]})' for t in res.tasks)}")
    b = res.best
    print(f"\nbest: lambda={b.lam:g}" + (f", coefficients={b.coefficients}" if args.per_task else "")
          + f", mean search accuracy {b.mean:.4f} ({res.seconds:.0f}s)")
    if args.out:
        print(f"wrote {out['out']}")
    return 0


# -- negate -----------------------------------------------------------------------------------
def run_negate(args: argparse.Namespace) -> int:
    from taskvec.tasks import get_task
    from taskvec.weights.negate import negate

    grid = _check_selection(args)
    _positive("eval-limit", args.eval_limit)
    if any(c <= 0 for c in grid):
        raise UserInputError("negation coefficients must be positive (the vector is subtracted); fix --grid.")
    if not (math.isfinite(args.threshold) and 0 < args.threshold <= 1):
        raise UserInputError(f"--threshold must be in (0, 1], got {args.threshold}.")
    target, control = get_task(args.target), get_task(args.control)
    if target.name == control.name:
        raise UserInputError("--target and --control are the same task: pick a different control.")
    vector = _one_vector(args.vector)
    model, tok = _load_model(args, [vector])
    res = negate(model, tok, vector, target, control, grid, args.limit, eval_limit=args.eval_limit,
                 threshold=args.threshold, split=args.split, holdout=args.holdout, seed=args.seed,
                 batch_size=args.batch_size, progress=show_progress(args))
    out = res.to_dict() | {"model": str(args.model), "vector": args.vector}
    if args.json:
        print_json(out)
        return 0
    sel = res.select_split
    print_table(
        [[f"{r['c']:g}", _fmt_acc(r["target"]), _fmt_acc(r["control"]),
          "*" if r["c"] == res.chosen else ""] for r in res.curve],
        ["c", f"{res.target} ({sel[res.target]})", f"{res.control} ({sel[res.control]})", "chosen"],
        title=f"base: {res.target} {res.base_select['target']:.4f}, {res.control} {res.base_select['control']:.4f}; "
              f"rule: control >= {res.threshold:g} x base",
    )
    print()
    if res.chosen is None:
        print(f"no coefficient keeps {res.control} at {res.threshold:.0%} of its base accuracy; "
              "try a grid with smaller values.")
        return 0
    ev = res.eval_split
    print_table(
        [["base", _fmt_acc(res.base_target), _fmt_acc(res.base_control)],
         [f"base - {res.chosen:g} x vector", _fmt_acc(res.target_at_c), _fmt_acc(res.control_at_c)],
         ["change", _fmt_acc(_diff(res.target_at_c, res.base_target)),
          _fmt_acc(_diff(res.control_at_c, res.base_control))]],
        ["model", f"{res.target} ({ev.get(res.target)}, n={res.eval_n.get(res.target)})",
         f"{res.control} ({ev.get(res.control)}, n={res.eval_n.get(res.control)})"],
    )
    return 0


# -- compare ----------------------------------------------------------------------------------
def run_compare(args: argparse.Namespace) -> int:
    from taskvec.weights.compare import compare

    if args.plot and Path(args.plot).suffix not in (".png", ".html"):
        raise UserInputError(f"--plot {args.plot}: give a .png or .html path.")
    if args.plot:
        from taskvec.io_utils import check_writable

        check_writable(args.plot)
    vectors, labels = load_vectors(args.vectors)
    res = compare(vectors, labels, signs=not args.no_signs)
    out = res.to_dict()
    if args.plot:
        out["plot"] = _plot(res, Path(args.plot))
    if args.json:
        print_json(out)
        return 0
    print_table([[lab, f"{n:.4g}", *[f"{c:+.3f}" for c in row]] for lab, n, row in zip(res.labels, res.norms, res.cosine)],
                ["vector", "norm", *res.labels], title="cosine similarity")
    if not args.no_signs:
        print()
        print_table([[lab, *["-" if c is None else f"{c:.3f}" for c in row]]
                     for lab, row in zip(res.labels, res.sign_conflict)],
                    ["vector", *res.labels], title="pairwise sign conflicts (opposite signs / both nonzero)")
        rate = "-" if res.conflict_rate is None else f"{res.conflict_rate:.4f}"
        print(f"\noverall sign-conflict rate: {rate} ({res.overlap_entries:,} of {res.entries:,} entries "
              "have >= 2 nonzero vectors)")
    if args.plot:
        print(f"wrote {out['plot']}")
    return 0


def _plot(res: Any, path: Path) -> str:
    import numpy as np

    from taskvec.eval.report import heatmap_html, heatmap_png
    from taskvec.io_utils import atomic_path

    mat = np.array(res.cosine, dtype=float)
    title = "task vector cosine similarity"
    if path.suffix == ".png":
        heatmap_png(mat, res.labels, res.labels, path, title=title, cbar="cosine", cmap="coolwarm")
    else:
        with atomic_path(path) as tmp:
            Path(tmp).write_text(heatmap_html(mat, res.labels, res.labels, title=title), encoding="utf-8")
    return str(path)
