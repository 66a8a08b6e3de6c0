"""Hooks and Intervention: removal, name resolution, saving, editing, positions, generate + cache."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from taskvec.activations import (
    AddHook,
    BlendHook,
    Intervention,
    Positions,
    ReplaceHook,
    SaveInputsHook,
    SaveOutputsHook,
)
from taskvec.activations.hooks import positions_from_str, positions_to_str
from taskvec.errors import ShapeMismatchError, UnknownNameError
from taskvec.models import TINY_ARCHS, get_adapter, tiny_model
from taskvec.models.adapter import position_ids
from tolerance import assert_forward_close

PROMPTS = ["Q: hot\nA: cold\n\nQ: up\nA:", "Q: big\nA:", "Q: a longer question here\nA:"]


_MODELS: dict = {}


def _tiny(arch: str):
    if arch not in _MODELS:
        _MODELS[arch] = tiny_model(arch)
    return (arch, *_MODELS[arch])


@pytest.fixture(scope="module", params=TINY_ARCHS)
def tiny(request: pytest.FixtureRequest):
    return _tiny(request.param)


@pytest.fixture(scope="module", params=["llama", "gemma2", "gpt2"])
def some_tiny(request: pytest.FixtureRequest):
    return _tiny(request.param)


def _enc(tok, prompts=PROMPTS):
    enc = tok(prompts, return_tensors="pt", padding=True)
    enc["position_ids"] = position_ids(enc["attention_mask"])
    return enc


def _n_hooks(model: nn.Module) -> int:
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()
    )


# ---------------------------------------------------------------------------- Intervention


def test_hooks_removed_on_exit_and_on_error() -> None:
    model, tok = tiny_model("llama")
    before = _n_hooks(model)
    ad = get_adapter(model)
    with Intervention(model, "model.layers.*.self_attn.o_proj", SaveInputsHook()) as iv:
        assert iv.names == [ad.o_proj_name(i) for i in range(ad.n_layers)]
        assert _n_hooks(model) == before + ad.n_layers + 1  # + the model-level phase hook
    assert _n_hooks(model) == before
    with pytest.raises(RuntimeError, match="boom"):
        with Intervention(model, [ad.layer_name(0)], AddHook(torch.ones(64))):
            assert _n_hooks(model) == before + 2
            raise RuntimeError("boom")
    assert _n_hooks(model) == before
    # a hook that fails inside the forward pass is removed too
    with pytest.raises(ShapeMismatchError):
        with Intervention(model, [ad.layer_name(0)], AddHook(torch.ones(3))):
            model(**_enc(tok))
    assert _n_hooks(model) == before


def test_target_resolution() -> None:
    model, _ = tiny_model("gpt2")
    iv = Intervention(model, ["transformer.h.1.attn.c_proj", "transformer.h.?.mlp"], SaveOutputsHook())
    assert iv.names == ["transformer.h.1.attn.c_proj", "transformer.h.0.mlp", "transformer.h.1.mlp"]
    with pytest.raises(UnknownNameError, match="Did you mean"):
        Intervention(model, ["transformer.h.0.attn.c_prj"], SaveOutputsHook())
    with pytest.raises(UnknownNameError):
        Intervention(model, "model.layers.*", SaveOutputsHook())
    mods = {"x": model.transformer.h[0]}
    assert Intervention(None, mods, SaveOutputsHook()).targets == mods


def test_save_lists_per_target_and_last_token(some_tiny) -> None:
    _, model, tok = some_tiny
    ad = get_adapter(model)
    enc = _enc(tok)
    names = [ad.o_proj_name(i) for i in range(ad.n_layers)]
    full, last = SaveInputsHook(positions=None), SaveInputsHook(positions=Positions.LAST)
    outs = SaveOutputsHook()
    with torch.no_grad(), Intervention(model, names, full), Intervention(model, names, last):
        with Intervention(model, ad.layer_name(-1), outs):
            for _ in range(3):
                model(**enc)
    B, T = enc["input_ids"].shape
    for name in names:
        assert len(full[name]) == len(last[name]) == 3
        assert full[name][0].shape == (B, T, ad.n_heads * ad.head_dim)
        assert last[name][0].shape == (B, ad.n_heads * ad.head_dim)
        torch.testing.assert_close(last[name][2], full[name][2][:, -1])
    assert len(outs[ad.layer_name(-1)]) == 3 and outs[ad.layer_name(-1)][0].shape == (B, T, ad.hidden_size)


def test_replace_with_own_values_is_identity(tiny) -> None:
    """Replacing every head input by its own recorded value leaves the logits unchanged."""
    _, model, tok = tiny
    ad = get_adapter(model)
    enc = _enc(tok)
    names = [ad.o_proj_name(i) for i in range(ad.n_layers)]
    save = SaveInputsHook(positions=None)
    with torch.no_grad():
        with Intervention(model, names, save):
            ref = model(**enc).logits
        values = {n: save[n][0] for n in names}  # (B, T, H*D)
        with Intervention(model, names, ReplaceHook(values, positions=Positions.ALL, kind="pre")):
            out = model(**enc).logits
        last = {n: v[:, -1] for n, v in values.items()}  # (B, H*D)
        with Intervention(model, names, ReplaceHook(last, positions=Positions.LAST, kind="pre")):
            out_last = model(**enc).logits
    assert_forward_close(out, ref)  # replayed activations: the same forward, reordered
    assert_forward_close(out_last, ref)


def test_last_position_with_left_padding_matches_single_prompts(some_tiny) -> None:
    _, model, tok = some_tiny
    ad = get_adapter(model)
    vec = torch.randn(ad.hidden_size, generator=torch.Generator().manual_seed(0)) * 4
    hook = AddHook(vec, positions=Positions.LAST)
    with torch.no_grad(), Intervention(model, ad.layer_name(0), hook):
        batched = model(**_enc(tok)).logits[:, -1]
        single = torch.stack([model(**_enc(tok, [p])).logits[0, -1] for p in PROMPTS])
        plain = model(**_enc(tok, PROMPTS[:1])).logits[0, -1]
    torch.testing.assert_close(batched, single, atol=1e-4, rtol=1e-4)
    with torch.no_grad():
        assert (model(**_enc(tok, PROMPTS[:1])).logits[0, -1] - plain).abs().max() > 1e-3


# ---------------------------------------------------------------------------- tuple / tensor


class _Block(nn.Module):
    def __init__(self, as_tuple: bool) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.as_tuple = as_tuple

    def forward(self, x):
        y = self.lin(x)
        return (y, "extra") if self.as_tuple else y


class _Toy(nn.Module):
    def __init__(self, as_tuple: bool) -> None:
        super().__init__()
        self.block = _Block(as_tuple)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        out = self.block(x)
        return self.head(out[0] if isinstance(out, tuple) else out)


@pytest.mark.parametrize("as_tuple", [True, False])
def test_tuple_and_tensor_outputs(as_tuple: bool) -> None:
    torch.manual_seed(0)
    toy = _Toy(as_tuple)
    x = torch.randn(2, 3, 4)  # (B, T, F)
    ref = toy.block(x)
    ref = ref[0] if as_tuple else ref
    vec = torch.tensor([1.0, 2.0, 3.0, 4.0])
    seen = SaveOutputsHook(positions=Positions.LAST)
    with Intervention(toy, "block", seen):
        toy(x)
    torch.testing.assert_close(seen["block"][0], ref[:, -1])
    captured = {}

    def grab(_m, _i, out):
        captured["out"] = out

    h = toy.block.register_forward_hook(grab)  # registered first: sees the original output
    with Intervention(toy, ["block"], AddHook(vec, positions=Positions.LAST)):
        y = toy(x)
    h.remove()
    want = ref.clone()
    want[:, -1] += vec
    torch.testing.assert_close(y, toy.head(want))
    if as_tuple:
        assert isinstance(captured["out"], tuple) and captured["out"][1] == "extra"
    with Intervention(toy, ["block"], ReplaceHook(vec, positions=Positions.ALL)):
        y = toy(x)
    torch.testing.assert_close(y, toy.head(vec.expand(2, 3, 4)))


def test_positions_parse_and_format() -> None:
    assert positions_from_str("last+generated") == Positions.LAST | Positions.GENERATED
    assert positions_to_str(Positions.LAST | Positions.GENERATED) == "last+generated"
    assert positions_to_str(None) == "every" and positions_to_str([1, 2]) == "1,2"
    with pytest.raises(UnknownNameError):
        positions_from_str("first")


# ---------------------------------------------------------------------------- BlendHook


def test_blend_hook_identity_replace_and_grad() -> None:
    model, tok = tiny_model("qwen2")
    ad = get_adapter(model)
    enc = _enc(tok)
    g = torch.Generator().manual_seed(1)
    means = torch.randn(ad.n_layers, ad.n_heads, ad.head_dim, generator=g)  # (L, H, D)
    names = {ad.o_proj_name(i): i for i in range(ad.n_layers)}
    with torch.no_grad():
        ref = model(**enc).logits
        with Intervention(model, list(names), BlendHook(means, torch.zeros(ad.n_layers, ad.n_heads), layer_of=names)):
            same = model(**enc).logits
        with Intervention(model, list(names), BlendHook(means, 1.0, layer_of=names)):
            full = model(**enc).logits
        values = {n: means[i].flatten() for n, i in names.items()}
        with Intervention(model, list(names), ReplaceHook(values, kind="pre")):
            replaced = model(**enc).logits
    assert_forward_close(same, ref)  # replayed activations: the same forward, reordered
    assert_forward_close(replaced, full)
    t = torch.zeros(ad.n_layers, ad.n_heads, requires_grad=True)
    with Intervention(model, list(names), BlendHook(means, torch.sigmoid(t), layer_of=names)):
        loss = model(**enc).logits[:, -1].log_softmax(-1)[:, 65].sum()
    loss.backward()
    assert t.grad is not None and torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0


# generate + KV cache: tests/test_generate_phases.py (every architecture and position kind)
