"""LoRA (or full) fine-tuning of a causal LM on a task's train split, resumable and deterministic.

Each training example is ``task.prompt(ex) + task.answer(ex)``, tokenized the way scoring does
(prompt with special tokens, answer without, ids concatenated); only the answer tokens carry
loss. Batches are left-padded with position ids from the attention mask.

Determinism: the data order is a pure function of ``(seed, step)`` (a seeded permutation per
epoch, reshuffled with ``seed + epoch``), and any dropout draws from a generator reseeded from
``(seed, step)`` before each step. So a run resumed from a checkpoint at step k sees exactly the
batches and random numbers of an uninterrupted run, and on CPU its final weights are
bit-identical. The optimizer is torch AdamW with a constant learning rate after an optional
linear warmup (``warmup_steps``, default 0); there is no decay that depends on the total
number of steps, so a finished run can be extended by resuming with more steps.

The caller's model is wrapped in place by PEFT (LoRA modules are injected into it). The
returned :class:`FinetuneResult` holds the ``PeftModel`` for evaluation; call
``result.unload()`` to remove the LoRA modules without merging and get the untouched base
model back. With ``full=True`` a deep copy is trained and the caller's model is not touched.

Data parallelism: under ``torchrun`` or ``accelerate launch`` (``WORLD_SIZE > 1``) every rank
builds the same global batch of ``batch_size`` examples and takes the rows ``rank::world`` of
it; the model is wrapped in torch's ``DistributedDataParallel`` (gloo on CPU, nccl on GPUs),
and each rank's summed answer loss is divided by the token count of the *global* batch, so
the averaged gradients equal a single-process run's (up to float summation order) and the
data order, schedule and checkpoints do not depend on the number of processes: a run can be
resumed with another world size. Only rank 0 writes files (log, checkpoints, adapter); resuming
needs ``out_dir`` on a filesystem every rank can read.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from taskvec import dist
from taskvec.errors import FingerprintMismatchError, NonFiniteError, UserInputError
from taskvec.eval.batching import pad_id
from taskvec.io_utils import atomic_dir
from taskvec.weights.checkpoint import (
    latest_checkpoint,
    library_versions,
    save_checkpoint,
    truncate_log,
    write_json,
)
from taskvec.weights.early_stop import FOLDER as EARLY_STOPPING
from taskvec.weights.early_stop import EarlyStopper, check_early_stopping
from taskvec.weights.finetune_data import (
    ExampleOrder,
    TrainBatch,
    accepts_logits_to_keep,
    answer_loss,
    collate,
    encode_example,
    grouped_backward,
)
from taskvec.weights.finetune_options import (
    DEFAULT_TARGETS,
    SCHEDULES,
    TARGET_MODULES,
    check_finetune_args,
    check_out_dir,
    lr_at,
    parse_targets,
    resolve_targets,
    step_seed,
)
from taskvec.weights.finetune_pack import choose_batching
from taskvec.weights.finetune_result import FinetuneResult, restore_base, unload_adapters
from taskvec.weights.lora_kernel import LORA_KERNELS, fused_lora, wrap_lora

__all__ = [
    "DEFAULT_TARGETS",
    "TARGET_MODULES",
    "ExampleOrder",
    "FinetuneResult",
    "TrainBatch",
    "answer_loss",
    "check_finetune_args",
    "check_out_dir",
    "collate",
    "encode_example",
    "finetune",
    "parse_targets",
    "resolve_targets",
    "unload_adapters",
]

CHECKPOINTS = "checkpoints"
KEEP_CHECKPOINTS = 2
# Options that must be equal between a checkpoint and the run resuming from it.
_RESUME_KEYS = (
    "task", "split", "batch_size", "lr", "warmup_steps", "schedule", "decay_steps",
    "weight_decay", "max_grad_norm",
    "full", "lora_r", "lora_alpha", "target_modules", "seed", "max_length", "train_examples",
)

StepCallback = Callable[[int, float], None]


# -- training ------------------------------------------------------------------------------
def _check_resume(ckpt_state: dict[str, Any], config: dict[str, Any], path: Path) -> None:
    old = ckpt_state.get("config", {})
    if old.get("base_fingerprint") != config["base_fingerprint"]:
        raise FingerprintMismatchError(
            f"checkpoint {path} was made from base model {old.get('base_fingerprint')}, not "
            f"{config['base_fingerprint']}; resume with the same --model."
        )
    diff = [k for k in _RESUME_KEYS if old.get(k) != config[k]]
    if diff:
        shown = ", ".join(f"{k}={old.get(k)!r} (now {config[k]!r})" for k in diff)
        raise UserInputError(f"cannot resume from {path}: it used {shown}; pass the same options.")


def finetune(
    model: Any,
    tok: Any,
    task: Any,
    out_dir: str | Path,
    *,
    steps: int = 200,
    batch_size: int = 8,
    lr: float = 2e-4,
    lora_r: int = 16,
    lora_alpha: float = 16,
    targets: str | Sequence[str] = DEFAULT_TARGETS,
    full: bool = False,
    seed: int = 0,
    max_length: int = 128,
    checkpoint_every: int = 50,
    resume: bool = False,
    progress: bool = True,
    split: str | None = None,
    warmup_steps: int = 0,
    schedule: str = "constant",
    weight_decay: float = 0.0,
    max_grad_norm: float | None = 1.0,
    keep_checkpoints: bool = False,
    callback: StepCallback | None = None,
    fsdp: bool = False,
    holdout: int = 0,
    holdout_seed: int = 0,
    batching: str = "auto",
    lora_kernel: str = "fused",
    eval_every: int = 0,
    patience: int = 0,
) -> FinetuneResult:
    """Fine-tune ``model`` on ``task``'s train split; write ``out_dir/adapter`` (or ``model``).

    LoRA (r, alpha, dropout 0, no bias) on the ``targets`` projections, or all parameters
    with ``full=True``. AdamW, constant ``lr`` after ``warmup_steps``, gradients clipped to
    ``max_grad_norm``. Checkpoints every ``checkpoint_every`` steps (0: never) under
    ``out_dir/checkpoints/`` (the newest 2 kept; removed at the end unless
    ``keep_checkpoints``); ``resume=True`` continues from the newest one. ``callback(step,
    loss)`` runs after each step (and its checkpoint). See the module docstring for
    determinism and for what happens to ``model``. ``fsdp=True`` (LoRA, several processes)
    shards the model with FSDP2 (:mod:`taskvec.weights.finetune_fsdp`); the model stays
    sharded afterwards and ``result.unload()`` is not available. ``holdout=N`` (> 0) trains on
    the train split minus its seeded held-out slice of ``N`` (split ``train_fit``), recorded in
    the recipe so that ``search``/``negate`` choose coefficients on examples never trained on
    (:mod:`taskvec.weights.protocol`); ``taskvec finetune`` holds out 200 by default.
    ``batching``: ``"auto"`` (default) runs each batch packed, several examples per row with no
    padding (:mod:`~taskvec.weights.finetune_pack`), when the model honours packed position ids
    (checked on real examples), else as ``"length-grouped"`` micro-batches; ``"padded"`` is one
    left-padded batch (also what data parallelism uses). The same mean-loss gradient, batches
    and data order either way (``recipe.batching`` says which ran). ``lora_kernel="fused"``
    runs the LoRA linears through :mod:`taskvec.weights.lora_kernel`, ``"peft"`` through PEFT's
    forward: the same function to float rounding (``recipe.lora_kernel``; FSDP: ``"peft"``).
    ``eval_every=K`` (needs ``holdout``) evaluates on the held-out slice every K steps, keeps the
    best step's weights and stops after ``patience`` evaluations without improvement
    (:mod:`taskvec.weights.early_stop`; ``recipe.early_stopping``).
    """
    from tqdm.auto import tqdm

    from taskvec.models.fingerprint import fingerprint
    from taskvec.models.loading import model_name

    check_finetune_args(steps, batch_size, lr, lora_r, lora_alpha, max_length, checkpoint_every,
                        warmup_steps, weight_decay, max_grad_norm)
    out = check_out_dir(out_dir, resume)
    split = split or task.train_split
    if isinstance(holdout, bool) or not isinstance(holdout, int) or holdout < 0:
        raise UserInputError(f"--holdout must be a non-negative integer, got {holdout!r}.")
    if holdout:
        from taskvec.weights.search import FIT_SPLIT, with_holdout

        if split not in (task.train_split, FIT_SPLIT):
            raise UserInputError(f"--holdout applies to the train split ({task.train_split}), not {split}: "
                                 "pass --holdout 0 to train on another split.")
        task, split = with_holdout(task, holdout, holdout_seed), FIT_SPLIT
    examples = task.load(split)
    if schedule not in SCHEDULES:
        raise UserInputError(f'unknown schedule "{schedule}": use one of {", ".join(SCHEDULES)}.')
    if not examples:
        raise UserInputError(f"task {task.name} split {split} has no examples to train on.")
    rank, world_size = dist.world()
    check_early_stopping(eval_every, patience, holdout, world_size)
    if fsdp and world_size == 1:
        raise UserInputError("--fsdp needs several processes: launch with `torchrun --nproc_per_node N` "
                             "or `accelerate launch`, or drop --fsdp.")
    if fsdp and full:
        raise UserInputError("--fsdp is implemented for LoRA fine-tuning; drop --full (or --fsdp).")
    if batch_size < world_size:
        raise UserInputError(
            f"--batch-size {batch_size} is smaller than the {world_size} processes; "
            f"use --batch-size >= {world_size} (it is the global batch, split across processes)."
        )
    if full:
        found, suffixes, conv1d = [], [], False
    else:
        found, suffixes, conv1d = resolve_targets(model, targets)
    config = {
        "task": task.name, "split": split, "batch_size": batch_size, "lr": lr,
        "warmup_steps": warmup_steps, "schedule": schedule,
        "decay_steps": steps if schedule == "linear" else None,
        "weight_decay": weight_decay, "max_grad_norm": max_grad_norm,
        "full": full, "lora_r": None if full else lora_r, "lora_alpha": None if full else lora_alpha,
        "targets": found, "target_modules": suffixes, "seed": seed, "max_length": max_length,
        "train_examples": len(examples), "base_model": model_name(model),
        "base_fingerprint": fingerprint(model),
    }
    config["batching"] = choose_batching(model, tok, task, examples, max_length,
                                         batching if world_size == 1 else "padded")
    if lora_kernel not in LORA_KERNELS:
        raise UserInputError(f"unknown LoRA kernel {lora_kernel!r}; use {' or '.join(LORA_KERNELS)}.")
    config["lora_kernel"] = None if full else ("peft" if fsdp else lora_kernel)
    if holdout:  # only then, so runs started before this option still resume
        config |= {"holdout": holdout, "holdout_seed": holdout_seed}
    if eval_every:
        config |= {"eval_every": eval_every, "patience": patience}
    ckpt = latest_checkpoint(out / CHECKPOINTS) if resume else None
    if ckpt is not None:
        _check_resume(ckpt.state, config, ckpt.path)
        if ckpt.step > steps:
            raise UserInputError(f"checkpoint {ckpt.path} is past --steps {steps}; pass --steps >= {ckpt.step}.")
    if not dist.all_equal(ckpt.step if ckpt else 0):
        raise UserInputError(
            f"the processes found different checkpoints in {out}; put --out on a filesystem every "
            "process can read (resuming needs rank 0's checkpoints on every rank)."
        )
    dist.barrier()  # every rank has checked --out before rank 0 writes into it
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)

    restore = {"training": model.training,
               "requires_grad": {n: p.requires_grad for n, p in model.named_parameters()}}
    if full:
        train_model = copy.deepcopy(model)
        for p in train_model.parameters():
            p.requires_grad_(True)
    else:
        train_model = wrap_lora(model, suffixes, lora_r, lora_alpha, conv1d, seed)
    stopper = None
    if eval_every:
        from taskvec.eval import evaluate
        from taskvec.weights.search import SEARCH_SPLIT

        held = task.load(SEARCH_SPLIT)
        stopper = EarlyStopper(out, eval_every, patience, lambda m: evaluate(  # the wrapped base: fast paths
            getattr(m, "get_base_model", lambda: m)(), tok, task, examples=held, progress=False).accuracy, len(held),
            ckpt.state.get("early_stopping") if ckpt else None)
    kernel = fused_lora(train_model) if config["lora_kernel"] == "fused" else contextlib.nullcontext()
    try:
        with kernel:
            losses, seconds = _train(
                train_model, tok, task, examples, out, config, ckpt, steps=steps, batch_size=batch_size,
                lr=lr, warmup_steps=warmup_steps, schedule=schedule, weight_decay=weight_decay,
                max_grad_norm=max_grad_norm, max_length=max_length, seed=seed,
                checkpoint_every=checkpoint_every, progress=progress and rank == 0, callback=callback,
                tqdm=tqdm, rank=rank, world_size=world_size, fsdp=fsdp, batching=config["batching"],
                stopper=stopper,
            )
        if stopper is not None:
            stopper.restore_best([(n, p) for n, p in train_model.named_parameters() if p.requires_grad])
        train_model.eval()
        target_dir = out / ("model" if full else "adapter")
        if fsdp:
            from taskvec.weights import finetune_fsdp

            names = [n for n, p in train_model.named_parameters() if p.requires_grad]
            gathered = finetune_fsdp.full_weights(train_model, names)  # collective
            if rank == 0:
                with atomic_dir(target_dir, overwrite=True) as tmp:
                    finetune_fsdp.save_adapter(train_model, gathered, tmp)
        elif rank == 0:
            with atomic_dir(target_dir, overwrite=True) as tmp:
                train_model.save_pretrained(str(tmp))
                if full:
                    tok.save_pretrained(str(tmp))
        recipe = {
            **config, "steps": steps, "trained_steps": len(losses), "examples_seen": len(losses) * batch_size,
            "world_size": world_size,
            "final_loss": losses[-1], "mean_loss_last_10": sum(losses[-10:]) / len(losses[-10:]),
            "seconds": round(seconds, 3), "resumed_from_step": ckpt.step if ckpt else None,
            "device": str(next(train_model.parameters()).device),
            "dtype": str(next(train_model.parameters()).dtype).removeprefix("torch."),
            "optimizer": "AdamW", "parallel": "fsdp" if fsdp else ("ddp" if world_size > 1 else None),
            "versions": library_versions(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        if stopper is not None:
            recipe["early_stopping"] = stopper.record(steps)
        if rank == 0:
            write_json(out / "recipe.json", recipe)
        dist.barrier()  # the adapter and recipe exist before any rank returns
    except BaseException:
        if not full and not fsdp:  # leave the caller's model as it came (a sharded one cannot be)
            restore_base(unload_adapters(train_model), restore)
        raise
    if not keep_checkpoints and rank == 0:
        shutil.rmtree(out / CHECKPOINTS, ignore_errors=True)
        shutil.rmtree(out / EARLY_STOPPING, ignore_errors=True)
    return FinetuneResult(
        out_dir=out, adapter_dir=None if full else target_dir, model_dir=target_dir if full else None,
        final_loss=losses[-1], losses=losses, seconds=seconds, recipe=recipe, model=train_model,
        _restore=restore, sharded=fsdp,
    )


def _train(
    model: Any, tok: Any, task: Any, examples: list[dict], out: Path, config: dict[str, Any],
    ckpt: Any, *, steps: int, batch_size: int, lr: float, warmup_steps: int, schedule: str,
    weight_decay: float,
    max_grad_norm: float | None, max_length: int, seed: int, checkpoint_every: int,
    progress: bool, callback: StepCallback | None, tqdm: Any, rank: int = 0, world_size: int = 1,
    fsdp: bool = False, batching: str = "length-grouped", stopper: EarlyStopper | None = None,
) -> tuple[list[float], float]:
    """The training loop; returns (per-step losses, cumulative seconds).

    With ``world_size > 1`` this rank trains on rows ``rank::world_size`` of each global batch
    through ``DistributedDataParallel``; losses are those of the global batch on every rank.
    """
    device = next(model.parameters()).device
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    keep_logits = accepts_logits_to_keep(model)
    names = [n for n, _ in params]
    if ckpt is not None:  # weights first: under FSDP into the model before it is sharded
        _load_weights(ckpt, params)
    net = model
    if fsdp:
        from taskvec.weights import finetune_fsdp

        finetune_fsdp.shard(model)
        params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]  # now sharded
    elif world_size > 1:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=dist.device_ids(device))
    opt = torch.optim.AdamW([p for _, p in params], lr=lr, weight_decay=weight_decay)
    start, losses, prev_seconds = 0, [], 0.0
    if ckpt is not None:
        if fsdp:
            finetune_fsdp.load_optimizer_state(model, opt, names, ckpt.optimizer_state)
        else:  # param groups come from this optimizer (same options, checked); the state from the file
            opt.load_state_dict({"state": ckpt.optimizer_state, "param_groups": opt.state_dict()["param_groups"]})
        start, losses = ckpt.step, [float(x) for x in ckpt.state["losses"]]
        prev_seconds = float(ckpt.state.get("seconds", 0.0))
    log_path = out / "train_log.jsonl"
    main = rank == 0
    if main:
        truncate_log(log_path, start)

    order = ExampleOrder(len(examples), seed)
    encoded: dict[int, tuple[list[int], list[int]]] = {}
    pad = pad_id(tok)
    rng_devices = [device] if device.type == "cuda" else []
    t0 = time.perf_counter()
    model.train()
    bar = tqdm(total=steps, initial=start, desc=f"finetune {task.name}", unit="step",
               file=sys.stderr, disable=not progress, dynamic_ncols=True)
    try:
        with open(log_path if main else os.devnull, "a", encoding="utf-8") as log:
            for step in range(start + 1, steps + 1):
                t_step = time.perf_counter()
                idx = order(step - 1, batch_size)[rank::world_size]  # this rank's rows of the global batch
                for i in idx:
                    if i not in encoded:
                        ex = examples[i]
                        encoded[i] = encode_example(tok, task.prompt(ex), task.answer(ex), max_length)
                pairs = [encoded[i] for i in idx]
                cur_lr = lr_at(step, lr, warmup_steps, schedule, steps)
                for group in opt.param_groups:
                    group["lr"] = cur_lr
                opt.zero_grad(set_to_none=True)
                with torch.random.fork_rng(devices=rng_devices):
                    torch.manual_seed(step_seed(seed, step))  # dropout, if the model has any
                    if world_size > 1:
                        tb = collate(pairs, pad).to(device)
                        n_global = dist.all_reduce_sum(torch.tensor([float((tb.labels != -100).sum())]))
                        # DDP averages gradients over ranks: scale by world_size to get the sum
                        loss, n_tok = answer_loss(net, tb, keep_logits, float(n_global) / world_size)
                        loss.backward()
                    else:
                        loss, n_tok = grouped_backward(net, pairs, pad, device, keep_logits, batching)
                if world_size > 1:  # the global batch's mean loss, the same on every rank
                    value = float(dist.all_reduce_sum(loss.detach().reshape(1).cpu())) / world_size
                    n_tok = int(n_global)
                else:
                    value = float(loss.detach())
                if not math.isfinite(value):
                    raise NonFiniteError(
                        f"training loss became {value} at step {step}; lower --lr or use float32."
                    )
                if max_grad_norm is not None:
                    torch.nn.utils.clip_grad_norm_([p for _, p in params], max_grad_norm)
                opt.step()
                losses.append(value)
                now = time.perf_counter()
                seconds = prev_seconds + (now - t0)
                log.write(json.dumps({"step": step, "loss": value, "lr": cur_lr,
                                      "seconds": round(now - t_step, 4),
                                      "elapsed": round(seconds, 3), "tokens": n_tok}) + "\n")
                log.flush()
                stop = stopper is not None and stopper.due(step, steps) and stopper.update(step, model, params)
                if checkpoint_every and step % checkpoint_every == 0 and step < steps:
                    if fsdp:  # gather full tensors to rank 0 (collective: every rank calls)
                        ck_weights = finetune_fsdp.full_weights(model, names)
                        ck_opt: Any = finetune_fsdp.full_optimizer_state(model, opt, names)
                    else:
                        ck_weights, ck_opt = dict(params), opt
                    if main:
                        save_checkpoint(
                            out / CHECKPOINTS, step, ck_weights, ck_opt,
                            {"losses": losses, "seconds": seconds, "config": config,
                             **({"early_stopping": stopper.state()} if stopper else {})},
                            keep=KEEP_CHECKPOINTS,
                        )
                    dist.barrier()  # the checkpoint is on disk before any rank goes on (or dies)
                bar.update(1)
                bar.set_postfix(loss=f"{sum(losses[-10:]) / len(losses[-10:]):.4f}")
                if callback is not None:
                    callback(step, value)
                if stop:
                    break
    finally:
        bar.close()
    return losses, prev_seconds + (time.perf_counter() - t0)


def _load_weights(ckpt: Any, params: list[tuple[str, torch.nn.Parameter]]) -> None:
    """Copy a checkpoint's trainable weights into the (unsharded) model."""
    from taskvec.errors import FileFormatError

    names = {n for n, _ in params}
    if set(ckpt.weights) != names:
        raise FileFormatError(
            f"checkpoint {ckpt.path} holds other trainable tensors than this model "
            f"({len(ckpt.weights)} vs {len(names)}); use a new --out."
        )
    with torch.no_grad():
        for n, p in params:
            w = ckpt.weights[n]
            if w.shape != p.shape:
                raise FileFormatError(f"checkpoint {ckpt.path}: {n} has shape {tuple(w.shape)}, expected {tuple(p.shape)}.")
            p.copy_(w)
