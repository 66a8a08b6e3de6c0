"""``taskvec soft train|eval|show|compare``: soft task vectors (trained per-head blend coefficients).

``train`` computes the head means of k-shot train prompts, trains one coefficient per (layer, head)
on zero-shot train prompts with the model frozen, keeps the best checkpoint on validation and
saves a small ``.safetensors`` file. ``eval`` prints zero-shot vs the soft vector (and k-shot ICL
with ``--shots``) on the test split; ``show`` prints the file's summary and top heads (and plots
the layer x head alpha heatmap); ``compare`` prints one table of every method on the test split.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from taskvec.cli.options import (
    add_json,
    add_model,
    add_progress,
    add_run_options,
    add_task_out,
    check_plot,
    check_safetensors_out,
    group_help,
    new_command,
    show_progress,
    write_head_heatmap,
)
from taskvec.cli.output import print_json, print_table
from taskvec.errors import UserInputError


def _eval_opts(p: argparse.ArgumentParser, shots: str) -> None:
    add_model(p)
    p.add_argument("--split", default=None, help="split to evaluate (default: test, or the eval split "
                   "of tasks without one)")
    p.add_argument("--limit", type=int, default=None, help="only the first N examples")
    p.add_argument("--sample", type=int, default=None, metavar="N",
                   help="a seeded random subset of N examples (seed: --seed), in file order")
    p.add_argument("--shots", default=shots, help=f"k for the ICL rows, comma-separated (default {shots or 'none'})")
    add_run_options(p, force_help="use vectors made on another model")


def register(sub: Any) -> None:
    soft = new_command(sub, "soft", "soft task vectors: trained per-head blends with task means")
    soft.set_defaults(func=group_help(soft))
    ssub = soft.add_subparsers(dest="soft_command", metavar="ACTION")

    p = new_command(ssub, "train", "train a soft task vector (head means + L x H coefficients)")
    add_model(p)
    add_task_out(p)
    p.add_argument("--steps", type=int, default=200, help="optimizer steps (default 200)")
    p.add_argument("--lr", type=float, default=0.05, help="Adam learning rate (default 0.05)")
    p.add_argument("--batch-size", type=int, default=16, help="zero-shot prompts per step (default 16)")
    p.add_argument("--init", type=float, default=-2.0, help="initial coefficient t (default -2)")
    p.add_argument("--l1", type=float, default=0.0, help="weight of the sum(alpha) penalty (default 0)")
    p.add_argument("--temperature", type=float, default=1.0, help="alpha = sigmoid(t / temperature)")
    p.add_argument("--eval-every", type=int, default=20, help="steps between validation runs")
    p.add_argument("--patience", type=int, default=5,
                   help="validation runs without improvement before stopping (0: never)")
    p.add_argument("--shots", type=int, default=10, help="demonstrations per ICL prompt for the means")
    p.add_argument("--n-prompts", type=int, default=100, help="ICL prompts averaged for the means")
    p.add_argument("--answer-tokens", default="first", help="first (default) or all (teacher-forced)")
    p.add_argument("--positions", default="last", help="last (default) or last+generated")
    p.add_argument("--val-limit", type=int, default=None, help="validation examples (default all)")
    p.add_argument("--eval-batch-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    add_progress(p)
    add_json(p)
    p.set_defaults(func=run_train)

    p = new_command(ssub, "eval", "test-split accuracy: zero-shot vs the soft vector (and ICL)")
    p.add_argument("--vector", required=True, help="soft task vector file")
    p.add_argument("--task", default=None, help="task (default: the one the vector records)")
    _eval_opts(p, "")
    p.set_defaults(func=run_eval)

    p = new_command(ssub, "show", "summary, top heads and alpha heatmap of a soft task vector")
    p.add_argument("file", help="soft task vector file")
    p.add_argument("--plot", default=None, help="write the layer x head alpha heatmap (.png or .html)")
    p.add_argument("--top", type=int, default=10, help="heads in the table (default 10)")
    add_json(p)
    p.set_defaults(func=run_show)

    p = new_command(ssub, "compare", "one test-split table: prompting, FV, residual, soft, LoRA")
    p.add_argument("--task", required=True, help="task name")
    p.add_argument("--fv", default=None, help="function vector file (`taskvec fv extract`)")
    p.add_argument("--residual", default=None, help="residual vector file (`taskvec residual extract`)")
    p.add_argument("--soft", default=None, help="soft task vector file (`taskvec soft train`)")
    p.add_argument("--lora", default=None, help="weight-space task vector file (e.g. from a LoRA)")
    _eval_opts(p, "5,10")
    p.set_defaults(func=run_compare)


# ---------------------------------------------------------------------------- helpers


def _check_eval_args(args: argparse.Namespace, task: Any) -> list[int]:
    from taskvec.activations.evaluation import load_examples
    from taskvec.activations.soft import report_split
    from taskvec.activations.soft_compare import parse_shots
    from taskvec.models.loading import check_dtype_device
    from taskvec.tasks.subsets import choose

    args.split = args.split or report_split(task)
    load_examples(task, args.split, None)  # validates the split before the model
    choose([], args.limit, args.sample, args.seed)  # validates --limit / --sample the one way
    if args.batch_size <= 0:
        raise UserInputError(f"--batch-size must be positive, got {args.batch_size}.")
    check_dtype_device(args.dtype, args.device)
    return parse_shots(args.shots)


def _paired(r: dict[str, Any], key: str) -> str:
    t = r.get(key)
    if not t:
        return ""
    return f"{100 * t['difference']:+.1f} (p={t['p_value']:.2g}{', sig.' if t['significant'] else ''})"


def _print_rows(rows: list[dict[str, Any]], title: str) -> None:
    print_table(
        [[r["method"], r["n"], r["accuracy"], f"[{r['ci95'][0]:.3f}, {r['ci95'][1]:.3f}]",
          _paired(r, "vs_zero_shot"), _paired(r, "vs_icl"), f"{r['params']:,}", f"{r['seconds']:.1f}s"]
         for r in rows],
        ["method", "n", "accuracy", "95% CI", "vs zero-shot (points)", "vs ICL (points)", "params", "time"],
        title=title + (f", examples: {rows[0]['subset']}" if rows else ""),
    )


def _summary(sv: Any, path: Path | None, top: int) -> dict[str, Any]:
    meta = dict(sv.metadata)
    extra = meta.pop("extra", {}) or {}
    info: dict[str, Any] = {
        "file": None if path is None else str(path),
        "file_bytes": None if path is None else path.stat().st_size,
        "task": sv.task,
        "n_params": sv.n_params,
        "n_values_stored": sv.n_values,
        "shape": [sv.n_layers, sv.n_heads, sv.head_dim],
        "alpha_mean": float(sv.alpha.mean()),
        "alpha_max": float(sv.alpha.max()),
        "top_heads": [{"layer": li, "head": h, "alpha": a} for li, h, a in sv.top_heads(top)],
    }
    info |= meta
    info["training"] = {k: v for k, v in extra.items() if k != "history"}
    info["history"] = extra.get("history", [])
    return info


def _print_summary(info: dict[str, Any], sv: Any) -> None:
    tr = info.get("training", {})
    print(f"{sv.describe()} for {info['task']}: {info['n_params']} trained parameters, "
          f"{info['n_values_stored']:,} values stored"
          + (f", file {info['file_bytes']:,} bytes" if info.get("file_bytes") else ""))
    if info.get("validation_score") is not None:
        zs = tr.get("zero_shot_val_accuracy")
        print(f"validation ({tr.get('validation_source', '?')}, {tr.get('n_validation', '?')} examples): "
              + (f"zero-shot {zs:.4f}, " if zs is not None else "")
              + f"soft vector {info['validation_score']:.4f} at step {info.get('best_step')}")
    print(f"alpha: mean {info['alpha_mean']:.4f}, max {info['alpha_max']:.4f}; positions "
          f"{info.get('positions', 'last')}, temperature {info.get('temperature', 1.0):g}")
    rows = [[h["layer"], h["head"], h["alpha"]] for h in info["top_heads"]]
    print_table(rows, ["layer", "head", "alpha"], title="\ntop heads:")


def _plot(sv: Any, path: str) -> str:
    title = f"{sv.task}: soft task vector alpha = sigmoid(t / T) per head"
    return write_head_heatmap(sv.alpha.numpy(), path, title, cbar="alpha")  # (L, H)


# ---------------------------------------------------------------------------- commands


def run_train(args: argparse.Namespace) -> int:
    from taskvec.activations.soft import SoftConfig
    from taskvec.models.loading import check_dtype_device
    from taskvec.tasks import get_task

    task = get_task(args.task)
    cfg = SoftConfig(
        steps=args.steps, lr=args.lr, batch_size=args.batch_size, init=args.init, l1=args.l1,
        temperature=args.temperature, eval_every=args.eval_every, patience=args.patience,
        shots=args.shots, n_prompts=args.n_prompts, answer_tokens=args.answer_tokens,
        positions=args.positions, val_limit=args.val_limit, eval_batch_size=args.eval_batch_size,
        seed=args.seed,
    ).check()
    out = check_safetensors_out(args.out)
    check_dtype_device(args.dtype, args.device)
    from taskvec.activations.soft import TaskVectorExtractor
    from taskvec.models import load_model

    model, tok = load_model(args.model, dtype=args.dtype, device=args.device)
    ex = TaskVectorExtractor(model, tok, task, cfg, progress=show_progress(args))
    sv = ex.train()
    sv.metadata["model"] = str(args.model)
    sv.save(out)
    info = _summary(sv, out, 10)
    if args.json:
        print_json(info)
        return 0
    print(f"-> {out}")
    _print_summary(info, sv)
    rows = [[h["step"], h["train_loss"], h["val_loss"], h["val_accuracy"], h["alpha_mean"]]
            for h in info["history"]]
    print_table(rows, ["step", "train loss", "val loss", "val acc", "mean alpha"], title="\ntraining:")
    return 0


def run_eval(args: argparse.Namespace) -> int:
    from taskvec.activations.soft_compare import comparison_table
    from taskvec.activations.soft_vector import load_soft
    from taskvec.tasks import get_task

    sv = load_soft(args.vector)
    task = get_task(args.task or sv.task)
    shots = _check_eval_args(args, task)
    from taskvec.models import load_model

    model, tok = load_model(args.model, dtype=args.dtype, device=args.device)
    rows = comparison_table(model, tok, task, soft=sv, limit=args.limit, sample=args.sample, shots=shots,
                            split=args.split, seed=args.seed, batch_size=args.batch_size,
                            progress=show_progress(args), force=args.force)
    if args.json:
        print_json({"task": task.name, "model": str(args.model), "split": args.split,
                    "vector": str(args.vector), "rows": rows})
        return 0
    _print_rows(rows, f"{task.name} ({args.split}), model {args.model}")
    return 0


def run_show(args: argparse.Namespace) -> int:
    from taskvec.activations.soft_vector import load_soft

    if args.top < 0:
        raise UserInputError(f"--top must be >= 0, got {args.top}.")
    check_plot("--plot", args.plot)
    path = Path(args.file)
    sv = load_soft(path)
    info = _summary(sv, path, args.top)
    if args.plot:
        info["plot"] = _plot(sv, args.plot)
    if args.json:
        print_json(info)
        return 0
    _print_summary(info, sv)
    if args.plot:
        print(f"alpha heatmap: {args.plot}")
    return 0


def run_compare(args: argparse.Namespace) -> int:
    from taskvec.activations.activation_vector import load_activation
    from taskvec.activations.soft_compare import comparison_table
    from taskvec.activations.soft_vector import load_soft
    from taskvec.tasks import get_task

    task = get_task(args.task)
    shots = _check_eval_args(args, task)
    # read every file before loading the model: bad files fail fast
    fv = load_activation(args.fv, "function_vector") if args.fv else None
    rv = load_activation(args.residual, "residual_vector") if args.residual else None
    sv = load_soft(args.soft) if args.soft else None
    lora = None
    if args.lora:
        from taskvec.weights.io import load_vector

        lora = load_vector(args.lora)
    from taskvec.models import load_model

    model, tok = load_model(args.model, dtype=args.dtype, device=args.device)
    rows = comparison_table(model, tok, task, fv=fv, rv=rv, soft=sv, lora=lora, limit=args.limit,
                            sample=args.sample, shots=shots, split=args.split, seed=args.seed,
                            batch_size=args.batch_size, progress=show_progress(args), force=args.force)
    if args.json:
        files = {"fv": args.fv, "residual": args.residual, "soft": args.soft, "lora": args.lora}
        print_json({"task": task.name, "model": str(args.model), "split": args.split,
                    "files": {k: v for k, v in files.items() if v}, "rows": rows})
        return 0
    _print_rows(rows, f"{task.name} ({args.split}), model {args.model}")
    return 0
