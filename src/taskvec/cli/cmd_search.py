"""``taskvec search``: choose the merging coefficient of task vectors on held-out data
(docs/task_arithmetic.md)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from taskvec.cli.coefficient_opts import (
    DEFAULT_GRID,
    add_selection,
    check_positive_opt,
    check_selection,
    fmt_acc,
    load_model_for,
    load_vectors,
    resolve_holdout,
)
from taskvec.cli.options import add_json, add_model, add_progress, new_command, show_progress
from taskvec.cli.output import print_json, print_table
from taskvec.errors import UserInputError


def register(sub: Any) -> None:
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
    add_selection(p, DEFAULT_GRID)
    p.add_argument("--out", default=None, help="write the best merged vector here (.safetensors)")
    p.add_argument("--results", default=None, help="write the full search result (every candidate) as JSON")
    p.add_argument("--checkpoint", default=None, metavar="FILE",
                   help="append every scored setting to FILE (JSON Lines) and reuse it when the same search "
                        "is run again: an interrupted search resumes where it stopped")
    add_progress(p)
    add_json(p)
    p.set_defaults(func=run_search)


def run_search(args: argparse.Namespace) -> int:
    from taskvec.cli.options import parse_params
    from taskvec.io_utils import atomic_path, check_writable
    from taskvec.tasks import get_task
    from taskvec.weights.merge import get_method
    from taskvec.weights.search import check_no_lambda, edge_note, merged_at, search_coefficients

    check_selection(args)
    check_positive_opt("passes", args.passes)
    method = get_method(args.method)
    params = check_no_lambda(parse_params(args.param))
    for path in (args.out, args.results, args.checkpoint):
        if path:
            check_writable(path, tuple(args.vectors))
    vectors, labels = load_vectors(args.vectors)
    method.validate(None, params, len(vectors))
    names = args.tasks or [v.metadata.get("task") for v in vectors]
    if not all(names):
        raise UserInputError("some vectors record no task: name the tasks to score with --tasks.")
    tasks = [get_task(str(n)) for n in dict.fromkeys(names)]
    resolve_holdout(args, vectors)
    model, tok = load_model_for(args, vectors)
    res = search_coefficients(
        model, tok, vectors, tasks, method=method.name, grid=args.grid, params=params, split=args.split,
        limit=args.limit, holdout=args.holdout, seed=args.seed, per_task=args.per_task, passes=args.passes,
        batch_size=args.batch_size, progress=show_progress(args), allow_eval_split=args.allow_eval_split,
        log=args.checkpoint,
    )
    out = res.to_dict() | {"model": str(args.model), "vectors": labels, "inputs": list(args.vectors)}
    if args.out:
        best = merged_at(vectors, method.name, params, res.best)
        best.metadata["search"] = {"best": res.best.to_dict(), "grid": res.grid, "splits": res.splits, "n": res.n,
                                   "selected_on_eval_split": res.selected_on_eval_split,
                                   "protocol_warnings": res.protocol_warnings}
        out["out"] = str(best.save(args.out))
    if args.results:
        with atomic_path(args.results) as tmp:
            Path(tmp).write_text(json.dumps(out, indent=2), encoding="utf-8")
    if args.json:
        print_json(out)
        return 0
    coefs = (lambda c: [" ".join(f"{x:g}" for x in c.coefficients)]) if args.per_task else (lambda c: [])
    rows = [[c.stage, f"{c.lam:g}", *coefs(c), *[fmt_acc(c.accuracy[t]) for t in res.tasks], f"{c.mean:.4f}",
             "*" if c is res.best else ""] for c in res.candidates]
    print_table(rows, ["stage", "lambda", *(["coefficients"] if args.per_task else []), *res.tasks, "mean", "best"],
                title=f"{res.method} on {', '.join(f'{t} ({res.splits[t]}, n={res.n[t]})' for t in res.tasks)}")
    b = res.best
    print(f"\nbest: lambda={b.lam:g}" + (f", coefficients={b.coefficients}" if args.per_task else "")
          + f", mean search accuracy {b.mean:.4f} ({res.seconds:.0f}s)"
          + (" [chosen on the eval split: optimistic]" if res.selected_on_eval_split else ""))
    if res.grid_edge:
        print(edge_note(res.grid_edge))
    for task, edge in res.coefficient_edges.items():
        print(edge_note(edge, f"coefficient of {task}'s vector"))
    if args.out:
        print(f"wrote {out['out']}")
    return 0
