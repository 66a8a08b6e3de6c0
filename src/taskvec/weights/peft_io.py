"""PEFT LoRA adapters <-> low-rank task vectors (exact both ways for low-rank vectors)."""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from taskvec.errors import FileFormatError, MissingFileError, UserInputError
from taskvec.io_utils import atomic_dir
from taskvec.weights.core_space import compress
from taskvec.weights.lowrank import LowRankDelta, dense_of, svd_low_rank
from taskvec.weights.vector import TaskVector

_KEY_RE = re.compile(r"^(?:base_model\.model\.)?(?P<mod>.+)\.lora_(?P<ab>[AB])(?:\.[^.]+)?\.weight$")


def _pattern_value(patterns: Mapping[str, Any], module: str, default: Any) -> Any:
    """PEFT's rank/alpha patterns: a key matches a module name ending with it."""
    for key, val in (patterns or {}).items():
        if re.fullmatch(rf"(.*\.)?{key}", module):
            return val
    return default


def read_peft_adapter(adapter_dir: str | os.PathLike, metadata: Mapping[str, Any] | None = None) -> TaskVector:
    """Low-rank vector from a PEFT LoRA adapter directory: ``delta = (alpha / r) * B @ A``."""
    d = Path(adapter_dir)
    cfg_path = d / "adapter_config.json"
    if not cfg_path.exists():
        raise MissingFileError(f"{d} has no adapter_config.json: pass a PEFT LoRA adapter directory.")
    try:
        cfg = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as exc:
        raise FileFormatError(f"{cfg_path} is not valid JSON ({exc.msg}).") from None
    if cfg.get("peft_type", "LORA") != "LORA":
        raise UserInputError(f"{d} is a {cfg.get('peft_type')} adapter; only LoRA adapters are task vectors here.")
    if cfg.get("use_dora"):
        raise UserInputError(f"{d} is a DoRA adapter (not a plain low-rank delta); merge it and use --dense.")
    if cfg.get("modules_to_save"):
        raise UserInputError(
            f"{d} saves full modules ({cfg['modules_to_save']}); those are not deltas. "
            "Merge the adapter and extract a dense vector instead."
        )
    weights = d / "adapter_model.safetensors"
    if not weights.exists():
        raise MissingFileError(f"{d} has no adapter_model.safetensors (only safetensors adapters are read).")
    from safetensors import SafetensorError, safe_open

    factors: dict[str, dict[str, torch.Tensor]] = {}
    try:
        with safe_open(str(weights), framework="pt") as fh:
            for key in fh.keys():
                m = _KEY_RE.match(key)
                if not m:
                    raise UserInputError(f'{weights}: unsupported adapter tensor "{key}" (only LoRA A/B factors).')
                factors.setdefault(m["mod"], {})[m["ab"]] = fh.get_tensor(key).float()
    except SafetensorError as exc:
        raise FileFormatError(f"{weights} is corrupted ({exc}).") from None
    r0, alpha0 = int(cfg.get("r", 8)), float(cfg.get("lora_alpha", 8))
    fan_in_fan_out = bool(cfg.get("fan_in_fan_out", False))
    deltas: dict[str, LowRankDelta] = {}
    for mod, ab in factors.items():
        if set(ab) != {"A", "B"}:
            raise FileFormatError(f'{weights}: module "{mod}" lacks its lora_A or lora_B factor.')
        A, B = ab["A"], ab["B"]  # (r, in), (out, r)
        r = int(_pattern_value(cfg.get("rank_pattern", {}), mod, r0))
        alpha = float(_pattern_value(cfg.get("alpha_pattern", {}), mod, alpha0))
        scale = alpha / math.sqrt(r) if cfg.get("use_rslora") else alpha / r
        if fan_in_fan_out:  # Conv1D weight is (in, out): delta^T = A^T B^T
            deltas[f"{mod}.weight"] = LowRankDelta(B.T.contiguous(), A.T.contiguous(), scale)
        else:
            deltas[f"{mod}.weight"] = LowRankDelta(A, B, scale)
    meta = {
        "storage": "low-rank",
        "base_model": cfg.get("base_model_name_or_path"),
        "lora_r": r0,
        "lora_alpha": alpha0,
    } | dict(metadata or {})
    return TaskVector(deltas, {k: v for k, v in meta.items() if v is not None})


def export_peft(
    vector: TaskVector,
    out_dir: str | os.PathLike,
    rank: int | None = None,
    base_model: str | None = None,
    fan_in_fan_out: bool = False,
    overwrite: bool = False,
) -> Path:
    """Write a PEFT LoRA adapter: exact for low-rank deltas, SVD-truncated to ``rank`` for dense
    ones (and for low-rank ones of a higher rank, through their factors).

    Each module gets its own rank (``rank_pattern``) and ``alpha = r`` (scale 1); the vector's
    scale is folded into B. Only 2-D weight deltas can be exported.
    """
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    ranks: dict[str, int] = {}
    for name, d in vector.items():
        if len(d.shape) != 2 or not name.endswith(".weight"):
            raise UserInputError(
                f'"{name}" is not a 2-D weight delta; a LoRA adapter cannot hold it. '
                "Use `taskvec apply` to write a full model instead."
            )
        if isinstance(d, LowRankDelta):  # never densified: an SVD through the factors if cut
            lr = d if rank is None or d.rank <= rank else compress(d, rank=rank)[0]
        else:
            if rank is None:
                raise UserInputError("the vector has dense deltas: pass --rank R for an SVD-truncated adapter.")
            lr = svd_low_rank(dense_of(d), rank=rank)
        A, B = lr.A.float(), lr.B.float() * lr.scale  # (r, in), (out, r)
        if fan_in_fan_out:  # stored transposed for Conv1D
            A, B = B.T.contiguous(), A.T.contiguous()
        mod = name[: -len(".weight")]
        tensors[f"base_model.model.{mod}.lora_A.weight"] = A.contiguous()
        tensors[f"base_model.model.{mod}.lora_B.weight"] = B.contiguous()
        ranks[mod] = int(A.shape[0])
    if not ranks:
        raise UserInputError("the vector is empty: nothing to export.")
    r0 = max(ranks.values())
    cfg = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model or vector.metadata.get("base_model"),
        "r": r0,
        "lora_alpha": r0,
        # Keys are regexes in PEFT: escape the dots of full module names.
        "rank_pattern": {re.escape(m): r for m, r in ranks.items()},
        "alpha_pattern": {re.escape(m): r for m, r in ranks.items()},
        "target_modules": sorted(ranks),
        "lora_dropout": 0.0,
        "bias": "none",
        "fan_in_fan_out": fan_in_fan_out,
        "inference_mode": True,
        "use_rslora": False,
        "use_dora": False,
    }
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        save_file(tensors, str(tmp / "adapter_model.safetensors"), metadata={"format": "pt"})
        (tmp / "adapter_config.json").write_text(json.dumps(cfg, indent=2))
    return Path(out_dir)
