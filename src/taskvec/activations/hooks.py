"""Forward hooks that read and edit activations, and a context manager that always removes them.

A :class:`Hook` sees every call of the modules it is attached to. Forward hooks (``kind =
"forward"``) get ``(name, module, inputs, output)`` and may return a replacement output;
input hooks (``kind = "pre"``) get ``(name, module, inputs)`` before the module runs and may
return replacement inputs. Returning None keeps the original. Module outputs may be a tensor
(transformers 5 decoder layers) or a tuple whose first item is the hidden states (older
versions): both are handled, and an edit returns the same structure.

**Positions.** Which tokens a hook touches is explicit:

- ``Positions.LAST``: the last prompt token. Prompts are LEFT-padded (taskvec's tokenizers pad
  on the left), so this is index -1 of the prefill call.
- ``Positions.ALL``: every token of the prefill call (padding included; it is masked anyway).
- ``Positions.GENERATED``: every token of each decode step, i.e. of each forward call that
  continues a non-empty KV cache (in ``generate``: one token per step after the prompt).
- Flags combine: ``Positions.LAST | Positions.GENERATED``.
- An int or a list of ints: those token indices (negative counts from the end) in prefill
  calls; e.g. for an uncached generation loop that must patch a fixed prompt position.
- ``None``: every token of every call, prefill or decode.

**Prefill vs decode** (``hook.phase``, ``hook.step``) is set by
:class:`~taskvec.activations.intervention.Intervention`, which attaches hooks to modules.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from taskvec.errors import (
    ShapeMismatchError,
    UserInputError,
    unknown_name,
)
from taskvec.models.adapter import output_tensor

__all__ = [
    "AddHook",
    "BlendHook",
    "Hook",
    "Positions",
    "PositionSpec",
    "ReplaceHook",
    "SaveInputsHook",
    "SaveOutputsHook",
    "replace_output",
]


class Positions(enum.Flag):
    """Token positions a hook acts on (see the module docstring)."""

    LAST = enum.auto()
    ALL = enum.auto()
    GENERATED = enum.auto()


PositionSpec = Positions | int | Sequence[int] | None


def positions_from_str(text: str) -> Positions:
    """``"last"``, ``"all"``, ``"generated"`` or ``"+"``-joined (``"last+generated"``)."""
    out = Positions(0)
    for part in text.lower().replace(",", "+").split("+"):
        part = part.strip()
        if part.upper() not in Positions.__members__:
            raise unknown_name("position", part, [m.lower() for m in Positions.__members__])
        out |= Positions[part.upper()]
    return out


def positions_to_str(pos: PositionSpec) -> str:
    """Inverse of :func:`positions_from_str` for flags; ints as JSON-ish text."""
    if pos is None:
        return "every"
    if isinstance(pos, Positions):
        return "+".join(m.lower() for m in ("LAST", "ALL", "GENERATED") if Positions[m] in pos)
    if isinstance(pos, int):
        return str(pos)
    return ",".join(str(int(p)) for p in pos)


def replace_output(output: Any, new: torch.Tensor) -> Any:
    """``output`` with its hidden-state tensor replaced by ``new`` (tensor, tuple or list)."""
    if isinstance(output, torch.Tensor):
        return new
    if isinstance(output, tuple):
        return (new, *output[1:])
    if isinstance(output, list):
        return [new, *output[1:]]
    raise TypeError(f"cannot replace the hidden states in a module output of type {type(output)}")


class Hook:
    """Base class: position selection and tuple-or-tensor plumbing.

    Subclasses override :meth:`edit` (given the selected positions, return their new values, or
    None to leave them) or :meth:`__call__` / :meth:`pre` directly. ``phase`` and ``step`` are
    set by :class:`Intervention` before each top-level forward call.
    """

    kind: ClassVar[str] = "forward"

    def __init__(self, positions: PositionSpec = Positions.LAST, kind: str | None = None) -> None:
        if kind is not None:
            if kind not in ("forward", "pre"):
                raise UserInputError(f'hook kind must be "forward" or "pre", got "{kind}".')
            self.kind = kind  # type: ignore[misc]  # instance override of the class default
        self.positions = positions
        self.phase = "prefill"
        self.step = 0
        self.name: str | None = None  # the target being called (set by Intervention before each call)

    # ------------------------------------------------------------------ positions

    def selection(self, seq_len: int) -> slice | list[int] | None:
        """Token indices to act on in a call of ``seq_len`` tokens, or None for none."""
        pos = self.positions
        if pos is None:
            return slice(0, seq_len)
        if isinstance(pos, Positions):
            if self.phase == "decode":
                return slice(0, seq_len) if Positions.GENERATED in pos else None
            if Positions.ALL in pos:
                return slice(0, seq_len)
            if Positions.LAST in pos:
                return slice(seq_len - 1, seq_len)
            return None
        if self.phase == "decode":
            return None
        idx = [pos] if isinstance(pos, int) else [int(p) for p in pos]
        for p in idx:
            if not -seq_len <= p < seq_len:
                raise IndexError(f"position {p} out of range for a call of {seq_len} tokens")
        return [p % seq_len for p in idx]

    def apply(self, name: str, x: torch.Tensor) -> torch.Tensor | None:
        """Run :meth:`edit` on the selected positions of ``x`` (B, T, F); None if untouched."""
        sel = self.selection(x.shape[1])
        if sel is None:
            return None
        new = self.edit(name, x[:, sel])  # (B, t, F)
        if new is None:
            return None
        out = x.clone()
        out[:, sel] = new.to(x.dtype)
        return out

    def edit(self, name: str, x: torch.Tensor) -> torch.Tensor | None:
        """New values for the selected positions ``x`` (B, t, F), or None (observe only)."""
        return None

    # ------------------------------------------------------------------ hook entry points

    def __call__(self, name: str, module: nn.Module, inputs: tuple, output: Any) -> Any:
        """Forward hook: return a replacement output or None."""
        new = self.apply(name, output_tensor(output))
        return None if new is None else replace_output(output, new)

    def pre(self, name: str, module: nn.Module, inputs: tuple) -> tuple | None:
        """Forward pre-hook: return replacement positional inputs or None."""
        new = self.apply(name, inputs[0])
        return None if new is None else (new, *inputs[1:])


def _broadcast(v: torch.Tensor, x: torch.Tensor, what: str) -> torch.Tensor:
    """Bring a (F,), (B, F) or (B, t, F) tensor to the shape of ``x`` (B, t, F)."""
    v = v.to(device=x.device)
    if v.dim() == 2:
        v = v[:, None, :]  # (B, 1, F)
    try:
        return torch.broadcast_to(v, x.shape)
    except RuntimeError:
        raise ShapeMismatchError(
            f"{what} of shape {tuple(v.shape)} does not fit activations of shape "
            f"{tuple(x.shape)} (B, tokens, features): pass (F,), (B, F) or (B, tokens, F)."
        ) from None


def _per_target(value: Any, name: str) -> Any:
    """The value for target ``name`` (a mapping without it gives None: leave it untouched)."""
    return value.get(name) if isinstance(value, Mapping) else value


class _SaveHook(Hook):
    """Keeps, per target name, one tensor per call (only calls where positions select tokens)."""

    def __init__(
        self, positions: PositionSpec = None, to_cpu: bool = False, kind: str | None = None
    ) -> None:
        super().__init__(positions, kind)
        self.to_cpu = to_cpu
        self.saved: dict[str, list[torch.Tensor]] = {}

    def edit(self, name: str, x: torch.Tensor) -> None:
        x = x.detach()
        if self.positions is not None and isinstance(self.positions, Positions):
            if self.phase == "prefill" and self.positions & (Positions.LAST | Positions.ALL) == (
                Positions.LAST
            ):
                x = x[:, -1]  # (B, F): only the last token was selected
        elif isinstance(self.positions, int):
            x = x[:, 0]  # (B, F)
        self.saved.setdefault(name, []).append(x.cpu() if self.to_cpu else x)
        return None

    def __getitem__(self, name: str) -> list[torch.Tensor]:
        return self.saved.get(name, [])

    def __contains__(self, name: object) -> bool:
        return name in self.saved

    def keys(self) -> list[str]:
        return list(self.saved)

    def clear(self) -> None:
        self.saved.clear()


class SaveInputsHook(_SaveHook):
    """Save each call's first positional input (what the module receives: a pre-hook).

    With ``positions=None`` every call's whole (B, T, F) input; with ``Positions.LAST`` only
    the last token of prefill calls, (B, F) per call. ``save[name]`` is the list of calls.
    """

    kind: ClassVar[str] = "pre"


class SaveOutputsHook(_SaveHook):
    """Save each call's output hidden states (tensor, or first item of a tuple output)."""

    kind: ClassVar[str] = "forward"


