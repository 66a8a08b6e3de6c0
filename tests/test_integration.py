"""Integration tests on the real embedded model (SmolLM2-135M). Marked slow (~1-2 min)."""

from __future__ import annotations

import pytest
import torch

from taskvec.models import fingerprint, get_adapter, model_dir
from taskvec.weights import LowRankDelta, TaskVector

pytestmark = pytest.mark.slow


def test_embedded_adapter_numbers(embedded):
    model, tok = embedded
    ad = get_adapter(model)
    assert (ad.n_layers, ad.n_heads, ad.n_kv_heads, ad.head_dim, ad.hidden_size) == (30, 9, 3, 64, 576)
    assert ad.o_proj_name(3) == "model.layers.3.self_attn.o_proj"
    assert tok.padding_side == "left" and tok.pad_token is not None


def test_fingerprint_model_equals_cached_dir(embedded):
    model, _ = embedded
    assert fingerprint(model) == fingerprint(model_dir("smollm2-135m"))


def test_sst2_zero_shot_scores_known_examples(embedded):
    from taskvec.eval import evaluate
    from taskvec.tasks import get_task

    model, tok = embedded
    res = evaluate(model, tok, get_task("sst2"), limit=32, progress=False)
    assert res.n == 32 and res.accuracy >= 0.65  # measured 0.81 at 32 examples


def test_real_apply_remove_round_trip_and_prediction_change(embedded):
    model, tok = embedded
    g = torch.Generator().manual_seed(0)
    names = [n for n, _ in model.named_parameters() if "layers.5." in n and n.endswith("proj.weight")]
    params = dict(model.named_parameters())
    tv = TaskVector({
        n: LowRankDelta(torch.randn(4, params[n].shape[1], generator=g) * 0.05,
                        torch.randn(params[n].shape[0], 4, generator=g) * 0.05, 1.0) for n in names
    })
    before = {n: params[n].detach().clone() for n in names}
    ids = tok("Review: a fine film\nSentiment:", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        l0 = model(input_ids=ids).logits
        tv.apply_to(model, 2.0)
        l1 = model(input_ids=ids).logits
        tv.remove_from(model, 2.0)
        l2 = model(input_ids=ids).logits
    assert float((l1 - l0).abs().max()) > 1e-3
    assert float((l2 - l0).abs().max()) <= 1e-3
    assert max(float((params[n] - before[n]).abs().max()) for n in names) <= 1e-6


def test_real_residual_diff_vector_lifts_zero_shot(embedded):
    """ICL residual vector (diff mode) on the real model: injected into zero-shot prompts it must
    lift first-token accuracy well above zero-shot (measured: 0.00 -> 0.76 on the 41 test
    examples at layer 20, x1, from 20 prompts)."""
    from taskvec.activations import compare, extract_residual_vector
    from taskvec.tasks import get_task

    model, tok = embedded
    task = get_task("singular-plural")
    rv = extract_residual_vector(model, tok, task, n_prompts=20, layer=20, scales=[1.0])
    assert rv.metadata["mode"] == "diff" and rv.layer == 20 and rv.scale == 1.0
    rows = compare(model, tok, task, [rv], split="test", shots=0)
    zero, vec = rows[0]["accuracy"], rows[1]["accuracy"]
    assert zero <= 0.05 and vec >= 0.5, rows
