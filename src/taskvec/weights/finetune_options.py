"""Fine-tuning options: which modules LoRA targets, argument checks, the learning-rate schedule.

Checked before any weights are read (``taskvec finetune`` validates its flags with these).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from taskvec.errors import UserInputError

__all__ = [
    "DEFAULT_TARGETS",
    "SCHEDULES",
    "TARGET_MODULES",
    "check_finetune_args",
    "check_out_dir",
    "lr_at",
    "parse_targets",
    "resolve_targets",
    "step_seed",
]

#: short target name -> module-name suffixes that implement it, across architectures
#: (Llama/Mistral/Qwen2/Gemma: ``*_proj``; GPT-2: fused ``c_attn`` for q/k/v, Conv1D layers).
TARGET_MODULES: dict[str, tuple[str, ...]] = {
    "q": ("q_proj", "c_attn"),
    "k": ("k_proj", "c_attn"),
    "v": ("v_proj", "c_attn"),
    "o": ("o_proj", "attn.c_proj"),
    "gate": ("gate_proj",),
    "up": ("up_proj", "mlp.c_fc"),
    "down": ("down_proj", "mlp.c_proj"),
}
DEFAULT_TARGETS: tuple[str, ...] = tuple(TARGET_MODULES)


def parse_targets(targets: str | Sequence[str]) -> list[str]:
    """Short target names from ``"q,k,v"`` or a sequence; unknown names raise UserInputError."""
    names = [t.strip() for t in targets.split(",")] if isinstance(targets, str) else list(targets)
    names = [n for n in names if n]
    if not names:
        raise UserInputError(f"--targets is empty; give some of: {','.join(TARGET_MODULES)}.")
    bad = [n for n in names if n not in TARGET_MODULES]
    if bad:
        raise UserInputError(
            f"unknown LoRA target(s) {', '.join(bad)}; valid targets: {','.join(TARGET_MODULES)}."
        )
    return list(dict.fromkeys(names))


def _projection_modules(model: Any) -> dict[str, Any]:
    from transformers.pytorch_utils import Conv1D

    return {n: m for n, m in model.named_modules() if isinstance(m, (torch.nn.Linear, Conv1D))}


def resolve_targets(model: Any, targets: str | Sequence[str]) -> tuple[list[str], list[str], bool]:
    """Map short names to this model's module suffixes: ``(found, suffixes, fan_in_fan_out)``.

    A short name that the architecture lacks (e.g. ``gate`` on GPT-2) is skipped with a
    warning; if none is found, UserInputError. ``fan_in_fan_out`` is True for Conv1D (GPT-2).
    """
    from transformers.pytorch_utils import Conv1D

    names = parse_targets(targets)
    modules = _projection_modules(model)
    found: list[str] = []
    suffixes: list[str] = []
    conv1d = False
    for short in names:
        hits = [
            s for s in TARGET_MODULES[short]
            if any(n == s or n.endswith("." + s) for n in modules)
        ]
        if hits:
            found.append(short)
            suffixes.extend(s for s in hits if s not in suffixes)
            conv1d |= any(
                isinstance(m, Conv1D) for n, m in modules.items()
                if any(n == s or n.endswith("." + s) for s in hits)
            )
    missing = [n for n in names if n not in found]
    arch = type(model).__name__
    if not found:
        raise UserInputError(
            f"none of the LoRA targets {','.join(names)} exist in {arch}; "
            f"try --targets {','.join(DEFAULT_TARGETS)}."
        )
    if missing:
        warnings.warn(f"{arch} has no {', '.join(missing)} projection; LoRA skips it.", stacklevel=2)
    return found, suffixes, conv1d


def positive_int(name: str, value: Any, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise UserInputError(f"--{name} must be an integer >= {minimum}, got {value!r}.")


def check_finetune_args(
    steps: int, batch_size: int, lr: float, lora_r: int, lora_alpha: float, max_length: int,
    checkpoint_every: int, warmup_steps: int = 0, weight_decay: float = 0.0,
    max_grad_norm: float | None = 1.0,
) -> None:
    """Validate numeric options (before any weight is read)."""
    positive_int("steps", steps)
    positive_int("batch-size", batch_size)
    positive_int("lora-r", lora_r)
    positive_int("max-length", max_length, 2)
    positive_int("checkpoint-every", checkpoint_every, 0)
    positive_int("warmup-steps", warmup_steps, 0)
    for name, value in (("lr", lr), ("lora-alpha", lora_alpha)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise UserInputError(f"--{name} must be a positive number, got {value!r}.")
    if not (math.isfinite(weight_decay) and weight_decay >= 0):
        raise UserInputError(f"weight_decay must be >= 0, got {weight_decay!r}.")
    if max_grad_norm is not None and not (math.isfinite(max_grad_norm) and max_grad_norm > 0):
        raise UserInputError(f"max_grad_norm must be positive or None, got {max_grad_norm!r}.")


def check_out_dir(out_dir: str | Path, resume: bool) -> Path:
    """The output directory must be new or empty, unless resuming an unfinished run there."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UserInputError(f"--out {out} is a file; give a directory path.")
    if resume:
        if (out / "recipe.json").exists():
            raise UserInputError(f"--out {out} holds a finished run (recipe.json); use a new --out.")
        return out
    if out.is_dir() and any(out.iterdir()):
        raise UserInputError(
            f"--out {out} is not empty; pass --resume to continue the run there, or use a new directory."
        )
    return out


SCHEDULES = ("constant", "linear")


def lr_at(step: int, lr: float, warmup_steps: int, schedule: str = "constant",
          decay_steps: int | None = None) -> float:
    """Learning rate of 1-based ``step``: linear warmup over ``warmup_steps``, then constant,
    or (``schedule="linear"``) decaying linearly to 0 at ``decay_steps``."""
    if warmup_steps > 0 and step <= warmup_steps:
        return lr * step / warmup_steps
    if schedule == "linear" and decay_steps:
        span = max(decay_steps - warmup_steps, 1)
        return lr * max(0.0, (decay_steps - step) / span)
    return lr


def step_seed(seed: int, step: int) -> int:
    return (seed * 1_000_003 + step) % (2**63)
