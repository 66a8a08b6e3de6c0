"""``taskvec eval``: accuracy of a model (optionally plus a task vector) on a task."""

from __future__ import annotations

import argparse
from typing import Any

from taskvec.cli.options import add_json, add_model, add_progress, new_command, show_progress
from taskvec.cli.output import print_json, print_table
from taskvec.cli.vector_opts import add_vector_opts, load_model_with_vector


def register(sub: Any) -> None:
    p = new_command(sub, "eval", "evaluate a model on a task (zero-shot or k-shot)")
    add_model(p)
    add_vector_opts(p)
    p.add_argument("--task", required=True, help="task name (see `taskvec tasks`) or a task .yaml file")
    p.add_argument("--split", default=None, help="split to evaluate (default: the task's validation split)")
    p.add_argument("--limit", type=int, default=None, help="only the first N examples (warns if their labels are skewed)")
    p.add_argument("--sample", type=int, default=None, metavar="N",
                   help="a seeded random subset of N examples (seed: --seed), in file order")
    p.add_argument("--shots", type=int, default=0, help="k demonstrations from the train split (default 0)")
    p.add_argument("--seed", type=int, default=0, help="seed for choosing demonstrations and the --sample subset")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--exact-match", action="store_true", help="ICL tasks: also greedy exact match")
    p.add_argument("--shuffle-labels", action="store_true", help="k-shot with shuffled demonstration labels")
    p.add_argument("--vs-base", action="store_true",
                   help="with --vector: also evaluate the base on the same examples and test the difference "
                        "(exact McNemar on the per-example results)")
    p.add_argument("--demos", choices=["per-query", "shared"], default="per-query",
                   help="k-shot: a seeded set of demonstrations per query (default), or one set shared by "
                        "all queries (its KV cache is computed once and reused: about zero-shot cost)")
    add_progress(p)
    add_json(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from taskvec.errors import UserInputError
    from taskvec.eval import evaluate
    from taskvec.tasks import get_task

    # Validate everything cheap before reading any weights.
    task = get_task(args.task)
    split = args.split or task.eval_split
    if split not in task.splits:
        from taskvec.errors import unknown_name

        raise unknown_name(f"split of task {task.name}", split, task.splits)
    for flag, v in (("--limit", args.limit), ("--sample", args.sample)):
        if v is not None and v <= 0:
            raise UserInputError(f"{flag} must be a positive number, got {v}.")
    if args.limit is not None and args.sample is not None:
        raise UserInputError("--limit and --sample are exclusive: use one (--sample N --seed S is representative).")
    if args.shots < 0:
        raise UserInputError(f"--shots must be >= 0, got {args.shots}.")
    if args.vs_base and not args.vector:
        raise UserInputError("--vs-base compares base + --vector with the base: give --vector.")
    model, tok, vec, ctx = load_model_with_vector(args)

    def run_eval() -> Any:
        return evaluate(
            model, tok, task, split=split, limit=args.limit, shots=args.shots, seed=args.seed,
            batch_size=args.batch_size, progress=show_progress(args), exact_match=args.exact_match,
            shuffle_labels=args.shuffle_labels, sample=args.sample, demos=args.demos,
        )

    with ctx:  # an activation vector acts during the forward passes
        res = run_eval()
    base = None
    if args.vs_base:  # the same examples without the vector (a weight vector is taken off again)
        if vec.kind == "task_vector":
            vec.vector.remove_from(model, vec.scale)
        base = run_eval()
    from taskvec import dist

    if not dist.is_main():  # under torchrun only rank 0 prints
        return 0
    out = res.to_dict() | {"model": str(args.model), "vector": args.vector, "demos": args.demos,
                           "vector_kind": vec.kind if vec else None, "scale": vec.scale if vec else None}
    if base is not None:
        from taskvec.eval.stats import mcnemar

        test = mcnemar(res.correct, base.correct)
        out["base"] = base.to_dict()
        out["vs_base"] = test.to_dict() | {"difference": res.accuracy - base.accuracy}
    if args.json:
        print_json(out)
        return 0
    if vec is not None:
        print(f"model: {args.model} + {vec.describe(args.vector)}")
    ci = f"[{res.ci95[0]:.3f}, {res.ci95[1]:.3f}]" if res.ci95 else "-"
    print_table(
        [[args.model, task.name, f"{split} ({res.subset})", res.n, res.shots, res.metric, res.accuracy, ci,
          res.exact_match, f"{res.seconds:.1f}s"]],
        ["model", "task", "split", "n", "shots", "metric", "accuracy", "95% CI (Wilson)", "exact", "time"],
    )
    if base is not None:
        t = out["vs_base"]
        print(f"\nbase on the same {base.n} examples: {base.accuracy:.4f} [{base.ci95[0]:.3f}, {base.ci95[1]:.3f}]; "
              f"difference {t['difference']:+.4f}, only with vector right {t['only_a']}, only base right {t['only_b']}, "
              f"exact McNemar p = {t['p_value']:.3g} ({'significant' if t['significant'] else 'not significant'} "
              "at 5%)")
    if res.per_class:
        print()
        print_table(
            [[lab, c["n"], c["correct"], c["predicted"], (c["correct"] / c["n"]) if c["n"] else None]
             for lab, c in res.per_class.items()],
            ["label", "n", "correct", "predicted", "recall"],
        )
    return 0
