"""Head means, indirect effects, function vectors, residual vectors, activation files."""

from __future__ import annotations

import pytest
import torch

from taskvec.activations import (
    ActivationVector,
    Intervention,
    Positions,
    ReplaceHook,
    SaveOutputsHook,
    compare,
    extract_function_vector,
    extract_residual_vector,
    function_vector,
    head_contribution,
    head_means,
    ie_scores,
    load_activation,
    top_heads,
)
from taskvec.activations.collect import icl_prompt_set
from taskvec.errors import (
    FileFormatError,
    FingerprintMismatchError,
    MissingFileError,
    ShapeMismatchError,
    UserInputError,
)
from taskvec.models import TINY_ARCHS, get_adapter, tiny_model
from taskvec.models.adapter import position_ids
from taskvec.tasks import get_task
from tolerance import assert_forward_close, matmul_atol, ulp

PROMPTS = ["Q: hot\nA: cold\n\nQ: up\nA:", "Q: big\nA: small\n\nQ: a long one here\nA: x\n\nQ: left\nA:"]
_MODELS: dict = {}


def _tiny(arch: str):
    if arch not in _MODELS:
        _MODELS[arch] = tiny_model(arch)
    return _MODELS[arch]


@pytest.fixture(scope="module", params=TINY_ARCHS)
def tiny(request: pytest.FixtureRequest):
    return (request.param, *_tiny(request.param))


@pytest.fixture(scope="module")
def task():
    return get_task("antonym")


