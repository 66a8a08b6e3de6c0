"""One comparison table on the same held-out test examples: zero-shot, k-shot ICL, function vector,
residual vector, soft task vector and a weight-space (LoRA) task vector, with parameter counts.

Every row is :func:`taskvec.activations.evaluation.accuracy` (that is, :func:`taskvec.eval.evaluate`:
first-token accuracy for the ICL generation tasks, label accuracy for classification) on the same
examples of the test split (``test``, or the eval split of tasks without one, e.g. sst2's
validation). Activation vectors are applied to the zero-shot prompts through their
:class:`~taskvec.activations.hooks.Intervention`; a weight-space vector is added to the model's
weights for its row and the touched parameters are then restored exactly (copied back).

``params`` counts what the method learns or extracts and applies: 0 for prompting, ``hidden`` for
a function / residual vector, L x H coefficients for a soft task vector, the stored values (LoRA
factors) for a weight-space vector. ``stored`` counts the values its file holds.

Every row carries ``n``, a 95% Wilson interval (``ci95``) and its per-example correctness
(``correct``, 0/1 in example order); every vector row also carries exact McNemar tests on the same
examples against zero-shot (``vs_zero_shot``) and against the ICL row with the most shots
(``vs_icl``), so "better than ICL" is a paired claim, not a comparison of two intervals.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from taskvec.activations.activation_vector import ActivationVector, load_activation
from taskvec.activations.collect import progress_bar
from taskvec.activations.evaluation import accuracy, load_examples
from taskvec.activations.soft import report_split
from taskvec.activations.soft_vector import SoftTaskVector, load_soft
from taskvec.errors import UserInputError
from taskvec.eval.stats import mcnemar, wilson

__all__ = ["applied_weights", "comparison_table", "parse_shots"]


def parse_shots(text: str | Sequence[int] | None) -> list[int]:
    """``"5,10"`` -> [5, 10]; ``""``, ``"0"`` or None -> [] (no ICL rows)."""
    if text is None:
        return []
    if isinstance(text, str):
        try:
            values = [int(s) for s in text.split(",") if s.strip()]
        except ValueError:
            raise UserInputError(f"--shots must be comma-separated integers, got {text!r}.") from None
    else:
        values = [int(s) for s in text]
    if any(v < 0 for v in values):
        raise UserInputError(f"--shots must be >= 0, got {text!r}.")
    return [v for v in dict.fromkeys(values) if v > 0]


@contextmanager
def applied_weights(vector: Any, model: nn.Module, force: bool = False) -> Iterator[None]:
    """Add a weight-space task vector to ``model`` inside the block; restore the weights exactly."""
    vector.check_base(model, force)
    params = dict(model.named_parameters(remove_duplicate=False))
    backup = {n: params[n].detach().clone() for n in vector.names if n in params}
    vector.apply_to(model)  # checks every name and shape before changing anything
    try:
        yield
    finally:
        with torch.no_grad():
            for name, value in backup.items():
                params[name].copy_(value)


def _as_activation(v: Any, kind: str) -> ActivationVector:
    return v if isinstance(v, ActivationVector) else load_activation(v, kind)


def _as_soft(v: Any) -> SoftTaskVector:
    return v if isinstance(v, SoftTaskVector) else load_soft(v)


def _as_weights(v: Any) -> Any:
    if isinstance(v, (str, os.PathLike)):
        from taskvec.weights.io import load_vector

        return load_vector(v)
    return v


def _check_label_words(task: Any, tok: Any) -> None:
    """Activation vectors act at the prompt's last token: label words must be one token each."""
    if task.kind != "classification":
        return
    long = [c for c in task.choices() if len(tok(c, add_special_tokens=False)["input_ids"]) != 1]
    if long:
        raise UserInputError(
            f"the label words {', '.join(map(repr, long))} of {task.name} are several tokens in this "
            "tokenizer, so labels are scored on prompt+label sequences where the vectors' last-token "
            "patch would hit the label: compare activation vectors on tasks with one-token answers."
        )


