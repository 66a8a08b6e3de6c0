"""Batched, left-padded scoring: label log-probabilities, first-token predictions, greedy decoding.

All functions take a model and tokenizer and return plain tensors / lists in the caller's order.
Only the logits that are scored are computed (``logits_to_keep``), which saves 20-60% on CPU.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

from taskvec.eval.batching import Batch, encode, length_sorted_batches, pad_id

ProgressFn = Callable[[int], None]


def supports_logits_to_keep(model: Any) -> bool:
    """True if the model's forward takes ``logits_to_keep`` (PEFT wrappers pass it through)."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    try:
        return "logits_to_keep" in inspect.signature(inner.forward).parameters
    except (TypeError, ValueError):
        return False


def forward_logits(model: Any, batch: Batch, keep: int) -> torch.Tensor:
    """Logits of the last ``keep`` positions of a left-padded batch: (B, keep, V)."""
    dev = next(model.parameters()).device
    inputs = batch.to(dev).model_inputs()
    kwargs: dict[str, Any] = {"use_cache": False}
    if supports_logits_to_keep(model):
        kwargs["logits_to_keep"] = keep
    out = model(**inputs, **kwargs)
    return out.logits[:, -keep:, :].float()  # (B, keep, V)


def logits_batches(model: Any, seqs: Sequence[Sequence[int]], batch_size: int, pid: int, keep: int,
                   reuse_prefix: bool = False) -> Iterator[tuple[Batch, torch.Tensor]]:
    """``(batch, logits of its last keep positions)`` over length-sorted batches of ``seqs``.

    ``reuse_prefix``: when the sequences share at least ``MIN_PREFIX`` leading tokens, encode
    them once and reuse their KV cache (:mod:`taskvec.eval.prefix`); same logits to float tolerance.
    """
    from taskvec.eval.prefix import MIN_PREFIX, SharedPrefix, common_prefix_len

    n = common_prefix_len(seqs) if reuse_prefix else 0
    n = min(n, min((len(s) for s in seqs), default=0) - keep)  # every suffix holds the kept positions
    if n >= MIN_PREFIX:
        shared = SharedPrefix(model, seqs[0][:n])
        for batch in length_sorted_batches([s[n:] for s in seqs], batch_size, pid):
            yield batch, shared.logits([seqs[i][n:] for i in batch.index], keep)
        return
    for batch in length_sorted_batches(seqs, batch_size, pid):
        yield batch, forward_logits(model, batch, keep)


@torch.no_grad()
def score_choices(
    model: Any,
    tok: Any,
    prompts: Sequence[str],
    choices: Sequence[str],
    batch_size: int = 16,
    progress: ProgressFn | None = None,
    reuse_prefix: bool = False,
) -> torch.Tensor:
    """Summed log-probability of each choice's tokens after each prompt: (N, C).

    Prompt and choice are tokenized separately and concatenated, so a choice's tokens are the
    same for every prompt. When every choice is a single token, one forward pass per prompt
    scores all choices at once. ``reuse_prefix``: see :func:`logits_batches`.
    """
    choice_ids = encode(tok, choices, add_special_tokens=False)
    for c, ids in zip(choices, choice_ids):
        if not ids:
            raise ValueError(f"choice {c!r} tokenizes to nothing")
    prompt_ids = encode(tok, prompts)
    pid = pad_id(tok)
    n, n_choices = len(prompts), len(choices)
    scores = torch.empty((n, n_choices), dtype=torch.float32)
    if all(len(ids) == 1 for ids in choice_ids):
        first = torch.tensor([ids[0] for ids in choice_ids])  # (C,)
        for batch, logits in logits_batches(model, prompt_ids, batch_size, pid, 1, reuse_prefix):
            logp = logits[:, -1].log_softmax(-1).cpu()  # (B, V)
            scores[batch.index] = logp[:, first]
            if progress:
                progress(len(batch.index))
        return scores
    # General case: one sequence per (prompt, choice); the choice ends every row.
    seqs = [p + c for p in prompt_ids for c in choice_ids]
    max_len = max(len(c) for c in choice_ids)
    flat = torch.empty(len(seqs), dtype=torch.float32)
    seqs_done, prompts_done = 0, 0
    for batch, logits in logits_batches(model, seqs, batch_size, pid, max_len + 1, reuse_prefix):
        logp = logits.log_softmax(-1).cpu()  # (B, K, V)
        for row, j in enumerate(batch.index):
            c = choice_ids[j % n_choices]
            # logits at position t predict token t+1: the choice's m tokens are the last m.
            pos = torch.arange(max_len - len(c), max_len)
            flat[j] = logp[row, pos, torch.tensor(c)].sum()
        seqs_done += len(batch.index)
        if progress and seqs_done // n_choices > prompts_done:
            progress(seqs_done // n_choices - prompts_done)
            prompts_done = seqs_done // n_choices
    return flat.view(n, n_choices)


@torch.no_grad()
def next_token_logits(
    model: Any,
    tok: Any,
    prompts: Sequence[str],
    batch_size: int = 16,
    progress: ProgressFn | None = None,
    reuse_prefix: bool = False,
) -> torch.Tensor:
    """Logits of the token after each prompt: (N, V). ``reuse_prefix``: see :func:`logits_batches`."""
    prompt_ids = encode(tok, prompts)
    out: torch.Tensor | None = None
    for batch, all_logits in logits_batches(model, prompt_ids, batch_size, pad_id(tok), 1, reuse_prefix):
        logits = all_logits[:, -1].cpu()  # (B, V)
        if out is None:
            out = torch.empty((len(prompts), logits.shape[-1]), dtype=torch.float32)
        out[batch.index] = logits
        if progress:
            progress(len(batch.index))
    return out if out is not None else torch.empty((0, 0), dtype=torch.float32)


def first_token_id(tok: Any, answer: str) -> int:
    """The first token of an answer text (answers carry their leading space)."""
    ids = tok(answer, add_special_tokens=False)["input_ids"]
    if not ids:
        raise ValueError(f"answer {answer!r} tokenizes to nothing")
    return int(ids[0])


@torch.no_grad()
def greedy_generate(
    model: Any,
    tok: Any,
    prompts: Sequence[str],
    max_new_tokens: int = 8,
    batch_size: int = 16,
    progress: ProgressFn | None = None,
) -> list[str]:
    """Greedy completions of each prompt (new text only)."""
    prompt_ids = encode(tok, prompts)
    dev = next(model.parameters()).device
    texts: list[str] = [""] * len(prompts)
    for batch in length_sorted_batches(prompt_ids, batch_size, pad_id(tok)):
        b = batch.to(dev)
        gen = model.generate(
            input_ids=b.input_ids,
            attention_mask=b.attention_mask,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=pad_id(tok),
        )
        new = gen[:, b.input_ids.shape[1] :]
        for row, j in enumerate(batch.index):
            texts[j] = tok.decode(new[row], skip_special_tokens=True)
        if progress:
            progress(len(batch.index))
    return texts


def normalize_answer(text: str) -> str:
    """The first line of a completion, stripped (for exact match)."""
    return text.strip().split("\n")[0].strip()
