"""Soft task vectors: blend identities, gradients, training, checkpoint choice, files, generate,
the comparison table and `taskvec soft` (all on tiny models, single-threaded, seconds)."""

from __future__ import annotations

import pytest
import torch

from taskvec.activations import (
    Intervention,
    Positions,
    SaveInputsHook,
    extract_function_vector,
    extract_residual_vector,
)
from taskvec.activations.evaluation import accuracy
from taskvec.activations.soft import SoftConfig, TaskVectorExtractor, ValScore, split_plan
from taskvec.activations.soft_compare import comparison_table, parse_shots
from taskvec.activations.soft_vector import SoftTaskVector, load_soft
from taskvec.errors import (
    FileFormatError,
    FingerprintMismatchError,
    MissingFileError,
    ShapeMismatchError,
    TaskVecError,
    UserInputError,
)
from taskvec.eval.stats import wilson
from taskvec.models import fingerprint, get_adapter, tiny_model
from taskvec.models.adapter import position_ids
from taskvec.tasks import Task, get_task
from taskvec.tasks.subsets import sample_indices
from tolerance import assert_forward_close

PROMPTS = ["Q: hot\nA:", "Q: a much longer question here\nA:", "Q: up\nA:"]
SMALL = {"shots": 2, "n_prompts": 4, "val_limit": 8, "batch_size": 4, "eval_every": 2}
_MODELS: dict = {}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _tiny(arch: str = "llama"):
    if arch not in _MODELS:
        _MODELS[arch] = tiny_model(arch)
    return _MODELS[arch]


def _enc(tok, prompts=PROMPTS):
    enc = tok(prompts, return_tensors="pt", padding=True)
    enc["position_ids"] = position_ids(enc["attention_mask"])
    return enc


def _soft(model, t: float | torch.Tensor, seed: int = 0, scale: float = 3.0, **meta) -> SoftTaskVector:
    ad = get_adapter(model)
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(ad.n_layers, ad.n_heads, ad.head_dim, generator=g) * scale  # (L, H, D)
    coef = t if isinstance(t, torch.Tensor) else torch.full((ad.n_layers, ad.n_heads), float(t))
    return SoftTaskVector(coef, means, {"model_fingerprint": fingerprint(model), **meta})


@pytest.fixture(scope="module")
def antonym():
    return get_task("antonym")


# ---------------------------------------------------------------------------- blend identities


@pytest.mark.parametrize("arch", ["llama", "gemma2", "gpt2"])
def test_alpha_zero_leaves_model_unchanged(arch: str) -> None:
    model, tok = _tiny(arch)
    sv = _soft(model, float("-inf"))
    assert sv.alpha.max() == 0
    enc = _enc(tok)
    with torch.no_grad():
        ref = model(**enc).logits
        with sv.intervention(model, positions=Positions.ALL):
            same = model(**enc).logits
    assert torch.equal(ref, same)


@pytest.mark.parametrize("arch", ["llama", "gemma2", "gpt2"])
def test_alpha_one_makes_head_inputs_the_means(arch: str) -> None:
    """The blend is a pre-hook registered first; a SaveInputsHook entered inside it runs after
    it and sees the blended o_proj input: exactly the means at the last token, untouched elsewhere."""
    model, tok = _tiny(arch)
    ad = get_adapter(model)
    sv = _soft(model, float("inf"))
    assert sv.alpha.min() == 1
    enc = _enc(tok)
    names = [ad.o_proj_name(i) for i in range(ad.n_layers)]
    plain, patched = SaveInputsHook(), SaveInputsHook()
    with torch.no_grad():
        with Intervention(model, names, plain):
            model(**enc)
        with sv.intervention(model), Intervention(model, names, patched):
            model(**enc)
    for i, name in enumerate(names):
        x = patched[name][0]  # (B, T, H*D)
        want = sv.head_means[i].flatten().expand(x.shape[0], -1)
        assert torch.equal(x[:, -1], want)
        # earlier real tokens are untouched (causal: only the last position changed; padding
        # rows attend to everything in eager attention, so they are not compared)
        real = enc["attention_mask"][:, :-1].bool()  # (B, T-1)
        assert torch.equal(x[:, :-1][real], plain[name][0][:, :-1][real])


