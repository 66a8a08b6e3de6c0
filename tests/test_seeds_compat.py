"""The source projects' call forms run as written (docs/seeds.md), on tiny models of every
architecture, and give the same numbers as taskvec's own calls."""

from __future__ import annotations

import pytest
import torch

from taskvec.activations import Hook, Intervention, SaveInputsHook
from taskvec.models import TINY_ARCHS, get_adapter, tiny_model
from taskvec.weights import TaskVector


def _finetuned(arch: str):
    pre, tok = tiny_model(arch, seed=0)
    ft, _ = tiny_model(arch, seed=0)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in ft.named_parameters():
            if "proj" in name or "c_attn" in name or "c_fc" in name:
                p.add_(torch.randn(p.shape, generator=g) * 0.01)
    return pre, ft, tok


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_task_vector_interpretation_snippet(arch: str, tmp_path) -> None:
    """Task_vector_Interpretation_and_Analysis's README, only the import changed."""
    pretrained_model, fine_tuned_model, _ = _finetuned(arch)
    native = TaskVector.from_models(pretrained_model, fine_tuned_model)

    task_vector = TaskVector(pretrained_model, fine_tuned_model)
    torch.save(task_vector.vector, tmp_path / "my_task_vector.pth")
    task_vector = TaskVector(vector=torch.load(tmp_path / "my_task_vector.pth", weights_only=True))
    specialized_model = task_vector.apply_to(pretrained_model)

    assert sorted(task_vector.names) == sorted(native.names) and native.names
    for name in native.names:  # the same deltas, bit for bit (saved and loaded exactly)
        assert torch.equal(task_vector[name], native[name]), name
    want = dict(fine_tuned_model.named_parameters())
    for name, p in specialized_model.named_parameters():
        # (ft - pre) + pre, elementwise: one rounding each, < 1 ulp of |w| < 8
        assert float((p - want[name]).abs().max()) <= 1e-6, name


def test_vector_property_densifies_low_rank() -> None:
    from taskvec.weights import LowRankDelta

    A, B = torch.randn(2, 5), torch.randn(4, 2)
    tv = TaskVector({"w": LowRankDelta(A, B, 0.5), "b": torch.ones(4)})
    v = tv.vector
    assert torch.equal(v["b"], torch.ones(4)) and torch.allclose(v["w"], 0.5 * B @ A)


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_jacknewsom_intervention_snippet(arch: str) -> None:
    """jacknewsom/task_vectors's README: no model argument, targets and hook by keyword, one
    saved entry per forward call, and a Hook subclass with PyTorch's signature reading self.name."""
    model, tok = tiny_model(arch)
    ad = get_adapter(model)
    moduleA, moduleB = ad.o_proj(0), ad.o_proj(ad.n_layers - 1)
    inputs = tok(["hello there"], return_tensors="pt")
    savehook = SaveInputsHook()
    with torch.no_grad(), Intervention(targets={"moduleA": moduleA, "moduleB": moduleB}, hook=savehook):
        model.generate(**inputs, max_new_tokens=4, do_sample=False, pad_token_id=256)
    assert len(savehook["moduleA"]) == 4 and len(savehook["moduleB"]) == 4
    assert savehook["moduleA"][0].shape[-1] == ad.n_heads * ad.head_dim

    class NameRecorder(Hook):
        def __init__(self) -> None:
            super().__init__(positions=None)
            self.seen: list[str] = []

        def __call__(self, module, input, output):  # noqa: A002 - PyTorch's own names
            self.seen.append(self.name)

    rec = NameRecorder()
    with torch.no_grad(), Intervention(targets={"moduleA": moduleA, "moduleB": moduleB}, hook=rec):
        plain = model(**inputs).logits
    assert rec.seen == ["moduleA", "moduleB"]
    with torch.no_grad():
        assert torch.equal(plain, model(**inputs).logits)  # observing changed nothing


def _full_state_dict_delta(pre, ft) -> dict[str, torch.Tensor]:
    """What the source's notebooks save: ``ft_sd[k] - pre_sd[k]`` over EVERY key (tied ones too)."""
    pre_sd, ft_sd = pre.state_dict(), ft.state_dict()
    return {k: ft_sd[k].float() - pre_sd[k].float() for k in ft_sd if ft_sd[k].is_floating_point()}


def test_tied_full_state_dict_delta_applies_once_in_memory_and_streamed(tmp_path) -> None:
    from taskvec.errors import ShapeMismatchError
    from taskvec.weights.stream_apply import stream_apply

    pre, tok = tiny_model("llama", seed=0)  # ties lm_head to embed_tokens
    ft, _ = tiny_model("llama", seed=0)
    with torch.no_grad():
        ft.get_input_embeddings().weight.add_(0.01)  # the tied pair moves together
        ft.model.layers[0].self_attn.q_proj.weight.add_(0.02)
    sd = _full_state_dict_delta(pre, ft)
    assert "lm_head.weight" in sd and torch.equal(sd["lm_head.weight"], sd["model.embed_tokens.weight"])
    torch.save(sd, tmp_path / "full.pth")
    tv = TaskVector(vector=torch.load(tmp_path / "full.pth", weights_only=True))
    pre.save_pretrained(tmp_path / "base")
    tok.save_pretrained(tmp_path / "base")
    fresh, _ = tiny_model("llama", seed=0)
    model = tv.apply_to(fresh)
    want = dict(ft.named_parameters())
    for name, p in model.named_parameters():  # the tied delta applied once, not twice
        assert float((p - want[name]).abs().max()) <= 1e-6, name
    out = stream_apply(tmp_path / "base", tmp_path / "full.pth", tmp_path / "out", progress=False, force=True)
    from taskvec.models import load_model

    streamed, _ = load_model(str(out))
    for name, p in streamed.named_parameters():
        assert torch.equal(p, dict(model.named_parameters())[name]), name
    # different deltas under the two tied names: refused, in memory and streamed, nothing written
    sd["lm_head.weight"] = sd["lm_head.weight"] + 1.0
    torch.save(sd, tmp_path / "bad.pth")
    bad = TaskVector.load(tmp_path / "bad.pth")
    with pytest.raises(ShapeMismatchError, match="different deltas"):
        bad.apply_to(tiny_model("llama", seed=0)[0])
    with pytest.raises(ShapeMismatchError, match="different deltas"):
        stream_apply(tmp_path / "base", tmp_path / "bad.pth", tmp_path / "out2", progress=False, force=True)
    assert not (tmp_path / "out2").exists()


