"""``taskvec demo``: the main job, end to end on the embedded model.

Fine-tune with LoRA on SST-2, extract the task vector, save it, load it into a fresh base, and
compare zero-shot base, fine-tuned and base + vector on the full SST-2 validation split.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from taskvec.cli.options import add_json, add_progress, new_command, show_progress
from taskvec.cli.output import print_json, print_table
from taskvec.errors import UserInputError

# A budget that finishes in about 10 minutes on 2 CPU cores (see docs/results.md).
DEMO_RECIPE = {"steps": 150, "batch_size": 16, "lr": 5e-4, "lora_r": 8, "lora_alpha": 16, "seed": 0,
               "warmup_steps": 10, "schedule": "linear"}


def register(sub: Any) -> None:
    p = new_command(sub, "demo", "fine-tune on SST-2, extract the task vector, apply it to a fresh base")
    p.add_argument("--model", default="smollm2-135m", help="base model (default: the embedded SmolLM2-135M)")
    p.add_argument("--task", default="sst2")
    p.add_argument("--out", default="runs/demo", help="working directory (default runs/demo)")
    p.add_argument("--steps", type=int, default=DEMO_RECIPE["steps"])
    p.add_argument("--batch-size", type=int, default=DEMO_RECIPE["batch_size"])
    p.add_argument("--lr", type=float, default=DEMO_RECIPE["lr"])
    p.add_argument("--limit", type=int, default=None, help="evaluate on the first N validation examples only")
    p.add_argument("--retrain", action="store_true", help="fine-tune again even if a finished run exists")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=DEMO_RECIPE["seed"],
                   help=f"seed of the LoRA initialisation and training order (default {DEMO_RECIPE['seed']})")
    add_progress(p)
    add_json(p)
    p.set_defaults(func=run)


def _finished(run_dir: Path, recipe: dict[str, Any]) -> bool:
    rp = run_dir / "recipe.json"
    if not (run_dir / "adapter" / "adapter_config.json").exists() or not rp.exists():
        return False
    old = json.loads(rp.read_text())
    return all(old.get(k) == v for k, v in recipe.items())


def run(args: argparse.Namespace) -> int:
    from taskvec.eval import evaluate
    from taskvec.models import load_model
    from taskvec.tasks import get_task
    from taskvec.weights import TaskVector, load_vector
    from taskvec.weights.finetune import finetune

    task = get_task(args.task)
    if task.kind != "classification":
        raise UserInputError(f"the demo needs a classification task; {task.name} is {task.kind}.")
    if args.steps <= 0 or args.batch_size <= 0:
        raise UserInputError("--steps and --batch-size must be positive.")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    prog = show_progress(args)
    log = (lambda *a: None) if args.json else print
    recipe = {"steps": args.steps, "batch_size": args.batch_size, "lr": args.lr,
              "lora_r": DEMO_RECIPE["lora_r"], "lora_alpha": DEMO_RECIPE["lora_alpha"], "seed": args.seed,
              "warmup_steps": DEMO_RECIPE["warmup_steps"], "schedule": DEMO_RECIPE["schedule"]}
    t_all = time.perf_counter()

    log(f"[1/5] loading {args.model}")
    model, tok = load_model(args.model, device=args.device)
    n_model = sum(p.numel() for p in model.parameters())
    log(f"[2/5] zero-shot base on {task.name} {task.eval_split}")
    base_res = evaluate(model, tok, task, limit=args.limit, progress=prog)

    run_dir = out / "finetune"
    reused = not args.retrain and _finished(run_dir, recipe)
    if not reused:
        if run_dir.exists():
            import shutil

            shutil.rmtree(run_dir)
        log(f"[3/5] LoRA fine-tuning: {args.steps} steps x batch {args.batch_size}, lr {args.lr} "
            f"({recipe['schedule']} after {recipe['warmup_steps']} warmup steps), rank {recipe['lora_r']}")
        ft = finetune(model, tok, task, run_dir, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                      lora_r=recipe["lora_r"], lora_alpha=recipe["lora_alpha"], seed=args.seed, progress=prog,
                      warmup_steps=recipe["warmup_steps"], schedule=recipe["schedule"])
        train_s = json.loads((run_dir / "recipe.json").read_text()).get("seconds")  # as a reuse reads it
        ft_res = evaluate(ft.model, tok, task, limit=args.limit, progress=prog)
        model = ft.unload()
    else:
        log(f"[3/5] reusing the finished fine-tuning run in {run_dir} (--retrain to redo)")
        from peft import PeftModel

        from taskvec.weights.finetune import unload_adapters

        train_s = json.loads((run_dir / "recipe.json").read_text()).get("seconds")
        pm = PeftModel.from_pretrained(model, run_dir / "adapter")
        ft_res = evaluate(pm, tok, task, limit=args.limit, progress=prog)
        model = unload_adapters(pm)
    del model

    log("[4/5] extracting the task vector and saving it")
    from taskvec.models import fingerprint, model_dir

    meta = {"base_model": args.model, "base_fingerprint": fingerprint(model_dir(args.model)), "task": task.name,
            "recipe": json.loads((run_dir / "recipe.json").read_text())}
    tv = TaskVector.from_peft(run_dir / "adapter", metadata=meta)
    vec_path = tv.save(out / f"{task.name}.safetensors")

    log("[5/5] fresh base + vector")
    fresh, tok = load_model(args.model, device=args.device)
    vec = load_vector(vec_path)
    vec.check_base(fresh)
    vec.apply_to(fresh, 1.0)
    tv_res = evaluate(fresh, tok, task, limit=args.limit, progress=prog)
    same = sum(a == b for a, b in zip(ft_res.predictions, tv_res.predictions))

    sizes = {"vector_file_bytes": vec_path.stat().st_size, "dense_vector_bytes": tv.dense_numel() * 4,
             "model_bytes": n_model * 4}
    from taskvec.eval.stats import mcnemar

    rows = {"base_zero_shot": base_res, "finetuned": ft_res, "base_plus_vector": tv_res}
    result = {
        "model": args.model, "task": task.name, "split": task.eval_split, "n": base_res.n,
        "recipe": recipe, "train_seconds": train_s, "training_reused": reused,
        "accuracy": {k: r.accuracy for k, r in rows.items()},
        "ci95": {k: list(r.ci95) if r.ci95 else None for k, r in rows.items()},
        # exact McNemar on the same examples: did the vector change accuracy, and does the fresh
        # base + vector differ from the fine-tuned model at all
        "paired": {"base_plus_vector_vs_base": mcnemar(tv_res.correct, base_res.correct).to_dict(),
                   "base_plus_vector_vs_finetuned": mcnemar(tv_res.correct, ft_res.correct).to_dict()},
        "same_predictions": same, "vector": str(vec_path), "sizes": sizes,
        "seconds_total": round(time.perf_counter() - t_all, 1),
    }
    from taskvec.io_utils import atomic_path

    with atomic_path(out / "demo_result.json") as tmp:
        tmp.write_text(json.dumps(result, indent=2))
    if args.json:
        print_json(result)
        return 0
    print()

    def ci(r: Any) -> str:
        return f"[{r.ci95[0]:.3f}, {r.ci95[1]:.3f}]" if r.ci95 else "-"

    print_table(
        [["base (zero-shot)", base_res.accuracy, ci(base_res), "-"],
         ["fine-tuned (LoRA)", ft_res.accuracy, ci(ft_res), "-"],
         ["base + task vector", tv_res.accuracy, ci(tv_res), f"{same}/{tv_res.n} same as fine-tuned"]],
        ["model", f"{task.name} {task.eval_split} accuracy (n={base_res.n})", "95% CI (Wilson)", "predictions"],
    )
    gain = result["paired"]["base_plus_vector_vs_base"]
    print(f"base + vector vs base: {gain['only_a']} examples gained, {gain['only_b']} lost, exact McNemar "
          f"p = {gain['p_value']:.2g} ({'significant' if gain['significant'] else 'not significant'} at 5%)")
    mb = 2**20
    print()
    print_table(
        [["task vector file (low-rank)", f"{sizes['vector_file_bytes'] / mb:.2f} MiB", f"{100 * sizes['vector_file_bytes'] / sizes['dense_vector_bytes']:.2f}% of dense"],
         ["dense task vector (fp32)", f"{sizes['dense_vector_bytes'] / mb:.2f} MiB", ""],
         ["model (fp32)", f"{sizes['model_bytes'] / mb:.2f} MiB", ""]],
        ["what", "size", ""],
    )
    trained = (f"training reused from the earlier run, which took {train_s or 0:.0f}s; --retrain to redo" if reused
               else f"of which training {train_s or 0:.0f}s")
    print(f"\nvector: {vec_path}   total time: {result['seconds_total']:.0f}s ({trained})")
    print(f'try it: taskvec generate --vector {vec_path} --task {task.name} --prompt "a gorgeous, moving film"')
    return 0
