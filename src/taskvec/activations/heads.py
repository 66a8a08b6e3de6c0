"""Per-head mean activations of in-context-learning prompts (Todd et al. 2024, function vectors).

For every layer, the *input* of the attention output projection (o_proj, GPT-2's c_proj) is the
concatenation of the attention heads' outputs, (B, T, H*D). A forward pre-hook on each o_proj
saves it at the last token of k-shot prompts; split into heads with the adapter's ``head_dim``
and averaged over N prompts it gives the head means, (L, H, D). Queries and demonstrations come
from the task's train split; ``fewshot_prompts`` never shows a query as its own demonstration.
With ``correct_only`` only prompts whose next-token argmax is the answer's first token count.

Models that normalise the attention output before the residual add (Gemma 2 / 3: an RMS norm
``g * x / rms(x)``) also get ``attn_rms`` (L,): the mean over the same prompts of ``rms(x)``, x
the layer's whole attention output at the last token, so a head's mean share of the residual
stream can be written ``g * W_h m_h / attn_rms`` (``function_vectors.head_contribution``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from taskvec.activations.collect import (
    collect_last_token,
    icl_prompt_set,
    layer_sites,
    progress_bar,
)
from taskvec.activations.hooks import Positions, SaveInputsHook
from taskvec.errors import UserInputError
from taskvec.models.adapter import get_adapter

__all__ = ["HeadMeans", "head_activations", "head_means"]


@dataclass
class HeadMeans:
    """Mean o_proj inputs per (layer, head) at the last token of k-shot prompts."""

    means: torch.Tensor  # (L, H, D) float32
    task: str
    shots: int
    seed: int
    n_prompts: int  # prompts averaged
    n_total: int  # prompts run
    icl_accuracy: float  # first-token accuracy of the k-shot prompts
    correct_only: bool = False
    extra: dict[str, Any] = field(default_factory=dict)
    #: (L,) mean RMS of each layer's attention output where a norm follows it (Gemma), else None
    attn_rms: torch.Tensor | None = None

    @property
    def n_layers(self) -> int:
        return int(self.means.shape[0])

    @property
    def n_heads(self) -> int:
        return int(self.means.shape[1])

    def metadata(self) -> dict[str, Any]:
        """Provenance fields for an activation file."""
        return {
            "task": self.task,
            "shots": self.shots,
            "seed": self.seed,
            "n_prompts": self.n_prompts,
            "n_total": self.n_total,
            "icl_accuracy": round(self.icl_accuracy, 6),
            "correct_only": self.correct_only,
        }


def head_activations(
    model: nn.Module,
    tok: Any,
    prompts: list[str],
    batch_size: int = 16,
    progress: bool = False,
    desc: str = "head activations",
) -> tuple[torch.Tensor, torch.Tensor]:
    """o_proj inputs at the last token of each prompt, split into heads.

    Returns ``(acts (N, L, H, D) float32, predictions (N,))``.
    """
    ad = get_adapter(model)
    sites = layer_sites("head_out", ad)
    hook = SaveInputsHook(positions=Positions.LAST)
    with progress_bar(len(prompts), desc, progress) as upd:
        acts, preds = collect_last_token(model, tok, prompts, sites, hook, batch_size, upd)
    stacked = torch.stack([acts[name] for name in sites], dim=1)  # (N, L, H*D)
    return ad.split_heads(stacked), preds  # (N, L, H, D)


def attn_output_rms(ad: Any, acts: torch.Tensor) -> torch.Tensor | None:
    """Per prompt and layer ``sqrt(mean(x**2) + eps)`` of the attention output ``x = o_proj(z)``
    (bias included) from the o_proj inputs ``acts`` (N, L, H, D), with the eps of the norm that
    follows it; None when the model adds the attention output to the residual without a norm."""
    gains = [ad.post_attn_gain(i) for i in range(ad.n_layers)]
    if all(g is None for g in gains):
        return None
    z = ad.merge_heads(acts).float()  # (N, L, H*D)
    out = torch.ones(z.shape[0], ad.n_layers)  # (N, L)
    with torch.no_grad():
        for i, ge in enumerate(gains):
            if ge is None:
                continue
            b = ad.o_proj_bias(i)
            x = z[:, i] @ ad.o_proj_weight(i).detach().float().cpu().T  # (N, hidden)
            if b is not None:
                x = x + b.detach().float().cpu()
            out[:, i] = (x.pow(2).mean(-1) + ge[1]).sqrt()
    return out


def head_means(
    model: nn.Module,
    tok: Any,
    task: Any,
    n_prompts: int = 100,
    shots: int = 10,
    seed: int = 0,
    batch_size: int = 16,
    correct_only: bool = False,
    progress: bool = False,
) -> HeadMeans:
    """Mean per-head o_proj input at the last token of ``n_prompts`` k-shot train prompts."""
    if shots < 1:
        raise UserInputError(f"--shots must be >= 1 for ICL head means, got {shots}.")
    from taskvec import dist

    ps = icl_prompt_set(task, tok, n_prompts, shots, seed, salt="means")
    # Under torchrun each rank runs the prompts i % world == rank; sums are all-reduced in float64.
    mine = dist.shard_indices(len(ps.prompts))
    ad = get_adapter(model)
    total = torch.zeros(ad.n_layers, ad.n_heads, ad.head_dim, dtype=torch.float64)  # (L, H, D)
    counts = torch.zeros(2, dtype=torch.float64)  # kept, correct
    rms_total = torch.zeros(ad.n_layers, dtype=torch.float64)  # (L,)
    has_norm = any(ad.post_attn_norm(i) is not None for i in range(ad.n_layers))
    if mine:
        acts, preds = head_activations(
            model, tok, [ps.prompts[i] for i in mine], batch_size, progress and dist.is_main(), "head means"
        )
        correct = preds == torch.tensor([ps.targets[i] for i in mine])  # (n,)
        keep = correct if correct_only else torch.ones_like(correct)
        total += acts[keep].double().sum(0)
        if has_norm:
            rms_total += attn_output_rms(ad, acts[keep]).double().sum(0)  # (L,)
        counts += torch.tensor([float(keep.sum()), float(correct.sum())], dtype=torch.float64)
    total = dist.all_reduce_sum(total)
    rms_total = dist.all_reduce_sum(rms_total) if has_norm else rms_total
    counts = dist.all_reduce_sum(counts)
    n_keep, n_correct = int(counts[0]), int(counts[1])
    if n_keep == 0:
        raise UserInputError(
            f"the model answered none of the {len(ps.prompts)} {shots}-shot {task.name} prompts "
            "correctly: drop --correct-only (or use more prompts / shots)."
        )
    means = (total / n_keep).float()  # (L, H, D)
    return HeadMeans(
        means=means,
        task=task.name,
        shots=shots,
        seed=seed,
        n_prompts=n_keep,
        n_total=len(ps.prompts),
        icl_accuracy=n_correct / len(ps.prompts),
        correct_only=correct_only,
        attn_rms=(rms_total / n_keep).float() if has_norm else None,
    )
