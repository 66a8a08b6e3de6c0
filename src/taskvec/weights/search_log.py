"""Resumable coefficient searches: every scored candidate appended to a JSON Lines log.

A per-task search over nine vectors scores about 90 settings (hours on a CPU). With
``search_coefficients(..., log=PATH)`` each finished candidate is appended to ``PATH`` (one line,
flushed and fsynced), and a rerun with the same settings reads those scores back instead of
evaluating again. The search is deterministic given the scores, so a resumed search takes exactly
the path an uninterrupted one takes.

File layout: the first line is the header ``{"format": "taskvec-search-log", "version": 1,
"key": {...}}``, where ``key`` names everything a score depends on (method, parameters, grid,
tasks and their example sets, a digest of every vector's tensors); then one line per candidate
``{"lam": ..., "coefficients": [...], "accuracy": {task: acc}}``. A log whose key differs is
refused (delete it or choose another path); a last line cut off by a kill is ignored.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from taskvec.errors import FileFormatError, UserInputError

LOG_FORMAT = "taskvec-search-log"
LOG_VERSION = 1


def vector_digest(vector: Any) -> str:
    """sha256 over a vector's parameter names, forms, shapes and tensor bytes (dense or low-rank)."""
    from taskvec.weights.lowrank import LowRankDelta

    h = hashlib.sha256()

    def add(t: torch.Tensor) -> None:
        t = t.detach().contiguous().cpu()
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")

    for name in sorted(vector.names):
        d = vector[name]
        h.update(name.encode())
        if isinstance(d, LowRankDelta):
            h.update(f"lowrank{d.scale!r}".encode())
            add(d.A)
            add(d.B)
        else:
            add(d)
    return h.hexdigest()


def examples_digest(examples: Sequence[dict]) -> str:
    """sha256 of the examples (JSON, sorted keys): two searches on the same examples agree."""
    blob = json.dumps(list(examples), sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def candidate_key(lam: float, coefficients: Sequence[float]) -> str:
    """Lookup key of a setting (``repr`` of floats round-trips exactly)."""
    return repr((float(lam), [float(c) for c in coefficients]))


class SearchLog:
    """Scores of the candidates already evaluated, read from and appended to a JSON Lines file."""

    def __init__(self, path: str | os.PathLike, key: dict[str, Any]) -> None:
        self.path = Path(path)
        self.key = json.loads(json.dumps(key))  # normalise (tuples -> lists) for comparison
        self.scores: dict[str, dict[str, float]] = {}
        if self.path.exists() and self.path.stat().st_size > 0:
            self._read()
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._append({"format": LOG_FORMAT, "version": LOG_VERSION, "key": self.key})

    def _read(self) -> None:
        lines = self.path.read_text(encoding="utf-8").splitlines()
        try:
            head = json.loads(lines[0])
        except (json.JSONDecodeError, IndexError):
            head = None
        if not isinstance(head, dict) or head.get("format") != LOG_FORMAT:
            raise FileFormatError(f"{self.path} is not a taskvec search log: delete it or pass another path.")
        if head.get("version") != LOG_VERSION:
            raise FileFormatError(f"{self.path} is search log version {head.get('version')}, this taskvec reads "
                                  f"version {LOG_VERSION}: delete it or pass another path.")
        if head.get("key") != self.key:
            old = head.get("key") or {}
            diff = sorted(k for k in set(old) | set(self.key) if old.get(k) != self.key.get(k))
            raise UserInputError(f"{self.path} was written by a different search (differs in: {', '.join(diff)}): "
                                 "delete it to start over, or pass another path.")
        for i, line in enumerate(lines[1:], start=2):
            try:
                rec = json.loads(line)
                self.scores[candidate_key(rec["lam"], rec["coefficients"])] = {
                    str(k): float(v) for k, v in rec["accuracy"].items()}
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                if i == len(lines):  # the last line may be cut off by a kill: score it again
                    self._truncate_last(lines[:-1])
                    break
                raise FileFormatError(f"{self.path} line {i} is damaged ({exc}): delete the file to start over.") from None

    def _truncate_last(self, keep: list[str]) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text("".join(line + "\n" for line in keep), encoding="utf-8")
        os.replace(tmp, self.path)

    def _append(self, record: dict[str, Any]) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def get(self, lam: float, coefficients: Sequence[float]) -> dict[str, float] | None:
        """The logged per-task scores of a setting, or None."""
        return self.scores.get(candidate_key(lam, coefficients))

    def add(self, lam: float, coefficients: Sequence[float], accuracy: dict[str, float], stage: str) -> None:
        """Log a newly scored setting."""
        self.scores[candidate_key(lam, coefficients)] = dict(accuracy)
        self._append({"lam": float(lam), "coefficients": [float(c) for c in coefficients],
                      "accuracy": accuracy, "stage": stage})
