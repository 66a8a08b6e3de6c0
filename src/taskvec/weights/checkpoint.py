"""Training checkpoints without pickle: safetensors for tensors, JSON for everything else.

A checkpoint is a directory ``checkpoints/step-N/`` holding

- ``weights.safetensors``: the trainable parameters (PEFT names, e.g. ``...lora_A.default.weight``);
- ``optimizer.safetensors``: the optimizer's per-parameter tensors, keyed ``"<index>.<key>"``;
- ``state.json``: step, losses, cumulative seconds, the run's config, the optimizer's
  param groups and its non-tensor per-parameter values.

It is written into a temporary directory next to its final place and renamed in one step, so
a directory named ``step-N`` is always complete. Nothing here can execute code when loaded.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from taskvec.errors import FileFormatError
from taskvec.io_utils import atomic_dir, atomic_path

CHECKPOINT_FORMAT = "taskvec-finetune-checkpoint"
CHECKPOINT_VERSION = 1
_STEP_DIR = re.compile(r"^step-(\d+)$")

__all__ = [
    "Checkpoint",
    "latest_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "prune_checkpoints",
    "save_checkpoint",
    "write_json",
]


def write_json(path: str | os.PathLike, data: Any) -> None:
    """Write ``data`` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


@dataclass
class Checkpoint:
    """A loaded checkpoint: trainable weights, optimizer state dict (no param groups), metadata."""

    path: Path
    step: int
    weights: dict[str, torch.Tensor]
    optimizer_state: dict[int, dict[str, Any]]
    state: dict[str, Any]


def _split_optimizer_state(opt_state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict]:
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, per_param in opt_state["state"].items():
        for key, value in per_param.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{idx}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(idx), {})[key] = value
    return tensors, scalars


def _join_optimizer_state(tensors: dict[str, torch.Tensor], scalars: dict) -> dict[int, dict]:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        idx, _, key = name.partition(".")
        if not idx.isdigit() or not key:
            raise FileFormatError(f"bad optimizer tensor name {name!r} in a checkpoint.")
        state.setdefault(int(idx), {})[key] = value
    for idx, values in scalars.items():
        state.setdefault(int(idx), {}).update(values)
    return state


def save_checkpoint(
    root: str | os.PathLike,
    step: int,
    weights: dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer | dict[str, Any],
    state: dict[str, Any],
    keep: int = 2,
) -> Path:
    """Write ``root/step-<step>/`` atomically and keep only the newest ``keep`` checkpoints.

    ``optimizer`` is an optimizer or its ``state_dict()`` (index-keyed, as torch makes it).
    """
    from safetensors.torch import save_file

    root = Path(root)
    final = root / f"step-{step}"
    opt_sd = optimizer if isinstance(optimizer, dict) else optimizer.state_dict()
    opt_tensors, opt_scalars = _split_optimizer_state(opt_sd)
    meta = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "step": step,
        **state,
        "optimizer": {"param_groups": opt_sd["param_groups"], "scalars": opt_scalars},
    }
    with atomic_dir(final, overwrite=True) as tmp:
        tmp = Path(tmp)
        save_file({k: v.detach().cpu().contiguous() for k, v in weights.items()},
                  str(tmp / "weights.safetensors"))
        save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
        # state.json last: its presence marks the files above as written
        (tmp / "state.json").write_text(json.dumps(meta, indent=1, default=_json_default) + "\n")
    prune_checkpoints(root, keep)
    return final


def _json_default(obj: Any) -> Any:
    if isinstance(obj, tuple):
        return list(obj)
    if isinstance(obj, torch.Tensor) and obj.numel() == 1:
        return obj.item()
    raise TypeError(f"cannot store {type(obj).__name__} in a checkpoint")


def list_checkpoints(root: str | os.PathLike) -> list[tuple[int, Path]]:
    """``(step, path)`` of each complete checkpoint under ``root``, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = _STEP_DIR.match(p.name)
        if m and p.is_dir() and (p / "state.json").is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def prune_checkpoints(root: str | os.PathLike, keep: int) -> None:
    """Delete all but the newest ``keep`` checkpoints, and leftovers of interrupted writes."""
    root = Path(root)
    ckpts = list_checkpoints(root)
    for _step, path in ckpts[: max(0, len(ckpts) - keep)]:
        shutil.rmtree(path, ignore_errors=True)
    if root.is_dir():
        for p in root.iterdir():
            if p.name.startswith(".step-") and p.name.endswith(".tmp"):
                shutil.rmtree(p, ignore_errors=True)


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read one checkpoint directory (safetensors + JSON only)."""
    from safetensors.torch import load_file

    path = Path(path)
    try:
        state = json.loads((path / "state.json").read_text(encoding="utf-8"))
        weights = load_file(str(path / "weights.safetensors"))
        opt_tensors = load_file(str(path / "optimizer.safetensors"))
    except (OSError, ValueError) as exc:
        raise FileFormatError(f"checkpoint {path} is unreadable ({exc}); delete it to resume from an older one.") from None
    except Exception as exc:  # safetensors raises its own error types
        raise FileFormatError(f"checkpoint {path} is corrupted ({type(exc).__name__}); delete it.") from None
    if state.get("format") != CHECKPOINT_FORMAT or state.get("version") != CHECKPOINT_VERSION:
        raise FileFormatError(f"{path} is not a taskvec checkpoint (version {CHECKPOINT_VERSION}).")
    opt = state.pop("optimizer", {})
    optimizer_state = _join_optimizer_state(opt_tensors, opt.get("scalars", {}))
    state["optimizer_param_groups"] = opt.get("param_groups", [])
    return Checkpoint(path, int(state["step"]), weights, optimizer_state, state)


def latest_checkpoint(root: str | os.PathLike) -> Checkpoint | None:
    """The newest complete checkpoint under ``root`` (falling back to older ones), or None."""
    errors = []
    for _step, path in reversed(list_checkpoints(root)):
        try:
            return load_checkpoint(path)
        except FileFormatError as exc:
            warnings.warn(f"skipping checkpoint: {exc}", stacklevel=2)
            errors.append(str(exc))
    if errors:
        raise FileFormatError(errors[0])
    return None


def library_versions() -> dict[str, str]:
    import peft
    import transformers

    import taskvec

    return {"taskvec": taskvec.__version__, "torch": torch.__version__,
            "transformers": transformers.__version__, "peft": peft.__version__,
            "python": platform.python_version()}


def truncate_log(path: Path, upto: int) -> None:
    """Keep the log lines of steps <= ``upto`` (drop what an interrupted run logged later)."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line)["step"] <= upto:
                kept.append(line)
        except (ValueError, KeyError, TypeError):
            continue  # a line cut short by a kill
    with atomic_path(path) as tmp:
        Path(tmp).write_text("".join(k + "\n" for k in kept), encoding="utf-8")
