"""Causal indirect effect of attention heads (Todd et al. 2024, section 2.2).

On shuffled-label ICL prompts (the demonstrations' answers are random, so the model mostly cannot
infer the task), replace ONE head's o_proj-input slice at the last token by that head's mean over
clean ICL prompts, and measure the gain in probability of the correct first answer token:

    IE(l, h) = mean over prompts of  P(answer | patched l, h) - P(answer | unpatched)

Three implementations that give the same scores (up to float rounding), registered in
:data:`IE_METHODS`:

- ``naive``: one forward pass per (prompt, head) and one clean pass per prompt. The reference.
- ``batched``: each prompt is replicated across a batch of rows; row r patches its own
  (layer, head) through a per-row mask in the o_proj pre-hooks (plus one unpatched row). One
  forward per ``batch_size`` heads instead of one per head.
- ``cached`` (default): as ``batched``, but the patch only changes the LAST token, and in a causal
  model earlier tokens never see later ones: so the prompt minus its last token runs ONCE with a
  KV cache, and the batch of patched rows runs only the last token on top of a copy of that cache
  (a decode step). Each row then costs one token instead of the whole prompt.

Under ``torchrun`` (:mod:`taskvec.dist`) the prompts are sharded over ranks (``i % world ==
rank``) and the per-prompt effects are all-reduced, so every rank returns the single-process result.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from taskvec.activations.collect import icl_prompt_set, layer_sites, progress_bar
from taskvec.activations.hooks import Positions, PositionSpec, ReplaceHook
from taskvec.activations.intervention import Intervention
from taskvec.errors import ShapeMismatchError, UserInputError
from taskvec.eval.batching import encode, left_pad
from taskvec.eval.scoring import forward_logits, supports_logits_to_keep
from taskvec.models.adapter import ModelAdapter, get_adapter
from taskvec.models.kv_cache import cache_kwargs, returned_cache
from taskvec.models.sites import site_key
from taskvec.registry import Registry

__all__ = [
    "IE_METHODS",
    "IEResult",
    "ie_scores",
    "indirect_effects",
    "top_heads",
]

Head = tuple[int, int]
Row = Head | None  # None: the unpatched row
# (model, adapter, token ids of one prompt, rows, means, batch_size) -> P(target) per row (R, V)
_Runner = Callable[[nn.Module, ModelAdapter, list[int], list[Row], torch.Tensor, int], torch.Tensor]


@dataclass
class IEResult:
    """Indirect effects: mean (L, H) scores, per-prompt effects and the clean probabilities."""

    scores: torch.Tensor  # (L, H); NaN for heads not scanned
    per_prompt: torch.Tensor  # (N, L, H)
    clean_prob: torch.Tensor  # (N,) P(answer) on the unpatched shuffled prompts
    method: str
    seconds: float

    @property
    def n_prompts(self) -> int:
        return int(self.per_prompt.shape[0])

    def top_heads(self, k: int) -> list[Head]:
        return top_heads(self.scores, k)


def top_heads(scores: torch.Tensor, k: int) -> list[Head]:
    """The ``k`` (layer, head) pairs with the largest scores (NaN never chosen), best first."""
    if k <= 0:
        raise UserInputError(f"--top-k must be positive, got {k}.")
    flat = torch.nan_to_num(scores.float(), nan=float("-inf")).flatten()  # (L*H,)
    k = min(k, int(torch.isfinite(flat).sum()))
    n_heads = scores.shape[1]
    return [(int(i) // n_heads, int(i) % n_heads) for i in flat.topk(k).indices]


def _patch_hook(
    ad: ModelAdapter, means: torch.Tensor, rows: Sequence[Row], positions: PositionSpec
) -> tuple[list[str], ReplaceHook]:
    """A hook on the ``head_out`` site of every layer used by ``rows``: row r gets head h_r's mean."""
    values: dict[str, torch.Tensor] = {}
    masks: dict[str, torch.Tensor] = {}
    width = ad.n_heads * ad.head_dim
    for r, row in enumerate(rows):
        if row is None:
            continue
        layer, head = row
        name = site_key("head_out", layer)
        if name not in masks:
            masks[name] = torch.zeros((len(rows), width), dtype=torch.bool)  # (R, H*D)
            values[name] = means[layer].reshape(width)  # (H*D,)
        masks[name][r, ad.head_slice(head)] = True
    layers = sorted({row[0] for row in rows if row is not None})
    return layer_sites("head_out", ad, layers), ReplaceHook(values, positions=positions, mask=masks)


