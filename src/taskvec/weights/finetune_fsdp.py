"""Fully sharded data parallel (FSDP2) for :func:`taskvec.weights.finetune.finetune`.

With ``fsdp=True`` under ``torchrun`` / ``accelerate launch`` every decoder layer and then the
whole (PEFT-wrapped) model is passed to ``torch.distributed.fsdp.fully_shard``: parameters,
gradients and optimizer state are split across ranks and each layer's parameters are gathered
only while it runs. Gradients are averaged by reduce-scatter, the same arithmetic as DDP, so
the loss scaling of the DDP path applies unchanged and results equal a single-process run up to
float summation order.

Checkpoints and the final adapter hold *full* tensors (gathered to rank 0 with
``torch.distributed.checkpoint.state_dict``), in the same files as a single-process run, so a
run can be resumed with or without FSDP and with another number of processes.

Limits: each rank loads the whole model before sharding it (host RAM must hold one copy per
process); the trained model stays sharded, so evaluate the saved adapter afterwards
(``taskvec eval --vector`` after ``taskvec extract``), not in the same process.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

__all__ = ["full_optimizer_state", "full_weights", "load_optimizer_state", "save_adapter", "shard"]


def _options() -> Any:
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=True)


def shard(model: Any) -> Any:
    """``fully_shard`` every decoder layer, then the root module (in place); returns ``model``."""
    from torch.distributed.fsdp import fully_shard

    from taskvec.models.adapter import get_adapter

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    for layer in get_adapter(base).layers:
        fully_shard(layer)
    fully_shard(model)
    return model


def full_weights(model: Any, names: list[str]) -> dict[str, torch.Tensor]:
    """The full (unsharded, CPU) tensors of ``names``: a collective call; non-empty on rank 0 only."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    sd = get_model_state_dict(model, options=_options())
    return {n: sd[n] for n in names if n in sd}


def full_optimizer_state(model: Any, opt: torch.optim.Optimizer, names: list[str]) -> dict[str, Any]:
    """The optimizer state in torch's index-keyed ``state_dict()`` form, full tensors (rank 0).

    A collective call. ``names`` are the trainable parameters in the optimizer's order.
    """
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    osd = get_optimizer_state_dict(model, opt, options=_options())
    index = {n: i for i, n in enumerate(names)}
    state = {index[fqn]: dict(v) for fqn, v in osd.get("state", {}).items() if fqn in index}
    groups = []
    for g in osd.get("param_groups", []):
        groups.append({**{k: v for k, v in g.items() if k != "params"},
                       "params": [index[f] for f in g["params"] if f in index]})
    return {"state": state, "param_groups": groups}


def load_optimizer_state(model: Any, opt: torch.optim.Optimizer, names: list[str],
                         state: dict[int, dict[str, Any]]) -> None:
    """Load an index-keyed full optimizer state (from a checkpoint) into a sharded optimizer."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    groups = [{**{k: v for k, v in g.items() if k != "params"}, "params": list(names)}
              for g in opt.state_dict()["param_groups"]]
    full = {"state": {names[i]: v for i, v in state.items()}, "param_groups": groups}
    set_optimizer_state_dict(model, opt, full, options=StateDictOptions(full_state_dict=True))


def save_adapter(model: Any, weights: dict[str, torch.Tensor], out_dir: str | Path, tok: Any = None,
                 full: bool = False) -> None:
    """Write what ``save_pretrained`` writes, from gathered full ``weights`` (rank 0 only)."""
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    if full:
        model.save_pretrained(str(out_dir), state_dict=weights)
        if tok is not None:
            tok.save_pretrained(str(out_dir))
        return
    from peft.utils import get_peft_model_state_dict

    sd = get_peft_model_state_dict(model, state_dict=weights)
    save_file({k: v.contiguous() for k, v in sd.items()}, str(out_dir / "adapter_model.safetensors"),
              metadata={"format": "pt"})
    model.peft_config["default"].save_pretrained(str(out_dir))
