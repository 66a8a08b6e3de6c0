"""Task arithmetic at scale: grids, coefficient search, negation, compare, the collection builder, CLI."""

from __future__ import annotations

import importlib
import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import run_cli as run
from taskvec.errors import UserInputError
from taskvec.models import fingerprint, tiny_model
from taskvec.weights import LowRankDelta, TaskVector
from taskvec.weights.compare import compare, sign_conflicts
from taskvec.weights.negate import choose_coefficient, negate
from taskvec.weights.search import (
    FIT_SPLIT,
    SEARCH_SPLIT,
    applied,
    edge_note,
    fit_split_examples,
    grid_edge,
    parse_grid,
    search_coefficients,
    search_examples,
    search_split_examples,
    with_holdout,
)

REPO = Path(__file__).resolve().parents[1]
NORM = "model.norm.weight"
LN0 = "model.layers.0.input_layernorm.weight"


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


class FakeTask:
    """Enough of a Task for search/negate: named splits of trivial rows."""

    kind = "classification"
    train_split = "train"
    eval_split = "validation"
    splits = ("train", "validation")

    def __init__(self, name: str, n: int = 20) -> None:
        self.name = name
        self.rows = {"train": [{"i": i} for i in range(n)], "validation": [{"i": -i} for i in range(n)]}

    def load(self, split: str | None = None, limit: int | None = None) -> list[dict]:
        return [dict(r) for r in self.rows[split or self.eval_split][:limit]]


def offset(model, base: dict[str, torch.Tensor], name: str) -> float:
    """The coefficient currently applied to ``name`` (vectors below add ``c * ones``)."""
    p = dict(model.named_parameters())[name].detach()
    return round(float((p - base[name]).mean()), 6)


