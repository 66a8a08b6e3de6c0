"""Early stopping for fine-tuning: choose the training step on held-out train examples.

Every ``every`` steps (and at the last step) the model is evaluated on the held-out train slice
(``--holdout``, never the task's eval split) and the step with the best accuracy is kept. Ties
go to the earlier step: a later step must be strictly more accurate to replace it, so a flat
curve keeps the shorter training. After ``patience`` evaluations without improvement training
stops (``patience=0``: never; the best step is still kept). At the end the best step's trainable
weights are put back into the model before the adapter is saved.

Resumable: the history lives in every checkpoint's state, and the best step's weights in
``<out>/early_stopping/step-<k>.safetensors`` (named by step and written atomically, so the
file a checkpoint's history points to is the one that step wrote; later files from a run cut
off after that checkpoint are overwritten or removed when those steps are redone).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from taskvec.errors import FileFormatError, UserInputError
from taskvec.formats.safetensors import read_tensors, write_file

__all__ = ["EarlyStopper", "check_early_stopping"]

FOLDER = "early_stopping"


def check_early_stopping(every: int, patience: int, holdout: int, world_size: int) -> None:
    """One-line errors for options that cannot work together."""
    for name, v in (("--eval-every", every), ("--patience", patience)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise UserInputError(f"{name} must be a non-negative integer, got {v!r}.")
    if patience and not every:
        raise UserInputError("--patience needs --eval-every K (how often to evaluate on the held-out slice).")
    if every and not holdout:
        raise UserInputError("--eval-every chooses the step on held-out train examples: keep --holdout > 0.")
    if every and world_size > 1:
        raise UserInputError("early stopping runs in one process; drop --eval-every under torchrun.")


class EarlyStopper:
    """Evaluate every ``every`` steps with ``score(model) -> accuracy``; keep the best step."""

    def __init__(self, out_dir: Path, every: int, patience: int, score: Callable[[Any], float],
                 n_examples: int, state: dict[str, Any] | None = None) -> None:
        self.dir = Path(out_dir) / FOLDER
        self.every, self.patience, self.score, self.n = every, patience, score, n_examples
        st = state or {}
        self.history: list[dict[str, Any]] = list(st.get("history", []))
        self.best_step: int | None = st.get("best_step")
        self.best_accuracy: float | None = st.get("best_accuracy")
        self.bad: int = int(st.get("bad", 0))
        self.stopped_at: int | None = None

    def state(self) -> dict[str, Any]:
        """What a checkpoint keeps to resume the selection."""
        return {"history": self.history, "best_step": self.best_step,
                "best_accuracy": self.best_accuracy, "bad": self.bad}

    def due(self, step: int, last: int) -> bool:
        return step % self.every == 0 or step == last

    def update(self, step: int, model: Any, params: Sequence[tuple[str, torch.nn.Parameter]]) -> bool:
        """Evaluate at ``step``; save the weights if best; True when training should stop."""
        was_training = model.training
        model.eval()
        t0 = time.perf_counter()
        try:
            acc = float(self.score(model))
        finally:
            model.train(was_training)
        self.history.append({"step": step, "accuracy": acc, "seconds": round(time.perf_counter() - t0, 3)})
        if self.best_accuracy is None or acc > self.best_accuracy:  # ties: the earlier step stays
            self.best_step, self.best_accuracy, self.bad = step, acc, 0
            self.dir.mkdir(parents=True, exist_ok=True)
            write_file(self.dir / f"step-{step}.safetensors",
                       dict(params),
                       {"step": str(step), "accuracy": repr(acc)})
            for f in self.dir.glob("step-*.safetensors"):
                if f.name != f"step-{step}.safetensors":
                    f.unlink(missing_ok=True)
        else:
            self.bad += 1
        if self.patience and self.bad >= self.patience:
            self.stopped_at = step
            return True
        return False

    def restore_best(self, params: Sequence[tuple[str, torch.nn.Parameter]]) -> None:
        """Copy the best step's weights back into ``params``."""
        if self.best_step is None:
            return
        path = self.dir / f"step-{self.best_step}.safetensors"
        if not path.is_file():
            raise FileFormatError(f"{path} is missing: the best step's weights are gone; rerun without --resume.")
        tensors = read_tensors(path)
        with torch.no_grad():
            for n, p in params:
                if n not in tensors or tensors[n].shape != p.shape:
                    raise FileFormatError(f"{path} does not hold {n} of this model; rerun without --resume.")
                p.copy_(tensors[n])

    def record(self, steps: int) -> dict[str, Any]:
        """The recipe's ``early_stopping`` entry."""
        last = self.history[-1]["step"] if self.history else None
        return {"every": self.every, "patience": self.patience, "selected_on": "search_holdout",
                "examples": self.n, "best_step": self.best_step, "best_accuracy": self.best_accuracy,
                "stopped_early": last is not None and last < steps, "last_step": last,
                "tie_rule": "earliest step with the highest accuracy", "history": self.history}
