"""The ``Task`` dataclass: a prompt template, answer words and data splits."""

from __future__ import annotations

import gzip
import json
import random
import string
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from taskvec.errors import (
    MissingFileError,
    TaskFileError,
    UnknownNameError,
    UserInputError,
    did_you_mean,
)

KINDS = ("classification", "generation")
SEPARATOR = "\n\n"
BUILD_HINT = "run `python -m taskvec.tasks.build_data --src <shared data dir>` to create it"

Loader = Callable[[str], list[dict]]


def template_fields(template: str) -> list[str]:
    """Names of the ``{placeholders}`` in a ``str.format`` template, in order, without repeats.

    Raises ``UserInputError`` for a malformed template, positional fields (``{}``, ``{0}``),
    attribute or index access (``{a.b}``, ``{a[0]}``) and conversions/format specs.
    """
    names: list[str] = []
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as e:
        raise UserInputError(
            f"malformed template {template!r}: {e}; write literal braces as '{{{{' and '}}}}'."
        ) from None
    for _literal, name, spec, conv in parsed:
        if name is None:
            continue
        if not name.isidentifier():
            raise UserInputError(
                f"template field {{{name}}} is not a plain field name; use names like {{text}}."
            )
        if spec or conv:
            raise UserInputError(
                f"template field {{{name}}} has a format spec or conversion; use a plain {{{name}}}."
            )
        if name not in names:
            names.append(name)
    return names


def check_label_words(label_words: dict[str, str]) -> str | None:
    """Return a problem with ``label_words`` (empty, duplicate, prefix of another) or None."""
    if len(label_words) < 2:
        return "a classification task needs at least two label_words"
    for label, word in label_words.items():
        if not isinstance(label, str) or not isinstance(word, str) or not word.strip():
            return f"label word for {label!r} must be a non-empty string, got {word!r}"
    items = list(label_words.items())
    for i, (la, wa) in enumerate(items):
        for lb, wb in items[i + 1 :]:
            if wa == wb:
                return f"labels {la!r} and {lb!r} share the answer {wa!r}; answers must be distinct"
            if wa.startswith(wb) or wb.startswith(wa):
                short, long_ = (wa, wb) if len(wa) <= len(wb) else (wb, wa)
                return (
                    f"answer {short!r} is a prefix of {long_!r}; use answers that are not prefixes"
                )
    return None


def stable_rng(*parts: object) -> random.Random:
    """A ``random.Random`` seeded from a string key: the same on every platform and run."""
    return random.Random(":".join(str(p) for p in parts))


def grouped_split(
    keys: Sequence[Hashable], sizes: Sequence[int], rng: random.Random
) -> list[list[int]]:
    """Split row indices into ``len(sizes) + 1`` disjoint parts, keeping equal keys together.

    Groups of rows with the same key are visited in a seeded random order and appended to part
    0 until it holds at least ``sizes[0]`` rows, then part 1, ...; the rest form the last part.
    Indices inside each part are in that random order.
    """
    groups: dict[Hashable, list[int]] = {}
    for i, key in enumerate(keys):
        groups.setdefault(key, []).append(i)
    order = list(groups.values())
    rng.shuffle(order)
    parts: list[list[int]] = [[] for _ in range(len(sizes) + 1)]
    part = 0
    for group in order:
        while part < len(sizes) and len(parts[part]) >= sizes[part]:
            part += 1
        parts[part].extend(group)
    return parts


#: the task data shipped inside the package
DATA_DIR = Path(__file__).resolve().parent / "data"


def read_package_bytes(*relpath: str) -> bytes:
    """Uncompressed bytes of a gzip file under ``taskvec/tasks/data/``."""
    node = DATA_DIR.joinpath(*relpath)
    if not node.is_file():
        raise MissingFileError(f"packaged task data {'/'.join(relpath)} is missing; {BUILD_HINT}.")
    with node.open("rb") as fh:
        return gzip.decompress(fh.read())


