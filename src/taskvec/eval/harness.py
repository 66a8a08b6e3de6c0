"""The evaluation harness: zero-shot and k-shot accuracy of a model on a task."""

from __future__ import annotations

import time
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from taskvec.errors import UserInputError
from taskvec.eval.scoring import (
    first_token_id,
    greedy_generate,
    next_token_logits,
    normalize_answer,
    score_choices,
)


@dataclass
class EvalResult:
    """Accuracy of one model on one task split (plus per-class counts for classification)."""

    task: str
    split: str
    n: int
    shots: int
    seed: int
    metric: str
    accuracy: float
    model: str = ""
    per_class: dict[str, dict[str, int]] = field(default_factory=dict)
    exact_match: float | None = None
    predictions: list[Any] = field(default_factory=list)
    seconds: float = 0.0
    #: per example, in order: whether the prediction was right (for paired tests)
    correct: list[bool] = field(default_factory=list)
    #: how the examples were chosen: "all", "first N" or "sample N (seed S)"
    subset: str = ""

    @property
    def ci95(self) -> tuple[float, float] | None:
        """Wilson 95% interval of the accuracy (None without per-example results)."""
        from taskvec.eval.stats import wilson

        if not self.correct or len(self.correct) != self.n:
            return None
        return wilson(sum(self.correct), self.n)

    def to_dict(self, predictions: bool = False) -> dict[str, Any]:
        d = asdict(self)
        d["ci95"] = list(self.ci95) if self.ci95 else None
        if not predictions:
            d.pop("predictions")
            d.pop("correct")
        return d


@contextmanager
def _progress_bar(total: int, desc: str, enabled: bool):
    if not enabled:
        yield None
        return
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc=desc, unit="ex", leave=False, dynamic_ncols=True)
    try:
        yield bar.update
    finally:
        bar.close()


def build_prompts(
    task: Any,
    examples: Sequence[dict],
    shots: int = 0,
    seed: int = 0,
    pool: Sequence[dict] | None = None,
    shuffle_labels: bool = False,
    demos: str = "per-query",
) -> list[str]:
    """Zero-shot prompts, or k-shot prompts with demonstrations from ``pool`` (train split).

    ``demos``: ``"per-query"`` (a seeded set per query) or ``"shared"`` (one set for all).
    """
    from taskvec.tasks import DEMO_MODES

    if demos not in DEMO_MODES:
        from taskvec.errors import unknown_name

        raise unknown_name("demonstration mode", demos, DEMO_MODES)
    if shots < 0:
        raise UserInputError(f"--shots must be >= 0, got {shots}.")
    if shots == 0:
        return [task.prompt(ex) for ex in examples]
    if pool is None:
        pool = task.load(task.train_split)
    return DEMO_MODES[demos](task, list(examples), list(pool), shots, seed, shuffle_labels=shuffle_labels)


