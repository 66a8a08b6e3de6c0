"""Shared helpers: ICL prompt sets, last-token activation collection, progress bars, targets."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from taskvec.activations.hooks import Hook, Positions
from taskvec.activations.intervention import Intervention
from taskvec.errors import UserInputError
from taskvec.eval.batching import encode, length_sorted_batches, pad_id
from taskvec.eval.scoring import first_token_id, forward_logits
from taskvec.models.adapter import ModelAdapter
from taskvec.models.sites import site_key

__all__ = [
    "PromptSet",
    "collect_last_token",
    "icl_prompt_set",
    "layer_sites",
    "progress_bar",
    "sample_examples",
]

ProgressFn = Callable[[int], None]


@contextmanager
def progress_bar(total: int, desc: str, enabled: bool, unit: str = "ex") -> Iterator[ProgressFn | None]:
    """A tqdm bar on stderr (``update(n)``), or None when disabled."""
    if not enabled:
        yield None
        return
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc=desc, unit=unit, leave=False, dynamic_ncols=True)
    try:
        yield bar.update
    finally:
        bar.close()


def layer_sites(site: str, adapter: ModelAdapter, layers: Sequence[int] | None = None) -> list[str]:
    """The site keys of one named hook site over ``layers`` (default: all), e.g. ``head_out.0``."""
    layers = range(adapter.n_layers) if layers is None else layers
    return [site_key(site, i) for i in layers]


def sample_examples(examples: Sequence[dict], n: int, seed: int, salt: str) -> list[dict]:
    """``n`` examples drawn without replacement (all of them, shuffled, when fewer)."""
    if n <= 0:
        raise UserInputError(f"the number of prompts must be positive, got {n}.")
    rng = random.Random(f"taskvec-activations:{salt}:{seed}")
    return rng.sample(list(examples), min(n, len(examples)))


@dataclass
class PromptSet:
    """ICL prompts and the first token id of each query's answer."""

    prompts: list[str]
    targets: list[int]  # first answer token ids
    queries: list[dict]
    shots: int
    shuffle_labels: bool


def icl_prompt_set(
    task: Any,
    tok: Any,
    n: int,
    shots: int,
    seed: int,
    shuffle_labels: bool = False,
    split: str | None = None,
    salt: str = "means",
) -> PromptSet:
    """k-shot prompts for ``n`` queries drawn from ``split`` (default: the train split).

    Demonstrations come from the train split via ``fewshot_prompts``, which never uses the
    query itself as a demonstration.
    """
    from taskvec.tasks import fewshot_prompts

    split = split or task.train_split
    pool = task.load(task.train_split)
    source = pool if split == task.train_split else task.load(split)
    queries = sample_examples(source, n, seed, f"{task.name}:{split}:{salt}")
    prompts = fewshot_prompts(task, queries, pool, shots, seed, shuffle_labels=shuffle_labels)
    targets = [first_token_id(tok, task.answer(q)) for q in queries]
    return PromptSet(prompts, targets, queries, shots, shuffle_labels)


@torch.no_grad()
def collect_last_token(
    model: nn.Module,
    tok: Any,
    prompts: Sequence[str],
    sites: Sequence[str],
    hook: Hook,
    batch_size: int = 16,
    progress: ProgressFn | None = None,
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Activations at the last prompt token of every prompt, and the model's next-token argmax.

    ``hook`` is a fresh ``SaveInputsHook`` / ``SaveOutputsHook`` with ``Positions.LAST``.
    Returns ``({name: (N, F) float32 on CPU}, predictions (N,))`` in the prompts' order.
    """
    if hook.positions != Positions.LAST:
        raise UserInputError("collect_last_token needs a hook with positions=Positions.LAST.")
    if batch_size <= 0:
        raise UserInputError(f"--batch-size must be positive, got {batch_size}.")
    ids = encode(tok, prompts)
    n = len(prompts)
    acts: dict[str, torch.Tensor] = {}
    preds = torch.empty(n, dtype=torch.long)
    with Intervention(model, sites=sites, hook=hook):
        for batch in length_sorted_batches(ids, batch_size, pad_id(tok)):
            hook.clear()  # type: ignore[attr-defined]
            logits = forward_logits(model, batch, 1)[:, -1]  # (B, V)
            preds[batch.index] = logits.argmax(-1).cpu()
            for name in sites:
                (x,) = hook[name]  # type: ignore[index]  # one call per batch: (B, F)
                if name not in acts:
                    acts[name] = torch.empty((n, x.shape[-1]), dtype=torch.float32)
                acts[name][batch.index] = x.float().cpu()
            if progress:
                progress(len(batch.index))
    return acts, preds
