"""``Intervention``: attach a :class:`~taskvec.activations.hooks.Hook` to modules or named hook
sites for the duration of a ``with`` block, removing it in ``finally``.

**Prefill vs decode.** An Intervention adds a forward pre-hook on the *model* that looks at what
the model receives (:func:`taskvec.models.kv_cache.past_length`: a cache object under whatever
argument name the transformers release uses, a legacy tuple cache, or ``cache_position``): no
cache, or an empty one, means a prefill call (a plain forward, or the first step of
``generate``); a cache that already holds tokens means a decode step. It sets ``hook.phase``
(``"prefill"`` / ``"decode"``) and ``hook.step`` (0 at the prefill, then 1, 2, ...) before any
module hook runs. Without a model (``model=None``) every call counts as a prefill.
"""

from __future__ import annotations

import fnmatch
import inspect
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from taskvec.activations.hooks import Hook
from taskvec.errors import UnknownNameError, UserInputError, did_you_mean
from taskvec.models.kv_cache import past_length

__all__ = ["Intervention", "SiteSpec", "resolve_sites", "resolve_targets"]


# ---------------------------------------------------------------------------- targets


def resolve_targets(
    model: nn.Module | None, targets: Mapping[str, nn.Module] | Sequence[str] | str
) -> dict[str, nn.Module]:
    """Names -> modules: a mapping is used as is; names and glob patterns (``*``, ``?``,
    ``[...]``) are looked up in ``model.named_modules()``, in model order.

    Raises ``UnknownNameError`` for a name or pattern that matches nothing.
    """
    if isinstance(targets, Mapping):
        if not targets:
            raise UserInputError("Intervention needs at least one target module.")
        return dict(targets)
    if model is None:
        raise UserInputError("pass the model to resolve target names (or a name -> module dict).")
    patterns = [targets] if isinstance(targets, str) else list(targets)
    if not patterns:
        raise UserInputError("Intervention needs at least one target module.")
    modules = dict(model.named_modules())
    chosen: dict[str, nn.Module] = {}
    for pat in patterns:
        if pat in modules:
            chosen[pat] = modules[pat]
            continue
        hits = [n for n in modules if any(c in pat for c in "*?[") and fnmatch.fnmatchcase(n, pat)]
        if not hits:
            raise UnknownNameError(
                f'no module of {type(model).__name__} is named or matches "{pat}".'
                f"{did_you_mean(pat, modules)} See model.named_modules() for the names."
            )
        for n in hits:
            chosen[n] = modules[n]
    return chosen


SiteSpec = str | tuple[str, int]


def resolve_sites(model: nn.Module, sites: SiteSpec | Sequence[SiteSpec]) -> dict[str, tuple[nn.Module, str]]:
    """Site keys (``"head_out.3"``) -> (module, hook direction), for named hook sites given as
    ``"NAME.LAYER"`` text or ``(name, layer)`` pairs (:mod:`taskvec.models.sites`)."""
    from taskvec.models.adapter import get_adapter
    from taskvec.models.sites import parse_site, site_key

    items = [sites] if isinstance(sites, str) or (isinstance(sites, tuple) and len(sites) == 2
                                                   and isinstance(sites[1], int)) else list(sites)
    if not items:
        raise UserInputError("Intervention needs at least one hook site.")
    ad = get_adapter(model)
    out: dict[str, tuple[nn.Module, str]] = {}
    for item in items:
        name, layer = parse_site(item) if isinstance(item, str) else (str(item[0]), int(item[1]))
        if not -ad.n_layers <= layer < ad.n_layers:
            raise UserInputError(f"hook site {name}.{layer}: the model has {ad.n_layers} layers.")
        out[site_key(name, layer % ad.n_layers)] = ad.site(name, layer)
    return out


def _takes_torch_signature(hook: Hook) -> bool:
    """Whether the hook's ``__call__`` has PyTorch's ``(module, input, output)`` signature
    (three parameters) rather than taskvec's ``(name, module, inputs, output)``."""
    try:
        params = inspect.signature(type(hook).__call__).parameters
    except (TypeError, ValueError):
        return False
    positional = [p for p in params.values() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) == 4  # self + module, input, output


