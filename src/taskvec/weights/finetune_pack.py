"""Packed training batches: several examples per row, no padding, one forward per step.

A batch's ``prompt + answer`` sequences are packed first-fit-decreasing into rows of at most
``max(PACK_TOKENS, longest sequence)`` tokens; position ids restart at 0 for every sequence and
no attention mask is passed, so transformers builds a block-diagonal causal mask from the
position ids (its packed-sequence format): no token attends across examples. Rows shorter than
the longest are completed by a filler "sequence" of pad tokens with its own positions (never
attended by real tokens, no loss). The LM head runs only at the positions that predict answer
tokens. The loss is the same mean over answer tokens as the padded batch's.

Not every architecture or release honours packed position ids (e.g. a model that builds its
own mask), so :func:`packing_supported` first checks on two real examples that the packed
logits equal the separate ones; :func:`taskvec.weights.finetune.finetune` falls back to
length-grouped micro-batches otherwise and records which it used (``recipe.batching``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

PACK_TOKENS = 512  # row capacity: attention per row costs rows x C^2, so rows stay short

Pair = tuple[Sequence[int], Sequence[int]]


def pack_rows(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """First-fit-decreasing: example indices per row, each row's total length <= ``capacity``
    (a longer example gets a row of its own). Deterministic (ties by index)."""
    rows: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        for r, free in enumerate(room):
            if lengths[i] <= free:
                rows[r].append(i)
                room[r] -= lengths[i]
                break
        else:
            rows.append([i])
            room.append(capacity - lengths[i])
    return rows


def packed_batch(pairs: Sequence[Pair], pad: int, capacity: int = PACK_TOKENS) -> tuple[torch.Tensor, ...]:
    """``(input_ids, position_ids, labels)``, each (R, T): packed rows, filler at the ends."""
    lengths = [len(p) + len(a) for p, a in pairs]
    rows = pack_rows(lengths, max(capacity, max(lengths)))
    width = max(sum(lengths[i] for i in r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)  # (R, T)
    pos = torch.zeros((len(rows), width), dtype=torch.long)  # (R, T)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)  # (R, T)
    for r, members in enumerate(rows):
        at = 0
        for i in members:
            p, a = pairs[i]
            seq = list(p) + list(a)
            ids[r, at:at + len(seq)] = torch.tensor(seq)
            pos[r, at:at + len(seq)] = torch.arange(len(seq))
            labels[r, at + len(p):at + len(seq)] = torch.tensor(list(a))
            at += len(seq)
        pos[r, at:] = torch.arange(width - at)  # the filler: a sequence of its own
    return ids, pos, labels


def _packed_logits(model: Any, ids: torch.Tensor, pos: torch.Tensor, labels: torch.Tensor,
                   keep_logits: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits at the positions that predict answer tokens, and those tokens: (N, V), (N,)."""
    want = labels[:, 1:] != -100  # (R, T-1): position t predicts token t+1
    rows, cols = want.nonzero(as_tuple=True)
    kwargs: dict[str, Any] = {"use_cache": False}
    if keep_logits:
        wanted = torch.unique(cols)  # the LM head only at these columns
        kwargs["logits_to_keep"] = wanted.to(ids.device)
        take = torch.searchsorted(wanted, cols)
    else:
        take = cols
    out = model(input_ids=ids, position_ids=pos, **kwargs)
    logits = out.logits[rows.to(ids.device), take.to(ids.device)].float()  # (N, V)
    return logits, labels[rows, cols + 1].to(logits.device)


def packed_loss(model: Any, pairs: Sequence[Pair], pad: int, device: Any, keep_logits: bool,
                denominator: float | None = None) -> tuple[torch.Tensor, int]:
    """Summed answer cross-entropy of a packed batch / ``denominator`` (default: its token count)."""
    ids, pos, labels = (t.to(device) for t in packed_batch(pairs, pad))
    logits, target = _packed_logits(model, ids, pos, labels, keep_logits)
    n_tok = int(target.numel())
    loss = F.cross_entropy(logits, target, reduction="sum") / (denominator if denominator is not None else n_tok)
    return loss, n_tok


@torch.no_grad()
def packing_supported(model: Any, pairs: Sequence[Pair], pad: int, keep_logits: bool) -> bool:
    """Whether this model gives the same answer logits packed as one example at a time."""
    from taskvec.weights.finetune_data import collate

    probe = [(list(p)[-24:], list(a)[:4]) for p, a in list(pairs)[:3]]
    if len(probe) < 2:
        return False
    device = next(model.parameters()).device
    was = model.training
    model.eval()
    try:
        ids, pos, labels = (t.to(device) for t in packed_batch(probe, pad, capacity=10**6))
        packed, _ = _packed_logits(model, ids, pos, labels, keep_logits)
        alone = []
        order = [i for row in pack_rows([len(p) + len(a) for p, a in probe], 10**6) for i in row]
        for pair in (probe[i] for i in order):  # the packed rows' order
            tb = collate([pair], pad).to(device)
            out = model(**tb.batch.model_inputs(), use_cache=False)
            n = len(pair[1])
            alone.append(out.logits[0, -n - 1:-1].float())
        ref = torch.cat(alone)  # (N, V)
    except (TypeError, ValueError, RuntimeError, IndexError):
        return False
    finally:
        model.train(was)
    if packed.shape != ref.shape:
        return False
    return bool(((packed - ref).abs().max() <= 1e-3 * (1 + ref.abs().max())).item())


def choose_batching(model: Any, tok: Any, task: Any, examples: Sequence[dict], max_length: int,
                    requested: str = "auto") -> str:
    """The batching a run uses: ``requested``, with ``"auto"`` = ``"packed"`` when this model
    honours packed position ids (checked on the first examples), else ``"length-grouped"``."""
    from taskvec.errors import UserInputError, unknown_name
    from taskvec.weights.finetune_data import BATCHINGS

    if requested not in ("auto", *BATCHINGS):
        raise unknown_name("batching", requested, ("auto", *BATCHINGS))
    if requested not in ("auto", "packed"):
        return requested
    from taskvec.eval.batching import pad_id
    from taskvec.weights.finetune_data import accepts_logits_to_keep, encode_example

    probe = [encode_example(tok, task.prompt(ex), task.answer(ex), max_length) for ex in list(examples)[:3]]
    if packing_supported(model, probe, pad_id(tok), accepts_logits_to_keep(model)):
        return "packed"
    if requested == "packed":
        raise UserInputError(f"{type(model).__name__} does not honour packed position ids here: "
                             "use --batching auto (falls back to length-grouped) or length-grouped.")
    return "length-grouped"


__all__ = ["PACK_TOKENS", "choose_batching", "pack_rows", "packed_batch", "packed_loss", "packing_supported"]
