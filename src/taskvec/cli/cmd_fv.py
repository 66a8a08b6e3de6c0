"""``taskvec fv extract|means|eval``: function vectors (Todd et al.).

``fv extract`` computes per-head means on k-shot train prompts, scans the heads' indirect effect
on shuffled-label prompts, sums the top-k heads into a function vector, picks the layer (and
scale) on the validation split and saves a ``.safetensors`` file. ``fv eval`` prints zero-shot /
k-shot / shuffled-label / vector accuracy on the test split (``taskvec eval --vector F`` gives
the vector's row alone, in the table every vector kind shares).
"""

from __future__ import annotations

import argparse
from typing import Any

from taskvec.cli.activation_opts import (
    add_eval,
    add_extract_options,
    add_icl_options,
    check_extract_args,
    check_layer,
    parse_scales,
    plot_layers,
    report_extraction,
)
from taskvec.cli.options import (
    add_model,
    add_run_options,
    add_task_out,
    check_positive,
    check_safetensors_out,
    group_help,
    new_command,
    show_progress,
    write_head_heatmap,
)
from taskvec.cli.output import print_json, print_table
from taskvec.errors import UserInputError


def register(sub: Any) -> None:
    fv = new_command(sub, "fv", "function vectors (Todd et al.): extract, evaluate")
    fv.set_defaults(func=group_help(fv))
    fsub = fv.add_subparsers(dest="fv_command", metavar="ACTION")
    p = new_command(fsub, "extract", "extract a function vector (head means, IE scan, layer sweep)")
    add_extract_options(p)
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
    add_eval(fsub, "a function vector")
    p = new_command(fsub, "means", "per-head mean activations only (data-parallel under torchrun)")
    add_model(p)
    add_task_out(p, "task name, e.g. antonym", "output .safetensors file (kind head_means)")
    add_icl_options(p)
    p.add_argument("--correct-only", action="store_true", help="average only prompts answered correctly")
    add_run_options(p)
    p.set_defaults(func=run_fv_means)



def run_fv_means(args: argparse.Namespace) -> int:
    """Head means alone; under torchrun the prompts are split over ranks, rank 0 writes."""
    from taskvec import dist
    from taskvec.activations.activation_vector import ActivationVector
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
    tensors = {"head_means": hm.means} | ({"attn_rms": hm.attn_rms} if hm.attn_rms is not None else {})
    av = ActivationVector("head_means", tensors,
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

    task, out = check_extract_args(args)
    IE_METHODS.get(args.ie_method)
    check_positive(("--top-k", args.top_k), ("--ie-prompts", args.ie_prompts), ("--ie-batch-size", args.ie_batch_size))
    heads = parse_heads(args.heads) if args.heads else None
    if heads and args.plot_ie:
        raise UserInputError("--plot-ie needs the IE scan: drop --heads.")
    scales = parse_scales(args.scales)
    positions = positions_from_str(args.positions)
    from taskvec.models import load_model

    model, tok = load_model(args.model, dtype=args.dtype, device=args.device)
    check_layer(model, args.layer)
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
        plots["layer plot"] = plot_layers(av, args.plot_layers, f"{task.name}: function vector by layer")
    return report_extraction(av, out, args, plots)


def _plot_ie(av: Any, path: str) -> str:
    scores = av.tensors["ie_scores"].numpy()  # (L, H)
    title = f"{av.task}: indirect effect per head ({av.metadata['extra']['ie']['n_prompts']} prompts)"
    return write_head_heatmap(scores, path, title, cbar="P(answer) gain")
