"""What :func:`taskvec.weights.finetune.finetune` returns, and how its LoRA modules come off."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from taskvec.errors import UserInputError

__all__ = ["FinetuneResult", "restore_base", "unload_adapters"]


@dataclass
class FinetuneResult:
    """What :func:`finetune` wrote and the trained model (``PeftModel``, or a copy if full)."""

    out_dir: Path
    adapter_dir: Path | None
    model_dir: Path | None
    final_loss: float
    losses: list[float]
    seconds: float
    recipe: dict[str, Any]
    model: Any = field(default=None, repr=False)
    _restore: dict[str, Any] = field(default_factory=dict, repr=False)
    sharded: bool = False

    @property
    def full(self) -> bool:
        return self.model_dir is not None

    def unload(self) -> Any:
        """Remove the LoRA modules (no merge) and return the caller's base model as it was."""
        if self.full:
            return self.model
        if self.sharded:
            raise UserInputError("an FSDP-trained model stays sharded; load the saved adapter instead.")
        base = unload_adapters(self.model)
        restore_base(base, self._restore)
        return base


def unload_adapters(peft_model: Any) -> Any:
    """Remove a PEFT model's LoRA modules without merging; return the plain base model.

    peft < 0.18 leaves its ``peft_config`` attribute on the base: it is removed here, so the
    base is as it was before the adapters (and can be fine-tuned again).
    """
    base = peft_model.unload()
    if "peft_config" in vars(base):
        del base.peft_config
    return base


def restore_base(base: Any, restore: dict[str, Any]) -> None:
    """Put back the base's ``requires_grad`` flags and train/eval mode recorded before training."""
    flags = restore.get("requires_grad", {})
    for name, p in base.named_parameters():
        if name in flags:
            p.requires_grad_(flags[name])
    base.train(restore.get("training", False))