class Intervention:
    """Attach ``hook`` to ``targets`` (or named ``sites``) of ``model`` for a ``with`` block.

    ``targets``: a mapping name -> module, or names / glob patterns resolved through
    ``model.named_modules()`` (e.g. ``"model.layers.*.self_attn.o_proj"``); the hook acts on
    their outputs (or inputs, for a ``kind="pre"`` hook). ``sites``: named hook sites instead,
    ``"head_out.3"`` or ``("resid_post", 5)`` (:mod:`taskvec.models.sites`), each with its own
    direction; the hook then sees the site key (``"head_out.3"``) as the name. ``model`` may be
    None when ``targets`` is a mapping (then there is no prefill/decode tracking: every call is
    a prefill). Hooks are registered on enter and always removed on exit, also when the block
    raises. Re-entering is not allowed; make a new Intervention instead.
    """

    def __init__(
        self,
        model: nn.Module | None = None,
        targets: Mapping[str, nn.Module] | Sequence[str] | str | None = None,
        hook: Hook | None = None,
        *,
        sites: SiteSpec | Sequence[SiteSpec] | None = None,
    ) -> None:
        if hook is None:
            raise UserInputError("Intervention needs a hook (e.g. SaveInputsHook(), AddHook(v)).")
        if hook.kind not in ("forward", "pre"):
            raise UserInputError(f'hook kind must be "forward" or "pre", got "{hook.kind}".')
        if (targets is None) == (sites is None):
            raise UserInputError("pass the modules to hook as targets=... or as sites=..., not both.")
        self.model = model
        if sites is not None:
            if model is None:
                raise UserInputError("hook sites are named on a model: pass the model too.")
            resolved = resolve_sites(model, sites)
            self.targets = {k: m for k, (m, _) in resolved.items()}
            self.directions = {k: d for k, (_, d) in resolved.items()}
        else:
            self.targets = resolve_targets(model, targets)
            self.directions = dict.fromkeys(self.targets, hook.kind)
        self.hook = hook
        self._handles: list[RemovableHandle] = []

    @property
    def names(self) -> list[str]:
        return list(self.targets)

    @property
    def active(self) -> bool:
        return bool(self._handles)

    def _on_model_call(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        if past_length(module.forward, args, kwargs) > 0:
            self.hook.phase = "decode"
            self.hook.step += 1
        else:
            self.hook.phase = "prefill"
            self.hook.step = 0

    def _forward_fn(self, name: str):
        hook = self.hook
        torch_style = _takes_torch_signature(hook)

        def fn(module: nn.Module, inputs: tuple, output: Any) -> Any:
            hook.name = name  # which target is being called (read by torch-style hooks)
            if torch_style:  # jacknewsom/task_vectors style: __call__(module, input, output)
                return hook(module, inputs, output)
            return hook(name, module, inputs, output)

        return fn

    def _pre_fn(self, name: str):
        hook = self.hook

        def fn(module: nn.Module, args: tuple, kwargs: dict) -> Any:
            hook.name = name
            if args:
                new = hook.pre(name, module, args)
                return None if new is None else (tuple(new), kwargs)
            key = "hidden_states" if "hidden_states" in kwargs else next(
                (k for k, v in kwargs.items() if isinstance(v, torch.Tensor)), None
            )
            if key is None:
                return None
            new = hook.pre(name, module, (kwargs[key],))
            return None if new is None else (args, {**kwargs, key: new[0]})

        return fn

    def __enter__(self) -> Intervention:
        if self._handles:
            raise RuntimeError("this Intervention is already active")
        self.hook.phase, self.hook.step = "prefill", 0
        try:
            if self.model is not None:
                self._handles.append(
                    self.model.register_forward_pre_hook(self._on_model_call, with_kwargs=True)
                )
            for name, module in self.targets.items():
                if self.directions[name] == "pre":
                    h = module.register_forward_pre_hook(self._pre_fn(name), with_kwargs=True)
                else:
                    h = module.register_forward_hook(self._forward_fn(name))
                self._handles.append(h)
        except BaseException:
            self.remove()
            raise
        return self

    def remove(self) -> None:
        """Remove every registered hook (idempotent)."""
        while self._handles:
            self._handles.pop().remove()

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def __iter__(self) -> Iterator[str]:
        return iter(self.targets)

    def __repr__(self) -> str:
        return f"Intervention({type(self.hook).__name__}, {len(self.targets)} targets)"
