"""The fused LoRA linear (taskvec.weights.lora_kernel): the same function and gradients as PEFT's
LoRA forward, no element-wise pass over a full activation, patches removed on exit."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from taskvec.models import TINY_ARCHS, tiny_model
from taskvec.weights import lora_kernel
from taskvec.weights.finetune import finetune
from taskvec.weights.lora_kernel import fused_lora, lora_linear, wrap_lora
from tolerance import gamma

SUFFIXES = {"gpt2": ["c_attn", "c_proj", "c_fc"]}
DEFAULT_SUFFIXES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


pytestmark = pytest.mark.usefixtures("one_thread")


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30))


def _inputs(bias: bool, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    n_in, n_out, r = 24, 20, 4
    x = torch.randn(2, 7, n_in, generator=g, requires_grad=True)      # (B, T, in)
    w = torch.randn(n_out, n_in, generator=g)                         # frozen base
    b = torch.randn(n_out, generator=g) if bias else None
    a = torch.randn(r, n_in, generator=g, requires_grad=True)
    bb = torch.randn(n_out, r, generator=g, requires_grad=True)
    up = torch.randn(2, 7, n_out, generator=g)                        # upstream gradient
    return x, w, b, a, bb, up


@pytest.mark.parametrize("bias", [False, True])
def test_kernel_matches_float64_formula_within_rounding_bound(bias):
    x, w, b, a, bb, up = _inputs(bias)
    s = 2.5
    y = lora_linear(x, w, b, a, bb, s)
    y.backward(up)
    # reference: the formula in float64 with autograd
    x64, a64, b64 = (t.detach().double().requires_grad_() for t in (x, a, bb))
    w64 = w.double()
    y64 = x64 @ w64.T + s * (x64 @ a64.T) @ b64.T + (b.double() if b is not None else 0)
    y64.backward(up.double())
    n = x.shape[-1] + a.shape[0] + 2                                   # longest chain of sums
    ax, aw, aa, ab = x.detach().double().abs(), w.double().abs(), a.detach().double().abs(), bb.detach().double().abs()
    bound = 4 * gamma(n) * (ax @ aw.T + s * (ax @ aa.T) @ ab.T + (b.double().abs() if b is not None else 0))
    assert ((y.double() - y64).abs() <= bound).all()
    g = up.double().abs()
    gx_bound = 4 * gamma(n + w.shape[0]) * (g @ aw + s * (g @ ab) @ aa)
    assert ((x.grad.double() - x64.grad).abs() <= gx_bound).all()
    tokens = x.shape[0] * x.shape[1]
    ga_bound = 4 * gamma(tokens + w.shape[0]) * s * (g @ ab).reshape(-1, a.shape[0]).T @ ax.reshape(-1, x.shape[-1])
    assert ((a.grad.double() - a64.grad).abs() <= ga_bound).all()
    gb_bound = 4 * gamma(tokens + x.shape[-1]) * s * g.reshape(-1, w.shape[0]).T @ (ax @ aa.T).reshape(-1, a.shape[0])
    assert ((bb.grad.double() - b64.grad).abs() <= gb_bound).all()


def test_kernel_has_no_elementwise_pass_over_activations():
    """Every op that writes an (N, out) or (N, in) tensor, forward and backward, is a GEMM."""
    x, w, b, a, bb, up = _inputs(bias=False)
    big = {x.shape[0] * x.shape[1] * w.shape[0], x.shape[0] * x.shape[1] * w.shape[1]}
    seen: list[str] = []

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if isinstance(out, torch.Tensor) and out.numel() in big and not func.is_view:
                seen.append(func.overloadpacket.__name__)
            return out

    with Record():
        lora_linear(x, w, b, a, bb, 2.0).backward(up)
    assert seen and set(seen) <= {"mm", "addmm", "addmm_"}, seen


def _peft_model(arch: str):
    model, _ = tiny_model(arch, seed=0)
    model = wrap_lora(model, SUFFIXES.get(arch, DEFAULT_SUFFIXES), r=4, alpha=8.0,
                      fan_in_fan_out=arch == "gpt2", seed=0)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # PEFT initialises B = 0: give the LoRA term a value
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return model


def _loss_and_grads(model, ids):
    model.zero_grad(set_to_none=True)
    logits = model(input_ids=ids).logits
    loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())
    loss.backward()
    return logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_fused_model_matches_peft_forward_and_gradients(arch):
    model = _peft_model(arch)
    model.eval()  # no dropout: the two passes must see the same function
    ids = torch.randint(3, 200, (2, 9), generator=torch.Generator().manual_seed(2))
    ref_logits, ref_grads = _loss_and_grads(model, ids)
    with fused_lora(model) as patched:
        logits, grads = _loss_and_grads(model, ids)
    # GPT-2's Conv1D projections keep PEFT's forward; every other architecture fuses all 7 x layers
    n_lora = sum(1 for n, _ in model.named_modules() if n.endswith(".lora_A"))
    assert patched == (0 if arch == "gpt2" else n_lora) and n_lora > 0
    assert rel(logits, ref_logits) < 1e-5
    assert grads.keys() == ref_grads.keys()
    for name, gr in grads.items():
        assert rel(gr, ref_grads[name]) < 1e-4, name
    assert not any("forward" in vars(m) for m in model.modules())  # restored


def test_patch_restored_on_error_and_disabled_adapters_fall_back():
    model = _peft_model("llama")
    ids = torch.randint(3, 200, (1, 6), generator=torch.Generator().manual_seed(3))
    with pytest.raises(RuntimeError, match="boom"), fused_lora(model):
        raise RuntimeError("boom")
    assert not any("forward" in vars(m) for m in model.modules())
    with torch.no_grad():
        with model.disable_adapter():
            base = model(input_ids=ids).logits
        with fused_lora(model), model.disable_adapter():
            fused_off = model(input_ids=ids).logits
        with fused_lora(model):
            fused_on = model(input_ids=ids).logits
    assert torch.equal(fused_off, base)  # PEFT's own path: the base layers alone
    assert rel(fused_on, base) > 1e-3    # the adapters do act when enabled


class _Task:
    name, kind, train_split, eval_split, splits = "planted", "classification", "train", "validation", ("train",)

    def load(self, split=None, limit=None):
        return [{"text": f"item {i} is {'good' if i % 2 else 'bad'}", "label": i % 2} for i in range(12)][:limit]

    def prompt(self, ex):
        return f"{ex['text']}:"

    def answer(self, ex):
        return " yes" if ex["label"] else " no"


def test_finetune_records_kernel_and_matches_peft_losses(tmp_path):
    from taskvec.models import tiny_tokenizer

    tok = tiny_tokenizer()
    runs = {}
    for kernel in ("fused", "peft"):
        model, _ = tiny_model("llama", seed=0)
        res = finetune(model, tok, _Task(), tmp_path / kernel, steps=3, batch_size=4, lr=1e-2, lora_r=4,
                       progress=False, checkpoint_every=0, lora_kernel=kernel)
        assert res.recipe["lora_kernel"] == kernel
        assert not any("forward" in vars(m) for m in res.model.modules())
        runs[kernel] = res.losses
    for a, b in zip(runs["fused"], runs["peft"], strict=True):
        assert abs(a - b) <= 1e-4 * abs(b)


def test_bench_lora_kernel_interval_and_smoke_run(tmp_path, monkeypatch):
    """The A/B benchmark: its median interval by hand, and a run on a tiny model (same losses)."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    bench = importlib.import_module("bench_lora_kernel")
    # n = 10: P(Bin(10, 1/2) <= 1) = 11/1024, so the 2nd and 9th order statistics cover 97.9% >= 95%
    # (the 3rd and 8th cover 89.1%)
    assert bench.median_interval([float(i) for i in range(10, 0, -1)]) == (2.0, 9.0)
    assert bench.median_interval([1.0, 2.0, 3.0]) == (1.0, 3.0)  # too few pairs: the whole range
    out = tmp_path / "lk.json"
    assert bench.main(["--model", "tiny:llama", "--pairs", "3", "--json-out", str(out)]) == 0
    d = json.loads(out.read_text())
    assert len(d["rows"]) == 3 and {r["first"] for r in d["rows"]} == {"fused", "peft"}
    assert d["max_rel_loss_diff"] < 1e-5


def test_autocast_runs_peft_forward(monkeypatch):
    """Under CPU autocast the kernel steps aside (PEFT's forward casts as autocast wants)."""
    model = _peft_model("llama")
    ids = torch.randint(3, 200, (1, 5), generator=torch.Generator().manual_seed(4))
    calls = []

    def spy(*a):
        calls.append(1)
        return lora_linear(*a)

    monkeypatch.setattr(lora_kernel, "lora_linear", spy)
    with torch.no_grad(), fused_lora(model):
        model(input_ids=ids)
        n_plain = len(calls)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            model(input_ids=ids)
    assert n_plain > 0 and len(calls) == n_plain
