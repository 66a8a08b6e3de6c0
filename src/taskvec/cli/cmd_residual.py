"""``taskvec residual extract|eval``: ICL task vectors in the residual stream (Hendel et al.).

``residual extract`` saves the mean last-token residual of k-shot prompts (by default minus the
zero-shot mean of the same queries) at the best layer and scale; ``residual eval`` is the same
comparison as ``fv eval``.
"""

from __future__ import annotations

import argparse
from typing import Any

from taskvec.cli.activation_opts import (
    add_eval,
    add_extract_options,
    check_extract_args,
    check_layer,
    parse_scales,
    plot_layers,
    report_extraction,
)
from taskvec.cli.options import (
    group_help,
    new_command,
    show_progress,
)


def register(sub: Any) -> None:
    res = new_command(sub, "residual", "ICL task vectors in the residual stream (Hendel et al.)")
    res.set_defaults(func=group_help(res))
    rsub = res.add_subparsers(dest="residual_command", metavar="ACTION")
    p = new_command(rsub, "extract", "extract a residual-stream ICL task vector (layer sweep)")
    add_extract_options(p)
    p.add_argument("--mode", default="diff",
                   help="diff (default: add ICL mean minus zero-shot mean), replace (Hendel et al.) or add")
    p.add_argument("--scales", default=None,
                   help="comma-separated scales swept jointly with the layer (default: 1,2,3 for diff, 1 otherwise)")
    p.set_defaults(func=run_residual_extract)
    add_eval(rsub, "a residual vector")


def run_residual_extract(args: argparse.Namespace) -> int:
    from taskvec import dist
    from taskvec.activations.residual import MODES, extract_residual_vector

    task, out = check_extract_args(args)
    if args.mode not in MODES:
        from taskvec.errors import unknown_name

        raise unknown_name("residual mode", args.mode, MODES)
    scales = None if args.scales is None else parse_scales(args.scales)
    from taskvec.models import load_model

    model, tok = load_model(args.model, dtype=args.dtype, device=args.device)
    check_layer(model, args.layer)
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
        plots["layer plot"] = plot_layers(av, args.plot_layers, f"{task.name}: residual vector by layer")
    return report_extraction(av, out, args, plots)
