"""Function vectors (Todd et al. 2024): the summed output of the most causal attention heads.

For a set of heads ``S`` (top-k by indirect effect), with head means ``m[l, h]`` (D,) and the
attention output projection ``W_o[l]`` (hidden, H*D) of layer l::

    v = sum over (l, h) in S of  W_o[l][:, slice(h)] @ m[l, h]          # (hidden,)

i.e. each head mean placed in its slice of an all-zero o_proj input, pushed through o_proj
WITHOUT the bias (a bias would otherwise be counted once per head). Where an RMS norm follows
the attention output before the residual add (Gemma 2 / 3: ``g * x / rms(x)``), a head's share
of the residual is ``g * W_o[l][:, slice(h)] @ m[l, h] / attn_rms[l]``, with ``attn_rms[l]``
the mean RMS of the layer's attention output over the same prompts (``HeadMeans.attn_rms``):
the sum over all heads plus the bias term is then exactly the norm's output (given the RMS),
and the vector lives in the residual stream it is added to. ``v`` is added to the
residual stream after layer ``layer`` (the output of ``adapter.residual_module(layer)``) at the
last prompt token (optionally also at every generated token). The layer is chosen by a sweep on
the validation split, the strength (scale) optionally too.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from taskvec.activations.activation_vector import ActivationVector
from taskvec.activations.evaluation import accuracy, grid_sweep, load_examples, sweep_split
from taskvec.activations.heads import head_means
from taskvec.activations.hooks import Positions, positions_to_str
from taskvec.activations.indirect_effect import indirect_effects, top_heads
from taskvec.errors import UserInputError
from taskvec.models.adapter import ModelAdapter, get_adapter

__all__ = ["DEFAULT_FV_SCALES", "extract_function_vector", "function_vector", "head_contribution"]

# Scales tried jointly with the layer: on SmolLM2-135M a scale of 2-4 at an earlier layer beat
# scale 1 on validation for capitalize and present-past (docs/results.md).
DEFAULT_FV_SCALES = (1.0, 2.0, 4.0)


def _adapter(model_or_adapter: nn.Module | ModelAdapter) -> ModelAdapter:
    return model_or_adapter if isinstance(model_or_adapter, ModelAdapter) else get_adapter(model_or_adapter)


def head_contribution(
    model_or_adapter: nn.Module | ModelAdapter, means: torch.Tensor, layer: int, head: int,
    attn_rms: torch.Tensor | None = None,
) -> torch.Tensor:
    """One head's share of the residual stream, no bias: ``W_o[layer][:, slice(head)] @
    means[layer, head]``, times ``g / attn_rms[layer]`` where a norm follows the attention
    output (Gemma; ``attn_rms`` (L,) from :func:`~taskvec.activations.heads.head_means`). (hidden,)"""
    ad = _adapter(model_or_adapter)
    w = ad.o_proj_weight(layer)[:, ad.head_slice(head)]  # (hidden, D)
    m = means[layer, head].to(device=w.device)  # (D,)
    out = (w.float() @ m.float()).detach().cpu()  # (hidden,)
    gain = ad.post_attn_gain(layer)
    if gain is None:
        return out
    if attn_rms is None:
        raise UserInputError(
            f"{ad.model_type or 'this model'} normalises each attention output before adding it to the "
            "residual, so a head's share needs the mean RMS of that output (attn_rms): pass "
            "HeadMeans.attn_rms, or recompute the head means with this version of taskvec."
        )
    return gain[0] * out / float(attn_rms[layer])  # (hidden,)


def function_vector(
    model_or_adapter: nn.Module | ModelAdapter,
    means: torch.Tensor,
    heads: Sequence[tuple[int, int]],
    attn_rms: torch.Tensor | None = None,
) -> torch.Tensor:
    """The function vector of ``heads`` from head ``means`` (L, H, D): (hidden,) float32.

    ``attn_rms`` (L,): needed where a norm follows the attention output (see
    :func:`head_contribution`)."""
    ad = _adapter(model_or_adapter)
    if not heads:
        raise UserInputError("a function vector needs at least one head.")
    if tuple(means.shape) != (ad.n_layers, ad.n_heads, ad.head_dim):
        raise UserInputError(
            f"head means of shape {tuple(means.shape)} do not fit the model's "
            f"{(ad.n_layers, ad.n_heads, ad.head_dim)} (layers, heads, head_dim)."
        )
    v = torch.zeros(ad.hidden_size)  # (hidden,)
    for layer, head in heads:
        v += head_contribution(ad, means, layer, head, attn_rms)
    return v


def parse_heads(text: str) -> list[tuple[int, int]]:
    """``"9:3,10:1"`` -> [(9, 3), (10, 1)]."""
    out = []
    for part in text.replace(" ", "").split(","):
        if not part:
            continue
        try:
            layer, head = part.split(":")
            out.append((int(layer), int(head)))
        except ValueError:
            raise UserInputError(f'bad head "{part}": write heads as LAYER:HEAD, e.g. "9:3,10:1".') from None
    if not out:
        raise UserInputError("--heads is empty: write heads as LAYER:HEAD, e.g. 9:3,10:1.")
    return out


def extract_function_vector(
    model: nn.Module,
    tok: Any,
    task: Any,
    shots: int = 10,
    n_prompts: int = 100,
    top_k: int = 10,
    layer: int | str = "auto",
    ie_prompts: int = 25,
    ie_method: str = "cached",
    scales: Sequence[float] = DEFAULT_FV_SCALES,
    heads: Sequence[tuple[int, int]] | None = None,
    sweep_limit: int | None = None,
    positions: Positions = Positions.LAST,
    correct_only: bool = False,
    seed: int = 0,
    batch_size: int = 16,
    ie_batch_size: int = 64,
    progress: bool = False,
) -> ActivationVector:
    """Head means -> IE scan -> top-k heads -> FV -> layer (and scale) sweep on validation.

    ``heads`` skips the IE scan. The layer (``"auto"``: every layer) and the scale (from
    ``scales``) are chosen jointly on the validation split (a layer x scale grid). Returns a
    ``function_vector`` :class:`ActivationVector` with the head means, IE scores and sweeps.
    """
    from taskvec.models.fingerprint import fingerprint
    from taskvec.models.loading import model_name

    ad = get_adapter(model)
    scales = [float(s) for s in scales] or [1.0]
    if layer != "auto" and not (isinstance(layer, int) and 0 <= layer < ad.n_layers):
        raise UserInputError(f"--layer must be auto or 0..{ad.n_layers - 1}, got {layer}.")
    split = sweep_split(task)
    examples = load_examples(task, split, sweep_limit)
    hm = head_means(model, tok, task, n_prompts, shots, seed, batch_size, correct_only, progress)
    tensors: dict[str, torch.Tensor] = {"head_means": hm.means}
    if hm.attn_rms is not None:
        tensors["attn_rms"] = hm.attn_rms  # (L,)
    extra: dict[str, Any] = {"head_means": hm.metadata(), "sweep_split": split, "sweep_n": len(examples)}
    if heads is None:
        ie = indirect_effects(
            model, tok, task, hm.means, ie_prompts, shots, seed, ie_method, ie_batch_size, progress
        )
        heads = ie.top_heads(top_k)
        tensors["ie_scores"] = ie.scores
        extra["ie"] = {
            "method": ie.method,
            "n_prompts": ie.n_prompts,
            "seconds": ie.seconds,
            "clean_prob_mean": float(ie.clean_prob.mean()),
            "top_scores": [float(ie.scores[li, h]) for li, h in heads],
        }
    else:
        heads = list(heads)
    av = ActivationVector(
        "function_vector",
        tensors | {"vector": function_vector(ad, hm.means, heads, hm.attn_rms)},
        {
            "model": model_name(model),
            "model_fingerprint": fingerprint(model),
            "task": task.name,
            "site": "resid_post",
            "layer": 0 if layer == "auto" else int(layer),
            "heads": [list(h) for h in heads],
            "positions": positions_to_str(positions),
            "method": "function_vector",
            "shots": shots,
            "n_prompts": hm.n_prompts,
            "scale": scales[0],
            "seed": seed,
        },
    )
    extra["zero_shot_accuracy"] = accuracy(
        model, tok, task, examples, batch_size=batch_size, split=split
    ).accuracy
    layers = list(range(ad.n_layers)) if layer == "auto" else [int(layer)]
    chosen_layer, chosen_scale, found = grid_sweep(
        model, tok, task, examples, lambda li, s: av.intervention(model, layer=li, scale=s),
        layers, scales, batch_size, split, progress, "FV",
    )
    av.metadata["layer"], av.metadata["scale"] = chosen_layer, chosen_scale
    extra |= found
    av.metadata["extra"] = extra
    return av


def top_heads_from(av: ActivationVector, k: int) -> list[tuple[int, int]]:
    """Top-k heads of a saved function vector's IE scores."""
    if "ie_scores" not in av.tensors:
        raise UserInputError("this function vector file has no IE scores (it was made with --heads).")
    return top_heads(av.tensors["ie_scores"], k)