def test_left_padded_batch_equals_single_prompts() -> None:
    model, tok = _tiny("llama")
    sv = _soft(model, 0.5)
    with torch.no_grad(), sv.intervention(model):
        batch = model(**_enc(tok)).logits[:, -1]  # (B, V)
        for i, p in enumerate(PROMPTS):
            single = model(**_enc(tok, [p])).logits[0, -1]
            assert_forward_close(batch[i], single)  # batched (padded) vs alone


@pytest.mark.parametrize("arch", ["llama", "gemma2", "gpt2"])
@pytest.mark.parametrize("also_generated", [False, True])
def test_patched_generate_equals_uncached_loop(arch: str, also_generated: bool) -> None:
    model, tok = _tiny(arch)
    sv = _soft(model, 2.0, seed=1)
    enc = tok(PROMPTS[:2], return_tensors="pt", padding=True)
    n_new = 4
    pos = Positions.LAST | Positions.GENERATED if also_generated else Positions.LAST
    with torch.no_grad():
        with sv.intervention(model, positions=pos):
            gen = model.generate(**enc, max_new_tokens=n_new, do_sample=False, pad_token_id=256)
        plain = model.generate(**enc, max_new_tokens=n_new, do_sample=False, pad_token_id=256)
        ids, mask = enc["input_ids"], enc["attention_mask"]
        t0 = ids.shape[1]
        for _ in range(n_new):
            where = list(range(t0 - 1, ids.shape[1])) if also_generated else [t0 - 1]
            with sv.intervention(model, positions=where):
                logits = model(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask),
                               use_cache=False).logits[:, -1]
            nxt = logits.argmax(-1, keepdim=True)
            ids, mask = torch.cat([ids, nxt], 1), torch.cat([mask, torch.ones_like(nxt)], 1)
    assert torch.equal(gen, ids)
    assert not torch.equal(gen, plain)


def test_soft_blend_hook_equals_blend_hook() -> None:
    from taskvec.activations import BlendHook

    model, tok = _tiny("gemma2")
    ad = get_adapter(model)
    sv = _soft(model, torch.randn(ad.n_layers, ad.n_heads, generator=torch.Generator().manual_seed(2)))
    names = {ad.o_proj_name(i): i for i in range(ad.n_layers)}
    enc = _enc(tok)
    with torch.no_grad():
        with sv.intervention(model):
            fast = model(**enc).logits
        with Intervention(model, list(names), BlendHook(sv.head_means, sv.alpha, layer_of=names)):
            ref = model(**enc).logits
    assert torch.equal(fast, ref)


def test_teacher_forced_loss_equals_one_example_at_a_time(antonym) -> None:
    """Batched loss (prompts left-padded, answers right-padded, blend at index P-1) equals the
    token-level mean of per-example cross-entropies computed without any padding."""
    model, tok = _tiny("llama")
    sv = _soft(model, 0.0)
    ex = TaskVectorExtractor(model, tok, antonym, steps=1, answer_tokens="all", **SMALL)
    examples = ex.plan.train[:5]
    enc = ex.encode(examples, all_tokens=True)
    assert len({len(a) for a in enc.answers}) > 1 and len({len(p) for p in enc.prompts}) > 1
    with torch.no_grad():
        batched = ex.batch_loss(sv.coefficients, sv.head_means, enc, range(5))
        losses = []
        for p, a in zip(enc.prompts, enc.answers):
            ids = torch.tensor([p + a[:-1]])
            with sv.intervention(model, positions=[len(p) - 1]):
                logits = model(input_ids=ids).logits[0, len(p) - 1:]  # (len(a), V)
            losses.append(torch.nn.functional.cross_entropy(logits, torch.tensor(a), reduction="none"))
    assert_forward_close(batched, torch.cat(losses).mean())  # batched (padded) vs alone


# ---------------------------------------------------------------------------- gradients, training