class AddHook(Hook):
    """Add ``scale * vector`` at the selected positions.

    ``vector``: (F,), (B, F) or (B, t, F), or a mapping target name -> such a tensor.
    """

    def __init__(
        self,
        vector: torch.Tensor | Mapping[str, torch.Tensor],
        positions: PositionSpec = Positions.LAST,
        scale: float | torch.Tensor = 1.0,
        kind: str | None = None,
    ) -> None:
        super().__init__(positions, kind)
        self.vector = vector
        self.scale = scale

    def edit(self, name: str, x: torch.Tensor) -> torch.Tensor | None:
        v = _per_target(self.vector, name)
        if v is None:
            return None
        return x + self.scale * _broadcast(v, x, "added vector").to(x.dtype)


class ReplaceHook(Hook):
    """Replace the selected positions by ``values`` (where ``mask`` is True, if given).

    ``values`` / ``mask``: (F,), (B, F) or (B, t, F), or mappings target name -> tensor; a
    per-row mask patches a different slice in every batch row (used by the batched
    indirect-effect scan). ``kind="pre"`` replaces module inputs instead of outputs.
    """

    def __init__(
        self,
        values: torch.Tensor | Mapping[str, torch.Tensor],
        positions: PositionSpec = Positions.LAST,
        mask: torch.Tensor | Mapping[str, torch.Tensor] | None = None,
        kind: str | None = None,
    ) -> None:
        super().__init__(positions, kind)
        self.values = values
        self.mask = mask

    def edit(self, name: str, x: torch.Tensor) -> torch.Tensor | None:
        v = _per_target(self.values, name)
        if v is None:
            return None
        v = _broadcast(v, x, "replacement").to(x.dtype)
        m = _per_target(self.mask, name) if self.mask is not None else None
        if m is None:
            return v
        return torch.where(_broadcast(m.bool(), x, "mask"), v, x)


