"""``taskvec fv extract|eval`` and ``taskvec residual extract|eval``: activation-space vectors.

``fv extract`` computes per-head means on k-shot train prompts, scans the heads' indirect effect
on shuffled-label prompts, sums the top-k heads into a function vector, picks the layer (and
scale) on the validation split and saves a ``.safetensors`` file. ``residual extract`` saves the
mean last-token residual of k-shot prompts (by default minus the zero-shot mean of the same
queries) at the best layer and scale. ``eval`` (either group; it takes
both kinds of file) prints zero-shot / k-shot / shuffled-label / vector accuracy on the test split.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

from taskvec.cli.common import (
    add_model,
    add_run_options,
    add_task_out,
    check_plot,
    check_positive,
    check_safetensors_out,
    group_help,
    new_command,
    print_json,
    print_table,
    show_progress,
    write_head_heatmap,
)
from taskvec.errors import UserInputError


def _add_icl(p: argparse.ArgumentParser) -> None:
    p.add_argument("--shots", type=int, default=10, help="demonstrations per ICL prompt (default 10)")
    p.add_argument("--n-prompts", type=int, default=100, help="ICL prompts averaged (default 100)")


def _common_extract(p: argparse.ArgumentParser) -> None:
    add_model(p)
    add_task_out(p)
    _add_icl(p)
    p.add_argument("--layer", default="auto", help="layer to inject at, or auto (sweep on validation)")
    p.add_argument("--sweep-limit", type=int, default=None,
                   help="validation examples per sweep point (default: the whole split)")
    p.add_argument("--plot-layers", default=None, help="write validation accuracy vs layer (PNG)")
    add_run_options(p)


def _add_eval(sub: Any, what: str) -> None:
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


def register(sub: Any) -> None:
    fv = new_command(sub, "fv", "function vectors (Todd et al.): extract, evaluate")
    fv.set_defaults(func=group_help(fv))
    fsub = fv.add_subparsers(dest="fv_command", metavar="ACTION")
    p = new_command(fsub, "extract", "extract a function vector (head means, IE scan, layer sweep)")
    _common_extract(p)
    p.add_argument("--top-k", type=int, default=10, help="heads summed into the vector (default 10)")
    p.add_argument("--ie-prompts", type=int, default=25, help="shuffled-label prompts for the IE scan")
    p.add_argument("--ie-method", default="cached", help="cached (default), batched or naive")
    p.add_argument("--ie-batch-size", type=int, default=64, help="patched heads per forward pass")
    p.add_argument("--heads", default=None, help="use these heads (LAYER:HEAD,...) instead of the IE scan")
    p.add_argument("--scales", default="1,2,4",
                   help="comma-separated scales swept jointly with the layer (default 1,2,4)")
    p.add_argument("--positions", default="last", help="last (default) or last+generated")
    p.add_argument("--correct-only", action="store_true", help="average only prompts answered correctly")
    p.add_argument("--plot-ie", default=None, help="write the layer x head IE heatmap (PNG or .html)")
    p.set_defaults(func=run_fv_extract)
    _add_eval(fsub, "a function vector")
    p = new_command(fsub, "means", "per-head mean activations only (data-parallel under torchrun)")
    add_model(p)
    add_task_out(p, "task name, e.g. antonym", "output .safetensors file (kind head_means)")
    _add_icl(p)
    p.add_argument("--correct-only", action="store_true", help="average only prompts answered correctly")
    add_run_options(p)
    p.set_defaults(func=run_fv_means)

    res = new_command(sub, "residual", "ICL task vectors in the residual stream (Hendel et al.)")
    res.set_defaults(func=group_help(res))
    rsub = res.add_subparsers(dest="residual_command", metavar="ACTION")
    p = new_command(rsub, "extract", "extract a residual-stream ICL task vector (layer sweep)")
    _common_extract(p)
    p.add_argument("--mode", default="diff",
                   help="diff (default: add ICL mean minus zero-shot mean), replace (Hendel et al.) or add")
    p.add_argument("--scales", default=None,
                   help="comma-separated scales swept jointly with the layer (default: 1,2,3 for diff, 1 otherwise)")
    p.set_defaults(func=run_residual_extract)
    _add_eval(rsub, "a residual vector")


# ---------------------------------------------------------------------------- validation


def _check_common(args: argparse.Namespace) -> tuple[Any, Path]:
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


def _parse_scales(text: str) -> list[float]:
    try:
        scales = [float(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise UserInputError(f"--scales must be comma-separated numbers, got {text!r}.") from None
    if not scales or not all(math.isfinite(s) for s in scales):
        raise UserInputError(f"--scales must be finite numbers, got {text!r}.")
    return scales


def _check_layer(model: Any, layer: Any) -> None:
    from taskvec.models import get_adapter

    n = get_adapter(model).n_layers
    if layer != "auto" and not 0 <= layer < n:
        raise UserInputError(f"--layer must be auto or 0..{n - 1} for this model, got {layer}.")


def _plot_layers(av: Any, path: str, title: str) -> str:
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


def _report(av: Any, out: Path, args: argparse.Namespace, plots: dict[str, str]) -> int:
    extra = av.metadata.get("extra", {})
    info = {"out": str(out), "kind": av.kind} | {k: v for k, v in av.metadata.items() if k != "extra"}
    info |= {"extra": extra, "plots": plots}
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
    return 0


# ---------------------------------------------------------------------------- commands


def run_fv_means(args: argparse.Namespace) -> int:
    """Head means alone; under torchrun the prompts are split over ranks, rank 0 writes."""
    from taskvec import dist
    from taskvec.activations.files import ActivationVector
    from taskvec.activations.heads import head_means
    from taskvec.models import fingerprint, load_model
    from taskvec.tasks import get_task

    task = get_task(args.task)
    check_positive(("--shots", args.shots), ("--n-prompts", args.n_prompts), ("--batch-size", args.batch_size))
    out = check_safetensors_out(args.out, writable=dist.is_main())
    model, tok = load_model(args.model, dtype=args.dtype, device=args.device)
    hm = head_means(model, tok, task, n_prompts=args.n_prompts, shots=args.shots, seed=args.seed,
                    batch_size=args.batch_size, correct_only=args.correct_only, progress=show_progress(args))
    if not dist.is_main():
        return 0
    av = ActivationVector("head_means", {"head_means": hm.means},
                          hm.metadata() | {"model": str(args.model), "model_fingerprint": fingerprint(model),
                                           "method": "head_means", "positions": "last", "site": "head_out"})
    av.save(out)
    info = hm.metadata() | {"out": str(out), "shape": list(hm.means.shape),
                            "world_size": dist.world()[1]}
    if args.json:
        print_json(info)
    else:
        print_table([[task.name, hm.n_total, hm.n_prompts, f"{hm.icl_accuracy:.3f}", "x".join(map(str, hm.means.shape)), str(out)]],
                    ["task", "prompts", "averaged", "icl acc", "means (L x H x D)", "file"])
    return 0


def run_fv_extract(args: argparse.Namespace) -> int:
    """Under torchrun head means, the IE scan and the sweeps are split over ranks; rank 0 writes."""
    from taskvec import dist
    from taskvec.activations.function_vectors import extract_function_vector, parse_heads
    from taskvec.activations.hooks import positions_from_str
    from taskvec.activations.indirect_effect import IE_METHODS

    task, out = _check_common(args)
    IE_METHODS.get(args.ie_method)
    check_positive(("--top-k", args.top_k), ("--ie-prompts", args.ie_prompts), ("--ie-batch-size", args.ie_batch_size))
    heads = parse_heads(args.heads) if args.heads else None
    if heads and args.plot_ie:
        raise UserInputError("--plot-ie needs the IE scan: drop --heads.")
    scales = _parse_scales(args.scales)
    positions = positions_from_str(args.positions)
    from taskvec.models import load_model

    model, tok = load_model(args.model, dtype=args.dtype, device=args.device)
    _check_layer(model, args.layer)
    av = extract_function_vector(
        model, tok, task, shots=args.shots, n_prompts=args.n_prompts, top_k=args.top_k,
        layer=args.layer, ie_prompts=args.ie_prompts, ie_method=args.ie_method, scales=scales,
        heads=heads, sweep_limit=args.sweep_limit, positions=positions,
        correct_only=args.correct_only, seed=args.seed, batch_size=args.batch_size,
        ie_batch_size=args.ie_batch_size, progress=show_progress(args),
    )
    if not dist.is_main():
        return 0
    av.metadata["model"] = str(args.model)
    av.save(out)
    plots: dict[str, str] = {}
    if args.plot_ie:
        plots["ie heatmap"] = _plot_ie(av, args.plot_ie)
    if args.plot_layers:
        plots["layer plot"] = _plot_layers(av, args.plot_layers, f"{task.name}: function vector by layer")
    return _report(av, out, args, plots)


def _plot_ie(av: Any, path: str) -> str:
    scores = av.tensors["ie_scores"].numpy()  # (L, H)
    title = f"{av.task}: indirect effect per head ({av.metadata['extra']['ie']['n_prompts']} prompts)"
    return write_head_heatmap(scores, path, title, cbar="P(answer) gain")


def run_residual_extract(args: argparse.Namespace) -> int:
    from taskvec import dist
    from taskvec.activations.residual import MODES, extract_residual_vector

    task, out = _check_common(args)
    if args.mode not in MODES:
        from taskvec.errors import unknown_name

        raise unknown_name("residual mode", args.mode, MODES)
    scales = None if args.scales is None else _parse_scales(args.scales)
    from taskvec.models import load_model

    model, tok = load_model(args.model, dtype=args.dtype, device=args.device)
    _check_layer(model, args.layer)
    av = extract_residual_vector(
        model, tok, task, shots=args.shots, n_prompts=args.n_prompts, layer=args.layer,
        mode=args.mode, sweep_limit=args.sweep_limit, seed=args.seed, batch_size=args.batch_size,
        progress=show_progress(args), scales=scales,
    )
    if not dist.is_main():  # under torchrun only rank 0 writes and prints
        return 0
    av.metadata["model"] = str(args.model)
    av.save(out)
    plots: dict[str, str] = {}
    if args.plot_layers:
        plots["layer plot"] = _plot_layers(av, args.plot_layers, f"{task.name}: residual vector by layer")
    return _report(av, out, args, plots)


def run_eval(args: argparse.Namespace) -> int:
    from taskvec.activations.evaluate_fv import compare, load_examples
    from taskvec.activations.files import load_activation
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
        _check_layer(model, args.layer)
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