def test_gradient_reaches_coefficients_not_model(antonym) -> None:
    model, tok = _tiny("llama")
    ad = get_adapter(model)
    model.model.embed_tokens.weight.requires_grad_(True)  # a trainable flag must survive training
    ex = TaskVectorExtractor(model, tok, antonym, steps=2, **SMALL)
    means = _soft(model, 0.0).head_means
    t = torch.zeros(ad.n_layers, ad.n_heads, requires_grad=True)
    for p in model.parameters():
        p.requires_grad_(False)
    enc = ex.encode(ex.plan.train[:6], all_tokens=True)
    for mode in ("first", "all"):
        ex.teacher_forced = mode == "all"
        t.grad = None
        ex.batch_loss(t, means, enc, range(6)).backward()
        assert t.grad is not None and torch.isfinite(t.grad).all() and (t.grad != 0).all()
    assert all(p.grad is None for p in model.parameters())
    model.model.embed_tokens.weight.requires_grad_(True)
    ex.teacher_forced = False
    ex.train(means=means)
    assert all(p.grad is None for p in model.parameters())
    assert model.model.embed_tokens.weight.requires_grad  # flags restored
    for p in model.parameters():
        p.requires_grad_(True)


def _planted(model, tok):
    """Means that, fully blended in (alpha = 1), make the model predict one ASCII letter after
    any prompt ending in ':' (the last position then only sees ':' and the means), plus a task
    whose every answer is that letter. Unpatched, the tiny model predicts ':' instead."""
    words = [f"w{i}{chr(97 + i % 26)}{chr(97 + (i * 7) % 26)}" for i in range(60)]
    enc = _enc(tok, [w + ":" for w in words[:4]])
    for seed in range(100):
        sv = _soft(model, float("inf"), seed=seed)
        with torch.no_grad(), sv.intervention(model):
            pred = model(**enc).logits[:, -1].argmax(-1)
        c = int(pred[0])
        if (pred == c).all() and chr(c).isascii() and chr(c).isalpha():
            break
    else:  # pragma: no cover - the tiny model changed
        pytest.skip("no planted letter found")
    rows = [{"text": w, "label": "yes"} for w in words]
    data = {"train": rows[:40], "validation": rows[40:50], "test": rows[50:]}
    task = Task(name="planted", kind="classification", template="{text}:",
                label_words={"yes": chr(c), "no": ":"}, splits=("train", "validation", "test"),
                loader=lambda split: data[split])
    return sv.head_means, task


def test_training_learns_a_planted_task() -> None:
    model, tok = tiny_model("llama")
    with torch.no_grad():
        get_adapter(model).final_norm.weight.mul_(10)  # sharper logits
    means, task = _planted(model, tok)
    ex = TaskVectorExtractor(model, tok, task, steps=30, lr=0.5, init=-6.0, eval_every=10,
                             batch_size=8, patience=0)
    sv = ex.train(means=means)
    first, best = ex.history[0], max(ex.history, key=lambda r: r["val_accuracy"])
    assert first["val_accuracy"] == 0.0 and sv.metadata["extra"]["zero_shot_val_accuracy"] == 0.0
    assert sv.validation_score == 1.0 and best["val_loss"] < first["val_loss"] - 2
    assert ex.history[-1]["train_loss"] < ex.history[1]["train_loss"]
    assert float(sv.alpha.mean()) > 0.05  # moved up from sigmoid(-6) = 0.0025


def test_training_lowers_loss_on_constant_first_token(antonym) -> None:
    """Byte-level tiny tokenizer: every antonym answer starts with ' ', a constant target."""
    model, tok = _tiny("llama")
    ex = TaskVectorExtractor(model, tok, antonym, steps=20, lr=0.2, patience=0,
                             **(SMALL | {"eval_every": 10, "val_limit": 16}))
    sv = ex.train()
    assert ex.history[-1]["val_loss"] < ex.history[0]["val_loss"]
    assert sv.metadata["extra"]["head_means"]["shots"] == 2
    again = TaskVectorExtractor(model, tok, antonym, steps=20, lr=0.2, patience=0,
                                **(SMALL | {"eval_every": 10, "val_limit": 16})).train()
    assert torch.equal(sv.coefficients, again.coefficients)  # seeded, deterministic
    assert torch.equal(sv.head_means, again.head_means)


