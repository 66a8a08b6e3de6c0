"""``taskvec finetune``: LoRA (or full) fine-tuning on a task's train split, resumable."""

from __future__ import annotations

import argparse
from typing import Any

from taskvec.cli.options import add_json, add_model, add_progress, new_command, show_progress
from taskvec.cli.output import print_json, print_table
from taskvec.defaults import DEFAULT_HOLDOUT


def register(sub: Any) -> None:
    p = new_command(
        sub, "finetune", "fine-tune a model on a task with LoRA (or fully) and save the adapter",
        description="Fine-tune a model on a task's train split (loss on the answer tokens only). "
        "Writes OUT/adapter/ (a PEFT adapter; OUT/model/ with --full), OUT/recipe.json and "
        "OUT/train_log.jsonl; checkpoints go to OUT/checkpoints/ while training. Data-parallel under "
        "`torchrun` or `accelerate launch` (DDP; --batch-size is the global batch).",
    )
    add_model(p)
    p.add_argument("--task", required=True, help="task name (see `taskvec tasks`) or a task .yaml file")
    p.add_argument("--out", required=True, help="output directory (new or empty, unless --resume)")
    p.add_argument("--steps", type=int, default=200, help="optimizer steps (default 200)")
    p.add_argument("--batch-size", type=int, default=8, help="examples per step (default 8)")
    p.add_argument("--lr", type=float, default=2e-4, help="AdamW learning rate (default 2e-4)")
    p.add_argument("--warmup-steps", type=int, default=0, help="linear warmup steps (default 0)")
    p.add_argument("--schedule", choices=["constant", "linear"], default="constant",
                   help="learning rate after warmup: constant (default) or linear decay to 0")
    p.add_argument("--lora-r", type=int, default=16, help="LoRA rank (default 16)")
    p.add_argument("--lora-alpha", type=float, default=16, help="LoRA alpha; scale = alpha / r (default 16)")
    p.add_argument("--targets", default="q,k,v,o,gate,up,down",
                   help="LoRA targets, comma-separated from q,k,v,o,gate,up,down (default: all)")
    p.add_argument("--full", action="store_true", help="train all parameters (small models) instead of LoRA")
    p.add_argument("--seed", type=int, default=0, help="seed for data order and LoRA init (default 0)")
    p.add_argument("--max-length", type=int, default=128, help="max tokens per example; prompts are cut on the left")
    p.add_argument("--split", default=None, help="split to train on (default: the task's train split)")
    p.add_argument("--holdout", type=int, default=None,
                   help=f"train examples held out for choosing coefficients (`taskvec search`/`negate` use "
                        f"them; default {DEFAULT_HOLDOUT} with the train split, 0 with another --split)")
    p.add_argument("--holdout-seed", type=int, default=0, help="seed of the held-out slice (default 0)")
    p.add_argument("--batching", choices=["auto", "packed", "length-grouped", "padded"], default="auto",
                   help="how each batch runs: auto (packed rows without padding when the model supports "
                        "them, else length-grouped micro-batches), or one of those, or padded")
    p.add_argument("--lora-kernel", choices=["fused", "peft"], default="fused",
                   help="LoRA linear: fused (default; the scaled LoRA term accumulated into the base GEMM, "
                        "no element-wise passes over activations) or peft (PEFT's own forward)")
    p.add_argument("--eval-every", type=int, default=0,
                   help="early stopping: every K steps score the held-out slice and keep the best step "
                        "(default 0: off; needs --holdout > 0)")
    p.add_argument("--patience", type=int, default=0,
                   help="stop after this many evaluations without improvement (default 0: train all "
                        "--steps, still keep the best step)")
    p.add_argument("--checkpoint-every", type=int, default=50, help="checkpoint interval in steps (0: never)")
    p.add_argument("--keep-checkpoints", action="store_true", help="keep OUT/checkpoints/ after training")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    p.add_argument("--fsdp", action="store_true",
                   help="shard the model across the torchrun / accelerate processes (FSDP2, LoRA only)")
    p.add_argument("--eval-limit", type=int, default=0,
                   help="afterwards evaluate on the first N eval-split examples (default 0: skip)")
    p.add_argument("--eval-batch-size", type=int, default=16)
    add_progress(p)
    add_json(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from taskvec.errors import UserInputError, unknown_name
    from taskvec.models import load_model
    from taskvec.models.loading import check_dtype_device
    from taskvec.tasks import get_task
    from taskvec.weights.finetune import (
        check_finetune_args,
        check_out_dir,
        finetune,
        parse_targets,
    )

    # Validate everything cheap before reading any weights.
    check_finetune_args(args.steps, args.batch_size, args.lr, args.lora_r, args.lora_alpha,
                        args.max_length, args.checkpoint_every, args.warmup_steps)
    if args.eval_limit < 0:
        raise UserInputError(f"--eval-limit must be >= 0, got {args.eval_limit}.")
    if args.fsdp and args.eval_limit:
        raise UserInputError("--eval-limit cannot be used with --fsdp (the model stays sharded); "
                             "evaluate the saved adapter afterwards with `taskvec extract` + `taskvec eval --vector`.")
    if args.eval_batch_size <= 0:
        raise UserInputError(f"--eval-batch-size must be positive, got {args.eval_batch_size}.")
    targets = parse_targets(args.targets)
    check_out_dir(args.out, args.resume)
    check_dtype_device(args.dtype, args.device)
    task = get_task(args.task)
    split = args.split or task.train_split
    if split not in task.splits:
        raise unknown_name(f"split of task {task.name}", split, task.splits)
    holdout = args.holdout if args.holdout is not None else (DEFAULT_HOLDOUT if split == task.train_split else 0)
    if holdout < 0:
        raise UserInputError(f"--holdout must be >= 0, got {holdout}.")
    if holdout and split != task.train_split:
        raise UserInputError(f"--holdout applies to the train split ({task.train_split}), not {split}: "
                             "pass --holdout 0 to train on another split.")
    from taskvec import dist
    from taskvec.weights.early_stop import check_early_stopping

    check_early_stopping(args.eval_every, args.patience, holdout, dist.world()[1])

    model, tok = load_model(args.model, dtype=args.dtype, device=args.device)
    res = finetune(
        model, tok, task, args.out, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
        lora_r=args.lora_r, lora_alpha=args.lora_alpha, targets=targets, full=args.full,
        seed=args.seed, max_length=args.max_length, checkpoint_every=args.checkpoint_every,
        resume=args.resume, progress=show_progress(args), split=split,
        warmup_steps=args.warmup_steps, schedule=args.schedule, keep_checkpoints=args.keep_checkpoints,
        fsdp=args.fsdp, holdout=holdout, holdout_seed=args.holdout_seed, batching=args.batching,
        lora_kernel=args.lora_kernel, eval_every=args.eval_every, patience=args.patience,
    )
    saved = res.model_dir if args.full else res.adapter_dir
    accuracy = None
    eval_out: dict[str, Any] | None = None
    if args.eval_limit:
        from taskvec.eval import evaluate

        # the PEFT-wrapped base model carries the LoRA layers and keeps fast scoring paths
        net = res.model if args.full else res.model.get_base_model()
        ev = evaluate(net, tok, task, split=task.eval_split, limit=args.eval_limit,
                      batch_size=args.eval_batch_size, progress=show_progress(args))
        accuracy, eval_out = ev.accuracy, ev.to_dict()

    if not dist.is_main():  # under torchrun / accelerate launch only rank 0 prints
        return 0
    if args.json:
        print_json({
            "out_dir": str(res.out_dir), "saved": str(saved), "steps": args.steps,
            "final_loss": res.final_loss, "seconds": res.seconds, "losses": res.losses,
            "recipe": res.recipe, "eval": eval_out,
        })
        return 0
    print_table(
        [[task.name, args.steps, res.final_loss, f"{res.seconds:.1f}s", str(saved),
          accuracy if accuracy is not None else "-"]],
        ["task", "steps", "final loss", "time", "saved to", "accuracy"],
    )
    es = res.recipe.get("early_stopping")
    if es:
        print(f"early stopping: kept step {es['best_step']} (held-out accuracy {es['best_accuracy']:.3f}, "
              f"n = {es['examples']}); last step trained {es['last_step']}"
              + (" (stopped early)" if es["stopped_early"] else ""))
    return 0