def _means(ad, seed: int = 0, scale: float = 3.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(ad.n_layers, ad.n_heads, ad.head_dim, generator=g) * scale  # (L, H, D)


# ---------------------------------------------------------------------------- function vectors


def test_fv_of_one_head_is_o_proj_output_difference(tiny) -> None:
    """FV(l, h) == o_proj(x with head h = mean) - o_proj(x with head h = 0), computed two ways:
    directly on o_proj, and through the model with the head patched at the last token."""
    _, model, tok = tiny
    ad = get_adapter(model)
    means = _means(ad)
    rms = torch.full((ad.n_layers,), 2.5)  # Gemma: a head's share is g * o_proj(...) / attn_rms
    for layer, head in [(0, 1), (ad.n_layers - 1, ad.n_heads - 1)]:
        gain = ad.post_attn_gain(layer)
        fv = function_vector(ad, means, [(layer, head)], rms)  # (hidden,)
        torch.testing.assert_close(fv, head_contribution(model, means, layer, head, rms))
        if gain is not None:  # back to the o_proj output difference the checks below compute
            fv = fv * 2.5 / gain[0]
        sl = ad.head_slice(head)
        x = torch.randn(3, ad.n_heads * ad.head_dim)  # (B, H*D)
        with_mean, zeroed = x.clone(), x.clone()
        with_mean[:, sl], zeroed[:, sl] = means[layer, head], 0.0
        with torch.no_grad():
            diff = ad.o_proj(layer)(with_mean) - ad.o_proj(layer)(zeroed)  # (B, hidden)
        # o_proj (a length H*D matmul) on two inputs, and fv a third way: <= 2 x 2 gamma_k |x| |W|
        # (+ one ulp of each output, for the bias added and cancelled)
        with torch.no_grad():
            out_ulp = ulp(ad.o_proj(layer)(with_mean)) + ulp(ad.o_proj(layer)(zeroed))
        bound = 2 * matmul_atol(with_mean, ad.o_proj_weight(layer).detach().T) + out_ulp  # (B, hidden)
        if gain is not None:  # x g / 2.5 and back: four roundings of fv
            bound = bound + 4 * ulp(fv)
        assert ((diff - fv).abs() <= bound).all()
        # through the model: patch the head's o_proj input at the last token, save the output
        enc = tok(PROMPTS, return_tensors="pt", padding=True)
        enc["position_ids"] = position_ids(enc["attention_mask"])
        outs = []
        for value in (means[layer, head], torch.zeros(ad.head_dim)):
            mask = torch.zeros(ad.n_heads * ad.head_dim, dtype=torch.bool)
            mask[sl] = True
            full = torch.zeros(ad.n_heads * ad.head_dim)
            full[sl] = value
            save = SaveOutputsHook(positions=Positions.LAST)
            name = ad.o_proj_name(layer)
            with torch.no_grad(), Intervention(model, [name], ReplaceHook(full, mask=mask, kind="pre")):
                with Intervention(model, [name], save):
                    model(**enc)
            outs.append(save[name][0])  # (B, hidden)
        assert_forward_close(outs[0] - outs[1], fv)  # two forwards, reductions reordered


@pytest.mark.parametrize("arch", ["gemma2", "gemma3"])
def test_head_shares_sum_to_the_post_attention_norm_output(arch, task) -> None:
    """Sandwich norms: the heads' shares g * W_h z_h / rms(x) of one real prompt, summed, equal
    the post-attention norm's output (the exact decomposition the function vector relies on)."""
    from taskvec.activations.heads import attn_output_rms

    model, tok = _tiny(arch)
    ad = get_adapter(model)
    z, post = {}, {}
    hooks = [h for i in range(ad.n_layers) for h in (
        ad.o_proj(i).register_forward_pre_hook(lambda _m, a, i=i: z.__setitem__(i, a[0][0, -1].clone())),
        ad.post_attn_norm(i).register_forward_hook(lambda _m, _a, o, i=i: post.__setitem__(i, o[0, -1].clone())))]
    try:
        with torch.no_grad():
            model(**tok([PROMPTS[1]], return_tensors="pt"))
    finally:
        for h in hooks:
            h.remove()
    means = ad.split_heads(torch.stack([z[i] for i in range(ad.n_layers)]))  # (L, H, D): one prompt
    rms = attn_output_rms(ad, means[None])[0]  # (L,)
    for layer in range(ad.n_layers):
        x = ad.o_proj(layer)(z[layer][None])[0].detach()  # (hidden,)
        eps = ad.post_attn_gain(layer)[1]
        assert float(rms[layer]) == pytest.approx(float((x.pow(2).mean() + eps).sqrt()), rel=1e-5)
        total = function_vector(ad, means, [(layer, h) for h in range(ad.n_heads)], rms)
        assert_forward_close(total, post[layer])
    with pytest.raises(UserInputError, match="attn_rms"):
        function_vector(ad, means, [(0, 0)])


def test_rms_norm_gain() -> None:
    from taskvec.errors import ModelLoadError
    from taskvec.models.adapter import rms_norm_gain

    model, _ = _tiny("gemma3")
    norm = get_adapter(model).post_attn_norm(0)
    with torch.no_grad():
        norm.weight.copy_(torch.linspace(-0.5, 2.0, norm.weight.numel()))
    g, eps = rms_norm_gain(norm, norm.weight.numel())
    torch.testing.assert_close(g, 1.0 + norm.weight.detach())  # Gemma's RMSNorm scales by 1 + w
    assert eps == norm.eps and get_adapter(_tiny("llama")[0]).post_attn_gain(0) is None
    with pytest.raises(ModelLoadError, match="not an RMS norm"):
        rms_norm_gain(torch.nn.LayerNorm(16), 16)
    _MODELS.pop("gemma3")  # its norm weight was changed


def test_fv_sums_heads_without_bias() -> None:
    model, _ = _tiny("gpt2")  # GPT-2's c_proj has a bias: it must not be counted
    ad = get_adapter(model)
    assert ad.o_proj_has_bias
    means = _means(ad)
    heads = [(0, 0), (1, 2), (1, 3)]
    total = sum(head_contribution(ad, means, layer, h) for layer, h in heads)
    torch.testing.assert_close(function_vector(model, means, heads), total)
    zero = torch.zeros_like(means)
    assert function_vector(ad, zero, heads).abs().max() == 0


def test_top_heads_order_and_nan() -> None:
    s = torch.tensor([[0.1, float("nan"), 0.5], [0.3, -1.0, 0.2]])
    assert top_heads(s, 3) == [(0, 2), (1, 0), (1, 2)]
    assert len(top_heads(s, 100)) == 5


# ---------------------------------------------------------------------------- head means


def test_head_means_batched_equals_single_prompt_runs(task) -> None:
    model, tok = _tiny("gemma2")
    ad = get_adapter(model)
    hm = head_means(model, tok, task, n_prompts=5, shots=2, seed=0, batch_size=3)
    assert hm.means.shape == (ad.n_layers, ad.n_heads, ad.head_dim) and hm.n_prompts == 5
    # independent reference: plain torch pre-hooks, one unpadded prompt at a time
    ps = icl_prompt_set(task, tok, 5, 2, 0, salt="means")
    acc = torch.zeros(ad.n_layers, ad.n_heads * ad.head_dim)
    handles = []
    seen: dict[int, torch.Tensor] = {}
    for i in range(ad.n_layers):
        handles.append(ad.o_proj(i).register_forward_pre_hook(
            lambda _m, args, i=i: seen.__setitem__(i, args[0][0, -1])))
    try:
        with torch.no_grad():
            for p in ps.prompts:
                model(**tok([p], return_tensors="pt"))
                acc += torch.stack([seen[i] for i in range(ad.n_layers)])
    finally:
        for h in handles:
            h.remove()
    ref = ad.split_heads(acc / len(ps.prompts))
    assert_forward_close(hm.means, ref)  # batched vs one prompt at a time
    # the mean RMS of each attention output, recomputed from the per-prompt o_proj inputs
    from taskvec.activations.heads import attn_output_rms, head_activations

    acts, _ = head_activations(model, tok, ps.prompts, batch_size=2)
    torch.testing.assert_close(hm.attn_rms, attn_output_rms(ad, acts).mean(0), rtol=1e-4, atol=0)
    assert hm.attn_rms.shape == (ad.n_layers,) and (hm.attn_rms > 0).all()
    # every query is a train example and never one of its own demonstrations
    for q, p in zip(ps.queries, ps.prompts):
        assert p.endswith(task.prompt(q)) and p.count(task.prompt(q)) == 1


def test_head_means_correct_only_errors_when_none_correct(task) -> None:
    model, tok = _tiny("llama")
    with pytest.raises(Exception, match="correct-only"):
        head_means(model, tok, task, n_prompts=3, shots=1, correct_only=True)
    assert head_means(model, tok, task, n_prompts=2, shots=1).attn_rms is None  # no norm after attention


# ---------------------------------------------------------------------------- indirect effect


def test_ie_methods_agree(tiny) -> None:
    _, model, tok = tiny
    ad = get_adapter(model)
    means = _means(ad)
    targets = [32, 100]
    heads = [(0, 1), (ad.n_layers - 1, ad.n_heads - 1), (1, 0)]
    naive = ie_scores(model, tok, PROMPTS, targets, means, method="naive", heads=heads)
    batched = ie_scores(model, tok, PROMPTS, targets, means, method="batched", batch_size=3)
    cached = ie_scores(model, tok, PROMPTS, targets, means, method="cached", batch_size=5)
    assert cached.scores.shape == (ad.n_layers, ad.n_heads) and cached.per_prompt.shape[0] == 2
    assert torch.isfinite(cached.scores).all() and cached.scores.abs().max() > 0
    torch.testing.assert_close(batched.scores, cached.scores, atol=1e-7, rtol=1e-4)
    # the naive reference scanned only `heads`: the same numbers there, NaN elsewhere
    assert torch.isnan(naive.scores).sum() == ad.n_layers * ad.n_heads - len(heads)
    for li, h in heads:
        torch.testing.assert_close(cached.scores[li, h], naive.scores[li, h], atol=1e-7, rtol=1e-4)
    torch.testing.assert_close(cached.clean_prob, naive.clean_prob, atol=1e-7, rtol=1e-4)


def test_ie_patching_own_mean_changes_nothing() -> None:
    """If the 'mean' is the prompt's own activation, patching any head has zero effect."""
    from taskvec.activations import head_activations

    model, tok = _tiny("qwen2")
    acts, _ = head_activations(model, tok, PROMPTS[:1])  # (1, L, H, D)
    res = ie_scores(model, tok, PROMPTS[:1], [32], acts[0], method="cached")
    assert res.scores.abs().max() <= 1e-6


def test_ie_shape_mismatch() -> None:
    model, tok = _tiny("llama")
    with pytest.raises(ShapeMismatchError):
        ie_scores(model, tok, PROMPTS, [1, 2], torch.zeros(1, 2, 3))


# ---------------------------------------------------------------------------- extraction, files


@pytest.fixture(scope="module")
def fv_and_rv(task):
    model, tok = _tiny("llama")
    fv = extract_function_vector(
        model, tok, task, shots=2, n_prompts=4, top_k=2, ie_prompts=1, sweep_limit=4,
        scales=(1.0, 2.0), batch_size=4,
    )
    rv = extract_residual_vector(model, tok, task, shots=2, n_prompts=4, sweep_limit=4, mode="replace")
    return fv, rv


@pytest.fixture(scope="module")
def rv_diff(task):
    model, tok = _tiny("llama")
    return extract_residual_vector(model, tok, task, shots=2, n_prompts=4, sweep_limit=4)


def test_residual_diff_is_icl_minus_zero_shot_mean(rv_diff, task) -> None:
    """diff (the default): vector = ICL mean - zero-shot mean of the same queries at the chosen
    layer; the zero-shot means equal hidden states computed without hooks; layer x scale grid."""
    model, tok = _tiny("llama")
    ad = get_adapter(model)
    rv = rv_diff
    assert rv.metadata["mode"] == "diff" and rv.scale in (1.0, 2.0, 3.0)
    zs, lm = rv.tensors["zero_shot_means"], rv.tensors["layer_means"]
    torch.testing.assert_close(rv.vector, lm[rv.layer] - zs[rv.layer])
    icl = icl_prompt_set(task, tok, 4, 2, 0, salt="residual")
    zero = icl_prompt_set(task, tok, 4, 0, 0, salt="residual")
    assert icl.queries == zero.queries and zero.prompts[0] != icl.prompts[0]
    with torch.no_grad():  # independent: one prompt at a time, no padding, no hooks
        hs = [model(**tok([p], return_tensors="pt"), output_hidden_states=True).hidden_states
              for p in zero.prompts]
    for layer in range(ad.n_layers - 1):  # the last hidden state has the final norm applied
        want = torch.stack([h[layer + 1][0, -1] for h in hs]).mean(0)
        assert_forward_close(zs[layer], want)  # batched vs one prompt at a time
    extra = rv.metadata["extra"]
    grid = extra["grid_accuracy"]
    assert len(grid) == 3 * ad.n_layers
    assert grid[f"{rv.layer}:{rv.scale:g}"] == max(grid.values())
    for layer in range(ad.n_layers):
        assert extra["layer_accuracy"][str(layer)] == max(grid[f"{layer}:{s}"] for s in (1, 2, 3))
    assert extra["scale_accuracy"] == {s: grid[f"{rv.layer}:{s}"] for s in ("1", "2", "3")}


def test_extract_function_vector(fv_and_rv) -> None:
    fv, _ = fv_and_rv
    model, _ = _tiny("llama")
    ad = get_adapter(model)
    assert fv.kind == "function_vector" and len(fv.heads) == 2
    assert fv.heads == top_heads(fv.tensors["ie_scores"], 2)
    torch.testing.assert_close(fv.vector, function_vector(ad, fv.tensors["head_means"], fv.heads))
    extra = fv.metadata["extra"]
    assert set(extra["layer_accuracy"]) == {str(i) for i in range(ad.n_layers)}
    assert set(extra["scale_accuracy"]) == {"1", "2"} and fv.scale in (1.0, 2.0)
    assert extra["sweep_split"] == "validation" and extra["ie"]["n_prompts"] == 1


def test_residual_vector_replaces_the_residual(fv_and_rv) -> None:
    _, rv = fv_and_rv
    model, tok = _tiny("llama")
    ad = get_adapter(model)
    torch.testing.assert_close(rv.vector, rv.tensors["layer_means"][rv.layer])
    save = SaveOutputsHook(positions=Positions.LAST)
    enc = tok(PROMPTS, return_tensors="pt", padding=True)
    with torch.no_grad(), rv.intervention(model), Intervention(model, ad.layer_name(rv.layer), save):
        model(**enc, position_ids=position_ids(enc["attention_mask"]))
    got = save[ad.layer_name(rv.layer)][0]  # (B, hidden)
    torch.testing.assert_close(got, rv.vector.expand_as(got))


def test_files_roundtrip_and_errors(fv_and_rv, tmp_path) -> None:
    fv, rv = fv_and_rv
    model, tok = _tiny("llama")
    p = fv.save(tmp_path / "fv.safetensors")
    back = load_activation(p)
    assert back.kind == "function_vector" and back.layer == fv.layer and back.heads == fv.heads
    assert back.scale == fv.scale and back.metadata["shots"] == 2 and back.positions == Positions.LAST
    assert back.metadata["model_fingerprint"] == fv.metadata["model_fingerprint"]
    for k, t in fv.tensors.items():
        torch.testing.assert_close(back.tensors[k], t)
    back.check_model(model)
    with pytest.raises(FileFormatError, match="is a function vector .*, not a residual vector"):
        load_activation(p, "residual_vector")
    assert load_activation(rv.save(tmp_path / "rv.safetensors")).metadata["mode"] == "replace"
    # another model with the same shapes: fingerprint mismatch unless forced
    other, _ = tiny_model("llama", seed=1)
    with pytest.raises(FingerprintMismatchError):
        back.check_model(other)
    back.check_model(other, force=True)
    with pytest.raises(ShapeMismatchError):
        back.check_model(tiny_model("llama", hidden_size=32)[0], force=True)
    # broken files
    with pytest.raises(MissingFileError):
        load_activation(tmp_path / "nope.safetensors")
    trunc = tmp_path / "trunc.safetensors"
    trunc.write_bytes(p.read_bytes()[:-40])
    with pytest.raises(FileFormatError):
        load_activation(trunc)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    with pytest.raises(FileFormatError):
        load_activation(junk)
    from taskvec.weights import TaskVector

    wv = TaskVector({"model.norm.weight": torch.zeros(64)}, {}).save(tmp_path / "w.safetensors")
    with pytest.raises(FileFormatError, match="weight-space"):
        load_activation(wv)
    with pytest.raises(Exception, match="safetensors"):
        fv.save(tmp_path / "fv.pt")


def test_compare_rows(fv_and_rv, task) -> None:
    fv, rv = fv_and_rv
    model, tok = _tiny("llama")
    rows = compare(model, tok, task, [fv, rv], limit=4, shots=2)
    assert [r["method"].split(" (")[0] for r in rows] == [
        "zero-shot", "2-shot ICL", "2-shot shuffled labels", "function vector", "residual vector"]
    assert all(r["split"] == "test" and r["n"] == 4 and 0 <= r["accuracy"] <= 1 for r in rows)
    with pytest.raises(FileFormatError):
        ActivationVector("function_vector", {}, {})


@pytest.mark.parametrize("mode", ["add", "diff"])
def test_residual_add_mode_adds(fv_and_rv, mode) -> None:
    _, rv = fv_and_rv
    model, tok = _tiny("llama")
    ad = get_adapter(model)
    add = ActivationVector("residual_vector", dict(rv.tensors), rv.metadata | {"mode": mode})
    name = ad.layer_name(add.layer)
    enc = tok(PROMPTS[:1], return_tensors="pt")
    outs = []
    for iv in (None, add.intervention(model, scale=0.5)):
        save = SaveOutputsHook(positions=Positions.LAST)
        with torch.no_grad():
            if iv is None:
                with Intervention(model, name, save):
                    model(**enc)
            else:
                with iv, Intervention(model, name, save):
                    model(**enc)
        outs.append(save[name][0])
    assert_forward_close(outs[1] - outs[0], 0.5 * add.vector[None])  # two forwards


def test_residual_unknown_mode_in_file_is_refused(fv_and_rv) -> None:
    _, rv = fv_and_rv
    model, _ = _tiny("llama")
    odd = ActivationVector("residual_vector", dict(rv.tensors), rv.metadata | {"mode": "mix"})
    with pytest.raises(UserInputError, match="mode 'mix'"):
        odd.intervention(model)


def test_residual_bad_scales_refused_before_any_work(task) -> None:
    model, tok = _tiny("llama")
    for bad in ([], [float("nan")]):
        with pytest.raises(UserInputError, match="--scales"):
            extract_residual_vector(model, tok, task, shots=2, n_prompts=2, scales=bad)