def test_negation_rules_hand_computed() -> None:
    from taskvec.weights.negate import choose_coefficient

    curve = [{"c": 0.5, "target": 0.6, "control": 0.80}, {"c": 1.0, "target": 0.4, "control": 0.78},
             {"c": 1.5, "target": 0.4, "control": 0.77}, {"c": 2.0, "target": 0.5, "control": 0.76},
             {"c": 2.5, "target": 0.1, "control": 0.50}]
    # base control 0.8: admissible c have control >= 0.76, i.e. c <= 2.0
    assert choose_coefficient(curve, 0.8, 0.95) == 2.0
    assert choose_coefficient(curve, 0.8, 0.95, "largest") == 2.0
    assert choose_coefficient(curve, 0.8, 0.95, "min-target") == 1.0  # 0.4 twice: the smaller c
    assert choose_coefficient(curve, 1.0, 0.95, "min-target") is None
    from taskvec.errors import UnknownNameError

    with pytest.raises(UnknownNameError, match="Did you mean \"min-target\""):
        choose_coefficient(curve, 0.8, 0.95, "min_target")


def _gram(T: int = 6, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    V = torch.randn(50, T, generator=g, dtype=torch.float64)
    return V.T @ V


def test_autoencoder_source_options_autograd_equals_closed_form() -> None:
    """The autograd path (any source option set) computes the same loss and gradients as the
    closed form: with an inert option (a huge grad_clip) the fits agree."""
    from taskvec.basis.autoencoder import train_autoencoder

    G = _gram()
    ref = train_autoencoder(G, 3, seed=1, steps=60, refit=False)
    alt = train_autoencoder(G, 3, seed=1, steps=60, refit=False, grad_clip=1e12)
    # 60 Adam steps in float64 from the same start: only rounding separates the two paths
    torch.testing.assert_close(alt.coefficients, ref.coefficients, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(alt.mix, ref.mix, rtol=1e-9, atol=1e-12)


def test_autoencoder_source_options_run_and_are_checked() -> None:
    from taskvec.basis.autoencoder import train_autoencoder
    from taskvec.errors import UserInputError

    G = _gram()
    base = train_autoencoder(G, 3, seed=0, steps=200, refit=False)
    for opts in ({"encoder": "linear"}, {"w_activation": "softmax"}, {"batch_cols": 3},
                 {"anneal_every": 50, "anneal_factor": 0.5}, {"weight_decay": 1e-6, "loss_norm": "t2"}):
        fit = train_autoencoder(G, 3, seed=0, steps=200, refit=False, **opts)
        # W starts at 0, where the relative error is exactly 1: training lowered it
        assert fit.info["source_options"] and 0 <= fit.info["relative_error"] < 1.0, opts
    annealed = train_autoencoder(G, 3, seed=0, steps=200, anneal_every=50, anneal_factor=0.5)
    assert annealed.info["tau_final"] == 5.0 * 0.5**4
    assert base.info["tau_final"] == 5.0 and "source_options" not in base.info
    for bad in ({"encoder": "relu"}, {"anneal_every": 10}, {"grad_clip": -1.0}, {"nope": 1}):
        with pytest.raises(UserInputError):
            train_autoencoder(G, 3, steps=1, **bad)


def test_basis_build_cli_takes_source_options(tmp_path, capsys) -> None:
    import json

    from conftest import run_cli

    g = torch.Generator().manual_seed(0)
    paths = []
    for i in range(4):
        p = TaskVector({"w": torch.randn(6, 5, generator=g)}, {"task": f"t{i}"}).save(tmp_path / f"v{i}.safetensors")
        paths.append(p)
    code, out, err = run_cli(capsys, "basis", "build", "--method", "autoencoder", "--m", 2, *paths,
                             "--out", tmp_path / "b.safetensors", "--steps", 50, "--option", "refit=false",
                             "--option", "loss_norm=t2", "--option", "weight_decay=1e-6", "--json")
    assert code == 0, err
    fit = json.loads(out)
    assert "t2" in json.dumps(fit)  # the source's loss scaling is recorded with the fit
    code, _, err = run_cli(capsys, "basis", "build", "--method", "autoencoder", *paths,
                           "--out", tmp_path / "c.safetensors", "--option", "encoder=relu")
    assert code == 2 and "encoder must be one of" in err and not (tmp_path / "c.safetensors").exists()
    code, _, err = run_cli(capsys, "basis", "build", "--method", "pca", *paths,
                           "--out", tmp_path / "d.safetensors", "--option", "refit")
    assert code == 2 and "--option needs KEY=VALUE" in err