def test_kept_checkpoint_is_the_best_on_validation(antonym) -> None:
    model, tok = _tiny("llama")
    means = _soft(model, 0.0).head_means
    schedule = [ValScore(0.1, 5), ValScore(0.3, 5), ValScore(0.8, 3), ValScore(0.8, 4),
                ValScore(0.5, 1), ValScore(0.2, 1), ValScore(0.9, 1)]
    seen: list[torch.Tensor] = []

    def validator(t: torch.Tensor) -> ValScore:
        seen.append(t.clone())
        return schedule[len(seen) - 1]

    ex = TaskVectorExtractor(model, tok, antonym, steps=100, lr=0.3, patience=3, **SMALL)
    sv = ex.train(means=means, validator=validator)
    # evaluations at steps 0, 2, 4, ...; best at the 3rd (step 4); 3 worse ones -> stop at step 10
    assert [h["step"] for h in ex.history] == [0, 2, 4, 6, 8, 10]
    assert sv.metadata["best_step"] == 4 and sv.validation_score == 0.8
    assert torch.equal(sv.coefficients, seen[2])
    assert not torch.equal(sv.coefficients, seen[-1])
    assert sv.metadata["extra"]["stopped_early"] and sv.metadata["validation_loss"] == 3


def test_config_and_split_checks(antonym) -> None:
    for bad in ({"steps": 0}, {"lr": 0.0}, {"temperature": -1.0}, {"answer_tokens": "some"},
                {"positions": "all"}, {"l1": -1.0}, {"patience": -1}, {"init": float("nan")}):
        with pytest.raises(TaskVecError):
            SoftConfig(**bad).check()
    plan = split_plan(antonym)
    assert plan.validation_source == "validation" and plan.test == "test"
    sst2 = get_task("sst2")  # no test split: validation is the test set, train examples held out
    plan = split_plan(sst2, seed=1)
    assert plan.test == "validation" and plan.validation_source.startswith("train (200")
    texts = {ex["text"] for ex in plan.validation}
    assert len(plan.validation) == 200 and not any(ex["text"] in texts for ex in plan.train[:5000])
    model, tok = _tiny("llama")
    with pytest.raises(UserInputError, match="first token"):  # ' negative' / ' positive' bytes
        TaskVectorExtractor(model, tok, sst2, steps=1)


# ---------------------------------------------------------------------------- files