def evaluate(
    model: Any,
    tok: Any,
    task: Any,
    split: str | None = None,
    limit: int | None = None,
    shots: int = 0,
    seed: int = 0,
    batch_size: int = 16,
    progress: bool = True,
    examples: Sequence[dict] | None = None,
    exact_match: bool = False,
    shuffle_labels: bool = False,
    sample: int | None = None,
    sample_seed: int | None = None,
    demos: str = "per-query",
    reuse_prefix: bool | None = None,
) -> EvalResult:
    """Evaluate ``model`` on ``task``.

    Classification: the label whose answer words get the highest summed log-probability.
    Generation (ICL tasks): first-token accuracy, and greedy exact match if ``exact_match``.
    Few-shot demonstrations come from the task's train split, seeded, never the query.
    ``limit`` takes the first N examples (warning when their labels are skewed); ``sample`` a
    seeded random N (``sample_seed``, default ``seed``), see :mod:`taskvec.tasks.subsets`.
    ``demos="shared"`` uses one seeded set of demonstrations for every query; their common
    prefix is then encoded once and its KV cache reused (``reuse_prefix``, default: on for
    shared demonstrations; :mod:`taskvec.eval.prefix`), same predictions to float tolerance.
    """
    if limit is not None and limit <= 0:
        raise UserInputError(f"--limit must be a positive number, got {limit}.")
    if batch_size <= 0:
        raise UserInputError(f"--batch-size must be positive, got {batch_size}.")
    split = split or task.eval_split
    s_seed = seed if sample_seed is None else sample_seed
    if examples is None:
        examples = task.subset(split, limit=limit, sample=sample, seed=s_seed)
        subset = (f"sample {sample} (seed {s_seed})" if sample is not None
                  else f"first {limit}" if limit is not None else "all")
    else:
        subset = "given"
    examples = list(examples)
    if not examples:
        raise UserInputError(f"task {task.name} split {split} has no examples.")
    prompts = build_prompts(task, examples, shots, seed, shuffle_labels=shuffle_labels, demos=demos)
    if reuse_prefix is None:
        reuse_prefix = shots > 0 and demos == "shared"
    start = time.perf_counter()
    from taskvec import dist
    from taskvec.models.loading import model_name

    desc = f"{task.name} {shots}-shot" + (" (shared demos)" if shots and demos == "shared" else "")
    if task.kind == "classification":
        # Under torchrun each rank scores its shard; every rank gets all scores back.
        mine = dist.shard_indices(len(prompts))
        with _progress_bar(len(mine), desc, progress and dist.is_main()) as upd:
            local = score_choices(model, tok, [prompts[i] for i in mine], task.choices(), batch_size, upd,
                                  reuse_prefix=reuse_prefix)
        rows = dist.gather_by_index(len(prompts), {i: local[j] for j, i in enumerate(mine)})
        scores = torch.stack(rows) if rows else torch.empty(0, len(task.choices()))
        result = _classification_result(task, examples, scores)
    else:
        result = _generation_result(
            model, tok, task, examples, prompts, batch_size, progress, desc, exact_match, reuse_prefix
        )
    result.split, result.shots, result.seed = split, shots, seed
    result.subset = subset
    result.model = model_name(model)
    result.seconds = round(time.perf_counter() - start, 3)
    return result


def _classification_result(task: Any, examples: Sequence[dict], scores: torch.Tensor) -> EvalResult:
    labels = task.labels()
    gold = torch.tensor([task.label_index(ex) for ex in examples])  # (N,)
    pred = scores.argmax(-1)  # (N,)
    per_class = {
        lab: {
            "n": int((gold == i).sum()),
            "correct": int(((gold == i) & (pred == i)).sum()),
            "predicted": int((pred == i).sum()),
        }
        for i, lab in enumerate(labels)
    }
    return EvalResult(
        task=task.name,
        split="",
        n=len(examples),
        shots=0,
        seed=0,
        metric="accuracy",
        accuracy=float((pred == gold).float().mean()),
        per_class=per_class,
        predictions=[labels[i] for i in pred.tolist()],
        correct=(pred == gold).tolist(),
    )


def _generation_result(
    model: Any,
    tok: Any,
    task: Any,
    examples: Sequence[dict],
    prompts: list[str],
    batch_size: int,
    progress: bool,
    desc: str,
    exact_match: bool,
    reuse_prefix: bool = False,
) -> EvalResult:
    from taskvec import dist

    mine = dist.shard_indices(len(prompts))
    with _progress_bar(len(mine), desc, progress and dist.is_main()) as upd:
        local = (next_token_logits(model, tok, [prompts[i] for i in mine], batch_size, upd,
                                   reuse_prefix=reuse_prefix).argmax(-1)
                 if mine else torch.empty(0, dtype=torch.long))
    pred = torch.tensor(dist.gather_by_index(len(prompts), {i: int(local[j]) for j, i in enumerate(mine)}))
    targets = torch.tensor([first_token_id(tok, task.answer(ex)) for ex in examples])
    result = EvalResult(
        task=task.name,
        split="",
        n=len(examples),
        shots=0,
        seed=0,
        metric="first_token_accuracy",
        accuracy=float((pred == targets).float().mean()),
        predictions=[tok.decode([int(t)]) for t in pred],
        correct=(pred == targets).tolist(),
    )
    if exact_match:
        max_new = max(len(tok(task.answer(ex), add_special_tokens=False)["input_ids"]) for ex in examples)
        with _progress_bar(len(prompts), desc + " generate", progress) as upd:
            texts = greedy_generate(model, tok, prompts, max_new + 2, batch_size, upd)
        hits = [normalize_answer(t) == normalize_answer(task.answer(ex)) for t, ex in zip(texts, examples)]
        result.exact_match = sum(hits) / len(hits)
        result.predictions = texts
    return result
