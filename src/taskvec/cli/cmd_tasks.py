"""``taskvec tasks``: the registered tasks, or one task in detail."""

from __future__ import annotations

import argparse
from typing import Any

from taskvec.cli.options import add_json, new_command
from taskvec.cli.output import print_json, print_table


def register(sub: Any) -> None:
    p = new_command(sub, "tasks", "list tasks, or show one task (template, labels, splits)")
    p.add_argument("name", nargs="?", help="a task name or a task .yaml file to show in detail")
    p.add_argument("--kind", choices=["classification", "generation"], help="only tasks of this kind")
    add_json(p)
    p.set_defaults(func=run)


def _summary(t: Any) -> dict[str, Any]:
    return {
        "name": t.name,
        "kind": t.kind,
        "labels": t.labels() if t.kind == "classification" else None,
        "splits": list(t.splits),
        "eval_split": t.eval_split,
        "train_split": t.train_split,
        "metric": t.metric,
    }


def run(args: argparse.Namespace) -> int:
    from taskvec.tasks import get_task, list_tasks

    if args.name:
        t = get_task(args.name)
        ex = t.load(t.eval_split, limit=1)[0]
        info = _summary(t) | {
            "template": t.template,
            "label_words": t.label_words if t.kind == "classification" else None,
            "sizes": {s: len(t.load(s)) for s in t.splits},
            "example_prompt": t.prompt(ex),
            "example_answer": t.answer(ex),
            "source": t.source,
        }
        if args.json:
            print_json(info)
        else:
            for k, v in info.items():
                print(f"{k}: {v!r}" if k in ("template", "example_prompt", "example_answer") else f"{k}: {v}")
        return 0
    tasks = [t for t in list_tasks() if not args.kind or t.kind == args.kind]
    if args.json:
        print_json({"tasks": [_summary(t) for t in tasks]})
        return 0
    print_table(
        [[t.name, t.kind, ", ".join(t.labels()) if t.kind == "classification" else "(text)",
          t.eval_split, ", ".join(t.splits)] for t in tasks],
        ["task", "kind", "labels", "eval split", "splits"],
    )
    return 0