class BlendHook(Hook):
    """Per-head blend ``a' = (1 - alpha) * a + alpha * m`` of attention-output-projection inputs.

    ``means``: (H, D) or (L, H, D); ``alpha``: a scalar, (H,) or (L, H) tensor (it may require
    grad: soft task vectors train ``alpha = sigmoid(t)``). With an L dimension, ``layer_of``
    maps each target name to its row. Acts on inputs (``kind = "pre"``): the o_proj input
    (B, T, H*D) is split into heads with ``means``' (H, D).
    """

    kind: ClassVar[str] = "pre"

    def __init__(
        self,
        means: torch.Tensor,
        alpha: float | torch.Tensor,
        positions: PositionSpec = Positions.LAST,
        layer_of: Mapping[str, int] | None = None,
        kind: str | None = None,
    ) -> None:
        super().__init__(positions, kind)
        if means.dim() not in (2, 3):
            raise ShapeMismatchError(f"means must be (H, D) or (L, H, D), got {tuple(means.shape)}.")
        self.means = means
        self.alpha = alpha if isinstance(alpha, torch.Tensor) else torch.tensor(float(alpha))
        self.layer_of = dict(layer_of or {})
        if means.dim() == 3 and not self.layer_of:
            raise UserInputError("BlendHook with (L, H, D) means needs layer_of: name -> layer.")

    def edit(self, name: str, x: torch.Tensor) -> torch.Tensor:
        m, a = self.means, self.alpha
        if m.dim() == 3:
            layer = self.layer_of[name]
            m = m[layer]  # (H, D)
            a = a[layer] if a.dim() == 2 else a
        n_heads, head_dim = m.shape
        if x.shape[-1] != n_heads * head_dim:
            raise ShapeMismatchError(
                f"{name}: input has {x.shape[-1]} features but means are {n_heads} x {head_dim}."
            )
        h = x.unflatten(-1, (n_heads, head_dim))  # (B, t, H, D)
        a = a.to(device=x.device, dtype=x.dtype)
        a = a[:, None] if a.dim() == 1 else a  # (H, 1) or scalar
        out = (1 - a) * h + a * m.to(device=x.device, dtype=x.dtype)  # (B, t, H, D)
        return out.flatten(-2)  # (B, t, H*D)