def parse_jsonl(data: bytes, where: str) -> list[dict]:
    """Parse JSON Lines bytes into a list of dicts (blank lines skipped)."""
    rows = []
    for lineno, line in enumerate(data.decode("utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise TaskFileError(f"{where}:{lineno}: invalid JSON ({e.msg}).") from None
        rows.append(row)
    return rows


@dataclass(eq=False)
class Task:
    """A task: how to turn an example into a prompt and an answer, plus its data splits.

    ``template`` is a ``str.format`` string over the example's fields giving the prompt
    *without* the answer. Classification answers come from ``label_words`` (label name ->
    answer text with a leading space); generation answers are ``" " + example["output"]``.
    """

    name: str
    kind: str
    template: str
    label_words: dict[str, str] = field(default_factory=dict)
    splits: tuple[str, ...] = ("train", "validation")
    train_split: str = "train"
    eval_split: str = "validation"
    metric: str = "accuracy"
    source: str = ""
    separator: str = SEPARATOR
    description: str = ""
    loader: Loader | None = field(default=None, repr=False)
    fields: tuple[str, ...] = field(init=False, repr=False)
    _cache: dict[str, list[dict]] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        self.splits = tuple(self.splits)
        self.label_words = dict(self.label_words)
        if self.kind not in KINDS:
            raise UserInputError(
                f'task {self.name}: kind must be one of {", ".join(KINDS)}, got "{self.kind}".'
            )
        self.fields = tuple(template_fields(self.template))
        if self.kind == "classification":
            problem = check_label_words(self.label_words)
            if problem:
                raise UserInputError(f"task {self.name}: {problem}.")
        elif self.label_words:
            raise UserInputError(
                f"task {self.name}: generation tasks take no label_words; remove them."
            )
        for attr in ("train_split", "eval_split"):
            split = getattr(self, attr)
            if split not in self.splits:
                raise UserInputError(
                    f'task {self.name}: {attr} "{split}" is not one of its splits '
                    f"({', '.join(self.splits)})."
                )

    # -- data ---------------------------------------------------------------------------
    def load(self, split: str | None = None, limit: int | None = None) -> list[dict]:
        """Examples of ``split`` (default: ``eval_split``), the first ``limit`` of them.

        Each call returns fresh dict copies, so callers may modify them.
        """
        split = self.eval_split if split is None else split
        if split not in self.splits:
            raise UnknownNameError(
                f'unknown split "{split}" of task {self.name}.{did_you_mean(str(split), self.splits)}'
                f" Known splits: {', '.join(self.splits)}."
            )
        if limit is not None and (
            isinstance(limit, bool) or not isinstance(limit, int) or limit < 0
        ):
            raise UserInputError(f"limit must be a non-negative integer or None, got {limit!r}.")
        if split not in self._cache:
            if self.loader is None:
                raise MissingFileError(f"task {self.name} has no data loader for split {split}.")
            self._cache[split] = self.loader(split)
        rows = self._cache[split]
        if limit is not None:
            rows = rows[:limit]
        return [dict(r) for r in rows]

    def subset(
        self, split: str | None = None, limit: int | None = None, sample: int | None = None, seed: int = 0
    ) -> list[dict]:
        """The first ``limit`` examples of ``split`` or a seeded random ``sample`` of them.

        A first-N subset of a classification split whose label shares are far from the split's
        raises a :class:`~taskvec.errors.SubsetWarning` (see :mod:`taskvec.tasks.subsets`).
        """
        from taskvec.tasks.subsets import choose

        split = self.eval_split if split is None else split
        rows = self.load(split)
        label_of = None
        if self.kind == "classification":
            names = self.labels()

            def label_of(ex: dict[str, Any]) -> str:
                return names[self.label_index(ex)]
        return choose(rows, limit, sample, seed, label_of, where=f"task {self.name} split {split}")

    # -- formatting ---------------------------------------------------------------------
    def prompt(self, example: dict[str, Any]) -> str:
        """The query prompt for ``example`` (the template filled in, no answer)."""
        try:
            return self.template.format(**example)
        except KeyError as e:
            raise UserInputError(
                f"task {self.name}: example has no field {e.args[0]!r} used by the template; "
                f"examples need the fields {', '.join(self.fields)}."
            ) from None

    def answer(self, example: dict[str, Any]) -> str:
        """The answer text for ``example``, leading space included (e.g. " positive")."""
        if self.kind == "classification":
            label = example.get("label")
            if label not in self.label_words:
                raise UserInputError(
                    f"task {self.name}: unknown label {label!r}; "
                    f"expected one of {', '.join(self.label_words)}."
                )
            return self.label_words[label]
        if "output" not in example:
            raise UserInputError(f"task {self.name}: example has no 'output' field.")
        return " " + str(example["output"])

    def labels(self) -> list[str]:
        """Label names in a fixed order (empty for generation tasks)."""
        return list(self.label_words)

    def choices(self) -> list[str]:
        """Answer texts in ``labels()`` order (empty for generation tasks)."""
        return list(self.label_words.values())

    def label_index(self, example: dict[str, Any]) -> int:
        """Position of ``example``'s label in ``labels()``."""
        if self.kind != "classification":
            raise UserInputError(f"task {self.name} is a generation task and has no labels.")
        label = example.get("label")
        labels = self.labels()
        if label not in labels:
            raise UserInputError(
                f"task {self.name}: unknown label {label!r}; expected one of {', '.join(labels)}."
            )
        return labels.index(label)