def snapshot(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def ones_vector(model, name: str, c: float = 1.0, task: str = "t") -> TaskVector:
    p = dict(model.named_parameters())[name]
    return TaskVector({name: torch.full_like(p.detach(), c)}, {"task": task})


# -- grids and splits ----------------------------------------------------------------------
def test_parse_grid():
    g = parse_grid("0.1:1.0:0.1")
    assert g == [round(0.1 * i, 10) for i in range(1, 11)] and g[-1] == 1.0
    assert parse_grid("0:1:0.25") == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert parse_grid("1, 0.5,0.5") == [0.5, 1.0]
    assert parse_grid("0.3:0.3:0.1") == [0.3]
    cases = {"1:0:0.1": "stop is below start", "0:1:0": "step must be positive", "0:1:-1": "step must be",
             "a:b:c": "bad grid", "0:1": "bad grid", "": "empty", "0:1e9:1e-6": "at most", "0:inf:1": "non-finite",
             "x,y": "bad grid", "nan": "non-finite"}
    for bad, match in cases.items():
        with pytest.raises(UserInputError, match=match):
            parse_grid(bad)


def test_holdout_split_is_disjoint_and_deterministic():
    t = FakeTask("a", 30)
    held = search_split_examples(t, 10, seed=0)
    fit = fit_split_examples(t, 10, seed=0)
    assert len(held) == 10 and len(fit) == 20
    assert not {r["i"] for r in held} & {r["i"] for r in fit}
    assert held == search_split_examples(t, 10, seed=0) and held != search_split_examples(t, 10, seed=1)
    assert search_split_examples(t, 10, 0, limit=3) == held[:3]
    assert len(search_split_examples(t, 1000)) == 15  # capped at half the train split
    label, exs = search_examples(t, None, 4, 10, 0)
    assert label == SEARCH_SPLIT and exs == held[:4]
    with pytest.raises(UserInputError, match="eval split"):
        search_examples(t, "validation")


def test_with_holdout_on_a_real_task():
    from taskvec.tasks import get_task

    task = with_holdout(get_task("rte"), 50, 0)
    fit, held = task.load(FIT_SPLIT), task.load(SEARCH_SPLIT)
    assert task.name == "rte" and len(held) == 50 and len(fit) <= len(task.load("train")) - 50
    key = lambda r: json.dumps(r, sort_keys=True)  # noqa: E731
    assert not {key(r) for r in fit} & {key(r) for r in held}


# -- search ----------------------------------------------------------------------------------
def test_search_finds_the_known_best_and_restores_the_model():
    model, tok = tiny_model("llama", seed=0)
    base = snapshot(model)
    vecs = [ones_vector(model, NORM, 0.5, "a"), ones_vector(model, NORM, 0.5, "b")]
    seen = []

    def scorer(m, tok, task, examples, split):  # toy objective, peak at lambda = 0.6
        assert split == SEARCH_SPLIT and len(examples) == 5
        x = offset(m, base, NORM)
        seen.append(x)
        return 1.0 - (x - 0.6) ** 2

    res = search_coefficients(model, tok, vecs, [FakeTask("a"), FakeTask("b")], grid="0.1:1.0:0.1",
                              limit=5, holdout=8, scorer=scorer, progress=False)
    assert res.best.lam == pytest.approx(0.6) and len(res.candidates) == 10
    assert sorted(set(seen)) == pytest.approx([round(0.1 * i, 6) for i in range(1, 11)])
    assert res.best.accuracy == {"a": pytest.approx(1.0), "b": pytest.approx(1.0)}
    assert res.n == {"a": 5, "b": 5} and res.splits == {"a": SEARCH_SPLIT, "b": SEARCH_SPLIT}
    for k, v in model.state_dict().items():
        assert torch.equal(v, base[k]), k
    json.dumps(res.to_dict())


def test_search_subtract_restore_and_lambda_refused():
    model, tok = tiny_model("llama", seed=0)
    base = snapshot(model)
    g = torch.Generator().manual_seed(0)
    q = "model.layers.0.self_attn.q_proj.weight"
    vec = TaskVector({q: LowRankDelta(torch.randn(2, 64, generator=g), torch.randn(64, 2, generator=g), 0.7)})
    search_coefficients(model, tok, [vec], [FakeTask("a")], grid="0.5,1.5", restore="subtract",
                        scorer=lambda *a: 0.5, progress=False)
    for k, v in model.state_dict().items():
        # w + s B A - s B A: the same product both times, two elementwise roundings < 1e-6
        assert torch.allclose(v, base[k], atol=1e-6), k
    with pytest.raises(UserInputError, match="coefficient being searched"):
        search_coefficients(model, tok, [vec], [FakeTask("a")], params={"lam": 0.5}, scorer=lambda *a: 0.5)


def test_per_task_coordinate_search():
    model, tok = tiny_model("llama", seed=0)
    base = snapshot(model)
    vecs = [ones_vector(model, NORM, 1.0, "a"), ones_vector(model, LN0, 1.0, "b")]
    best = {"a": (NORM, 0.3), "b": (LN0, 0.8)}

    def scorer(m, tok, task, examples, split):
        name, target = best[task.name]
        return 1.0 - (offset(m, base, name) - target) ** 2

    res = search_coefficients(model, tok, vecs, [FakeTask("a"), FakeTask("b")], grid="0.1:1.0:0.1",
                              per_task=True, scorer=scorer, progress=False)
    assert res.best.coefficients == pytest.approx([0.3, 0.8])
    assert res.best.mean == pytest.approx(1.0)
    glob = [c for c in res.candidates if c.stage == "global"]
    assert len(glob) == 10 and len(res.candidates) == 10 + 2 * 9
    assert res.coefficient_edges == {} and res.to_dict()["coefficient_edges"] == {}
    for k, v in model.state_dict().items():
        assert torch.equal(v, base[k]), k
    # b's best (0.8) beyond a grid ending at 0.6, a's at its bottom 0.3: both flagged per task
    edge = search_coefficients(model, tok, vecs, [FakeTask("a"), FakeTask("b")], grid="0.3:0.6:0.1",
                               per_task=True, scorer=scorer, progress=False)
    assert edge.best.coefficients == pytest.approx([0.3, 0.6])
    assert edge.coefficient_edges == {"a": "bottom", "b": "top"} and edge.grid_edge is None


@pytest.mark.parametrize("method", ["task_arithmetic", "ties", "dare_linear", "dare_ties", "tsv", "breadcrumbs"])
def test_every_method_is_linear_in_lambda(method):
    """Why the search may merge once with lambda=1 and scale the result."""
    from taskvec.weights.merge import merge

    g = torch.Generator().manual_seed(1)
    vecs = [TaskVector({"w": torch.randn(8, 6, generator=g), "b": torch.randn(6, generator=g)}) for _ in range(3)]
    one, lam = merge(method, vecs, lam=1.0), merge(method, vecs, lam=0.3)
    for k in one.names:
        a = lam.deltas[k]
        b = one.deltas[k]
        a = a.to_dense() if isinstance(a, LowRankDelta) else a
        b = b.to_dense() if isinstance(b, LowRankDelta) else b
        assert torch.allclose(a, 0.3 * b, atol=1e-6), k


def test_grid_edge_is_flagged():
    assert grid_edge([0.1, 0.5, 1.0], 1.0) == "top" and grid_edge([1.0, 0.1, 0.5], 0.1) == "bottom"
    assert grid_edge([0.1, 0.5, 1.0], 0.5) is None and grid_edge([0.5], 0.5) is None
    assert grid_edge([0.0, 0.5], 0.0) is None  # below 0 the vectors flip: not an extension
    assert grid_edge([0.1, 0.5], None) is None and edge_note(None) == ""
    assert "largest" in edge_note("top") and "smaller" in edge_note("bottom", "c")
    model, tok = tiny_model("llama", seed=0)
    base = snapshot(model)

    def scorer(m, tok, task, examples, split):  # peak at 1.5, beyond the grid
        return 1.0 - (offset(m, base, NORM) - 1.5) ** 2

    res = search_coefficients(model, tok, [ones_vector(model, NORM, 1.0, "a")], [FakeTask("a")],
                              grid="0.1:1.0:0.1", scorer=scorer, progress=False)
    assert res.best.lam == pytest.approx(1.0) and res.grid_edge == "top" and res.to_dict()["grid_edge"] == "top"


def test_applied_restores_after_an_error():
    model, _ = tiny_model("llama", seed=0)
    base = snapshot(model)
    with pytest.raises(RuntimeError), applied(model, ones_vector(model, NORM), 2.0):
        raise RuntimeError("boom")
    assert torch.equal(model.state_dict()[NORM], base[NORM])


# -- negation --------------------------------------------------------------------------------
def test_negation_picks_the_largest_c_keeping_control():
    model, tok = tiny_model("llama", seed=0)
    base = snapshot(model)
    vec = ones_vector(model, NORM, 1.0, "target")

    def scorer(m, tok, task, examples, split):  # c = -offset; eval split scores 0.01 higher
        c = -offset(m, base, NORM)
        bonus = 0.01 if split == "validation" else 0.0
        return (0.9 - 0.3 * c if task.name == "target" else 0.8 - 0.05 * c) + bonus

    res = negate(model, tok, vec, FakeTask("target"), FakeTask("control"), "0.2:2.0:0.2", limit=4,
                 scorer=scorer, progress=False)
    assert res.chosen == pytest.approx(0.8)  # 0.8 - 0.05c >= 0.95 * 0.8  <=>  c <= 0.8
    assert res.base_select == {"target": pytest.approx(0.9), "control": pytest.approx(0.8)}
    assert [r["c"] for r in res.curve] == pytest.approx([0.2 * i for i in range(1, 11)])
    assert res.base_target == pytest.approx(0.91) and res.target_at_c == pytest.approx(0.91 - 0.24)
    assert res.target_drop == pytest.approx(0.24) and res.eval_split == {"target": "validation", "control": "validation"}
    assert res.control_retained == pytest.approx(0.77 / 0.81)
    assert res.grid_edge is None and res.to_dict()["grid_edge"] is None
    flat = negate(model, tok, vec, FakeTask("target"), FakeTask("control"), "0.5,1", limit=4, final_eval=False,
                  scorer=lambda m, tok, task, *a: 0.9 if task.name == "control" else 0.5, progress=False)
    assert flat.chosen == 1.0 and flat.grid_edge == "top"
    for k, v in model.state_dict().items():
        assert torch.equal(v, base[k]), k
    json.dumps(res.to_dict())


def test_choose_coefficient_rule():
    curve = [{"c": 0.5, "control": 0.8}, {"c": 1.0, "control": 0.7}, {"c": 1.5, "control": 0.76}]
    assert choose_coefficient(curve, 0.8) == 1.5  # the largest qualifying c, even after a dip
    assert choose_coefficient(curve, 0.9) is None
    assert choose_coefficient(curve, 0.9, threshold=0.5) == 1.5


# -- compare ---------------------------------------------------------------------------------
def test_cosine_of_scaled_and_negated_vectors():
    g = torch.Generator().manual_seed(0)
    v = TaskVector({"w": LowRankDelta(torch.randn(2, 5, generator=g), torch.randn(7, 2, generator=g), 0.5),
                    "b": torch.randn(7, generator=g)}, {"task": "v"})
    res = compare([v, 2 * v, -v])
    assert res.cosine[0][1] == pytest.approx(1.0, abs=1e-9)
    assert res.cosine[0][2] == pytest.approx(-1.0, abs=1e-9)
    assert res.sign_conflict[0][1] == 0.0 and res.sign_conflict[0][2] == 1.0
    assert res.norms[1] == pytest.approx(2 * res.norms[0])


def test_sign_conflicts_by_hand():
    t = torch.tensor
    a = TaskVector({"w": t([1.0, -1, 0, 2, 0, 1]), "x": t([1.0, -1])})
    b = TaskVector({"w": t([1.0, 1, 0, -3, 2, 0]), "x": t([-1.0, -1])})
    c = TaskVector({"w": t([0.0, 0, 0, 1, -1, 0])})  # no "x": zeros there
    mat, rate, entries, overlap = sign_conflicts([a, b, c])
    # a,b: both nonzero at w0 w1 w3 x0 x1 (5), opposite at w1 w3 x0 (3)
    assert mat[0][1] == pytest.approx(3 / 5) and mat[1][0] == pytest.approx(3 / 5)
    assert mat[0][2] == 0.0  # only w3, same sign
    assert mat[1][2] == 1.0  # w3 and w4, both opposite
    # >= 2 nonzero: w0 w1 w3 w4 x0 x1 (6); mixed signs: w1 w3 w4 x0 (4)
    assert (rate, entries, overlap) == (pytest.approx(4 / 6), 8, 6)
    z = TaskVector({"w": torch.zeros(6)})
    m2, r2, _, _ = sign_conflicts([a, z])
    assert m2[0][1] is None and r2 is None


# -- build_collection caching ----------------------------------------------------------------
@pytest.fixture
def bc(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    sys.modules.pop("build_collection", None)
    return importlib.import_module("build_collection")


def test_build_collection_caches_by_recipe(bc, tmp_path, monkeypatch):
    model, tok = tiny_model("llama", seed=0)
    base = snapshot(model)
    calls = []
    real = bc.finetune

    def counting(*a, **kw):
        calls.append(kw["steps"])
        assert kw["split"] == FIT_SPLIT
        return real(*a, **kw | {"checkpoint_every": 0})

    monkeypatch.setattr(bc, "finetune", counting)
    recipe = bc.make_recipe("tiny", steps=2, batch_size=2, lora_r=2, lora_alpha=4, holdout=20, max_length=48)
    fp = fingerprint(model)
    quiet = dict(progress=False, log=lambda s: None)

    s1 = bc.build(model, tok, ["rte"], tmp_path, recipe, 4, fp, **quiet)
    assert calls == [2] and s1["tasks"]["rte"]["status"] == "trained" and s1["tasks"]["rte"]["n"] == 4
    for k, v in model.state_dict().items():  # LoRA removed: the base is as it was
        assert torch.equal(v, base[k]), k
    row = json.loads((tmp_path / "rte.json").read_text())
    assert {"task", "split", "n", "finetuned_accuracy", "zero_shot_accuracy", "train_seconds", "recipe"} <= set(row)
    vec = TaskVector.load(tmp_path / "rte.safetensors")
    assert vec.form == "low-rank" and vec.metadata["task"] == "rte" and vec.metadata["base_fingerprint"] == fp
    assert vec.metadata["recipe"]["holdout"] == 20 and vec.metadata["recipe"]["split"] == FIT_SPLIT
    coll = json.loads((tmp_path / "collection.json").read_text())
    assert coll["holdout"] == {"n": 20, "seed": 0} and set(coll["tasks"]) == {"rte"}

    s2 = bc.build(model, tok, ["rte"], tmp_path, recipe, 4, fp, **quiet)  # same recipe: skipped
    assert calls == [2] and s2["tasks"]["rte"]["status"] == "cached"

    s3 = bc.build(model, tok, ["rte"], tmp_path, recipe, 3, fp, **quiet)  # new eval limit only
    assert calls == [2] and s3["tasks"]["rte"]["status"] == "re-evaluated" and s3["tasks"]["rte"]["n"] == 3

    (tmp_path / "rte.json").unlink()  # killed after training, before the JSON: adapter reused
    s4 = bc.build(model, tok, ["rte"], tmp_path, recipe, 3, fp, **quiet)
    assert calls == [2] and s4["tasks"]["rte"]["status"] == "trained"

    s5 = bc.build(model, tok, ["rte"], tmp_path, recipe | {"steps": 3}, 3, fp, **quiet)  # new recipe
    assert calls == [2, 3] and s5["tasks"]["rte"]["status"] == "trained"
    for k, v in model.state_dict().items():
        assert torch.equal(v, base[k]), k
    row = json.loads((tmp_path / "rte.json").read_text())
    tensors = load_file(str(tmp_path / "rte.safetensors"))
    assert row["tensors_sha256"] == bc.tensors_sha256(tmp_path / "rte.safetensors")
    tensors["extra"] = torch.zeros(1)  # the hash covers every tensor
    save_file(tensors, str(tmp_path / "other.safetensors"))
    assert bc.tensors_sha256(tmp_path / "other.safetensors") != row["tensors_sha256"]


def test_build_collection_rebuild_checks_the_committed_row(bc, tmp_path):
    """A new machine: the committed row is there, the vector and checkpoints are not; the rebuild
    is compared with the row, and a vector file that is not the measured one is refused."""
    model, tok = tiny_model("llama", seed=0)
    recipe = bc.make_recipe("tiny", steps=2, batch_size=2, lora_r=2, lora_alpha=4, holdout=20, max_length=48)
    fp = fingerprint(model)
    quiet = dict(progress=False, log=lambda s: None)
    first = bc.build(model, tok, ["rte"], tmp_path, recipe, 4, fp, **quiet)["tasks"]["rte"]
    sha = first["tensors_sha256"]
    (tmp_path / "rte.safetensors").unlink()
    shutil.rmtree(tmp_path / "runs")
    again = bc.build(model, tok, ["rte"], tmp_path, recipe, 4, fp, **quiet)["tasks"]["rte"]
    assert again["status"] == "trained" and again["tensors_sha256"] == sha  # same machine: bitwise
    rebuild = again["rebuild"]
    assert rebuild["reproduced"] is True and rebuild["differs"] == [] and rebuild["previous"] == {}
    assert again["train_seconds"] == first["train_seconds"]  # the reported row is unchanged
    assert rebuild["train_seconds"] > 0 and rebuild["train_seconds"] != first["train_seconds"]

    row = json.loads((tmp_path / "rte.json").read_text())
    row["finetuned_accuracy"] = 2.0  # a previous build that scored otherwise
    (tmp_path / "rte.json").write_text(json.dumps(row))
    (tmp_path / "rte.safetensors").unlink()
    shutil.rmtree(tmp_path / "runs")
    third = bc.build(model, tok, ["rte"], tmp_path, recipe, 4, fp, **quiet)["tasks"]["rte"]
    assert third["rebuild"]["reproduced"] is False and third["rebuild"]["differs"] == ["finetuned_accuracy"]
    assert third["rebuild"]["previous"] == {"finetuned_accuracy": 2.0}
    assert third["train_seconds"] == third["rebuild"]["train_seconds"]  # new results, new times

    data = bytearray((tmp_path / "rte.safetensors").read_bytes())
    data[-1] ^= 1  # another vector under the same name
    (tmp_path / "rte.safetensors").write_bytes(bytes(data))
    with pytest.raises(UserInputError, match="sha256 differs"):
        bc.build(model, tok, ["rte"], tmp_path, recipe, 4, fp, **quiet)


# -- CLI -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("arith")
    model, tok = tiny_model("llama", seed=0)
    model.save_pretrained(d / "model", safe_serialization=True)
    tok.save_pretrained(d / "model")
    fp = fingerprint(d / "model")
    g = torch.Generator().manual_seed(0)
    paths = []
    for i, task in enumerate(("sst2", "rte")):
        name = f"model.layers.{i}.self_attn.q_proj.weight"
        tv = TaskVector({name: LowRankDelta(torch.randn(2, 64, generator=g), torch.randn(64, 2, generator=g) * 0.1, 1.0)},
                        {"task": task, "base_fingerprint": fp})
        paths.append(tv.save(d / f"{task}.safetensors"))
    return d / "model", paths


def test_cli_search_negate_compare(capsys, tiny_files, tmp_path):
    model_dir, (a, b) = tiny_files
    common = ["--model", model_dir, "--limit", 2, "--holdout", 4, "--json", "--no-progress"]
    code, out, err = run(capsys, "search", "--vectors", a, b, "--grid", "0.5,1", "--out", tmp_path / "best.safetensors",
                         "--results", tmp_path / "res.json", *common)
    assert code == 0, err
    res = json.loads(out)
    assert res["tasks"] == ["sst2", "rte"] and len(res["candidates"]) == 2 and res["n"] == {"sst2": 2, "rte": 2}
    best = TaskVector.load(tmp_path / "best.safetensors")
    assert best.metadata["merge"]["params"]["lambda"] == res["best"]["lam"]
    assert json.loads((tmp_path / "res.json").read_text())["best"] == res["best"]
    assert res["grid_edge"] == grid_edge([0.5, 1.0], res["best"]["lam"])
    code, out, err = run(capsys, "search", "--vectors", a, b, "--grid", "0.5,1", *common[:-2], "--no-progress")
    assert code == 0, err
    assert ("the chosen lambda is the" in out) == (res["grid_edge"] is not None)
    code, out, err = run(capsys, "search", "--vectors", a, b, "--grid", "0.5,1", "--per-task", *common)
    assert code == 0, err
    per = json.loads(out)  # a two-value grid: every per-task coefficient sits at one of its edges
    assert per["coefficient_edges"] == {t: "top" if c == 1.0 else "bottom"
                                        for t, c in zip(per["tasks"], per["best"]["coefficients"])}
    code, out, err = run(capsys, "search", "--vectors", a, b, "--grid", "0.5,1", "--per-task", *common[:-2],
                         "--no-progress")
    assert code == 0, err
    assert "the chosen coefficient of sst2's vector is the" in out and "coefficient of rte's vector" in out
    code, out, err = run(capsys, "negate", "--vector", a, "--target", "sst2", "--control", "rte", "--grid", "0.5,1", *common)
    assert code == 0, err
    neg = json.loads(out)
    assert [r["c"] for r in neg["curve"]] == [0.5, 1.0] and neg["eval_n"] == {"sst2": 2, "rte": 2}
    # default scorer: per-example final numbers, Wilson intervals and the paired test vs base
    for task in ("sst2", "rte"):
        t = neg["paired"][task]
        assert t["n"] == 2 and t["b_correct"] == round(neg["base_target" if task == "sst2" else "base_control"] * 2)
        assert t["a_correct"] == round(neg["target_at_c" if task == "sst2" else "control_at_c"] * 2)
        lo, hi = neg["eval_ci95"]["negated"][task]
        assert lo <= t["a_correct"] / 2 <= hi
    code, out, err = run(capsys, "negate", "--vector", a, "--target", "sst2", "--control", "rte", "--grid", "0.5,1",
                         *common[:-2], "--no-progress")
    assert code == 0, err
    if neg["chosen"] is not None:
        assert "exact McNemar p =" in out
    code, out, err = run(capsys, "compare", a, b, "--plot", tmp_path / "sim.html")
    assert code == 0, err
    assert "cosine similarity" in out and "sign-conflict rate" in out and (tmp_path / "sim.html").exists()
    code, out, _ = run(capsys, "compare", a, a, "--json")
    assert json.loads(out)["cosine"][0][1] == pytest.approx(1.0)


@pytest.mark.parametrize("argv, match", [
    (["search", "--vectors", "{a}", "--grid", "1:0:0.1"], "stop is below start"),
    (["search", "--vectors", "{a}", "--grid", "x"], "bad grid"),
    (["search", "--vectors", "{missing}", "--tasks", "sst2"], "does not exist"),
    (["search", "--vectors", "{a}", "--tasks", "sst22"], "sst2"),
    (["search", "--vectors", "{a}", "--param", "lambda=0.5"], "coefficient being searched"),
    (["search", "--vectors", "{a}", "--method", "tie"], "ties"),
    (["negate", "--vector", "{missing}", "--target", "sst2", "--control", "rte"], "does not exist"),
    (["negate", "--vector", "{a}", "--target", "sst2", "--control", "sst2"], "same task"),
    (["negate", "--vector", "{a}", "--target", "sst2", "--control", "rte", "--grid=-1,1"], "positive"),
    (["compare", "{missing}"], "does not exist"),
    (["compare", "{a}", "--plot", "x.jpg"], ".png or .html"),
])
def test_cli_errors_are_one_line_exit_2(capsys, tiny_files, tmp_path, argv, match):
    _, (a, _b) = tiny_files
    argv = [x.format(a=a, missing=tmp_path / "nope.safetensors") for x in argv]
    code, out, err = run(capsys, *argv, "--model", "/nonexistent") if argv[0] != "compare" else run(capsys, *argv)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and match in lines[0], err


def test_merge_report_end_to_end_on_a_tiny_collection(bc, tmp_path, capsys):
    """build_collection + merge_report on a tiny model directory (cached on the second run)."""
    model, tok = tiny_model("llama", seed=0)
    model.save_pretrained(tmp_path / "model", safe_serialization=True)
    tok.save_pretrained(tmp_path / "model")
    recipe = bc.make_recipe(str(tmp_path / "model"), steps=1, batch_size=2, lora_r=2, lora_alpha=4, holdout=8,
                            max_length=48)
    out = tmp_path / "coll"
    bc.build(model, tok, ["rte", "trec"], out, recipe, 2, fingerprint(tmp_path / "model"), progress=False,
             log=lambda s: None)
    sys.modules.pop("merge_report", None)
    mr = importlib.import_module("merge_report")
    argv = ["--collection", str(out), "--methods", "task_arithmetic,ties", "--grid", "0.5,1", "--search-limit", "2",
            "--negate", "rte:trec", "--negate-grid", "0.5,1", "--no-progress"]
    assert mr.main(argv) == 0
    md = capsys.readouterr().out
    assert "| task_arithmetic |" in md and "| ties |" in md and "Negation of rte" in md
    rep = json.loads((out / "merge_report.json").read_text())
    assert set(rep["methods"]) == {"task_arithmetic", "ties"} and rep["settings"]["eval_limit"] == 2
    ta = rep["methods"]["task_arithmetic"]
    assert ta["lambda"] in (0.5, 1.0) and set(ta["tasks"]) == {"rte", "trec"} and ta["tasks"]["rte"]["n"] == 2
    assert (out / "merge_report.md").exists() and (out / "merge_report" / "negation.json").exists()
    assert mr.main(argv) == 0  # everything cached now
    assert "cached" in capsys.readouterr().err


def test_search_ties_are_float_rounding_proof():
    """Equal sums of accuracies summed in another order are a tie; the tie goes to the first (smallest lambda)."""
    from taskvec.weights.search import TIE_TOLERANCE, Candidate, first_best

    a = (0.1 + 0.2) + 0.3  # 0.6000000000000001
    b = 0.1 + (0.2 + 0.3)  # 0.6
    assert a != b and abs(a - b) < TIE_TOLERANCE
    cands = [Candidate(0.1, [0.1], {}, b), Candidate(0.14, [0.14], {}, a), Candidate(0.2, [0.2], {}, 0.5)]
    assert first_best(cands).lam == 0.1
    cands = [Candidate(0.1, [0.1], {}, 0.5), Candidate(0.14, [0.14], {}, 0.5 + 1e-6)]
    assert first_best(cands).lam == 0.14  # a real difference (one example in 10^6) still wins
