"""Task negation ("forgetting"): subtract a scaled task vector, keep a control task intact.

Protocol (Ilharco et al., 2023, "Editing models with task arithmetic", section 3): for each
coefficient ``c`` of an increasing grid apply ``-c * vector`` to the base model, measure the
*target* task (to forget) and a *control* task (to keep); among the ``c`` whose control
accuracy stays at or above ``threshold`` (95%) of the base model's, choose by ``rule``: the
**largest** ``c`` (default), or ``min-target``, the one with the lowest target accuracy (ties:
the smallest ``c``), as uiuctml/TaskVectorBasis does.
The choice is made on the search examples (held-out train slice, see
``taskvec.weights.search``); the base model and the chosen ``c`` are then evaluated on both
tasks' eval splits, and the drop in target accuracy is reported there.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from taskvec.errors import UserInputError
from taskvec.registry import Registry
from taskvec.weights.search import (
    DEFAULT_HOLDOUT,
    Scorer,
    accuracy_scorer,
    applied,
    grid_edge,
    parse_grid,
    search_examples,
    selection_issues,
    warn_protocol,
)
from taskvec.weights.vector import TaskVector

DEFAULT_THRESHOLD = 0.95


@dataclass
class NegationResult:
    """Selection curve (search examples) and final numbers (eval split) of one negation."""

    target: str
    control: str
    threshold: float
    grid: list[float]
    #: selection: base accuracies and one row per c on the search examples
    select_split: dict[str, str]
    select_n: dict[str, int]
    base_select: dict[str, float]
    curve: list[dict[str, float]]
    chosen: float | None
    #: final: base and chosen-c accuracies on the eval split (None if no c qualifies)
    eval_split: dict[str, str] = field(default_factory=dict)
    eval_n: dict[str, int] = field(default_factory=dict)
    base_target: float | None = None
    base_control: float | None = None
    target_at_c: float | None = None
    control_at_c: float | None = None
    seconds: float = 0.0
    #: where the selection could see training or reported examples (taskvec.weights.protocol)
    protocol_warnings: list[str] = field(default_factory=list)
    selected_on_eval_split: bool = False
    #: with the default scorer: 95% Wilson intervals of the four eval accuracies
    #: (``{"base": {task: [lo, hi]}, "negated": {...}}``) and the exact McNemar test of negated vs
    #: base per task (``{task: PairedTest.to_dict()}``): the same examples, so a paired test
    eval_ci95: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    paired: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def target_drop(self) -> float | None:
        """Base minus negated target accuracy on the eval split (positive = forgotten)."""
        if self.base_target is None or self.target_at_c is None:
            return None
        return self.base_target - self.target_at_c

    @property
    def control_retained(self) -> float | None:
        """Negated / base control accuracy on the eval split."""
        if not self.base_control or self.control_at_c is None:
            return None
        return self.control_at_c / self.base_control

    @property
    def grid_edge(self) -> str | None:
        """``"top"``/``"bottom"`` when the chosen ``c`` is the grid's largest/smallest value."""
        return grid_edge(self.grid, self.chosen)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self) | {"target_drop": self.target_drop,
                                           "control_retained": self.control_retained,
                                           "grid_edge": self.grid_edge}


def _largest(ok: list[dict[str, float]]) -> float:
    return max(row["c"] for row in ok)


def _min_target(ok: list[dict[str, float]]) -> float:
    # the lowest target accuracy; ties go to the smallest c (the least change to the model)
    return min(ok, key=lambda row: (row["target"], row["c"]))["c"]


#: how the coefficient is chosen among the admissible ones (control >= threshold x base):
#: ``largest`` (taskvec's default), ``min-target`` (uiuctml/TaskVectorBasis's rule)
NEGATION_RULES: Registry[Callable[[list[dict[str, float]]], float]] = Registry("negation rule")
NEGATION_RULES.register("largest", _largest)
NEGATION_RULES.register("min-target", _min_target)


def choose_coefficient(curve: list[dict[str, float]], base_control: float,
                       threshold: float = DEFAULT_THRESHOLD, rule: str = "largest") -> float | None:
    """The coefficient ``rule`` picks among the ``c`` in ``curve`` with
    ``control >= threshold * base_control`` (None if there is none)."""
    choose = NEGATION_RULES.get(rule)
    ok = [row for row in curve if row["control"] >= threshold * base_control - 1e-12]
    return choose(ok) if ok else None


def _ci(r: Any) -> list[float] | None:
    return list(r.ci95) if r.ci95 else None


def _final_scorer(batch_size: int) -> Callable[..., Any]:
    """``(model, tok, task, (split, examples)) -> EvalResult`` with per-example results."""
    from taskvec.eval import evaluate

    def final(model: Any, tok: Any, task: Any, data: tuple[str, list[dict]]) -> Any:
        return evaluate(model, tok, task, split=data[0], examples=data[1], batch_size=batch_size, progress=False)

    return final


