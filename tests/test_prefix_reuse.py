"""Shared-prefix KV reuse for k-shot scoring: same logits as the plain path on every architecture."""

from __future__ import annotations

import pytest
import torch

import taskvec.eval.prefix as prefix_mod
from taskvec.eval.prefix import MIN_PREFIX, common_prefix_len
from taskvec.eval.scoring import next_token_logits, score_choices
from taskvec.models import tiny_model
from taskvec.tasks import get_task, shared_fewshot_prompts

ARCHS = ["llama", "mistral", "gemma2", "gemma3", "qwen2", "gpt2"]
pytestmark = pytest.mark.usefixtures("one_thread")

HEAD = ("Review: a great film. Sentiment: positive\n\nReview: an awful, boring plot. Sentiment: negative\n\n"
        "Review: ")


def prompts() -> list[str]:  # suffixes of different lengths; with a byte tokenizer > 100 shared tokens
    return [HEAD + f"movie {i} was {'good' if i % 2 else 'bad'}{'!' * (3 * i)}. Sentiment:" for i in range(7)]


def test_common_prefix_len():
    assert common_prefix_len([[1, 2, 3, 4], [1, 2, 3, 5], [1, 2, 9]]) == 2
    assert common_prefix_len([[1, 2, 3], [1, 2, 3]]) == 2  # at most the shortest minus one
    assert common_prefix_len([[5, 1], [6, 1]]) == 0 and common_prefix_len([]) == 0


@pytest.fixture()
def spy(monkeypatch):
    calls: list[int] = []
    orig = prefix_mod.SharedPrefix.logits

    def logits(self, suffixes, keep):
        calls.append(self.length)
        return orig(self, suffixes, keep)

    monkeypatch.setattr(prefix_mod.SharedPrefix, "logits", logits)
    return calls


@pytest.mark.parametrize("arch", ARCHS)
def test_reuse_equals_plain_scoring(arch, spy):
    """Single-token and multi-token choices and next-token logits; Gemma's sliding windows (8 here)
    are far shorter than the prompts, so a wrong window would show."""
    model, tok = tiny_model(arch, seed=0)
    ps = prompts()
    for choices in ([" p", " n"], [" positive", " negative"]):
        a = score_choices(model, tok, ps, choices, batch_size=3)
        b = score_choices(model, tok, ps, choices, batch_size=3, reuse_prefix=True)
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4)
    a = next_token_logits(model, tok, ps, batch_size=4)
    b = next_token_logits(model, tok, ps, batch_size=4, reuse_prefix=True)
    torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4)
    assert spy and min(spy) >= MIN_PREFIX  # the reuse path ran


def test_short_shared_prefix_keeps_the_plain_path(spy):
    model, tok = tiny_model("llama", seed=0)
    score_choices(model, tok, ["ab x", "ab yy"], [" p", " n"], reuse_prefix=True)
    assert spy == []


def test_shared_demonstrations_are_one_prefix_and_never_a_query():
    task = get_task("sst2")
    queries = task.load("validation", limit=20)
    pool = task.load("train", limit=400) + queries  # the queries are in the pool: must be skipped
    a = shared_fewshot_prompts(task, queries, pool, 5, seed=3)
    assert a == shared_fewshot_prompts(task, queries, pool, 5, seed=3)
    assert a != shared_fewshot_prompts(task, queries, pool, 5, seed=4)
    head = a[0][: len(a[0]) - len(task.prompt(queries[0]))]
    assert all(p == head + task.prompt(q) for p, q in zip(a, queries))
    demos = head.split(task.separator)[:-1]
    assert len(demos) == 5
    for q in queries:
        assert all(not d.startswith(task.prompt(q)) for d in demos)


def test_evaluate_shared_demos_same_predictions_with_and_without_reuse(spy):
    from taskvec.eval import evaluate

    model, tok = tiny_model("qwen2", seed=0)
    task = get_task("sst2")
    kw = {"limit": 12, "shots": 3, "demos": "shared", "batch_size": 5, "progress": False}
    fast = evaluate(model, tok, task, **kw)
    assert spy
    slow = evaluate(model, tok, task, reuse_prefix=False, **kw)
    assert fast.predictions == slow.predictions and fast.correct == slow.correct


def test_eval_cli_shared_demos(capsys, tiny_dir):
    import json

    from tests.conftest import run_cli

    code, out, err = run_cli(capsys, "eval", "--model", tiny_dir, "--task", "sst2", "--limit", 6, "--shots", 2,
                             "--demos", "shared", "--json", "--no-progress")
    assert code == 0, err
    res = json.loads(out)
    assert res["demos"] == "shared" and res["n"] == 6 and res["shots"] == 2
    code, _, err = run_cli(capsys, "eval", "--model", tiny_dir, "--task", "sst2", "--demos", "shard")
    assert code == 2 and "shared" in err and len(err.strip().splitlines()) == 1
