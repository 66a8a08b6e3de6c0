"""ICL task vectors in the residual stream (Hendel et al. 2023, "In-context learning creates task
vectors").

``theta_l`` (hidden,) is the residual stream after layer l (the output of
``adapter.residual_module(l)``) at the last token of k-shot prompts, averaged over N prompts.
Three ways to put it into a zero-shot query's residual after layer l at the last token:

- ``"diff"`` (default): ADD ``scale * (theta_l - mu_l)``, where ``mu_l`` is the mean last-token
  residual of the SAME queries asked zero-shot. The difference carries what the demonstrations
  add and keeps the query's own content (a mean-difference steering vector, cf. Liu et al. 2023,
  "In-context vectors"). Measured best on the validation split of all six ICL tasks on the
  embedded model (docs/results.md).
- ``"replace"``: REPLACE the residual by ``theta_l`` (the paper's patching).
- ``"add"``: ADD ``scale * theta_l``.

The layer (and for diff/add the scale) is chosen by a grid sweep on the validation split. All
layers' means come from one pass over the prompts (and one over the zero-shot queries).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from taskvec.activations.activation_vector import ActivationVector
from taskvec.activations.collect import (
    collect_last_token,
    icl_prompt_set,
    layer_sites,
    progress_bar,
)
from taskvec.activations.evaluation import accuracy, grid_sweep, load_examples, sweep_split
from taskvec.activations.hooks import Positions, SaveOutputsHook
from taskvec.errors import UserInputError
from taskvec.models.adapter import get_adapter

__all__ = ["DEFAULT_SCALES", "MODES", "extract_residual_vector", "residual_means"]

MODES = ("diff", "replace", "add")
DEFAULT_SCALES = {"diff": (1.0, 2.0, 3.0), "add": (1.0,), "replace": (1.0,)}


def residual_means(
    model: nn.Module,
    tok: Any,
    task: Any,
    n_prompts: int = 100,
    shots: int = 10,
    seed: int = 0,
    batch_size: int = 16,
    progress: bool = False,
) -> tuple[torch.Tensor, float, int]:
    """Mean residual after every layer at the last token of k-shot train prompts.

    ``shots=0`` gives the zero-shot means of the same queries (the ``diff`` baseline).
    Returns ``(means (L, hidden) float32, first-token accuracy, number of prompts)``.
    """
    if shots < 0:
        raise UserInputError(f"--shots must be >= 0, got {shots}.")
    ad = get_adapter(model)
    ps = icl_prompt_set(task, tok, n_prompts, shots, seed, salt="residual")
    sites = layer_sites("resid_post", ad)
    hook = SaveOutputsHook(positions=Positions.LAST)
    desc = "residual means" if shots else "zero-shot means"
    with progress_bar(len(ps.prompts), desc, progress) as upd:
        acts, preds = collect_last_token(model, tok, ps.prompts, sites, hook, batch_size, upd)
    means = torch.stack([acts[name].mean(0) for name in sites])  # (L, hidden)
    acc = float((preds == torch.tensor(ps.targets)).float().mean())
    return means, acc, len(ps.prompts)


def _vector(tensors: dict[str, torch.Tensor], mode: str, layer: int) -> torch.Tensor:
    v = tensors["layer_means"][layer]
    if mode == "diff":
        v = v - tensors["zero_shot_means"][layer]
    return v.clone()


def extract_residual_vector(
    model: nn.Module,
    tok: Any,
    task: Any,
    shots: int = 10,
    n_prompts: int = 100,
    layer: int | str = "auto",
    mode: str = "diff",
    sweep_limit: int | None = None,
    seed: int = 0,
    batch_size: int = 16,
    progress: bool = False,
    scales: Sequence[float] | None = None,
) -> ActivationVector:
    """Mean last-token residuals of k-shot prompts (minus the zero-shot means for ``diff``).

    The layer (``"auto"``) and the scale (when several ``scales``; default
    ``DEFAULT_SCALES[mode]``) are chosen jointly on the validation split.
    """
    from taskvec.models.fingerprint import fingerprint
    from taskvec.models.loading import model_name

    ad = get_adapter(model)
    if mode not in MODES:
        from taskvec.errors import unknown_name

        raise unknown_name("residual mode", mode, MODES)
    if shots < 1:
        raise UserInputError(f"--shots must be >= 1 for an ICL task vector, got {shots}.")
    if layer != "auto" and not (isinstance(layer, int) and 0 <= layer < ad.n_layers):
        raise UserInputError(f"--layer must be auto or 0..{ad.n_layers - 1}, got {layer}.")
    scales = [float(s) for s in (scales if scales is not None else DEFAULT_SCALES[mode])]
    if not scales or not all(math.isfinite(s) for s in scales):
        raise UserInputError(f"--scales needs finite numbers, e.g. --scales 1,2,3; got {scales}.")
    split = sweep_split(task)
    examples = load_examples(task, split, sweep_limit)
    means, icl_acc, n = residual_means(model, tok, task, n_prompts, shots, seed, batch_size, progress)
    tensors = {"layer_means": means}
    if mode == "diff":
        tensors["zero_shot_means"] = residual_means(
            model, tok, task, n_prompts, 0, seed, batch_size, progress
        )[0]
    layers = list(range(ad.n_layers)) if layer == "auto" else [int(layer)]
    av = ActivationVector(
        "residual_vector",
        {"vector": _vector(tensors, mode, layers[0])} | tensors,
        {
            "model": model_name(model),
            "model_fingerprint": fingerprint(model),
            "task": task.name,
            "site": "resid_post",
            "layer": layers[0],
            "positions": "last",
            "method": "icl_task_vector",
            "mode": mode,
            "shots": shots,
            "n_prompts": n,
            "scale": scales[0],
            "seed": seed,
        },
    )
    extra: dict[str, Any] = {"icl_accuracy_train": icl_acc, "sweep_split": split,
                             "sweep_n": len(examples)}
    extra["zero_shot_accuracy"] = accuracy(
        model, tok, task, examples, batch_size=batch_size, split=split
    ).accuracy

    def make(li: int, s: float):
        av.tensors["vector"] = _vector(tensors, mode, li)
        return av.intervention(model, scale=s, layer=li)

    chosen_layer, chosen_scale, found = grid_sweep(
        model, tok, task, examples, make, layers, scales, batch_size, split, progress, "residual"
    )
    av.metadata["layer"], av.metadata["scale"] = chosen_layer, chosen_scale
    av.tensors["vector"] = _vector(tensors, mode, chosen_layer)
    extra |= found
    av.metadata["extra"] = extra
    return av