def _answer_probs(logits: torch.Tensor) -> torch.Tensor:
    return logits.float().softmax(-1)  # (R, V)


def _run_naive(model, ad, ids, rows, means, batch_size) -> torch.Tensor:
    out = []
    for row in rows:
        batch = left_pad([ids], 0)  # one unpadded row per pass
        if row is None:
            logits = forward_logits(model, batch, 1)[:, -1]  # (1, V)
        else:
            targets, hook = _patch_hook(ad, means, [row], Positions.LAST)
            with Intervention(model, sites=targets, hook=hook):
                logits = forward_logits(model, batch, 1)[:, -1]  # (1, V)
        out.append(_answer_probs(logits))
    return torch.cat(out)  # (R, V)


def _run_batched(model, ad, ids, rows, means, batch_size) -> torch.Tensor:
    out = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        batch = left_pad([ids] * len(chunk), 0)  # (R, T), all rows the same prompt
        targets, hook = _patch_hook(ad, means, chunk, Positions.LAST)
        if targets:
            with Intervention(model, sites=targets, hook=hook):
                logits = forward_logits(model, batch, 1)[:, -1]  # (R, V)
        else:
            logits = forward_logits(model, batch, 1)[:, -1]
        out.append(_answer_probs(logits))
    return torch.cat(out)


def _run_cached(model, ad, ids, rows, means, batch_size) -> torch.Tensor:
    if len(ids) < 2:
        return _run_batched(model, ad, ids, rows, means, batch_size)
    dev = next(model.parameters()).device
    n_tok = len(ids)
    prefix = torch.tensor([ids[:-1]], device=dev)  # (1, T-1)
    keep = {"logits_to_keep": 1} if supports_logits_to_keep(model) else {}
    cache = returned_cache(model(input_ids=prefix, use_cache=True, **keep))
    if cache is None or not hasattr(cache, "batch_repeat_interleave"):
        return _run_batched(model, ad, ids, rows, means, batch_size)
    out = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        n_rows = len(chunk)
        past = copy.deepcopy(cache)
        past.batch_repeat_interleave(n_rows)  # (R, kv_heads, T-1, D) per layer
        inputs = {
            "input_ids": torch.full((n_rows, 1), ids[-1], device=dev),  # (R, 1)
            "attention_mask": torch.ones((n_rows, n_tok), dtype=torch.long, device=dev),
            "position_ids": torch.full((n_rows, 1), n_tok - 1, device=dev),
            **cache_kwargs(model, past),
            "use_cache": True,
            **keep,
        }
        # positions=None: the decode call holds exactly the last prompt token
        targets, hook = _patch_hook(ad, means, chunk, None)
        if targets:
            with Intervention(model, sites=targets, hook=hook):
                logits = model(**inputs).logits[:, -1]  # (R, V)
        else:
            logits = model(**inputs).logits[:, -1]
        out.append(_answer_probs(logits))
    return torch.cat(out)


#: name -> implementation (all give the same scores; see the module docstring)
IE_METHODS: Registry[_Runner] = Registry("indirect-effect method")
IE_METHODS.register("naive", _run_naive)
IE_METHODS.register("batched", _run_batched)
IE_METHODS.register("cached", _run_cached)


