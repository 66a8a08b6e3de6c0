"""Resumable coefficient searches (taskvec.weights.search_log): an interrupted search resumes and
takes exactly the path of an uninterrupted one; logs of another search are refused."""

from __future__ import annotations

import json

import pytest
import torch
from tests.conftest import run_cli
from tests.test_arith import FakeTask

from taskvec.errors import FileFormatError, UserInputError
from taskvec.models import tiny_model
from taskvec.weights import LowRankDelta, TaskVector
from taskvec.weights.search import search_coefficients
from taskvec.weights.search_log import candidate_key, vector_digest

NORM = "model.norm.weight"
LN0 = "model.layers.0.input_layernorm.weight"


class Interrupted(RuntimeError):
    pass


class Scorer:
    """Quadratic objective per task, peaks at known per-vector coefficients; can fail after k calls."""

    def __init__(self, base: dict[str, torch.Tensor], fail_after: int | None = None) -> None:
        self.base, self.fail_after, self.calls = base, fail_after, 0
        self.best = {"a": (NORM, 0.3), "b": (LN0, 0.8)}

    def __call__(self, model, tok, task, examples, split) -> float:
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise Interrupted("killed")
        self.calls += 1
        name, target = self.best[task.name]
        x = float((dict(model.named_parameters())[name].detach() - self.base[name]).mean())
        return round(1.0 - (x - target) ** 2, 6)


def ones(model, name: str, c: float = 1.0) -> TaskVector:
    p = dict(model.named_parameters())[name]
    return TaskVector({name: torch.full_like(p, c).detach()})


def setup():
    model, tok = tiny_model("llama", seed=0)
    base = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return model, tok, base, [ones(model, NORM), ones(model, LN0)], [FakeTask("a"), FakeTask("b")]


def search(model, tok, vecs, tasks, scorer, log, grid="0.1:1.0:0.1", per_task=True):
    return search_coefficients(model, tok, vecs, tasks, grid=grid, per_task=per_task, scorer=scorer,
                               progress=False, log=log)


def test_interrupted_search_resumes_on_the_same_path(tmp_path):
    model, tok, base, vecs, tasks = setup()
    full = search(model, tok, vecs, tasks, Scorer(base), None)
    log = tmp_path / "s.jsonl"
    with pytest.raises(Interrupted):  # killed inside the 15th setting (2 tasks per setting)
        search(model, tok, vecs, tasks, Scorer(base, fail_after=29), log)
    lines = log.read_text().splitlines()
    assert len(lines) == 1 + 14  # header + the 14 finished settings
    for k, v in model.state_dict().items():  # the model was restored despite the kill
        assert torch.equal(v, base[k]), k
    again = Scorer(base)
    res = search(model, tok, vecs, tasks, again, log)
    n_settings = 10 + 2 * 9
    assert again.calls == 2 * (n_settings - 14)  # only the settings not logged were scored
    assert [c.to_dict() for c in res.candidates] == [c.to_dict() for c in full.candidates]
    assert res.best.coefficients == pytest.approx([0.3, 0.8])
    assert len(log.read_text().splitlines()) == 1 + n_settings
    third = Scorer(base)  # everything logged: nothing is scored
    assert search(model, tok, vecs, tasks, third, log).best.to_dict() == full.best.to_dict()
    assert third.calls == 0
    # a global-only search with another grid reuses the logged global settings
    fourth = Scorer(base)
    g = search(model, tok, vecs, tasks, fourth, log, grid="0.5:1.5:0.5", per_task=False)
    assert fourth.calls == 2 * 1  # 0.5 and 1.0 are logged, 1.5 is new
    assert [c.lam for c in g.candidates] == [0.5, 1.0, 1.5]


