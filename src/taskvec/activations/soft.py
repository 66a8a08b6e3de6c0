"""Soft task vectors: a trained per-head blend of attention-head activations with their task means.

For every layer l and head h, the head's o_proj input a at the last prompt token is replaced by

    a' = (1 - alpha_lh) * a + alpha_lh * mean_lh,     alpha_lh = sigmoid(t_lh / temperature)

where ``mean_lh`` is the head's mean activation at the last token of k-shot ICL prompts of the
task (:func:`~taskvec.activations.heads.head_means`) and t, (L, H), is the only thing trained:
270 scalars for SmolLM2-135M (30 layers x 9 heads). The model stays frozen.

Training (:class:`TaskVectorExtractor`): Adam on t, cross-entropy of the answer's first token of
ZERO-SHOT train prompts (``answer_tokens="all"``: every answer token, teacher-forced), plus
``l1 * sum(alpha)``. Every ``eval_every`` steps (and at step 0) the first-token accuracy on the
validation examples is measured with the current t; the best evaluation (highest accuracy, ties:
lowest validation loss, then the earliest) is kept as a copy of t, and training stops after
``patience`` evaluations without improvement. Data: means and training prompts from the train
split; model selection on the validation split (tasks without a test split, e.g. sst2, hold out
examples of the train split for it and keep their validation split as the test set); the test
split is never touched. Seeded and deterministic on CPU.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from taskvec.activations.collect import progress_bar
from taskvec.activations.heads import HeadMeans, head_means
from taskvec.activations.hooks import Positions, positions_from_str, positions_to_str
from taskvec.activations.soft_vector import SoftTaskVector, blend_intervention
from taskvec.errors import NonFiniteError, UserInputError
from taskvec.eval.batching import encode, length_sorted_batches, pad_id
from taskvec.eval.scoring import supports_logits_to_keep
from taskvec.models.adapter import get_adapter

__all__ = [
    "ANSWER_TOKENS",
    "SoftConfig",
    "SplitPlan",
    "TaskVectorExtractor",
    "ValScore",
    "split_plan",
    "report_split",
    "train_soft_vector",
]

ANSWER_TOKENS = ("first", "all")
HELD_OUT = 200  # train examples held out for model selection when a task has no test split


@dataclass
class SoftConfig:
    """The training recipe (saved in the file's ``recipe`` metadata)."""

    steps: int = 200
    lr: float = 0.05
    batch_size: int = 16
    init: float = -2.0  # initial t: alpha starts at sigmoid(init / temperature)
    l1: float = 0.0  # weight of sum(alpha)
    temperature: float = 1.0
    eval_every: int = 20
    patience: int = 5  # evaluations without improvement before stopping; 0 = never stop early
    shots: int = 10  # demonstrations per ICL prompt for the head means
    n_prompts: int = 100  # ICL prompts averaged for the head means
    answer_tokens: str = "first"  # "first" or "all" (teacher-forced)
    positions: str = "last"  # "last" or "last+generated"
    val_limit: int | None = None  # validation examples (default: all)
    eval_batch_size: int = 32
    seed: int = 0

    def check(self) -> SoftConfig:
        """Raise ``UserInputError`` for a bad value (one line, naming the CLI flag)."""
        for flag, v in (("--steps", self.steps), ("--batch-size", self.batch_size),
                        ("--eval-every", self.eval_every), ("--shots", self.shots),
                        ("--n-prompts", self.n_prompts), ("--eval-batch-size", self.eval_batch_size)):
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise UserInputError(f"{flag} must be a positive integer, got {v!r}.")
        if isinstance(self.patience, bool) or not isinstance(self.patience, int) or self.patience < 0:
            raise UserInputError(f"--patience must be >= 0 (0: no early stopping), got {self.patience!r}.")
        if self.val_limit is not None and self.val_limit <= 0:
            raise UserInputError(f"--val-limit must be positive, got {self.val_limit}.")
        for flag, v in (("--lr", self.lr), ("--temperature", self.temperature)):
            if not (math.isfinite(v) and v > 0):
                raise UserInputError(f"{flag} must be a positive number, got {v}.")
        if not math.isfinite(self.init):
            raise UserInputError(f"--init must be a finite number, got {self.init}.")
        if not (math.isfinite(self.l1) and self.l1 >= 0):
            raise UserInputError(f"--l1 must be >= 0, got {self.l1}.")
        if self.answer_tokens not in ANSWER_TOKENS:
            from taskvec.errors import unknown_name

            raise unknown_name("answer-tokens mode", self.answer_tokens, ANSWER_TOKENS)
        pos = positions_from_str(self.positions)
        if Positions.LAST not in pos or Positions.ALL in pos:
            raise UserInputError(f'--positions must be "last" or "last+generated", got "{self.positions}".')
        self.positions = positions_to_str(pos)
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------------------- data


def report_split(task: Any) -> str:
    """The held-out split for final numbers: ``test`` if the task has one, else its eval split."""
    return "test" if "test" in task.splits else task.eval_split



@dataclass
class SplitPlan:
    """Training and model-selection examples; ``test`` names the split they never overlap."""

    train: list[dict]
    validation: list[dict]
    validation_source: str  # e.g. "validation" or "train (200 held out)"
    test: str


def split_plan(task: Any, val_limit: int | None = None, seed: int = 0) -> SplitPlan:
    """Train examples, validation examples for early stopping, and the test split's name.

    With a ``validation`` split distinct from the test and train splits it is used for model
    selection. Otherwise (e.g. sst2: train + validation, where validation is the test set)
    ``HELD_OUT`` (or ``val_limit``) seeded train examples are held out and not trained on.
    """
    train = task.load(task.train_split)
    test = report_split(task)
    if "validation" in task.splits and "validation" not in (test, task.train_split):
        val, source = task.load("validation"), "validation"
    else:
        n_val = min(val_limit or HELD_OUT, len(train) // 5)
        if n_val <= 0:
            raise UserInputError(
                f"task {task.name} has no validation split and too few train examples to hold out "
                "a validation set for early stopping."
            )
        rng = random.Random(f"taskvec-soft:held-out:{task.name}:{seed}")
        held = set(rng.sample(range(len(train)), n_val))
        val = [ex for i, ex in enumerate(train) if i in held]
        train = [ex for i, ex in enumerate(train) if i not in held]
        source = f"{task.train_split} ({n_val} held out)"
    if val_limit is not None:
        val = val[:val_limit]
    if not train or not val:
        raise UserInputError(f"task {task.name} has no training or validation examples.")
    return SplitPlan(train, val, source, test)


@dataclass
class Encoded:
    """Token ids of zero-shot prompts and their answers."""

    prompts: list[list[int]]
    answers: list[list[int]]  # "first": [first token]; "all": every answer token
    gold: list[int]  # generation: first answer token id; classification: label index


def _collate(
    prompts: Sequence[Sequence[int]], answers: Sequence[Sequence[int]] | None, pad: int
) -> tuple[dict[str, torch.Tensor], torch.Tensor, int]:
    """Prompts LEFT-padded to a common width P, then (teacher forcing) the answers RIGHT-padded.

    So the last prompt token is at index P - 1 in every row. Returns ``(inputs, labels (B, A+1),
    P)``: logits at positions P-1 .. P-1+A predict the answer tokens (-100 = ignored).
    """
    width = max(len(p) for p in prompts)
    extra = 0 if answers is None else max(len(a) for a in answers) - 1  # A: answer tokens fed in
    n = len(prompts)
    ids = torch.full((n, width + extra), pad, dtype=torch.long)  # (B, P+A)
    mask = torch.zeros((n, width + extra), dtype=torch.long)  # (B, P+A)
    labels = torch.full((n, extra + 1), -100, dtype=torch.long)  # (B, A+1)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):width] = torch.tensor(list(p))
        mask[i, width - len(p):width] = 1
        if answers is not None:
            a = list(answers[i])
            ids[i, width:width + len(a) - 1] = torch.tensor(a[:-1], dtype=torch.long)
            mask[i, width:width + len(a) - 1] = 1
            labels[i, : len(a)] = torch.tensor(a)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)  # (B, P+A)
    return {"input_ids": ids, "attention_mask": mask, "position_ids": pos}, labels, width


@dataclass
class ValScore:
    """Validation result of one coefficient tensor."""

    accuracy: float
    loss: float

    def better_than(self, other: ValScore | None) -> bool:
        """Higher accuracy wins; ties: lower loss; full ties keep the earlier (``other``)."""
        if other is None:
            return True
        return (self.accuracy, -self.loss) > (other.accuracy, -other.loss)


Validator = Callable[[torch.Tensor], ValScore]  # coefficients t (L, H) -> score


# ---------------------------------------------------------------------------- training


class TaskVectorExtractor:
    """Train a soft task vector for ``task`` on a frozen ``model`` (see the module docstring).

    ``extractor.train()`` computes the head means (or takes ``means``), trains t and returns a
    :class:`SoftTaskVector` holding the best validation checkpoint; ``extractor.history`` has
    one row per evaluation.
    """

    def __init__(
        self,
        model: nn.Module,
        tok: Any,
        task: Any,
        config: SoftConfig | None = None,
        progress: bool = False,
        **overrides: Any,
    ) -> None:
        self.model, self.tok, self.task = model, tok, task
        cfg = SoftConfig(**{**asdict(config or SoftConfig()), **overrides})
        self.config = cfg.check()
        self.progress = progress
        self.adapter = get_adapter(model)
        self.teacher_forced = cfg.answer_tokens == "all"
        self.also_generated = Positions.GENERATED in positions_from_str(cfg.positions)
        self.history: list[dict[str, Any]] = []
        self.plan = split_plan(task, cfg.val_limit, cfg.seed)
        self.choice_first: torch.Tensor | None = None  # classification: (C,) first token ids
        if task.kind == "classification":
            firsts = [self._answer_ids(c)[0] for c in task.choices()]
            if len(set(firsts)) != len(firsts):
                raise UserInputError(
                    f"the label words of {task.name} ({', '.join(map(repr, task.choices()))}) share "
                    "their first token in this tokenizer: soft task vectors score the label's first "
                    "token, so the label words must start with different tokens."
                )
            self.choice_first = torch.tensor(firsts)

    # ------------------------------------------------------------------ data

    def _answer_ids(self, text: str) -> list[int]:
        ids = self.tok(text, add_special_tokens=False)["input_ids"]
        if not ids:
            raise UserInputError(f"answer {text!r} of task {self.task.name} tokenizes to nothing.")
        return list(ids)

    def encode(self, examples: Sequence[dict], all_tokens: bool = False) -> Encoded:
        """Zero-shot prompt ids, answer ids (first token, or all with ``all_tokens``), gold."""
        prompts = encode(self.tok, [self.task.prompt(ex) for ex in examples])
        answers, gold = [], []
        for ex in examples:
            ids = self._answer_ids(self.task.answer(ex))
            answers.append(ids if all_tokens else ids[:1])
            classify = self.task.kind == "classification"
            gold.append(self.task.label_index(ex) if classify else ids[0])
        return Encoded(prompts, answers, gold)

    def compute_means(self) -> HeadMeans:
        """Per-head means of k-shot train prompts (``shots``, ``n_prompts``, ``seed``)."""
        cfg = self.config
        return head_means(self.model, self.tok, self.task, cfg.n_prompts, cfg.shots, cfg.seed,
                          cfg.eval_batch_size, progress=self.progress)

    def alpha(self, t: torch.Tensor) -> torch.Tensor:
        """``sigmoid(t / temperature)``, (L, H)."""
        return torch.sigmoid(t / self.config.temperature)

    def _forward(self, inputs: dict[str, torch.Tensor], keep: int) -> torch.Tensor:
        dev = next(self.model.parameters()).device
        kwargs: dict[str, Any] = {"use_cache": False}
        if supports_logits_to_keep(self.model):
            kwargs["logits_to_keep"] = keep
        out = self.model(**{k: v.to(dev) for k, v in inputs.items()}, **kwargs)
        return out.logits[:, -keep:].float()  # (B, keep, V)

    def batch_loss(self, t: torch.Tensor, means: torch.Tensor, enc: Encoded, rows: Sequence[int]) -> torch.Tensor:
        """Mean cross-entropy of the answer token(s) of ``rows`` with ``alpha(t)`` applied."""
        answers = [enc.answers[i] for i in rows] if self.teacher_forced else None
        inputs, labels, width = _collate([enc.prompts[i] for i in rows], answers, pad_id(self.tok))
        if answers is None:
            labels[:, 0] = torch.tensor([enc.answers[i][0] for i in rows])
        n_pred = labels.shape[1]  # A + 1 predicted positions: P-1 .. P-1+A
        where = list(range(width - 1, width - 1 + n_pred)) if self.also_generated else [width - 1]
        with blend_intervention(self.model, means, self.alpha(t), where):
            logits = self._forward(inputs, inputs["input_ids"].shape[1] - width + 1)  # (B, A+1, V)
        labels = labels.to(logits.device)
        return nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100)

    @torch.no_grad()
    def validate(self, t: torch.Tensor | None, means: torch.Tensor, enc: Encoded) -> ValScore:
        """First-token accuracy and cross-entropy on ``enc`` with ``alpha(t)`` (None: unpatched).

        Generation: the argmax over the vocabulary is the answer's first token. Classification:
        the argmax among the label words' first tokens is the gold label.
        """
        hits, loss_sum, n = 0, 0.0, len(enc.prompts)
        iv = None if t is None else blend_intervention(self.model, means, self.alpha(t), Positions.LAST)
        batches = length_sorted_batches(enc.prompts, self.config.eval_batch_size, pad_id(self.tok))
        for batch in batches:
            with iv if iv is not None else nullcontext():
                logits = self._forward(batch.model_inputs(), 1)[:, -1].cpu()  # (B, V)
            first = torch.tensor([enc.answers[i][0] for i in batch.index])  # (B,)
            gold = torch.tensor([enc.gold[i] for i in batch.index])  # (B,)
            loss_sum += float(nn.functional.cross_entropy(logits, first, reduction="sum"))
            if self.choice_first is not None:
                pred = logits[:, self.choice_first].argmax(-1)  # (B,) label index
            else:
                pred = logits.argmax(-1)  # (B,) token id
            hits += int((pred == gold).sum())
        return ValScore(hits / n, loss_sum / n)

    # ------------------------------------------------------------------ the loop

    def train(
        self,
        means: HeadMeans | torch.Tensor | None = None,
        validator: Validator | None = None,
    ) -> SoftTaskVector:
        """Train t and return the best-on-validation checkpoint as a :class:`SoftTaskVector`.

        ``means``: precomputed head means (default: :meth:`compute_means`). ``validator``: a
        function t -> :class:`ValScore` replacing the validation-set evaluation (tests).
        """
        from taskvec.models.fingerprint import fingerprint
        from taskvec.models.loading import model_name

        cfg, ad, model = self.config, self.adapter, self.model
        start = time.perf_counter()
        hm = means if isinstance(means, HeadMeans) else None
        if means is None:
            hm = self.compute_means()
        mean_t = (hm.means if hm is not None else means).detach().float()  # (L, H, D)
        dev = next(model.parameters()).device
        mean_t = mean_t.to(dev)
        train = self.plan.train  # encoded batch by batch (sst2's train split has 67k examples)
        val_enc = self.encode(self.plan.validation)
        zero_shot = None
        if validator is None:  # the real validation set: also record the unpatched baseline
            zero_shot = self.validate(None, mean_t, val_enc)

            def validator(t: torch.Tensor) -> ValScore:
                return self.validate(t, mean_t, val_enc)

        t = torch.full((ad.n_layers, ad.n_heads), float(cfg.init), device=dev, requires_grad=True)
        opt = torch.optim.Adam([t], lr=cfg.lr)
        rng = random.Random(f"taskvec-soft:batches:{self.task.name}:{cfg.seed}")
        order: list[int] = []
        self.history = []
        best_t, best, best_step, bad = t.detach().clone(), None, 0, 0
        flags = [(p, p.requires_grad) for p in model.parameters()]
        was_training = model.training
        window: list[float] = []
        try:
            for p, _ in flags:
                p.requires_grad_(False)
            model.eval()
            with progress_bar(cfg.steps, f"soft {self.task.name}", self.progress, unit="step") as upd:
                for step in range(cfg.steps + 1):
                    if step > 0:
                        if len(order) < min(cfg.batch_size, len(train)):
                            perm = list(range(len(train)))
                            rng.shuffle(perm)
                            order += perm
                        rows, order = order[: cfg.batch_size], order[cfg.batch_size:]
                        enc = self.encode([train[i] for i in rows], all_tokens=self.teacher_forced)
                        ce = self.batch_loss(t, mean_t, enc, range(len(rows)))
                        loss = ce + cfg.l1 * self.alpha(t).sum() if cfg.l1 else ce
                        if not torch.isfinite(loss):
                            raise NonFiniteError(
                                f"the training loss became {float(loss)} at step {step}: lower --lr."
                            )
                        opt.zero_grad(set_to_none=True)
                        loss.backward()
                        if t.grad is None:
                            raise RuntimeError("no gradient reached the soft task vector coefficients")
                        opt.step()
                        window.append(float(ce.detach()))
                        if upd:
                            upd(1)
                    if step % cfg.eval_every and step != cfg.steps:
                        continue
                    score = validator(t.detach().clone())
                    row = {"step": step, "train_loss": sum(window) / len(window) if window else None,
                           "val_accuracy": score.accuracy, "val_loss": score.loss,
                           "alpha_mean": float(self.alpha(t.detach()).mean()),
                           "alpha_max": float(self.alpha(t.detach()).max())}
                    window = []
                    self.history.append(row)
                    if score.better_than(best):
                        best, best_t, best_step, bad = score, t.detach().clone(), step, 0
                    else:
                        bad += 1
                        if cfg.patience and bad >= cfg.patience:
                            break
        finally:
            for p, flag in flags:
                p.requires_grad_(flag)
            model.train(was_training)
        assert best is not None
        extra: dict[str, Any] = {
            "history": self.history,
            "zero_shot_val_accuracy": None if zero_shot is None else zero_shot.accuracy,
            "zero_shot_val_loss": None if zero_shot is None else zero_shot.loss,
            "steps_run": self.history[-1]["step"],
            "stopped_early": self.history[-1]["step"] < cfg.steps,
            "validation_source": self.plan.validation_source,
            "n_validation": len(self.plan.validation),
            "n_train": len(self.plan.train),
            "test_split": self.plan.test,
            "seconds": round(time.perf_counter() - start, 3),
        }
        if hm is not None:
            extra["head_means"] = hm.metadata()
        meta = {
            "model": model_name(model),
            "model_fingerprint": fingerprint(model),
            "task": self.task.name,
            "site": "head_out",
            "positions": cfg.positions,
            "temperature": cfg.temperature,
            "recipe": cfg.to_dict(),
            "validation_score": best.accuracy,
            "validation_loss": best.loss,
            "best_step": best_step,
            "extra": extra,
        }
        self.result = SoftTaskVector(best_t.cpu(), mean_t.cpu(), meta)
        return self.result

    # ------------------------------------------- the trained vector (jacknewsom's one object)

    @property
    def vector(self) -> SoftTaskVector:
        """The soft task vector of the last :meth:`train`."""
        if getattr(self, "result", None) is None:
            raise UserInputError("this extractor has not been trained: call .train() first.")
        return self.result

    def apply(self, positions: str | None = None) -> Any:
        """The trained vector as an ``Intervention`` on this model (``with ex.apply(): ...``)."""
        return self.vector.intervention(self.model, positions)

    def evaluate(self, split: str = "test", limit: int | None = None, batch_size: int = 16) -> Any:
        """Accuracy of the model with the trained vector on ``split`` (an ``EvalResult``)."""
        from taskvec.activations.evaluation import accuracy, load_examples

        examples = load_examples(self.task, split, limit)
        return accuracy(self.model, self.tok, self.task, examples, self.apply(), batch_size=batch_size,
                        split=split, progress=self.progress)

    def save(self, path: Any) -> Any:
        """Write the trained vector (``taskvec soft`` file); returns its path."""
        return self.vector.save(path)


def train_soft_vector(
    model: nn.Module, tok: Any, task: Any, progress: bool = False, **config: Any
) -> SoftTaskVector:
    """One call: ``TaskVectorExtractor(model, tok, task, **config).train()``."""
    return TaskVectorExtractor(model, tok, task, progress=progress, **config).train()
