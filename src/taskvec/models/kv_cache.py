"""KV-cache plumbing that holds in every transformers release taskvec allows.

transformers renamed the cache argument of ``forward`` (``past_key_values`` in 4.x and early
5.x, ``cache`` from 5.24; the old name is deprecated and goes in 5.40) and the field of the
model output that returns it. Nothing in taskvec reads either by name any more:

- :func:`past_length` tells how many tokens a call continues from what the model *receives*: a
  cache object (found by what it is, not by its argument's name), a legacy tuple cache, or a
  ``cache_position`` that does not start at 0. 0 means a prefill call, > 0 a decode step.
- :func:`cache_kwargs` builds the keyword that passes a cache to this model's ``forward``, under
  the name its signature declares; :func:`returned_cache` reads it back from an output.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

import torch

__all__ = ["cache_kwargs", "cache_length", "past_length", "returned_cache"]

#: argument names that have held a KV cache in transformers releases, newest first
CACHE_ARG_NAMES = ("cache", "past_key_values", "past_key_value", "layer_past", "past")


def _is_cache_object(value: Any) -> bool:
    """A transformers ``Cache`` (any release): it can say how many tokens it holds."""
    return callable(getattr(value, "get_seq_length", None))


def cache_length(cache: Any) -> int:
    """Tokens already held by a KV cache (a transformers Cache or a legacy tuple); 0 for None."""
    if cache is None:
        return 0
    if _is_cache_object(cache):
        return int(cache.get_seq_length())
    try:  # legacy: tuple over layers of (key, value), each (B, kv_heads, T, D)
        return int(cache[0][0].shape[-2]) if len(cache) else 0
    except (TypeError, IndexError, AttributeError, KeyError):
        return 0


def _bound_arguments(forward: Callable[..., Any], args: tuple, kwargs: Mapping[str, Any]) -> dict:
    """``args`` and ``kwargs`` by parameter name (``**kwargs`` flattened in)."""
    if not args:
        return dict(kwargs)
    try:
        sig = inspect.signature(forward)
        bound = sig.bind_partial(*args, **kwargs).arguments
    except (TypeError, ValueError):
        return dict(kwargs)
    out: dict[str, Any] = {}
    for name, value in bound.items():
        kind = sig.parameters[name].kind
        if kind is inspect.Parameter.VAR_KEYWORD:
            out.update(value)
        elif kind is not inspect.Parameter.VAR_POSITIONAL:
            out[name] = value
    return out


def past_length(forward: Callable[..., Any], args: tuple, kwargs: Mapping[str, Any]) -> int:
    """How many tokens precede this call's tokens (0: a prefill; > 0: a decode step).

    ``forward`` is the called module's ``forward`` (used to name positional arguments). Signals,
    any of which counts: a cache object among the arguments, whatever its name; a legacy tuple
    under one of :data:`CACHE_ARG_NAMES`; the first entry of ``cache_position``.
    """
    bound = _bound_arguments(forward, args, kwargs)
    past = 0
    for value in bound.values():
        if _is_cache_object(value):
            past = max(past, cache_length(value))
    for name in CACHE_ARG_NAMES:
        value = bound.get(name)
        if value is not None and not _is_cache_object(value):
            past = max(past, cache_length(value))
    position = bound.get("cache_position")
    if isinstance(position, torch.Tensor) and position.numel():
        past = max(past, int(position.reshape(-1)[0]))
    return past


def _cache_param_name(model: torch.nn.Module) -> str:
    """The name under which this model's ``forward`` takes its KV cache."""
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return "past_key_values"
    return next((n for n in CACHE_ARG_NAMES if n in params), "past_key_values")


def cache_kwargs(model: torch.nn.Module, cache: Any) -> dict[str, Any]:
    """``{name: cache}`` for ``model(**inputs, **cache_kwargs(model, cache))``."""
    return {_cache_param_name(model): cache}


def returned_cache(output: Any) -> Any:
    """The KV cache a model output returns (``cache`` or ``past_key_values``), or None."""
    for name in ("cache", "past_key_values"):
        value = output.get(name) if isinstance(output, Mapping) else getattr(output, name, None)
        if value is not None:
            return value
    return None
