"""Prefill/decode detection under ``generate`` on every tiny architecture.

The phase is read from what the model receives (a cache object under whatever argument name the
installed transformers uses), so these hold for every release in the tested range. A vector for
``Positions.LAST`` must fire once per prompt, ``GENERATED`` once per decode step, and a cached
``generate`` under a hook must equal an uncached loop that patches the same absolute positions.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import pytest
import torch

from conftest import run_cli
from taskvec.activations import AddHook, Hook, Intervention, Positions
from taskvec.activations.activation_vector import ActivationVector
from taskvec.activations.soft_vector import SoftTaskVector
from taskvec.models import TINY_ARCHS, get_adapter, tiny_model
from taskvec.models.adapter import position_ids
from taskvec.models.fingerprint import fingerprint
from taskvec.models.kv_cache import cache_kwargs, past_length, returned_cache

PROMPTS = ["Q: hot\nA: cold\n\nQ: up\nA:", "Q: a longer question here\nA:"]
N_NEW = 4
_MODELS: dict[str, Any] = {}


def _tiny(arch: str):
    if arch not in _MODELS:
        _MODELS[arch] = tiny_model(arch)
    return _MODELS[arch]


class CountingHook(Hook):
    """Records (phase, step, tokens selected) for every call it sees; edits nothing."""

    def __init__(self, positions: Any) -> None:
        super().__init__(positions)
        self.calls: list[tuple[str, int, int]] = []

    def edit(self, name: str, x: torch.Tensor) -> None:
        self.calls.append((self.phase, self.step, x.shape[1]))
        return None

    def apply(self, name: str, x: torch.Tensor) -> torch.Tensor | None:
        if self.selection(x.shape[1]) is None:
            self.calls.append((self.phase, self.step, 0))
            return None
        return super().apply(name, x)


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_hook_calls_by_phase_during_generate(arch: str) -> None:
    model, tok = _tiny(arch)
    target = get_adapter(model).layer_name(0)
    enc = tok(PROMPTS, return_tensors="pt", padding=True)
    hooks = {p: CountingHook(p) for p in (Positions.LAST, Positions.ALL, Positions.GENERATED)}
    with torch.no_grad():
        interventions = [Intervention(model, target, h) for h in hooks.values()]
        for iv in interventions:
            iv.__enter__()
        try:
            model.generate(**enc, max_new_tokens=N_NEW, do_sample=False, pad_token_id=256)
        finally:
            for iv in interventions:
                iv.remove()
    phases = [(p, s) for p, s, _ in hooks[Positions.LAST].calls]
    # one forward per new token: the prefill, then N_NEW - 1 decode steps numbered 1, 2, ...
    assert phases == [("prefill", 0)] + [("decode", i) for i in range(1, N_NEW)]
    t0 = enc["input_ids"].shape[1]
    assert [n for *_, n in hooks[Positions.LAST].calls] == [1] + [0] * (N_NEW - 1)
    assert [n for *_, n in hooks[Positions.ALL].calls] == [t0] + [0] * (N_NEW - 1)
    assert [n for *_, n in hooks[Positions.GENERATED].calls] == [0] + [1] * (N_NEW - 1)


def _uncached_reference(model, enc, vec, where_fn) -> torch.Tensor:
    """Greedy loop without a cache: every call is a prefill; patch absolute positions."""
    ids, mask = enc["input_ids"], enc["attention_mask"]
    t0 = ids.shape[1]
    target = get_adapter(model).layer_name(0)
    for _ in range(N_NEW):
        where = where_fn(t0, ids.shape[1])
        with Intervention(model, target, AddHook(vec, positions=where)):
            logits = model(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask),
                           use_cache=False).logits[:, -1]
        nxt = logits.argmax(-1, keepdim=True)
        ids = torch.cat([ids, nxt], 1)
        mask = torch.cat([mask, torch.ones_like(nxt)], 1)
    return ids


# positions -> the absolute indices an uncached loop must patch, given (prompt length, length)
WHERE = {
    "last": (Positions.LAST, lambda t0, n: [t0 - 1]),
    "all": (Positions.ALL, lambda t0, n: list(range(t0))),
    "generated": (Positions.GENERATED, lambda t0, n: list(range(t0, n))),
    "last+generated": (Positions.LAST | Positions.GENERATED, lambda t0, n: list(range(t0 - 1, n))),
}


@pytest.mark.parametrize("which", list(WHERE))
@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_patched_generate_equals_uncached_loop(arch: str, which: str) -> None:
    model, tok = _tiny(arch)
    ad = get_adapter(model)
    enc = tok(PROMPTS, return_tensors="pt", padding=True)
    vec = torch.randn(ad.hidden_size, generator=torch.Generator().manual_seed(3)) * 6
    pos, where_fn = WHERE[which]
    with torch.no_grad():
        with Intervention(model, ad.layer_name(0), AddHook(vec, positions=pos)):
            gen = model.generate(**enc, max_new_tokens=N_NEW, do_sample=False, pad_token_id=256)
        plain = model.generate(**enc, max_new_tokens=N_NEW, do_sample=False, pad_token_id=256)
        ref = _uncached_reference(model, enc, vec, where_fn)
    assert torch.equal(gen, ref)
    assert not torch.equal(gen, plain)  # the patch changed the completion


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_past_length_reads_what_the_model_receives(arch: str) -> None:
    """Prefill 0, then the cache's length, whether the cache is passed by keyword (under this
    release's name) or positionally."""
    model, tok = _tiny(arch)
    enc = tok(["hello there"], return_tensors="pt")
    n = enc["input_ids"].shape[1]
    seen: list[int] = []

    def pre(module, args, kwargs):
        seen.append(past_length(module.forward, args, kwargs))

    handle = model.register_forward_pre_hook(pre, with_kwargs=True)
    try:
        with torch.no_grad():
            cache = returned_cache(model(**enc, use_cache=True))
            mask = torch.ones(1, n + 1, dtype=torch.long)
            model(input_ids=torch.tensor([[65]]), attention_mask=mask, use_cache=True,
                  **cache_kwargs(model, cache))
            # positionally, in this model's own parameter order (GPT-2's differs from Llama's)
            values = {"input_ids": torch.tensor([[66]]),
                      "attention_mask": torch.ones(1, n + 2, dtype=torch.long),
                      **cache_kwargs(model, cache)}
            names = list(inspect.signature(model.forward).parameters)
            last = max(names.index(k) for k in values)
            model(*[values.get(k) for k in names[: last + 1]])
    finally:
        handle.remove()
    assert seen == [0, n, n + 1]


