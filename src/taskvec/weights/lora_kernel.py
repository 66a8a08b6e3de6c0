"""A fused LoRA linear for training: ``y = x W^T + b + s (x A^T) B^T`` in two GEMMs and an
accumulating GEMM, with a hand-written backward.

PEFT's ``lora.Linear`` computes ``result + lora_B(lora_A(x)) * scaling``: besides the GEMMs, a
multiply and an add over the whole (N, out) output in the forward, the multiply's backward over
(N, out) and the sum of the two input gradients over (N, in) in the backward. On a CPU these
passes are memory-bound and, for the 1536-wide MLP activations of the embedded model, cost
about as much as a small GEMM each (docs/benchmarks.md, "Training profile"). Here the scaled
LoRA term is accumulated into the base output by ``addmm_`` (the scale rides on the GEMM's
``alpha``) and the input gradient ``g W + s (g B) A`` into one buffer the same way, so no
element-wise pass over a full activation remains.

:func:`fused_lora` patches the eligible PEFT modules of a model for the duration of a ``with``
block and restores them in ``finally``. A module is eligible when it is a plain PEFT LoRA
``Linear`` over ``torch.nn.Linear`` (not GPT-2's ``Conv1D``), with one active adapter, no
dropout, no variant (DoRA, ...), not merged and adapters enabled; a call is fused only when
the input has the weights' dtype and autocast is off. Anything else runs PEFT's own forward.
The result equals PEFT's to float rounding (a different summation order), and so do the
gradients (``tests/test_lora_kernel.py``, all six tiny architectures).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from types import MethodType
from typing import Any

import torch

from taskvec.errors import UserInputError

__all__ = ["LORA_KERNELS", "fused_lora", "lora_linear", "wrap_lora"]

#: ``finetune(lora_kernel=...)`` values (``recipe.lora_kernel``).
LORA_KERNELS = ("fused", "peft")


class _LoraLinear(torch.autograd.Function):
    """``x W^T + b + s (x A^T) B^T`` with x (..., in), W (out, in), A (r, in), B (out, r)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None,
                a: torch.Tensor, b: torch.Tensor, s: float) -> torch.Tensor:
        lead = x.shape[:-1]
        x2 = x.reshape(-1, x.shape[-1])                      # (N, in)
        xa = torch.mm(x2, a.t())                             # (N, r)
        out = torch.mm(x2, w.t()) if bias is None else torch.addmm(bias, x2, w.t())  # (N, out)
        out.addmm_(xa, b.t(), alpha=s)                       # += s (x A^T) B^T, no (N, out) temporaries
        ctx.save_for_backward(x2, xa, w, a, b)
        ctx.s, ctx.lead, ctx.has_bias = s, lead, bias is not None
        return out.reshape(*lead, out.shape[-1])

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x2, xa, w, a, b = ctx.saved_tensors
        s = ctx.s
        g2 = g.reshape(-1, g.shape[-1])                      # (N, out)
        need_x, need_w, need_bias, need_a, need_b, _ = ctx.needs_input_grad
        gx = gw = gbias = ga = gb = None
        gxa = torch.mm(g2, b).mul_(s) if (need_x or need_a) else None  # (N, r): s g B
        if need_x:
            gx = torch.mm(g2, w).addmm_(gxa, a)              # (N, in): g W + s (g B) A
            gx = gx.reshape(*ctx.lead, gx.shape[-1])
        if need_w:
            gw = torch.mm(g2.t(), x2)                        # (out, in)
        if need_bias and ctx.has_bias:
            gbias = g2.sum(0)
        if need_a:
            ga = torch.mm(gxa.t(), x2)                       # (r, in)
        if need_b:
            gb = torch.mm(g2.t(), xa).mul_(s)                # (out, r)
        return gx, gw, gbias, ga, gb, None


def lora_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                lora_a: torch.Tensor, lora_b: torch.Tensor, scaling: float) -> torch.Tensor:
    """``x W^T + b + scaling (x A^T) B^T`` through the fused kernel (autograd-aware)."""
    return _LoraLinear.apply(x, weight, bias, lora_a, lora_b, float(scaling))


def _eligible(module: torch.nn.Module) -> bool:
    try:
        from peft.tuners.lora.layer import Linear as PeftLinear
    except ImportError:  # pragma: no cover - peft is a dependency
        return False
    if type(module) is not PeftLinear or getattr(module, "fan_in_fan_out", True):
        return False
    if type(getattr(module, "base_layer", None)) is not torch.nn.Linear:
        return False
    return True


def _active(module: Any) -> str | None:
    """The one vanilla adapter a call may fuse, or None to run PEFT's forward."""
    if module.disable_adapters or module.merged:
        return None
    active = [n for n in module.active_adapters if n in module.lora_A]
    if len(active) != 1:
        return None
    name = active[0]
    if name in getattr(module, "lora_variant", {}) or getattr(module, "use_dora", {}).get(name, False):
        return None
    if not isinstance(module.lora_dropout[name], torch.nn.Identity):
        return None
    return name


def _fused_forward(self: Any, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    name = None if (args or kwargs or torch.is_autocast_enabled(x.device.type)) else _active(self)
    if name is not None:
        base = self.base_layer
        a, b = self.lora_A[name].weight, self.lora_B[name].weight
        if x.dtype == base.weight.dtype == a.dtype == b.dtype:
            return lora_linear(x, base.weight, base.bias, a, b, self.scaling[name])
    return type(self).forward(self, x, *args, **kwargs)


@contextmanager
def fused_lora(model: torch.nn.Module) -> Iterator[int]:
    """Run the eligible PEFT LoRA linears of ``model`` through the fused kernel inside the block.

    Yields the number of modules patched; their own ``forward`` is restored on exit, also on
    error.
    """
    patched = [m for m in model.modules() if _eligible(m) and "forward" not in vars(m)]
    try:
        for m in patched:
            m.forward = MethodType(_fused_forward, m)
        yield len(patched)
    finally:
        for m in patched:
            vars(m).pop("forward", None)


def wrap_lora(model: Any, suffixes: list[str], r: int, alpha: float, fan_in_fan_out: bool,
               seed: int) -> Any:
    """``model`` with seeded PEFT LoRA adapters (dropout 0, no bias) on the ``suffixes`` modules."""
    from peft import LoraConfig, PeftModel, get_peft_model

    if isinstance(model, PeftModel) or hasattr(model, "peft_config"):
        raise UserInputError("the model already has PEFT adapters; unload them before fine-tuning.")
    config = LoraConfig(
        r=r, lora_alpha=alpha, lora_dropout=0.0, bias="none", target_modules=list(suffixes),
        fan_in_fan_out=fan_in_fan_out, task_type="CAUSAL_LM",
    )
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():  # seeded LoRA init
        # peft calls a transformers API deprecated in v5; the warning is noise to users.
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        torch.manual_seed(seed)
        return get_peft_model(model, config)
