"""Shared-prefix reuse: encode a prefix every prompt shares once, reuse its KV cache per batch.

k-shot prompts with one shared set of demonstrations all start with the same tokens. Instead
of re-encoding them for every query, :class:`SharedPrefix` runs the model once on the longest
common *token* prefix (so the token sequences are exactly the ones the plain path scores),
keeps its KV cache, and for each batch of suffixes repeats that cache over the batch and runs
only the suffix tokens, right-padded: ``[prefix][suffix][pad ... pad]``, so every row's real
tokens are contiguous from position 0 (sliding-window layers, as in Gemma 2/3, see the same
keys as in the plain path; pads in the middle would shift their windows). The logits of each
row's last real positions are gathered. Logits equal the plain path's to float tolerance
(tested on all tiny architectures); the cost per query is that of its suffix plus attention
to the prefix, and the LM head on the suffix positions.

Used when every prompt shares at least ``MIN_PREFIX`` tokens; the prefix is kept one token
shorter than the shortest prompt so every suffix has a token to score.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch

from taskvec.models.kv_cache import cache_kwargs, returned_cache

MIN_PREFIX = 16  # shorter shared prefixes are not worth a second code path


def common_prefix_len(seqs: Sequence[Sequence[int]]) -> int:
    """Length of the longest common prefix of token id lists (at most the shortest minus one)."""
    if not seqs:
        return 0
    first = seqs[0]
    n = min(len(s) for s in seqs) - 1
    for s in seqs[1:]:
        i = 0
        while i < n and s[i] == first[i]:
            i += 1
        n = i
        if n == 0:
            break
    return max(n, 0)


class SharedPrefix:
    """The KV cache of ``prefix_ids`` on ``model``, reusable for any number of suffix batches."""

    def __init__(self, model: Any, prefix_ids: Sequence[int]) -> None:
        self.model = model
        self.length = len(prefix_ids)
        dev = next(model.parameters()).device
        ids = torch.tensor([list(prefix_ids)], dtype=torch.long, device=dev)  # (1, P)
        with torch.no_grad():
            out = model(input_ids=ids, attention_mask=torch.ones_like(ids),
                        position_ids=torch.arange(self.length, device=dev)[None], use_cache=True,
                        **_keep_kwargs(model, 1))
        self.cache = returned_cache(out)
        if self.cache is None or not callable(getattr(self.cache, "batch_repeat_interleave", None)):
            raise TypeError(f"{type(model).__name__} returned no reusable KV cache")

    @torch.no_grad()
    def logits(self, suffixes: Sequence[Sequence[int]], keep: int) -> torch.Tensor:
        """Logits of the last ``keep`` positions of each ``prefix + suffix``: (B, keep, V).

        The kept positions must lie in the suffixes: ``keep <= min suffix length``.
        """
        dev = next(self.model.parameters()).device
        n, width = len(suffixes), max(len(s) for s in suffixes)
        if keep > min(len(s) for s in suffixes):
            raise ValueError("keep exceeds a suffix's length")
        ids = torch.zeros((n, width), dtype=torch.long)  # (B, S), right-padded
        mask = torch.zeros((n, self.length + width), dtype=torch.long)  # (B, P + S)
        mask[:, : self.length] = 1
        for i, s in enumerate(suffixes):
            ids[i, : len(s)] = torch.tensor(list(s), dtype=torch.long)
            mask[i, self.length: self.length + len(s)] = 1
        pos = (self.length + torch.arange(width))[None].expand(n, width)  # (B, S)
        cache = _expanded(self.cache, n)
        lengths = torch.tensor([len(s) for s in suffixes])
        cols = lengths[:, None] - keep + torch.arange(keep)[None]  # (B, keep): positions to score
        kwargs: dict[str, Any] = {}
        if _keep_kwargs(self.model, 1):  # the LM head only at the positions some row needs
            wanted = torch.unique(cols)  # (K,) sorted; few, since batches are length-sorted
            kwargs["logits_to_keep"] = wanted.to(dev)
            cols = torch.searchsorted(wanted, cols)
        out = self.model(input_ids=ids.to(dev), attention_mask=mask.to(dev), position_ids=pos.to(dev),
                         use_cache=True, **cache_kwargs(self.model, cache), **kwargs)
        logits = out.logits  # (B, K or S, V)
        rows = torch.arange(n, device=logits.device)[:, None]
        return logits[rows, cols.to(logits.device)].float()  # (B, keep, V)


def _expanded(cache: Any, n: int) -> Any:
    """A cache whose per-layer keys/values are the prefix's broadcast over ``n`` rows, copy-free
    ((1, H, P, D) -> expand -> (B, H, P, D) views; the model's own update concatenates them with
    the suffix's keys, the only copy). Caches without per-layer tensors get a real repeat."""
    layers = getattr(cache, "layers", None)
    if not isinstance(layers, list) or not all(hasattr(x, "keys") and hasattr(x, "values") for x in layers):
        out = copy.deepcopy(cache)
        if n > 1:
            out.batch_repeat_interleave(n)
        return out
    out = copy.copy(cache)
    out.layers = [copy.copy(x) for x in layers]
    for x in out.layers:  # new attributes on copies; the shared prefix tensors are never written
        for attr in ("keys", "values"):
            t = getattr(x, attr)
            if isinstance(t, torch.Tensor) and t.dim() == 4:
                setattr(x, attr, t.expand(n, -1, -1, -1))
    return out


def _keep_kwargs(model: Any, keep: int) -> dict[str, Any]:
    from taskvec.eval.scoring import supports_logits_to_keep

    return {"logits_to_keep": keep} if supports_logits_to_keep(model) else {}


__all__ = ["MIN_PREFIX", "SharedPrefix", "common_prefix_len"]