def negate(
    model: Any, tok: Any, vector: TaskVector, target_task: Any, control_task: Any,
    grid: str | list[float] = "0.1:2.0:0.1", limit: int | None = None, *,
    eval_limit: int | None = None, threshold: float = DEFAULT_THRESHOLD, split: str | None = None,
    holdout: int = DEFAULT_HOLDOUT, seed: int = 0, final_eval: bool = True,
    scorer: Scorer | None = None, batch_size: int = 16, progress: bool = True, restore: str = "copy",
    rule: str = "largest", allow_eval_split: bool = False,
) -> NegationResult:
    """Negate ``vector`` on ``model`` (in memory; restored afterwards); see the module docstring.

    ``limit`` caps the search examples per task, ``eval_limit`` the eval examples
    (default: ``limit``; 0: the whole eval split). ``final_eval=False`` skips the eval-split
    numbers. With the default scorer the final numbers keep per-example results: Wilson intervals
    and an exact McNemar test of negated vs base on the same examples (``eval_ci95``, ``paired``).
    """
    from tqdm.auto import tqdm

    NEGATION_RULES.get(rule)  # an unknown rule is refused before any work
    values = parse_grid(grid)
    if any(c <= 0 for c in values):
        raise UserInputError("negation coefficients must be positive (the vector is subtracted); fix --grid.")
    if not 0 < threshold <= 1:
        raise UserInputError(f"threshold must be in (0, 1], got {threshold}.")
    if target_task.name == control_task.name:
        raise UserInputError("the target and control tasks are the same: pick a different control task.")
    per_example = scorer is None
    scorer = scorer or accuracy_scorer(batch_size)
    sel = {t.name: search_examples(t, split, limit, holdout, seed, allow_eval_split)
           for t in (target_task, control_task)}
    issues = warn_protocol(selection_issues([vector], [target_task.name, control_task.name], split, holdout, seed,
                                            {t.name: t.train_split for t in (target_task, control_task)}))
    pair = (("target", target_task), ("control", control_task))
    t0 = time.perf_counter()

    def score(data: dict[str, tuple[str, list[dict]]]) -> dict[str, float]:
        return {role: float(scorer(model, tok, t, data[t.name][1], data[t.name][0])) for role, t in pair}

    curve: list[dict[str, float]] = []
    with tqdm(total=len(values) + 1, desc="negate", unit="c", disable=not progress, dynamic_ncols=True) as bar:
        base_sel = score(sel)
        bar.update(1)
        for c in values:
            with applied(model, vector, -c, restore):
                curve.append({"c": c} | score(sel))
            bar.update(1)
    chosen = choose_coefficient(curve, base_sel["control"], threshold, rule)
    res = NegationResult(
        target=target_task.name, control=control_task.name, threshold=threshold, grid=values,
        select_split={k: v[0] for k, v in sel.items()}, select_n={k: len(v[1]) for k, v in sel.items()},
        base_select=base_sel, curve=curve, chosen=chosen, protocol_warnings=issues,
        selected_on_eval_split=any(sel[t.name][0] == t.eval_split for t in (target_task, control_task)),
    )
    if final_eval:
        lim = limit if eval_limit is None else (eval_limit or None)
        ev = {t.name: (t.eval_split, t.load(t.eval_split, limit=lim)) for _, t in pair}
        res.eval_split = {k: v[0] for k, v in ev.items()}
        res.eval_n = {k: len(v[1]) for k, v in ev.items()}
        final = _final_scorer(batch_size) if per_example else None
        if final is None:
            base = score(ev)
        else:
            base_res = {role: final(model, tok, t, ev[t.name]) for role, t in pair}
            base = {role: r.accuracy for role, r in base_res.items()}
            res.eval_ci95["base"] = {t.name: _ci(base_res[role]) for role, t in pair}
        res.base_target, res.base_control = base["target"], base["control"]
        if chosen is not None:
            with applied(model, vector, -chosen, restore):
                if final is None:
                    at = score(ev)
                else:
                    at_res = {role: final(model, tok, t, ev[t.name]) for role, t in pair}
                    at = {role: r.accuracy for role, r in at_res.items()}
            res.target_at_c, res.control_at_c = at["target"], at["control"]
            if final is not None:
                from taskvec.eval.stats import mcnemar

                res.eval_ci95["negated"] = {t.name: _ci(at_res[role]) for role, t in pair}
                res.paired = {t.name: mcnemar(at_res[role].correct, base_res[role].correct).to_dict()
                              for role, t in pair}
    res.seconds = round(time.perf_counter() - t0, 3)
    return res