def test_cut_last_line_is_rescored_and_damage_elsewhere_refused(tmp_path):
    model, tok, base, vecs, tasks = setup()
    log = tmp_path / "s.jsonl"
    search(model, tok, vecs, tasks, Scorer(base), log, per_task=False)
    lines = log.read_text().splitlines()
    log.write_text("\n".join(lines[:-1]) + "\n" + lines[-1][: len(lines[-1]) // 2])  # killed mid-write
    sc = Scorer(base)
    search(model, tok, vecs, tasks, sc, log, per_task=False)
    assert sc.calls == 2 and log.read_text().splitlines() == lines
    log.write_text("\n".join([lines[0], "{broken", *lines[2:]]) + "\n")
    with pytest.raises(FileFormatError, match="line 2 is damaged"):
        search(model, tok, vecs, tasks, Scorer(base), log, per_task=False)
    (tmp_path / "x.jsonl").write_text('{"not": "a log"}\n')
    with pytest.raises(FileFormatError, match="not a taskvec search log"):
        search(model, tok, vecs, tasks, Scorer(base), tmp_path / "x.jsonl", per_task=False)


def test_log_of_another_search_is_refused(tmp_path):
    model, tok, base, vecs, tasks = setup()
    log = tmp_path / "s.jsonl"
    search(model, tok, vecs, tasks, Scorer(base), log, grid="0.5,1", per_task=False)
    before = log.read_bytes()
    with pytest.raises(UserInputError, match=r"differs in: vectors\)"):
        search(model, tok, [vecs[0] * 2.0, vecs[1]], tasks, Scorer(base), log, grid="0.5,1", per_task=False)
    with pytest.raises(UserInputError, match="differs in: method"):
        search_coefficients(model, tok, vecs, tasks, method="tsv", grid="0.5,1", scorer=Scorer(base),
                            progress=False, log=log)
    with pytest.raises(UserInputError, match="differs in: tasks"):
        search(model, tok, vecs, [FakeTask("a", 30), FakeTask("b")], Scorer(base), log, grid="0.5,1", per_task=False)
    assert log.read_bytes() == before  # a refused log is left as it was


def test_digests_and_keys():
    model, _, _, vecs, _ = setup()
    assert vector_digest(vecs[0]) == vector_digest(ones(model, NORM))
    assert vector_digest(vecs[0]) != vector_digest(ones(model, NORM, 1.0 + 1e-6))
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(2, 8, generator=g), torch.randn(6, 2, generator=g)
    low = TaskVector({"w": LowRankDelta(a, b, 0.5)})
    assert vector_digest(low) != vector_digest(TaskVector({"w": LowRankDelta(a, b, 0.25)}))
    assert vector_digest(low) != vector_digest(low.to_dense())
    assert candidate_key(0.1, [0.1, 0.3]) == candidate_key(0.1, (0.1, 0.3))
    assert candidate_key(0.1, [0.1, 0.3]) != candidate_key(0.1, [0.1, 0.30000000000000004])


def test_cli_search_checkpoint(tmp_path, capsys):
    model, tok = tiny_model("llama")
    model.save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")
    rows = [{"text": f"item {i}", "label": "pos" if i % 2 else "neg"} for i in range(40)]
    for split in ("train", "validation"):
        (tmp_path / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "t.yaml").write_text(
        "name: t\nkind: classification\ntemplate: '{text}:'\nlabel_words: {neg: ' no', pos: ' yes'}\n"
        "data: {train: train.jsonl, validation: validation.jsonl}\n")
    ones(model, NORM, 0.01).save(tmp_path / "v.safetensors")
    args = ["search", "--model", tmp_path / "model", "--vectors", tmp_path / "v.safetensors", "--tasks",
            tmp_path / "t.yaml", "--grid", "0.5,1", "--limit", 4, "--json", "--no-progress",
            "--checkpoint", tmp_path / "c.jsonl"]
    code, out, err = run_cli(capsys, *args)
    assert code == 0, err
    first = json.loads(out)
    assert len((tmp_path / "c.jsonl").read_text().splitlines()) == 3
    code, out, err = run_cli(capsys, *args)
    assert code == 0, err
    assert json.loads(out)["candidates"] == first["candidates"]
    assert len((tmp_path / "c.jsonl").read_text().splitlines()) == 3
    code, _, err = run_cli(capsys, *args[:-1], tmp_path / "missing" / "c.jsonl")
    assert code == 2 and "does not exist" in err
