"""What ``taskvec fv`` and ``taskvec residual`` share: ICL and extraction options, checks, the
layer plot and report, and the comparison ``eval`` (zero-shot / k-shot / shuffled / vector)."""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

from taskvec.cli.options import (
    add_model,
    add_run_options,
    add_task_out,
    check_plot,
    check_positive,
    check_safetensors_out,
    new_command,
    show_progress,
)
from taskvec.cli.output import print_json, print_table
from taskvec.errors import UserInputError


def add_icl_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--shots", type=int, default=10, help="demonstrations per ICL prompt (default 10)")
    p.add_argument("--n-prompts", type=int, default=100, help="ICL prompts averaged (default 100)")


def add_extract_options(p: argparse.ArgumentParser) -> None:
    add_model(p)
    add_task_out(p)
    add_icl_options(p)
    p.add_argument("--layer", default="auto", help="layer to inject at, or auto (sweep on validation)")
    p.add_argument("--sweep-limit", type=int, default=None,
                   help="validation examples per sweep point (default: the whole split)")
    p.add_argument("--plot-layers", default=None, help="write validation accuracy vs layer (PNG)")
    add_run_options(p)


def add_eval(sub: Any, what: str) -> None:
    p = new_command(sub, "eval", f"test-split accuracy with {what} vs zero-shot / ICL / shuffled ICL")
    add_model(p)
    p.add_argument("--vector", required=True, nargs="+", help="activation vector file(s)")
    p.add_argument("--task", default=None, help="task (default: the one the first vector records)")
    p.add_argument("--split", default="test", help="split to evaluate (default test: never used in extraction)")
    p.add_argument("--limit", type=int, default=None, help="only the first N examples")
    p.add_argument("--shots", type=int, default=10, help="k for the ICL rows (0: zero-shot + vectors only)")
    p.add_argument("--scale", type=float, default=None, help="override the vectors' scale")
    p.add_argument("--layer", type=int, default=None, help="override the vectors' layer")
    add_run_options(p, force_help="use a vector made on another model")
    p.set_defaults(func=run_eval)


def check_extract_args(args: argparse.Namespace) -> tuple[Any, Path]:
    from taskvec import dist
    from taskvec.models.loading import check_dtype_device
    from taskvec.tasks import get_task

    task = get_task(args.task)
    check_positive(("--shots", args.shots), ("--n-prompts", args.n_prompts), ("--batch-size", args.batch_size))
    if args.sweep_limit is not None and args.sweep_limit <= 0:
        raise UserInputError(f"--sweep-limit must be positive, got {args.sweep_limit}.")
    main = dist.is_main()  # under torchrun only rank 0 writes, so only its paths are checked
    out = check_safetensors_out(args.out, writable=main)
    check_plot("--plot-layers", getattr(args, "plot_layers", None), (".png",), writable=main)
    check_plot("--plot-ie", getattr(args, "plot_ie", None), writable=main)
    if args.layer != "auto":
        try:
            args.layer = int(args.layer)
        except ValueError:
            raise UserInputError(f"--layer must be auto or a layer number, got {args.layer!r}.") from None
    check_dtype_device(args.dtype, args.device)
    return task, out


