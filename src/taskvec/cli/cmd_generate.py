"""``taskvec generate``: greedy completion, optionally with a task vector applied."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from taskvec.cli.options import add_json, add_model, new_command
from taskvec.cli.output import print_json
from taskvec.cli.vector_opts import add_vector_opts, load_model_with_vector


def register(sub: Any) -> None:
    p = new_command(sub, "generate", "greedy completion of a prompt (optionally base + vector)")
    add_model(p)
    add_vector_opts(p)
    p.add_argument("--prompt", required=True, help="the prompt text (or the input, with --task)")
    p.add_argument("--task", default=None, help="wrap --prompt in this task's prompt template")
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--fv", default=None, help="inject this activation vector (taskvec fv/residual extract)")
    p.add_argument("--fv-scale", type=float, default=None, help="scale of --fv (default: the file's)")
    p.add_argument("--fv-positions", default=None,
                   help="last or last+generated (default: the file's; function vectors: last)")
    p.add_argument("--soft", default=None, help="blend heads with this soft task vector (taskvec soft train)")
    p.add_argument("--soft-positions", default=None, help="last or last+generated (default: the file's)")
    add_json(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import string

    from taskvec.errors import UserInputError
    from taskvec.eval.scoring import greedy_generate

    prompt = args.prompt
    if args.task:
        from taskvec.tasks import get_task

        task = get_task(args.task)
        fields = [f for _, f, _, _ in string.Formatter().parse(task.template) if f]
        if len(set(fields)) != 1:
            raise UserInputError(
                f"task {task.name} needs fields {sorted(set(fields))}; --task works for one-field "
                "templates: write the whole prompt in --prompt instead."
            )
        prompt = task.prompt({fields[0]: args.prompt})
    if args.max_new_tokens <= 0:
        raise UserInputError(f"--max-new-tokens must be positive, got {args.max_new_tokens}.")

    fv = None
    if args.fv:  # an activation vector: validated before any weight is read
        from taskvec.activations.activation_vector import load_activation
        from taskvec.activations.hooks import positions_from_str

        fv = load_activation(args.fv, ("function_vector", "residual_vector"))
        positions = positions_from_str(args.fv_positions) if args.fv_positions else None
        fv_scale = fv.scale if args.fv_scale is None else args.fv_scale
        if fv_scale != fv_scale or abs(fv_scale) == float("inf"):
            raise UserInputError(f"--fv-scale must be a finite number, got {fv_scale}.")
    soft = None
    if args.soft:
        from taskvec.activations.hooks import positions_from_str
        from taskvec.activations.soft_vector import load_soft

        if fv is not None:
            raise UserInputError("pass --fv or --soft, not both.")
        soft = load_soft(args.soft)
        soft_positions = positions_from_str(args.soft_positions) if args.soft_positions else None
    if (fv is not None or soft is not None) and args.vector:
        from taskvec.cli.vector_opts import ACTIVATION_KINDS
        from taskvec.formats import file_kind

        if Path(args.vector).is_file() and file_kind(args.vector) in ACTIVATION_KINDS:
            raise UserInputError("--vector is an activation vector too: pass one activation vector.")
    model, tok, vec, ctx = load_model_with_vector(args)
    if fv is not None:
        fv.check_model(model, force=args.force)
        ctx = fv.intervention(model, scale=fv_scale, positions=positions)
    elif soft is not None:
        soft.check_model(model, force=args.force)
        ctx = soft.intervention(model, positions=soft_positions)
    with ctx:
        text = greedy_generate(model, tok, [prompt], max_new_tokens=args.max_new_tokens, batch_size=1)[0]
    if args.json:
        print_json({"prompt": prompt, "completion": text, "vector": args.vector, "scale": vec.scale if vec else None,
                    "fv": args.fv, "fv_scale": fv_scale if fv is not None else None,
                    "soft": args.soft})
    else:
        print(prompt + text)
    return 0
