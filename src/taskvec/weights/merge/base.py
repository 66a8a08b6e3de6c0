"""The ``MergeMethod`` interface: declared parameters, validation, and the per-tensor contract.

A method is a small object with a ``name``, a tuple of :class:`Param` declarations and a
``merge_tensor(name, deltas, weights, params)`` function that merges *one* tensor of every
input vector. Everything else (reading files, checking shapes and fingerprints, writing the
result) is shared, so the in-memory :meth:`MergeMethod.merge` and the streaming
``merge_files`` run the very same per-tensor code.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from taskvec.errors import UserInputError, did_you_mean
from taskvec.weights.lowrank import Delta, LowRankDelta

if TYPE_CHECKING:
    import torch

    from taskvec.weights.core_space import CoreSpace
    from taskvec.weights.vector import TaskVector
    from taskvec.weights.vector_source import VectorSource

#: keyword-friendly spellings of parameter names (``lambda`` is a Python keyword)
ALIASES = {"lam": "lambda", "scaling_coef": "lambda", "alpha": "lambda"}
#: mergekit parameters that have no meaning here; accepted and ignored with a note
IGNORED = {"int8_mask": "int8_mask only changes mergekit's internal mask dtype"}

_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


@dataclass(frozen=True)
class Param:
    """One method parameter.

    ``kind`` is ``float``, ``int``, ``bool`` or ``str``; ``per_model`` parameters may be given
    as one value per input vector (a list, or ``a,b,c`` on the command line) and are resolved
    to such a list. ``lo``/``hi`` bound numbers (``lo_open``/``hi_open`` exclude the bound);
    ``choices`` restrict strings; ``default=None`` means "unset" (the method decides).
    """

    name: str
    kind: type
    default: Any
    help: str
    per_model: bool = False
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    choices: tuple[str, ...] | None = None

    def describe_range(self) -> str:
        if self.choices:
            return " | ".join(self.choices)
        if self.lo is None and self.hi is None:
            return self.kind.__name__
        left = "(" if self.lo_open else "["
        right = ")" if self.hi_open else "]"
        lo = "-inf" if self.lo is None else f"{self.lo:g}"
        hi = "inf" if self.hi is None else f"{self.hi:g}"
        return f"{left}{lo}, {hi}{right}"

    def coerce(self, value: Any) -> tuple[Any, str | None]:
        """(value of the right type, None) or (None, problem)."""
        what = f'parameter "{self.name}"'
        try:
            if self.kind is bool:
                if isinstance(value, bool):
                    v: Any = value
                elif isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
                    v = value.strip().lower() in _TRUE
                else:
                    return None, f"{what} must be true or false, got {value!r}"
            elif self.kind is str:
                v = str(value)
                if self.choices and v not in self.choices:
                    return None, f"{what} must be one of {', '.join(self.choices)}, got {v!r}"
            elif isinstance(value, bool):
                return None, f"{what} must be a number, got {value!r}"
            elif self.kind is int:
                f = float(value)
                if not f.is_integer():
                    return None, f"{what} must be an integer, got {value!r}"
                v = int(f)
            else:
                v = float(value)
        except (TypeError, ValueError):
            return None, f"{what} must be {'an integer' if self.kind is int else 'a number'}, got {value!r}"
        if self.kind in (int, float):
            if not math.isfinite(v):
                return None, f"{what} must be finite, got {value!r}"
            bad_lo = self.lo is not None and (v <= self.lo if self.lo_open else v < self.lo)
            bad_hi = self.hi is not None and (v >= self.hi if self.hi_open else v > self.hi)
            if bad_lo or bad_hi:
                return None, f"{what} must be in {self.describe_range()}, got {value!r}"
        return v, None


def _split_list(value: Any) -> Any:
    if isinstance(value, str) and "," in value:
        return [x.strip() for x in value.split(",")]
    return value


def check_weights(weights: Sequence[Any] | None, n: int) -> tuple[list[float], list[str]]:
    """Validate per-vector weights (None -> all 1.0); returns (weights, problems)."""
    if weights is None:
        return [1.0] * n, []
    weights = list(weights)
    errors: list[str] = []
    if len(weights) != n:
        errors.append(f"{len(weights)} weights for {n} vectors: give one weight per vector")
    out: list[float] = []
    for i, w in enumerate(weights):
        try:
            if isinstance(w, bool):
                raise ValueError
            f = float(w)
        except (TypeError, ValueError):
            errors.append(f"weight #{i + 1} must be a number, got {w!r}")
            continue
        if not math.isfinite(f):
            errors.append(f"weight #{i + 1} must be finite, got {w!r}")
        out.append(f)
    return out, errors


#: where a method works on low-rank inputs: "dense" deltas, or the shared "core" space
#: (``taskvec.weights.core_space``); "auto" = core when every input of the tensor is low-rank
SPACE_EXACT = Param("space", str, "auto", "low-rank inputs: auto (core space, exact), core, or dense",
                    choices=("auto", "core", "dense"))
SPACE_ELEMENTWISE = Param("space", str, "dense", "low-rank inputs: dense (the published method) or core "
                          "(the method on the shared core matrices: a different method)",
                          choices=("dense", "core"))


def low_rank_inputs(deltas: Sequence[Delta | None]) -> list[LowRankDelta] | None:
    """The present deltas if every one is low-rank, else None."""
    ds = [d for d in deltas if d is not None]
    return ds if ds and all(isinstance(d, LowRankDelta) for d in ds) else None  # type: ignore[return-value]


class MergeMethod:
    """Base class of merge methods. Subclasses set ``name``, ``summary``, ``params`` and
    implement :meth:`merge_tensor` (the dense path: element-wise methods densify low-rank
    inputs per tensor). A method with a ``space`` parameter also runs in core space
    (:meth:`merge_core`), where low-rank inputs give a low-rank result and no (out, in) tensor
    is formed; :meth:`apply_tensor` picks the path.
    """

    name: str = ""
    summary: str = ""
    params: tuple[Param, ...] = ()

    # -- parameters ---------------------------------------------------------------------
    def param(self, name: str) -> Param:
        for p in self.params:
            if p.name == name:
                return p
        raise KeyError(name)

    def resolve_params(self, raw: Mapping[str, Any], n: int) -> tuple[dict[str, Any], list[str], list[str]]:
        """Check ``raw`` (user values, possibly strings) for ``n`` vectors.

        Returns (resolved params with defaults filled in, problems, notes). Per-model
        parameters become lists of length ``n``. Every problem is collected, none raised.
        """
        errors: list[str] = []
        notes: list[str] = []
        known = {p.name: p for p in self.params}
        given: dict[str, Any] = {}
        for key, value in raw.items():
            name = ALIASES.get(key, key)
            if name in IGNORED and name not in known:
                notes.append(f'parameter "{key}" ignored: {IGNORED[name]}')
                continue
            if name not in known:
                errors.append(
                    f'method {self.name} has no parameter "{key}".{did_you_mean(key, known)} '
                    f"Its parameters: {', '.join(known) or 'none'}"
                )
                continue
            if name in given:
                errors.append(f'parameter "{name}" given twice (as "{key}")')
                continue
            given[name] = value
        out: dict[str, Any] = {}
        for name, p in known.items():
            value = _split_list(given.get(name, p.default))
            if value is None:
                out[name] = [None] * n if p.per_model else None
                continue
            if isinstance(value, (list, tuple)):
                if not p.per_model:
                    errors.append(f'parameter "{name}" takes one value, got a list')
                    continue
                if len(value) != n:
                    errors.append(f'parameter "{name}" has {len(value)} values for {n} vectors')
                    continue
                vals = []
                for v in value:
                    if v is None:  # this vector keeps the default
                        vals.append(p.default if p.default is None else p.coerce(p.default)[0])
                        continue
                    cv, err = p.coerce(v)
                    if err:
                        errors.append(err)
                    vals.append(cv)
                out[name] = vals
                continue
            cv, err = p.coerce(value)
            if err:
                errors.append(err)
            out[name] = [cv] * n if p.per_model else cv
        if not errors:
            errors.extend(self.check_params(out, n))
        return out, errors, notes

    def check_params(self, params: dict[str, Any], n: int) -> list[str]:
        """Cross-parameter checks (may fill in derived values); returns problems."""
        return []

    def param_notes(self, params: Mapping[str, Any]) -> list[str]:
        """Notes on valid but risky settings (shown by ``taskvec merge``, kept in metadata)."""
        return []

    def validate(self, weights: Sequence[Any] | None, params: Mapping[str, Any], n: int) -> tuple[list[float], dict[str, Any], list[str]]:
        """Resolve weights and params or raise one ``UserInputError`` listing every problem."""
        if n < 1:
            raise UserInputError("merging needs at least one vector.")
        w, werr = check_weights(weights, n)
        p, perr, notes = self.resolve_params(params, n)
        errors = werr + perr
        if errors:
            raise UserInputError(f"invalid {self.name} merge: " + "; ".join(errors) + ".")
        return w, p, notes + self.param_notes(p)

    # -- merging ------------------------------------------------------------------------
    def prepare(self, sources: Sequence[VectorSource], weights: list[float], params: dict[str, Any]) -> dict[str, Any]:
        """Optional first pass over all inputs (e.g. global thresholds); returns params."""
        return params

    def merge_tensor(self, name: str, deltas: list[Delta | None], weights: list[float], params: dict[str, Any]) -> Delta | None:
        """Merge one tensor: ``deltas[i]`` is vector i's delta (None if it lacks the tensor)."""
        raise NotImplementedError

    def in_core(self, name: str, deltas: Sequence[Delta | None], params: Mapping[str, Any]) -> bool:
        """Whether this tensor is merged in core space (``space`` parameter and input forms)."""
        space = params.get("space")
        if space is None or space == "dense":
            return False
        if low_rank_inputs(deltas) is not None:
            return True
        if space == "core" and any(isinstance(d, LowRankDelta) for d in deltas):
            raise UserInputError(
                f'space "core" needs every input of "{name}" low-rank, but some are dense: '
                "merge vectors of one form, or use space: dense."
            )
        return False

    def output_rank(self, name: str, ranks: Sequence[int | None], shape: Sequence[int], params: Mapping[str, Any]) -> int | None:
        """Upper bound of the merged tensor's rank (None: dense); ``ranks`` of the present inputs."""
        space = params.get("space")
        if space in (None, "dense") or not ranks or any(r is None for r in ranks) or len(shape) != 2:
            return None
        return max(1, min(sum(r or 0 for r in ranks), *shape))

    def merge_core(self, name: str, cs: CoreSpace, deltas: list[Delta | None], weights: list[float],
                   params: dict[str, Any]) -> torch.Tensor:
        """Merged core (p, q) from ``cs.cores`` (one per present input, in order). Default: the
        dense path run on the cores as if they were the deltas (element-wise methods)."""
        it = iter(cs.cores)
        cores: list[Delta | None] = [None if d is None else next(it).float() for d in deltas]
        out = self.merge_tensor(name, cores, weights, params)
        assert out is not None and not isinstance(out, LowRankDelta)
        return out

    def apply_tensor(self, name: str, deltas: list[Delta | None], weights: list[float], params: dict[str, Any]) -> Delta | None:
        """Merge one tensor on the path :meth:`in_core` picks (core: a low-rank result)."""
        if not self.in_core(name, deltas, params):
            return self.merge_tensor(name, deltas, weights, params)
        from taskvec.weights.core_space import CoreSpace

        cs = CoreSpace.of(low_rank_inputs(deltas) or [])
        return cs.delta(self.merge_core(name, cs, deltas, weights, params))[0]

    def merge(self, vectors: Sequence[TaskVector], weights: Sequence[float] | None = None, *, force: bool = False, **params: Any) -> TaskVector:
        """Merge in memory; see ``taskvec.weights.merge.merge`` (same code path as files)."""
        from taskvec.weights.merge.driver import merge_vectors

        return merge_vectors(self, vectors, weights, params, force=force)

    def __repr__(self) -> str:
        return f"<merge method {self.name}>"

