"""The CUDA path on tiny models (marked ``cuda``: skipped cleanly without a GPU; run by
``benchmarks/gpu_check.sh`` on a GPU machine)."""

from __future__ import annotations

import pytest
import torch

from taskvec.models import tiny_model

pytestmark = pytest.mark.cuda


def test_scores_on_cuda_equal_cpu():
    from taskvec.eval.scoring import score_choices

    model, tok = tiny_model("llama", seed=0)
    prompts = [f"movie {i} was {'good' if i % 2 else 'bad'}. Sentiment:" for i in range(6)]
    cpu = score_choices(model, tok, prompts, [" p", " n"])
    gpu = score_choices(model.to("cuda"), tok, prompts, [" p", " n"])
    torch.testing.assert_close(gpu, cpu, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_finetune_on_cuda_and_apply(tmp_path, dtype):
    from tests.test_finetune import FakeTask

    from taskvec.weights import TaskVector
    from taskvec.weights.finetune import finetune

    model, tok = tiny_model("llama", seed=0)
    model = model.to("cuda", dtype)
    res = finetune(model, tok, FakeTask(), tmp_path / "o", steps=3, batch_size=4, lr=1e-2, lora_r=4, lora_alpha=8,
                   checkpoint_every=0, progress=False)
    assert all(torch.isfinite(torch.tensor(res.losses)))
    assert res.recipe["device"].startswith("cuda")
    vec = TaskVector.from_peft(res.adapter_dir)
    base = res.unload()
    before = {k: v.clone() for k, v in base.state_dict().items()}
    vec.apply_to(base)
    assert any(not torch.equal(before[k], v) for k, v in base.state_dict().items())


def test_prefix_reuse_on_cuda():
    from taskvec.eval.scoring import score_choices

    model, tok = tiny_model("qwen2", seed=0)
    model = model.to("cuda")
    head = "Review: a great film. Sentiment: positive\n\nReview: awful. Sentiment: negative\n\nReview: "
    prompts = [head + f"film {i}{'!' * i}. Sentiment:" for i in range(5)]
    a = score_choices(model, tok, prompts, [" positive", " negative"])
    b = score_choices(model, tok, prompts, [" positive", " negative"], reuse_prefix=True)
    torch.testing.assert_close(b, a, rtol=1e-3, atol=1e-3)