def comparison_table(
    model: nn.Module,
    tok: Any,
    task: Any,
    fv: Any = None,
    rv: Any = None,
    soft: Any = None,
    lora: Any = None,
    limit: int | None = None,
    *,
    sample: int | None = None,
    shots: Sequence[int] | str = (5, 10),
    split: str | None = None,
    seed: int = 0,
    batch_size: int = 16,
    progress: bool = False,
    force: bool = False,
) -> list[dict[str, Any]]:
    """Rows ``{method, kind, accuracy, ci95, n, params, stored, split, subset, seconds, correct}``
    on the test split, vector rows with paired tests ``vs_zero_shot`` / ``vs_icl`` (module doc).

    ``fv`` / ``rv`` / ``soft`` / ``lora``: a file path or the loaded object (``ActivationVector``,
    ``SoftTaskVector``, ``TaskVector``). ``shots``: k for the ICL rows (``"5,10"`` works too).
    ``limit``: the first N examples; ``sample``: a seeded random N of them (``seed``), not both.
    Files are checked against the model (shape; fingerprint unless ``force``) before any run.
    """
    split = split or report_split(task)
    examples, subset = _examples(task, split, limit, sample, seed)
    ks = parse_shots(shots) if isinstance(shots, str) else parse_shots(list(shots))
    fv = None if fv is None else _as_activation(fv, "function_vector")
    rv = None if rv is None else _as_activation(rv, "residual_vector")
    soft = None if soft is None else _as_soft(soft)
    lora = None if lora is None else _as_weights(lora)
    if fv is not None or rv is not None or soft is not None:
        _check_label_words(task, tok)
    for av in (fv, rv, soft):
        if av is not None:
            av.check_model(model, force=force)
    if lora is not None:
        lora.check_base(model, force)

    # (method, kind, params, stored, evaluation kwargs, context factory or None)
    runs: list[tuple[str, str, int, int, dict[str, Any], Any]] = [
        ("zero-shot", "prompt", 0, 0, {}, None),
        *[(f"{k}-shot ICL", "prompt", 0, 0, {"shots": k}, None) for k in ks],
    ]
    for av in (fv, rv):
        if av is not None:
            n = int(av.vector.numel())
            runs.append((av.describe(), av.kind, n, sum(int(t.numel()) for t in av.tensors.values()),
                         {}, lambda av=av: av.intervention(model)))
    if soft is not None:
        runs.append((soft.describe(), "soft_task_vector", soft.n_params, soft.n_values, {},
                     lambda: soft.intervention(model)))
    if lora is not None:
        rank = max((getattr(d, "rank", 0) for _, d in lora.items()), default=0)
        name = f"weight-space task vector ({lora.form}" + (f", rank {rank})" if rank else ")")
        runs.append((name, "task_vector", lora.numel(), lora.numel(), {},
                     lambda: applied_weights(lora, model, force=True)))
    rows: list[dict[str, Any]] = []
    with progress_bar(len(runs), f"{task.name} {split}", progress, unit="run") as upd:
        for method, kind, params, stored, kw, make in runs:
            if make is None:
                res = accuracy(model, tok, task, examples, seed=seed, batch_size=batch_size,
                               split=split, **kw)
            else:
                with make():
                    res = accuracy(model, tok, task, examples, seed=seed, batch_size=batch_size,
                                   split=split, **kw)
            lo, hi = wilson(sum(res.correct), res.n)
            rows.append({"method": method, "kind": kind, "accuracy": res.accuracy, "ci95": [lo, hi],
                         "n": res.n, "params": params, "stored": stored, "split": split, "subset": subset,
                         "metric": res.metric, "seconds": res.seconds,
                         "correct": [int(c) for c in res.correct]})
            if upd:
                upd(1)
    _add_paired(rows)
    return rows


def _examples(task: Any, split: str, limit: int | None, sample: int | None, seed: int) -> tuple[list[dict], str]:
    """The evaluated examples and how they were chosen ("all", "first N", "sample N (seed S)").

    One home for subsets: :meth:`Task.subset` (which also warns when a first-N subset's label
    shares are far from the split's).
    """
    load_examples(task, split, None)  # checks the split exists and is non-empty
    examples = task.subset(split, limit=limit, sample=sample, seed=seed)
    if sample is not None:
        return examples, f"sample {len(examples)} (seed {seed})"
    return examples, "all" if len(examples) == len(task.load(split)) else f"first {len(examples)}"


def _add_paired(rows: list[dict[str, Any]]) -> None:
    """Exact McNemar tests of every vector row against zero-shot and the ICL row with most shots."""
    zero = next((r for r in rows if r["method"] == "zero-shot"), None)
    icl = [r for r in rows if r["method"].endswith("-shot ICL")]
    most = max(icl, key=lambda r: int(r["method"].split("-")[0]), default=None)
    refs = {"vs_zero_shot": zero, "vs_icl": most}
    for r in rows:
        if r["kind"] == "prompt":
            continue
        for key, ref in refs.items():
            if ref is not None:
                t = mcnemar([bool(c) for c in r["correct"]], [bool(c) for c in ref["correct"]])
                r[key] = {"against": ref["method"], "difference": r["accuracy"] - ref["accuracy"]} | t.to_dict()
