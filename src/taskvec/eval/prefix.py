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
        cache = copy.deepcopy(self.cache)
        if n > 1:
            cache.batch_repeat_interleave(n)  # (1, H, P, D) -> (B, H, P, D) per layer
        out = self.model(input_ids=ids.to(dev), attention_mask=mask.to(dev), position_ids=pos.to(dev),
                         use_cache=True, **cache_kwargs(self.model, cache), **_keep_kwargs(self.model, width))
        logits = out.logits[:, -width:, :]  # (B, S, V)
        lengths = torch.tensor([len(s) for s in suffixes], device=logits.device)
        cols = lengths[:, None] - keep + torch.arange(keep, device=logits.device)[None]  # (B, keep)
        return logits[torch.arange(n, device=logits.device)[:, None], cols].float()  # (B, keep, V)


def _keep_kwargs(model: Any, keep: int) -> dict[str, Any]:
    from taskvec.eval.scoring import supports_logits_to_keep

    return {"logits_to_keep": keep} if supports_logits_to_keep(model) else {}


__all__ = ["MIN_PREFIX", "SharedPrefix", "common_prefix_len"]
