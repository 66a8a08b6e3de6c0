"""Merge methods by name (mergekit's ``merge_methods/registry.py`` pattern).

The method modules (one file per method) define their method objects without side effects;
this module collects them into a :class:`~taskvec.registry.Registry` the first time a method is
looked up. Add a method: write its module, then list its objects in :func:`_method_objects`.
"""

from __future__ import annotations

from taskvec.registry import Registry
from taskvec.weights.merge.base import MergeMethod


def _method_objects() -> list[MergeMethod]:
    """Every merge method object, from its own module."""
    from taskvec.weights.merge import breadcrumbs, dare, iso_c, iso_cts, task_arithmetic, ties, tsv

    return [task_arithmetic.METHOD, ties.METHOD, dare.LINEAR, dare.TIES, tsv.METHOD, breadcrumbs.METHOD,
            iso_c.METHOD, iso_cts.METHOD]


#: extra names for registered methods
_ALIASES = {"dare": "dare_linear", "tsv_merge": "tsv"}

_REGISTRY: Registry[MergeMethod] | None = None


def methods() -> Registry[MergeMethod]:
    """The registry of merge methods (built on first use)."""
    global _REGISTRY
    if _REGISTRY is None:
        reg: Registry[MergeMethod] = Registry("merge method")
        for m in _method_objects():
            reg.register(m.name, m)
        for alias, target in _ALIASES.items():
            reg.register(alias, reg.get(target))
        _REGISTRY = reg
    return _REGISTRY


def get_method(name: str | MergeMethod) -> MergeMethod:
    """The method registered as ``name``; unknown names raise ``UnknownNameError`` (did you mean)."""
    if isinstance(name, MergeMethod):
        return name
    return methods().get(name)


def list_methods() -> list[MergeMethod]:
    """Every method once (aliases left out), sorted by name."""
    reg = methods()
    return [reg.get(n) for n in reg.names() if n not in _ALIASES]


def aliases_of(name: str) -> list[str]:
    """The aliases of a method name."""
    return sorted(a for a, t in _ALIASES.items() if t == name)