def test_file_round_trip_and_validation(tmp_path, antonym) -> None:
    model, tok = _tiny("llama")
    sv = TaskVectorExtractor(model, tok, antonym, steps=2, **SMALL).train()
    sv.coefficients[0, 0] = float("-inf")
    path = sv.save(tmp_path / "soft.safetensors")
    back = load_soft(path)
    assert torch.equal(back.coefficients, sv.coefficients) and torch.equal(back.head_means, sv.head_means)
    meta = back.metadata
    assert meta["model_fingerprint"] == fingerprint(model) and meta["task"] == "antonym"
    assert meta["n_params"] == 8 == back.n_params and meta["positions"] == "last"
    assert meta["recipe"]["steps"] == 2 and isinstance(meta["validation_score"], float)
    assert meta["extra"]["history"][0]["step"] == 0 and back.alpha[0, 0] == 0
    assert path.stat().st_size < 10_000
    back.check_model(model)
    other, _ = tiny_model("llama", seed=1)
    with pytest.raises(FingerprintMismatchError):
        back.check_model(other)
    back.check_model(other, force=True)
    with pytest.raises(ShapeMismatchError):
        back.check_model(_tiny("gemma2")[0], force=True)
    # bad files
    with pytest.raises(MissingFileError):
        load_soft(tmp_path / "nope.safetensors")
    data = path.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(FileFormatError):
        load_soft(tmp_path / "cut.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(FileFormatError):
        load_soft(tmp_path / "junk.safetensors")
    fv = extract_function_vector(model, tok, antonym, shots=2, n_prompts=4, heads=[(0, 1)], layer=1,
                                 sweep_limit=2)
    fv.save(tmp_path / "fv.safetensors")
    with pytest.raises(FileFormatError, match="is a function vector"):
        load_soft(tmp_path / "fv.safetensors")
    bad = SoftTaskVector(sv.coefficients, sv.head_means, dict(sv.metadata))
    bad.coefficients = torch.full_like(sv.coefficients, float("nan"))
    bad.save(tmp_path / "nan.safetensors")
    with pytest.raises(FileFormatError, match="NaN"):
        load_soft(tmp_path / "nan.safetensors")
    with pytest.raises(UserInputError):
        sv.save(tmp_path / "soft.pt")


# ---------------------------------------------------------------------------- comparison table


def test_comparison_table_all_methods(antonym) -> None:
    from taskvec.weights import TaskVector
    from taskvec.weights.lowrank import LowRankDelta

    model, tok = _tiny("llama")
    ad = get_adapter(model)
    fv = extract_function_vector(model, tok, antonym, shots=2, n_prompts=4, heads=[(0, 1)], layer=1,
                                 sweep_limit=2)
    rv = extract_residual_vector(model, tok, antonym, shots=2, n_prompts=4, layer=1, sweep_limit=2)
    sv = _soft(model, 0.0)
    name = "model.layers.0.self_attn.q_proj.weight"
    w = dict(model.named_parameters())[name]
    g = torch.Generator().manual_seed(0)
    lora = TaskVector({name: LowRankDelta(torch.randn(2, w.shape[1], generator=g),
                                          torch.randn(w.shape[0], 2, generator=g), 0.5)},
                      {"base_fingerprint": fingerprint(model)})
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rows = comparison_table(model, tok, antonym, fv=fv, rv=rv, soft=sv, lora=lora, limit=6, shots="2,3")
    assert [r["method"].split(" (")[0] for r in rows] == [
        "zero-shot", "2-shot ICL", "3-shot ICL", "function vector", "residual vector",
        "soft task vector", "weight-space task vector"]
    params = {r["kind"]: r["params"] for r in rows}
    assert params == {"prompt": 0, "function_vector": ad.hidden_size, "residual_vector": ad.hidden_size,
                      "soft_task_vector": ad.n_layers * ad.n_heads, "task_vector": lora.numel()}
    assert all(r["n"] == 6 and r["split"] == "test" and 0 <= r["accuracy"] <= 1 for r in rows)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # LoRA row restored exactly
    assert parse_shots("") == [] and parse_shots("0,5,5") == [5]
    # intervals and paired tests, recomputed from the per-example results
    by = {r["method"]: r for r in rows}
    for r in rows:
        assert len(r["correct"]) == 6 and r["accuracy"] == pytest.approx(sum(r["correct"]) / 6)
        assert tuple(r["ci95"]) == pytest.approx(wilson(sum(r["correct"]), 6))
        assert r["subset"] == "first 6"
        if r["kind"] == "prompt":
            assert "vs_icl" not in r
            continue
        for key, ref in (("vs_zero_shot", "zero-shot"), ("vs_icl", "3-shot ICL")):
            t = r[key]
            assert t["against"] == ref
            only_a = sum(1 for x, y in zip(r["correct"], by[ref]["correct"]) if x and not y)
            assert t["only_a"] == only_a and t["n"] == 6
            assert t["difference"] == pytest.approx(r["accuracy"] - by[ref]["accuracy"])
    picked = comparison_table(model, tok, antonym, soft=sv, sample=5, seed=3, shots="")
    want = [antonym.load("test")[i] for i in sample_indices(len(antonym.load("test")), 5, 3)]
    assert picked[0]["n"] == 5 and picked[0]["subset"] == "sample 5 (seed 3)"
    direct = accuracy(model, tok, antonym, want, sv.intervention(model), split="test")
    assert picked[1]["correct"] == [int(c) for c in direct.correct]
    with pytest.raises(UserInputError, match="several tokens"):
        comparison_table(model, tok, get_task("sst2"), soft=sv, limit=2, shots=())


def test_extractor_wraps_means_training_applying_evaluating_saving(tmp_path, antonym) -> None:
    """jacknewsom/task_vectors: one TaskVectorExtractor object does the common operations."""
    model, tok = _tiny("llama")
    ex = TaskVectorExtractor(model, tok, antonym, steps=2, **SMALL)
    with pytest.raises(UserInputError, match="call .train"):
        _ = ex.vector
    means = ex.compute_means()
    sv = ex.train(means=means)
    assert ex.vector is sv and torch.equal(sv.head_means, means.means.float())
    res = ex.evaluate(split="validation", limit=6)
    with ex.apply():  # the same vector through its intervention, evaluated by hand
        from taskvec.eval import evaluate

        want = evaluate(model, tok, antonym, split="validation", limit=6, batch_size=16)
    assert res.n == 6 and res.accuracy == want.accuracy and res.correct == want.correct
    back = load_soft(ex.save(tmp_path / "soft.safetensors"))
    assert torch.equal(back.coefficients, sv.coefficients)