def parse_scales(text: str) -> list[float]:
    try:
        scales = [float(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise UserInputError(f"--scales must be comma-separated numbers, got {text!r}.") from None
    if not scales or not all(math.isfinite(s) for s in scales):
        raise UserInputError(f"--scales must be finite numbers, got {text!r}.")
    return scales


def check_layer(model: Any, layer: Any) -> None:
    from taskvec.models import get_adapter

    n = get_adapter(model).n_layers
    if layer != "auto" and not 0 <= layer < n:
        raise UserInputError(f"--layer must be auto or 0..{n - 1} for this model, got {layer}.")


def plot_layers(av: Any, path: str, title: str) -> str:
    from taskvec.eval.report import line_plot_png

    extra = av.metadata.get("extra", {})
    by_layer = extra.get("layer_accuracy")
    if not by_layer:
        raise UserInputError("--plot-layers needs --layer auto (there was no layer sweep).")
    xs = [int(k) for k in by_layer]
    name = "function vector" if av.kind == "function_vector" else f"residual ({av.metadata.get('mode')})"
    if len(extra.get("grid_accuracy", {})) > len(by_layer):
        name += ", best scale per layer"
    series = {name: list(by_layer.values()), "zero-shot": [extra.get("zero_shot_accuracy", 0.0)] * len(xs)}
    line_plot_png(xs, series, Path(path), title=title, xlabel="layer", ylabel="validation accuracy")
    return path


def validation_gain(extra: dict[str, Any]) -> bool | None:
    """Whether the best point of the layer (x scale) sweep beats zero-shot on the validation
    examples; None when no sweep ran (a fixed layer and scale)."""
    accs = extra.get("grid_accuracy") or extra.get("layer_accuracy")
    zs = extra.get("zero_shot_accuracy")
    if not accs or zs is None:
        return None
    return max(accs.values()) > zs


def report_extraction(av: Any, out: Path, args: argparse.Namespace, plots: dict[str, str]) -> int:
    extra = av.metadata.get("extra", {})
    info = {"out": str(out), "kind": av.kind} | {k: v for k, v in av.metadata.items() if k != "extra"}
    gain = validation_gain(extra)
    info |= {"extra": extra, "plots": plots, "above_zero_shot_on_validation": gain}
    if args.json:
        print_json(info)
        return 0
    by_layer = extra.get("layer_accuracy", {})
    print(f"{av.describe()} for {av.task} -> {out}")
    print(f"validation ({extra.get('sweep_n')} examples): zero-shot {extra.get('zero_shot_accuracy', 0):.4f}"
          + (f", with vector {by_layer.get(str(av.layer)):.4f}" if str(av.layer) in by_layer else ""))
    if av.kind == "function_vector":
        scores = extra.get("ie", {}).get("top_scores")
        rows = [[li, h, scores[i] if scores else None] for i, (li, h) in enumerate(av.heads)]
        print_table(rows, ["layer", "head", "indirect effect"], title="\nheads:")
    if by_layer:
        per = " (best scale per layer)" if extra.get("grid_accuracy") else ""
        print_table([[k, v] for k, v in by_layer.items()], ["layer", "val accuracy"],
                    title=f"\nlayer sweep{per}:")
    by_scale = extra.get("scale_accuracy", {})
    if by_scale:
        print_table([[k, v] for k, v in by_scale.items()], ["scale", "val accuracy"],
                    title=f"\nscale sweep (layer {av.layer}):")
    for name, path in plots.items():
        print(f"{name}: {path}")
    if gain is False:
        print(f"note: no layer or scale tried beats zero-shot on the {extra.get('sweep_n')} validation examples, "
              "so this vector is unlikely to help on this task and model; compare it with `eval` before use.")
    return 0


def run_eval(args: argparse.Namespace) -> int:
    from taskvec.activations.activation_vector import load_activation
    from taskvec.activations.evaluation import compare, load_examples
    from taskvec.models.loading import check_dtype_device
    from taskvec.tasks import get_task

    vectors = [load_activation(v, ("function_vector", "residual_vector")) for v in args.vector]
    task = get_task(args.task or vectors[0].task)
    load_examples(task, args.split, args.limit)  # validates split / limit before the model
    if args.shots < 0:
        raise UserInputError(f"--shots must be >= 0, got {args.shots}.")
    if args.scale is not None and not math.isfinite(args.scale):
        raise UserInputError(f"--scale must be a finite number, got {args.scale}.")
    check_dtype_device(args.dtype, args.device)
    from taskvec.models import load_model

    model, tok = load_model(args.model, dtype=args.dtype, device=args.device)
    if args.layer is not None:
        check_layer(model, args.layer)
    rows = compare(
        model, tok, task, vectors, split=args.split, limit=args.limit, shots=args.shots,
        seed=args.seed, batch_size=args.batch_size, scale=args.scale, layer=args.layer,
        progress=show_progress(args), force=args.force,
    )
    from taskvec import dist

    if not dist.is_main():  # under torchrun only rank 0 prints
        return 0
    if args.json:
        print_json({"task": task.name, "model": str(args.model), "split": args.split,
                    "vectors": [str(v) for v in args.vector], "rows": rows})
        return 0
    print_table(
        [[r["method"], r["n"], r["accuracy"], f"{r['seconds']:.1f}s"] for r in rows],
        ["method", "n", "first-token acc", "time"],
        title=f"{task.name} ({args.split}), model {args.model}",
    )
    return 0