@torch.no_grad()
def ie_scores(
    model: nn.Module,
    tok: Any,
    prompts: Sequence[str],
    targets: Sequence[int],
    means: torch.Tensor,
    method: str = "cached",
    heads: Sequence[Head] | None = None,
    batch_size: int = 64,
    progress: bool = False,
) -> IEResult:
    """Indirect effect of every head (or only ``heads``) on ``prompts`` with answer ``targets``.

    ``means``: (L, H, D) head means; ``targets``: the first token id of each prompt's answer.
    """
    runner = IE_METHODS.get(method)
    ad = get_adapter(model)
    n_layers, n_heads = ad.n_layers, ad.n_heads
    if tuple(means.shape) != (n_layers, n_heads, ad.head_dim):
        raise ShapeMismatchError(
            f"head means have shape {tuple(means.shape)} but the model has (layers, heads, "
            f"head_dim) = {(n_layers, n_heads, ad.head_dim)}: extract them on this model."
        )
    if len(prompts) != len(targets) or not prompts:
        raise UserInputError("ie_scores needs one answer token per prompt and at least one prompt.")
    if batch_size <= 0:
        raise UserInputError(f"--ie-batch-size must be positive, got {batch_size}.")
    if heads is None:
        scan = [(li, h) for li in range(n_layers) for h in range(n_heads)]
    else:
        scan = [(int(li), int(h)) for li, h in heads]
    for li, h in scan:
        if not (0 <= li < n_layers and 0 <= h < n_heads):
            raise UserInputError(f"head ({li}, {h}) is out of range for {n_layers} x {n_heads} heads.")
    rows: list[Row] = [None, *scan]
    from taskvec import dist

    # Under torchrun each rank runs the prompts i % world == rank into zero-filled (N, L, H) and
    # (N,) tensors; the all-reduce sums x + 0 + ... + 0, so every rank gets the single-process
    # per-prompt effects exactly (and therefore the same mean scores and top heads).
    mine = dist.shard_indices(len(prompts))
    ids_mine = encode(tok, [prompts[i] for i in mine]) if mine else []
    per_prompt = torch.zeros((len(prompts), n_layers, n_heads))  # (N, L, H)
    clean = torch.zeros(len(prompts))  # (N,)
    start = time.perf_counter()
    was_training = model.training
    model.eval()
    try:
        with progress_bar(len(mine) * len(rows), f"indirect effect ({method})", progress and dist.is_main(),
                          "patch") as upd:
            for i, ids in zip(mine, ids_mine):
                probs = runner(model, ad, ids, rows, means, batch_size)[:, targets[i]].cpu()  # (R,)
                clean[i] = probs[0]
                for (li, h), p in zip(scan, probs[1:]):
                    per_prompt[i, li, h] = p - probs[0]
                if upd:
                    upd(len(rows))
    finally:
        model.train(was_training)
    per_prompt = dist.all_reduce_sum(per_prompt)
    clean = dist.all_reduce_sum(clean)
    scanned = torch.zeros((n_layers, n_heads), dtype=torch.bool)  # (L, H)
    for li, h in scan:
        scanned[li, h] = True
    per_prompt[:, ~scanned] = float("nan")  # heads not scanned
    return IEResult(
        scores=per_prompt.mean(0),
        per_prompt=per_prompt,
        clean_prob=clean,
        method=method,
        seconds=round(time.perf_counter() - start, 3),
    )


def indirect_effects(
    model: nn.Module,
    tok: Any,
    task: Any,
    means: torch.Tensor,
    n_prompts: int = 25,
    shots: int = 10,
    seed: int = 0,
    method: str = "cached",
    batch_size: int = 64,
    progress: bool = False,
) -> IEResult:
    """IE scan on ``n_prompts`` shuffled-label k-shot prompts with queries from the train split."""
    ps = icl_prompt_set(task, tok, n_prompts, shots, seed, shuffle_labels=True, salt="ie")
    return ie_scores(
        model, tok, ps.prompts, ps.targets, means, method=method, batch_size=batch_size,
        progress=progress,
    )
