"""Grouped-query attention at Qwen2.5-0.5B's ratio (14 query heads, 2 KV heads: 7 per KV head) on a
tiny Qwen2: per-head activations, head patching, indirect effects and soft vectors act on the 14
query heads, checked against attention computed by hand with the KV heads repeated."""

from __future__ import annotations

import pytest
import torch

from taskvec.activations.heads import head_activations
from taskvec.activations.indirect_effect import ie_scores
from taskvec.models import tiny_model
from taskvec.tasks import get_task

pytestmark = pytest.mark.usefixtures("one_thread")
GQA = {"num_attention_heads": 14, "num_key_value_heads": 2, "hidden_size": 56, "head_dim": 4}
PROMPT = "hot -> cold\nbig ->"


@pytest.fixture(scope="module")
def qwen():
    return tiny_model("qwen2", seed=0, **GQA)


def _manual_heads(model, ids: torch.Tensor, layer: int) -> torch.Tensor:
    """Layer ``layer``'s per-head attention outputs at the last token, by hand: (H, D)."""
    cfg = model.config
    h, kv, d = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    seen = {}
    block = model.model.layers[layer]
    handle = block.input_layernorm.register_forward_hook(lambda m, i, o: seen.setdefault("x", o))
    try:
        with torch.no_grad():
            model(input_ids=ids, use_cache=False)
    finally:
        handle.remove()
    x = seen["x"][0]  # (T, C) normed input of the layer
    att = block.self_attn
    t = x.shape[0]
    q = att.q_proj(x).view(t, h, d).transpose(0, 1)  # (H, T, D)
    k = att.k_proj(x).view(t, kv, d).transpose(0, 1)  # (KV, T, D)
    v = att.v_proj(x).view(t, kv, d).transpose(0, 1)
    pos = torch.arange(t)[None]
    cos, sin = model.model.rotary_emb(v, pos)
    from transformers.models.qwen2.modeling_qwen2 import apply_rotary_pos_emb

    q, k = apply_rotary_pos_emb(q[None], k[None], cos, sin)
    q, k = q[0], k[0]
    k = k.repeat_interleave(h // kv, dim=0)  # query head i uses KV head i // 7
    v = v.repeat_interleave(h // kv, dim=0)
    scores = (q @ k.transpose(-1, -2)) / d**0.5 + torch.full((t, t), float("-inf")).triu(1)
    return (scores.softmax(-1) @ v)[:, -1]  # (H, D) at the last token


def test_head_activations_are_the_14_query_heads(qwen):
    model, tok = qwen
    acts, _ = head_activations(model, tok, [PROMPT])
    assert tuple(acts.shape[1:]) == (2, 14, 4)  # (N, L, H, D): query heads, not KV heads
    ids = tok(PROMPT, return_tensors="pt")["input_ids"]
    for layer in range(2):
        torch.testing.assert_close(acts[0, layer], _manual_heads(model, ids, layer), rtol=1e-4, atol=1e-5)


def test_patching_one_query_head_moves_only_its_slice(qwen):
    """Replacing head 9 (KV group 1) with its own value is the identity; with another value the
    o_proj input changes in head 9's slice only (the 6 heads sharing its KV head are untouched)."""
    model, tok = qwen
    acts, _ = head_activations(model, tok, [PROMPT])
    means = acts[0].clone()
    targets = [tok(" cold", add_special_tokens=False)["input_ids"][0]]
    same = ie_scores(model, tok, [PROMPT], targets, means, method="naive")
    assert same.scores.abs().max() < 1e-5
    means[1, 9] += 3.0
    naive = ie_scores(model, tok, [PROMPT], targets, means, method="naive")
    cached = ie_scores(model, tok, [PROMPT], targets, means, method="cached")
    torch.testing.assert_close(cached.scores, naive.scores, rtol=1e-4, atol=1e-6)
    moved = (naive.scores.abs() > 1e-6).nonzero().tolist()
    assert moved == [[1, 9]]


def test_soft_vector_on_gqa_has_one_coefficient_per_query_head(qwen):
    from taskvec.activations.soft import TaskVectorExtractor

    model, tok = qwen
    ex = TaskVectorExtractor(model, tok, get_task("antonym"), steps=2, shots=2, n_prompts=4, val_limit=8,
                             batch_size=4, eval_every=2)
    sv = ex.train()
    assert tuple(sv.coefficients.shape) == (2, 14) and tuple(sv.head_means.shape) == (2, 14, 4)
    ids = tok(PROMPT, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        plain = model(input_ids=ids).logits
        off = type(sv)(torch.full((2, 14), float("-inf")), sv.head_means, dict(sv.metadata))
        with off.intervention(model):  # alpha = 0 on every head: the model is unchanged
            torch.testing.assert_close(model(input_ids=ids).logits, plain, rtol=0, atol=0)
        with sv.intervention(model):
            assert not torch.equal(model(input_ids=ids).logits, plain)