def test_past_length_cache_position_and_legacy_tuple() -> None:
    def forward(input_ids=None, past_key_values=None, cache_position=None):  # pragma: no cover
        return None

    kv = (torch.zeros(1, 2, 5, 4), torch.zeros(1, 2, 5, 4))
    assert past_length(forward, (), {"past_key_values": (kv,)}) == 5
    assert past_length(forward, (None, (kv,)), {}) == 5
    assert past_length(forward, (), {"cache_position": torch.tensor([7])}) == 7
    assert past_length(forward, (), {"cache_position": torch.arange(3)}) == 0
    assert past_length(forward, (), {}) == 0


# ---------------------------------------------------------------------------- the CLI


@pytest.fixture(scope="module", params=TINY_ARCHS)
def arch_dir(request, tmp_path_factory) -> tuple[str, Path]:
    model, tok = _tiny(request.param)
    d = tmp_path_factory.mktemp("gen") / request.param
    model.save_pretrained(d, safe_serialization=True)
    tok.save_pretrained(d)
    return request.param, d


def _record_selections(monkeypatch) -> list[tuple[str, bool]]:
    calls: list[tuple[str, bool]] = []
    original = Hook.selection

    def selection(self, seq_len):
        sel = original(self, seq_len)
        calls.append((self.phase, sel is not None))
        return sel

    monkeypatch.setattr(Hook, "selection", selection)
    return calls


def test_cli_generate_fv_and_soft_inject_once(arch_dir, tmp_path, capsys, monkeypatch) -> None:
    """``taskvec generate --fv F`` / ``--soft F`` with LAST: each target fires once, at prefill."""
    arch, d = arch_dir
    model, _ = _tiny(arch)
    ad = get_adapter(model)
    fp = {"model_fingerprint": fingerprint(model)}
    g = torch.Generator().manual_seed(0)
    fv = ActivationVector("function_vector", {"vector": torch.randn(ad.hidden_size, generator=g)},
                          {"layer": 0, "scale": 1.0, "positions": "last", "task": "antonym", **fp})
    fv.save(tmp_path / "fv.safetensors")
    soft = SoftTaskVector(torch.zeros(ad.n_layers, ad.n_heads),
                          torch.randn(ad.n_layers, ad.n_heads, ad.head_dim, generator=g), fp)
    soft.save(tmp_path / "soft.safetensors")
    for flag, f, n_targets in (("--fv", "fv", 1), ("--soft", "soft", ad.n_layers)):
        calls = _record_selections(monkeypatch)
        code, out, err = run_cli(capsys, "generate", "--model", d, flag, tmp_path / f"{f}.safetensors",
                                 "--prompt", "hello", "--max-new-tokens", N_NEW)
        assert code == 0, err
        fired = [p for p, hit in calls if hit]
        assert fired == ["prefill"] * n_targets, (flag, calls)
        assert [p for p, _ in calls].count("decode") == (N_NEW - 1) * n_targets
        monkeypatch.undo()
