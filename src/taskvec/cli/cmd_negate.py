"""``taskvec negate``: forget a task by subtracting its vector, keeping a control task
(docs/task_arithmetic.md)."""

from __future__ import annotations

import argparse
import math
from typing import Any

from taskvec.cli.coefficient_opts import (
    DEFAULT_NEG_GRID,
    acc_diff,
    add_selection,
    check_positive_opt,
    check_selection,
    fmt_acc,
    load_model_for,
    one_vector,
    resolve_holdout,
)
from taskvec.cli.options import add_json, add_model, add_progress, new_command, show_progress
from taskvec.cli.output import print_json, print_table
from taskvec.errors import UserInputError


def register(sub: Any) -> None:
    p = new_command(sub, "negate", "forget a task: subtract c x vector, keeping a control task at 95%",
                    description="Apply -c x --vector for c in --grid; choose the largest c whose control "
                    "accuracy (held-out train slice) stays >= 95% of the base model's, then report both "
                    "tasks on their eval splits. See docs/task_arithmetic.md.")
    add_model(p)
    p.add_argument("--vector", required=True, help="vector file, or BASIS#TASK")
    p.add_argument("--target", required=True, help="task to forget")
    p.add_argument("--control", required=True, help="task to keep")
    p.add_argument("--threshold", type=float, default=0.95, help="kept fraction of base control accuracy (0.95)")
    p.add_argument("--rule", default="largest",
                   help="which admissible c: largest (default) or min-target (lowest target accuracy, "
                        "as TaskVectorBasis)")
    p.add_argument("--eval-limit", type=int, default=None, help="at most N eval examples per task (default: --limit)")
    add_selection(p, DEFAULT_NEG_GRID)
    add_progress(p)
    add_json(p)
    p.set_defaults(func=run_negate)


def run_negate(args: argparse.Namespace) -> int:
    from taskvec.tasks import get_task
    from taskvec.weights.negate import NEGATION_RULES, negate
    from taskvec.weights.search import edge_note

    NEGATION_RULES.get(args.rule)  # unknown rule: one line, before any work
    grid = check_selection(args)
    check_positive_opt("eval-limit", args.eval_limit)
    if any(c <= 0 for c in grid):
        raise UserInputError("negation coefficients must be positive (the vector is subtracted); fix --grid.")
    if not (math.isfinite(args.threshold) and 0 < args.threshold <= 1):
        raise UserInputError(f"--threshold must be in (0, 1], got {args.threshold}.")
    target, control = get_task(args.target), get_task(args.control)
    if target.name == control.name:
        raise UserInputError("--target and --control are the same task: pick a different control.")
    vector = one_vector(args.vector)
    resolve_holdout(args, [vector])
    model, tok = load_model_for(args, [vector])
    res = negate(model, tok, vector, target, control, grid, args.limit, eval_limit=args.eval_limit,
                 threshold=args.threshold, rule=args.rule, split=args.split, holdout=args.holdout, seed=args.seed,
                 batch_size=args.batch_size, progress=show_progress(args), allow_eval_split=args.allow_eval_split)
    out = res.to_dict() | {"model": str(args.model), "vector": args.vector, "rule": args.rule}
    if args.json:
        print_json(out)
        return 0
    sel = res.select_split
    print_table(
        [[f"{r['c']:g}", fmt_acc(r["target"]), fmt_acc(r["control"]),
          "*" if r["c"] == res.chosen else ""] for r in res.curve],
        ["c", f"{res.target} ({sel[res.target]})", f"{res.control} ({sel[res.control]})", "chosen"],
        title=f"base: {res.target} {res.base_select['target']:.4f}, {res.control} {res.base_select['control']:.4f}; "
              f"rule: {args.rule} c with control >= {res.threshold:g} x base",
    )
    print()
    if res.chosen is None:
        print(f"no coefficient keeps {res.control} at {res.threshold:.0%} of its base accuracy; "
              "try a grid with smaller values.")
        return 0
    ev = res.eval_split

    def cell(v: float | None, which: str, task: str) -> str:  # accuracy [95% Wilson interval]
        ci = res.eval_ci95.get(which, {}).get(task)
        return fmt_acc(v) + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")

    print_table(
        [["base", cell(res.base_target, "base", res.target), cell(res.base_control, "base", res.control)],
         [f"base - {res.chosen:g} x vector", cell(res.target_at_c, "negated", res.target),
          cell(res.control_at_c, "negated", res.control)],
         ["change", fmt_acc(acc_diff(res.target_at_c, res.base_target)),
          fmt_acc(acc_diff(res.control_at_c, res.base_control))]],
        ["model", f"{res.target} ({ev.get(res.target)}, n={res.eval_n.get(res.target)})",
         f"{res.control} ({ev.get(res.control)}, n={res.eval_n.get(res.control)})"],
    )
    for task, t in res.paired.items():
        sig = "significant" if t["significant"] else "not significant"
        print(f"{task}: negated vs base on the same {t['n']} examples: {t['only_a']} / {t['only_b']} discordant "
              f"(right only negated / only base), exact McNemar p = {t['p_value']:.2g} ({sig})")
    if res.grid_edge:
        print(edge_note(res.grid_edge, "c"))
    if res.selected_on_eval_split:
        print("note: the coefficient was chosen on the eval split (--allow-eval-split): these numbers are optimistic.")
    return 0
