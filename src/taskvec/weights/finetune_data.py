"""Training data for fine-tuning: tokenized (prompt, answer) pairs, label masks, data order, loss.

Prompt and answer are tokenized separately (prompt with special tokens, answer without) and
concatenated, as scoring does; labels are the answer ids and -100 on prompt and padding.
Batches are left-padded, so every row ends with its answer.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from taskvec.errors import UserInputError
from taskvec.eval.batching import Batch, encode, left_pad

__all__ = [
    "ExampleOrder",
    "TrainBatch",
    "accepts_logits_to_keep",
    "answer_loss",
    "collate",
    "encode_example",
    "grouped_backward",
    "length_groups",
]


@dataclass
class TrainBatch:
    """A left-padded batch plus labels: answer token ids, -100 on prompt and padding."""

    batch: Batch
    labels: torch.Tensor  # (B, T)

    @property
    def max_answer(self) -> int:
        return int((self.labels != -100).sum(-1).max())

    def to(self, device: torch.device | str) -> TrainBatch:
        return TrainBatch(self.batch.to(device), self.labels.to(device))


def encode_example(
    tok: Any, prompt: str, answer: str, max_length: int
) -> tuple[list[int], list[int]]:
    """``(prompt_ids, answer_ids)``; the prompt loses tokens on the left to fit ``max_length``.

    An answer longer than ``max_length - 1`` tokens is cut on the right (one prompt token stays).
    """
    p_ids = encode(tok, [prompt], add_special_tokens=True)[0]
    a_ids = encode(tok, [answer], add_special_tokens=False)[0]
    if not a_ids:
        raise UserInputError(f"answer {answer!r} tokenizes to nothing; the task needs non-empty answers.")
    if not p_ids:
        raise UserInputError(f"prompt {prompt!r} tokenizes to nothing; the task needs non-empty prompts.")
    a_ids = a_ids[: max_length - 1]
    p_ids = p_ids[-(max_length - len(a_ids)):]
    return list(p_ids), list(a_ids)


def collate(pairs: Sequence[tuple[Sequence[int], Sequence[int]]], pad: int) -> TrainBatch:
    """Left-pad ``prompt + answer`` sequences; labels hold the answer ids, -100 elsewhere."""
    batch = left_pad([list(p) + list(a) for p, a in pairs], pad)
    labels = torch.full_like(batch.input_ids, -100)  # (B, T)
    width = labels.shape[1]
    for i, (_p, a) in enumerate(pairs):
        labels[i, width - len(a):] = torch.tensor(list(a), dtype=torch.long)
    return TrainBatch(batch, labels)


class ExampleOrder:
    """Example indices of each step: epoch ``e`` is ``randperm(n)`` seeded with ``seed + e``."""

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed = n, seed
        self._perms: dict[int, list[int]] = {}

    def _perm(self, epoch: int) -> list[int]:
        if epoch not in self._perms:
            if len(self._perms) > 2:
                self._perms.pop(min(self._perms))
            gen = torch.Generator().manual_seed(self.seed + epoch)
            self._perms[epoch] = torch.randperm(self.n, generator=gen).tolist()
        return self._perms[epoch]

    def __call__(self, step: int, batch_size: int) -> list[int]:
        """Indices for 0-based ``step`` (batches may straddle two epochs)."""
        out = []
        for g in range(step * batch_size, (step + 1) * batch_size):
            epoch, pos = divmod(g, self.n)
            out.append(self._perm(epoch)[pos])
        return out


def accepts_logits_to_keep(model: Any) -> bool:
    """Whether the (PEFT-wrapped) model's forward takes ``logits_to_keep``."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    try:
        return "logits_to_keep" in inspect.signature(base.forward).parameters
    except (TypeError, ValueError):
        return False


def answer_loss(model: Any, tb: TrainBatch, keep_logits: bool = True,
                denominator: float | None = None) -> tuple[torch.Tensor, int]:
    """Mean cross-entropy over the batch's answer tokens, and their count.

    Answers end every left-padded row, so only the last ``max_answer + 1`` positions'
    logits are computed. ``denominator`` replaces the token count as the divisor (data
    parallelism divides each rank's sum by the token count of the whole global batch).
    """
    keep = tb.max_answer + 1
    kwargs: dict[str, Any] = {"use_cache": False}
    if keep_logits:
        kwargs["logits_to_keep"] = keep
    out = model(**tb.batch.model_inputs(), **kwargs)
    logits = out.logits[:, -keep:-1, :].float()  # (B, keep-1, V)
    target = tb.labels[:, -(keep - 1):]  # (B, keep-1)
    n_tok = int((target != -100).sum())
    loss = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=-100, reduction="sum"
    ) / (denominator if denominator is not None else n_tok)
    return loss, n_tok


#: a forward + backward of one more micro-batch costs about this many padded tokens (measured on
#: SmolLM2-135M, benchmarks/bench_train.py); length grouping splits a batch only when that pays
GROUP_OVERHEAD_TOKENS = 48


def length_groups(lengths: Sequence[int], overhead: int = GROUP_OVERHEAD_TOKENS) -> list[list[int]]:
    """Split a batch's rows into micro-batches of similar length, minimizing padded tokens.

    Rows are sorted by length (longest first, ties by index) and cut into contiguous groups; a
    group costs ``max length x rows + overhead`` (dynamic programming, exact for that cost). The
    result depends only on ``lengths``, so it is deterministic and resumable.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    n = len(order)
    best = [0.0] + [float("inf")] * n  # best[j]: cost of the first j sorted rows
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        for i in range(j):  # group = sorted rows i..j-1, its longest is row i
            c = best[i] + lengths[order[i]] * (j - i) + overhead
            if c < best[j]:
                best[j], cut[j] = c, i
    groups, j = [], n
    while j > 0:
        groups.append(order[cut[j]:j])
        j = cut[j]
    return groups[::-1]


def grouped_backward(net: Any, pairs: list[tuple[list[int], list[int]]], pad: int, device: Any, keep_logits: bool,
                     batching: str = "length-grouped") -> tuple[torch.Tensor, int]:
    """Forward + backward of one batch; returns (the batch's mean answer loss, its token count).

    ``batching``: ``"packed"`` (:mod:`taskvec.weights.finetune_pack`: one forward, no padding),
    ``"length-grouped"`` (micro-batches of similar length) or ``"padded"`` (one left-padded
    batch). Every micro-batch's summed loss is divided by the whole batch's answer-token count,
    so the accumulated gradient is the batch's mean-loss gradient (up to float summation order).
    """
    n_tok = sum(len(a) for _, a in pairs)
    if batching == "packed":
        from taskvec.weights.finetune_pack import packed_loss

        loss, _ = packed_loss(net, pairs, pad, device, keep_logits, float(n_tok))
        loss.backward()
        return loss.detach(), n_tok
    groups = length_groups([len(p) + len(a) for p, a in pairs]) if batching == "length-grouped" \
        else [list(range(len(pairs)))]
    total = torch.zeros((), device=device)
    for g in groups:
        loss, _ = answer_loss(net, collate([pairs[i] for i in g], pad).to(device), keep_logits, float(n_tok))
        loss.backward()
        total = total + loss.detach()
    return total, n_tok


#: how a training batch is run (``recipe.batching``)
BATCHINGS = ("packed", "length-grouped", "padded")
