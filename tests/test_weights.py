"""TaskVector: arithmetic identities, exact low-rank algebra, files, application, PEFT interop."""

from __future__ import annotations

import os
import pickle

import pytest
import torch

from taskvec.errors import (
    FileFormatError,
    FingerprintMismatchError,
    NonFiniteError,
    ShapeMismatchError,
    UnsafeFileError,
)
from taskvec.models import fingerprint, tiny_model
from taskvec.weights import LowRankDelta, TaskVector, export_peft, load_vector, svd_low_rank
from tolerance import assert_forward_close


def _perturbed(arch="llama", seed=0, eps=0.01):
    base, tok = tiny_model(arch, seed=seed)
    ft, _ = tiny_model(arch, seed=seed)
    g = torch.Generator().manual_seed(123)
    with torch.no_grad():
        for name, p in ft.named_parameters():
            if "proj" in name or "c_attn" in name or "c_fc" in name:
                p.add_(torch.randn(p.shape, generator=g) * eps)
    return base, ft, tok


def _lowrank_vector(shapes, rank=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return TaskVector(
        {n: LowRankDelta(torch.randn(rank, s[1], generator=g), torch.randn(s[0], rank, generator=g), 0.5)
         for n, s in shapes.items()}
    )


def _max_diff(m1, m2):
    sd2 = dict(m2.named_parameters())
    return max(float((p.detach() - sd2[n].detach()).abs().max()) for n, p in m1.named_parameters())


def test_from_models_skips_unchanged_and_reproduces_finetuned():
    base, ft, _ = _perturbed()
    tv = TaskVector.from_models(base, ft)
    assert all("proj" in n for n in tv.names)
    assert tv.metadata["base_fingerprint"] == fingerprint(base)
    fresh, _ = tiny_model("llama", seed=0)
    tv.apply_to(fresh)
    # elementwise (ft - base) + base: one rounding each, < 1 ulp of |w| < 8, i.e. < 1e-6
    assert _max_diff(fresh, ft) <= 1e-6


@pytest.mark.parametrize("scale", [1.0, 0.37, -2.0])
def test_apply_then_remove_restores_original(scale):
    base, ft, _ = _perturbed()
    tv = TaskVector.from_models(base, ft)
    orig = {n: p.clone() for n, p in base.named_parameters()}
    tv.apply_to(base, scale)
    assert _max_diff(base, ft) > 0 or scale == 1.0
    tv.remove_from(base, scale)
    # elementwise w + s d - s d: two roundings of size ulp(|w| + |s d|) < 1e-6 here
    assert max(float((p - orig[n]).abs().max()) for n, p in base.named_parameters()) <= 1e-6


def test_add_negate_scale_identities():
    base, ft, _ = _perturbed()
    v = TaskVector.from_models(base, ft)
    zero = v + (-v)
    assert zero.norm() == pytest.approx(0.0, abs=1e-6)
    assert (2 * v).norm() == pytest.approx(2 * v.norm(), rel=1e-6)
    assert (v + v).dot(v) == pytest.approx(2 * v.dot(v), rel=1e-6)
    assert v.cosine(v) == pytest.approx(1.0, abs=1e-9)
    assert v.cosine(-v) == pytest.approx(-1.0, abs=1e-9)
    w = v * 0.5
    for n in v.names:
        torch.testing.assert_close((v - w)[n], v[n] * 0.5)
    with pytest.raises(NonFiniteError):
        v * float("nan")


def test_low_rank_concat_is_exact_and_geometry_matches_dense():
    shapes = {"a.weight": (6, 5), "b.weight": (4, 7)}
    x, y = _lowrank_vector(shapes, seed=1), _lowrank_vector(shapes, seed=2)
    s = x + y
    assert s.form == "low-rank" and s["a.weight"].rank == 6
    for n in shapes:
        torch.testing.assert_close(s[n].to_dense(), x[n].to_dense() + y[n].to_dense(), atol=1e-6, rtol=0)
    xd, yd = x.to_dense(), y.to_dense()
    assert x.dot(y) == pytest.approx(xd.dot(yd), rel=1e-6)
    assert x.norm() == pytest.approx(xd.norm(), rel=1e-6)
    assert x.dot(yd) == pytest.approx(xd.dot(yd), rel=1e-6)
    # lowrank - lowrank == 0 exactly in dense form
    assert (x - x).to_dense().norm() == pytest.approx(0.0, abs=1e-6)


def test_svd_round_trip_full_rank_exact():
    d = torch.randn(8, 5)
    lr = svd_low_rank(d, rank=5)
    # SVD + recomposition of an 8 x 5 matrix: backward-stable, ~ 10 u |d| (|d| < 5)
    assert float((lr.to_dense() - d).abs().max()) <= 1e-5
    lr_e = svd_low_rank(d, energy=0.999999)
    assert lr_e.rank == 5
    assert svd_low_rank(torch.outer(torch.randn(8), torch.randn(5)), energy=0.99).rank == 1


def test_safetensors_round_trip_exact(tmp_path):
    base, ft, _ = _perturbed()
    v = TaskVector.from_models(base, ft, metadata={"task": "toy", "recipe": {"lr": 1e-3}})
    lr = _lowrank_vector({"model.layers.0.self_attn.q_proj.weight": (64, 64)})
    mixed = v + lr  # mixed storage
    for vec, name in [(v, "dense"), (lr, "lowrank"), (mixed, "mixed")]:
        p = vec.save(tmp_path / f"{name}.safetensors")
        back = load_vector(p)
        assert back.form == vec.form
        for n in vec.names:
            a, b = vec[n], back[n]
            if isinstance(a, LowRankDelta):
                assert torch.equal(a.A, b.A) and torch.equal(a.B, b.B) and a.scale == b.scale
            else:
                assert torch.equal(a, b)
    back = load_vector(tmp_path / "dense.safetensors")
    assert back.metadata["task"] == "toy" and back.metadata["recipe"] == {"lr": 1e-3}
    assert back.metadata["base_fingerprint"] == fingerprint(base)


def test_pth_round_trip(tmp_path):
    lr = _lowrank_vector({"x.weight": (5, 4)})
    p = lr.save(tmp_path / "v.pth")
    back = load_vector(p)
    assert back.form == "dense"
    torch.testing.assert_close(back["x.weight"], lr["x.weight"].to_dense(), atol=1e-6, rtol=0)
    sd = torch.load(p, weights_only=True)
    assert set(sd) == {"x.weight"}


class _Payload:
    def __reduce__(self):
        return (os.system, (f"touch {os.environ['TASKVEC_PWNED']}",))


def test_malicious_pickle_refused_without_running(tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    monkeypatch.setenv("TASKVEC_PWNED", str(marker))
    bad = tmp_path / "evil.pth"
    with open(bad, "wb") as f:
        pickle.dump({"w": _Payload()}, f)
    with pytest.raises(UnsafeFileError):
        load_vector(bad)
    assert not marker.exists()
    bad2 = tmp_path / "evil2.pth"
    torch.save({"w": _Payload()}, bad2)  # zip-format torch pickle with a payload
    with pytest.raises(UnsafeFileError):
        load_vector(bad2)
    assert not marker.exists()


def test_fingerprint_mismatch_refused(tmp_path):
    base, ft, _ = _perturbed()
    v = TaskVector.from_models(base, ft)
    other, _ = tiny_model("llama", seed=5)
    with pytest.raises(FingerprintMismatchError, match="--force"):
        v.check_base(other)
    v.check_base(other, force=True)
    v.check_base(base)


def test_shape_mismatch_refused_before_any_change():
    base, _ = tiny_model("llama", seed=0)
    orig = {n: p.clone() for n, p in base.named_parameters()}
    good = next(n for n, _ in base.named_parameters() if "q_proj" in n)
    v = TaskVector({good: torch.ones(64, 64), "model.layers.0.mlp.up_proj.weight": torch.ones(3, 3)})
    with pytest.raises(ShapeMismatchError):
        v.apply_to(base)
    assert all(torch.equal(p, orig[n]) for n, p in base.named_parameters())
    with pytest.raises(ShapeMismatchError, match="no such parameter"):
        TaskVector({"nope.weight": torch.ones(1)}).apply_to(base)


@pytest.mark.parametrize(
    "damage",
    ["truncate", "empty", "header_len", "header_bytes", "not_taskvec"],
)
def test_corrupted_files_raise_clear_errors(tmp_path, damage):
    v = _lowrank_vector({"x.weight": (5, 4)})
    p = v.save(tmp_path / "v.safetensors")
    raw = p.read_bytes()
    if damage == "truncate":
        p.write_bytes(raw[: len(raw) - 20])
    elif damage == "empty":
        p.write_bytes(b"")
    elif damage == "header_len":
        p.write_bytes((10**12).to_bytes(8, "little") + raw[8:])
    elif damage == "header_bytes":
        p.write_bytes(raw[:8] + b"\xff\xfe" + raw[10:])
    else:
        from safetensors.torch import save_file

        save_file({"a": torch.ones(2)}, str(p))
    with pytest.raises(FileFormatError) as ei:
        load_vector(p)
    assert "\n" not in str(ei.value)


def test_save_is_atomic_on_failure(tmp_path):
    v = TaskVector({"x.weight": torch.ones(2, 2)})
    p = v.save(tmp_path / "v.safetensors")
    before = p.read_bytes()
    bad = TaskVector({"x.weight": torch.tensor([[float("inf"), 0.0]])})
    with pytest.raises(NonFiniteError):
        bad.save(p)
    assert p.read_bytes() == before
    assert sorted(x.name for x in tmp_path.iterdir()) == ["v.safetensors"]


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_peft_adapter_round_trip(tmp_path, arch):
    peft = pytest.importorskip("peft")
    base, tok = tiny_model(arch, seed=0)
    targets = ["q_proj", "v_proj", "down_proj"] if arch == "llama" else ["c_attn", "c_fc"]
    cfg = peft.LoraConfig(r=4, lora_alpha=8, target_modules=targets, lora_dropout=0.0,
                          fan_in_fan_out=arch == "gpt2")
    pm = peft.get_peft_model(base, cfg)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    pm.save_pretrained(tmp_path / "adapter")
    ids = torch.tensor([[1, 2, 3, 4, 5, 6]])
    with torch.no_grad():
        want = pm(input_ids=ids).logits
    v = TaskVector.from_peft(tmp_path / "adapter")
    assert v.form == "low-rank"
    fresh, _ = tiny_model(arch, seed=0)
    v.apply_to(fresh)
    with torch.no_grad():
        got = fresh(input_ids=ids).logits
    assert_forward_close(got, want)  # W + B A merged vs PEFT computing x W + (x A) B
    # export back to PEFT: same predictions
    export_peft(v, tmp_path / "exported", fan_in_fan_out=arch == "gpt2")
    fresh2, _ = tiny_model(arch, seed=0)
    pm2 = peft.PeftModel.from_pretrained(fresh2, tmp_path / "exported")
    with torch.no_grad():
        got2 = pm2(input_ids=ids).logits
    assert_forward_close(got2, want)  # W + B A merged vs PEFT computing x W + (x A) B
    # low-rank file much smaller than dense; round trip to dense exact
    dense = v.to_dense()
    for n in v.names:
        assert float((v[n].to_dense() - dense[n]).abs().max()) <= 1e-6
