"""LoRA / full fine-tuning: label masks, data order, determinism, resume, outputs, CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from taskvec.errors import UserInputError
from taskvec.models import tiny_model
from taskvec.weights.finetune import (
    ExampleOrder,
    answer_loss,
    collate,
    encode_example,
    finetune,
    parse_targets,
    resolve_targets,
)

REPO = Path(__file__).resolve().parents[1]


class FakeTask:
    """A planted task: the answer is determined by the last word of the prompt."""

    name = "planted"
    kind = "classification"
    splits = ("train", "validation")
    train_split = "train"
    eval_split = "validation"

    def __init__(self, n: int = 16) -> None:
        self.rows = [
            {"text": f"item {i} is {'good' if i % 2 else 'bad'}", "label": "pos" if i % 2 else "neg"}
            for i in range(n)
        ]

    def load(self, split: str | None = None, limit: int | None = None) -> list[dict]:
        return [dict(r) for r in self.rows[:limit]]

    def prompt(self, ex: dict) -> str:
        return f"{ex['text']}:"

    def answer(self, ex: dict) -> str:
        return " yes" if ex["label"] == "pos" else " no"


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny matmuls are much faster on one thread when the CPU is shared."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def lora_tensors(adapter_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(adapter_dir / "adapter_model.safetensors"))


def run(model, tok, out: Path, **kw):
    opts = {"steps": 6, "batch_size": 4, "lr": 1e-2, "lora_r": 4, "lora_alpha": 8,
            "checkpoint_every": 3, "progress": False} | kw
    return finetune(model, tok, FakeTask(), out, **opts)


# -- data -----------------------------------------------------------------------------
def test_only_answer_tokens_carry_loss():
    model, tok = tiny_model("llama")  # byte-level: one token per byte, no BOS
    a = encode_example(tok, "ab:", " no", 128)
    b = encode_example(tok, "abcde:", " yes", 128)
    assert a == ([97, 98, 58], [32, 110, 111])
    assert b == ([97, 98, 99, 100, 101, 58], [32, 121, 101, 115])
    tb = collate([a, b], pad=256)
    assert tb.batch.input_ids[0].tolist() == [256] * 4 + [97, 98, 58, 32, 110, 111]
    assert tb.labels.tolist() == [[-100] * 7 + [32, 110, 111], [-100] * 6 + [32, 121, 101, 115]]
    assert tb.batch.attention_mask[0].tolist() == [0] * 4 + [1] * 6
    assert tb.batch.position_ids[0, 4:].tolist() == list(range(6))
    # the loss is the mean next-token cross-entropy over exactly these 7 answer tokens
    loss, n_tok = answer_loss(model, tb)
    with torch.no_grad():
        logits = model(**tb.batch.model_inputs()).logits  # (B, T, V)
    logp = logits[:, :-1].log_softmax(-1)
    picks = [-logp[i, t - 1, tok_id] for i in range(2) for t, tok_id in enumerate(tb.labels[i].tolist())
             if tok_id != -100]
    assert n_tok == 7
    torch.testing.assert_close(loss, torch.stack(picks).mean())


def test_label_mask_exact():
    pairs = [([1, 2], [3]), ([4, 5, 6, 7], [8, 9])]
    tb = collate(pairs, pad=0)
    assert tb.batch.input_ids.tolist() == [[0, 0, 0, 1, 2, 3], [4, 5, 6, 7, 8, 9]]
    assert tb.labels.tolist() == [[-100] * 5 + [3], [-100] * 4 + [8, 9]]
    assert tb.max_answer == 2


def test_prompt_truncated_from_the_left():
    _, tok = tiny_model("llama")
    p, a = encode_example(tok, "0123456789:", " ok", 6)
    assert len(p) + len(a) == 6 and bytes(p).decode() == "89:" and bytes(a).decode() == " ok"
    p, a = encode_example(tok, "x:", " a long answer", 4)  # answer cut, one prompt token kept
    assert bytes(p).decode() == ":" and bytes(a).decode() == " a "


def test_example_order_is_a_pure_function_of_step():
    order = ExampleOrder(10, seed=3)
    steps = [order(s, 4) for s in range(5)]  # 20 examples = 2 epochs
    flat = [i for s in steps for i in s]
    assert sorted(flat[:10]) == list(range(10)) and sorted(flat[10:]) == list(range(10))
    assert flat[:10] != flat[10:]  # reshuffled per epoch
    assert ExampleOrder(10, seed=3)(3, 4) == steps[3]  # no hidden state
    assert ExampleOrder(10, seed=4)(0, 4) != steps[0]


def test_targets():
    llama, _ = tiny_model("llama")
    found, mods, conv = resolve_targets(llama, "q,v,down")
    assert (found, mods, conv) == (["q", "v", "down"], ["q_proj", "v_proj", "down_proj"], False)
    gpt2, _ = tiny_model("gpt2")
    with pytest.warns(UserWarning, match="gate"):
        found, mods, conv = resolve_targets(gpt2, ("q", "k", "o", "gate", "up", "down"))
    assert mods == ["c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"] and conv
    with pytest.raises(UserInputError, match="valid targets: q,k,v,o,gate,up,down"):
        parse_targets("q,query")
    with pytest.raises(UserInputError, match="none of the LoRA targets"):
        resolve_targets(gpt2, ["gate"])


# -- training -------------------------------------------------------------------------
def test_lora_llama_learns_saves_and_unloads(tmp_path):
    from peft import PeftModel

    model, tok = tiny_model("llama")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    res = run(model, tok, tmp_path / "out", steps=20, lora_r=8, lora_alpha=16, checkpoint_every=0)
    assert len(res.losses) == 20
    first, last = sum(res.losses[:5]) / 5, sum(res.losses[-5:]) / 5
    # a random 64-wide model with frozen norms/embeddings cannot get confident: ~5.6 -> ~4.5
    assert last < first - 0.4 and last < 0.85 * res.losses[0]
    assert res.final_loss == res.losses[-1]
    out = tmp_path / "out"
    assert res.adapter_dir == out / "adapter" and res.model_dir is None
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in res.adapter_dir.iterdir()}
    assert not (out / "checkpoints").exists()
    log = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, 21)) and {"loss", "lr", "seconds"} <= set(log[0])
    recipe = json.loads((out / "recipe.json").read_text())
    assert recipe["task"] == "planted" and recipe["steps"] == 20 and recipe["lora_r"] == 8
    assert recipe["target_modules"] == ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    assert recipe["examples_seen"] == 80 and recipe["train_examples"] == 16
    assert {"torch", "transformers", "peft"} <= set(recipe["versions"])
    assert len(recipe["base_fingerprint"]) == 16

    trained = {k: v.clone() for k, v in res.model.state_dict().items() if "lora_" in k}
    base = res.unload()
    assert base is model
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert set(model.state_dict()) == set(before)
    assert all(p.requires_grad for p in model.parameters()) and not model.training
    # the adapter directory loads with PEFT and reproduces the trained LoRA weights
    loaded = PeftModel.from_pretrained(model, str(res.adapter_dir))
    got = {k: v for k, v in loaded.state_dict().items() if "lora_" in k}
    assert set(got) == set(trained) and all(torch.equal(got[k], trained[k]) for k in got)
    loaded.unload()


def test_lora_gpt2(tmp_path):
    from peft import PeftModel

    model, tok = tiny_model("gpt2")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.warns(UserWarning, match="gate"):
        res = run(model, tok, tmp_path / "o", steps=4, checkpoint_every=0)
    assert res.recipe["targets"] == ["q", "k", "v", "o", "up", "down"]
    res.unload()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    loaded = PeftModel.from_pretrained(model, str(res.adapter_dir))
    assert any("c_attn.lora_A" in k for k in loaded.state_dict())


def test_full_finetune_leaves_caller_model_alone(tmp_path):
    from transformers import AutoModelForCausalLM

    model, tok = tiny_model("llama")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    res = run(model, tok, tmp_path / "o", steps=3, full=True, checkpoint_every=2)
    assert res.model_dir == tmp_path / "o" / "model" and res.adapter_dir is None
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    reloaded = AutoModelForCausalLM.from_pretrained(res.model_dir)
    trained = res.model.state_dict()
    assert all(torch.equal(trained[k], v) for k, v in reloaded.state_dict().items())
    assert not torch.equal(trained["model.layers.0.self_attn.q_proj.weight"],
                           before["model.layers.0.self_attn.q_proj.weight"])
    assert (res.model_dir / "tokenizer.json").exists()


def test_resume_is_bit_identical(tmp_path):
    model, tok = tiny_model("llama")
    ref = run(model, tok, tmp_path / "ref")
    ref_tensors = lora_tensors(ref.adapter_dir)
    ref.unload()

    seen: list[list[str]] = []

    def stop(step: int, loss: float) -> None:
        root = tmp_path / "cut" / "checkpoints"
        seen.append(sorted(p.name for p in root.iterdir()) if root.exists() else [])
        if step == 4:
            raise KeyboardInterrupt

    model2, tok2 = tiny_model("llama")
    before = {k: v.clone() for k, v in model2.state_dict().items()}
    with pytest.raises(KeyboardInterrupt):
        run(model2, tok2, tmp_path / "cut", callback=stop)
    # the interrupted call gave the caller's model back unwrapped and unchanged
    assert not hasattr(model2, "peft_config")
    assert all(torch.equal(before[k], v) for k, v in model2.state_dict().items())
    assert seen[2] == ["step-3"] and not (tmp_path / "cut" / "adapter").exists()
    ckpt = tmp_path / "cut" / "checkpoints" / "step-3"
    assert sorted(p.name for p in ckpt.iterdir()) == ["optimizer.safetensors", "state.json", "weights.safetensors"]

    with pytest.raises(UserInputError, match="not empty"):
        run(model2, tok2, tmp_path / "cut")
    with pytest.raises(UserInputError, match="lr="):
        run(model2, tok2, tmp_path / "cut", resume=True, lr=2e-2)
    assert not hasattr(model2, "peft_config")

    res = run(model2, tok2, tmp_path / "cut", resume=True)
    got = lora_tensors(res.adapter_dir)
    assert set(got) == set(ref_tensors)
    for k in got:
        assert torch.equal(got[k], ref_tensors[k]), k
    assert res.losses == ref.losses and res.recipe["resumed_from_step"] == 3
    steps = [json.loads(x)["step"] for x in (tmp_path / "cut" / "train_log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]
    with pytest.raises(UserInputError, match="finished run"):
        run(model2, tok2, tmp_path / "cut", resume=True)


def test_keeps_last_two_checkpoints(tmp_path):
    model, tok = tiny_model("llama")
    names: list[list[str]] = []

    def look(step: int, loss: float) -> None:
        root = tmp_path / "o" / "checkpoints"
        names.append(sorted(p.name for p in root.iterdir()) if root.exists() else [])

    run(model, tok, tmp_path / "o", steps=7, checkpoint_every=2, keep_checkpoints=True, callback=look)
    assert names[-1] == ["step-4", "step-6"] and names[3] == ["step-2", "step-4"]


# -- CLI ------------------------------------------------------------------------------
def _write_task(root: Path) -> Path:
    task = FakeTask(16)
    root.mkdir(parents=True, exist_ok=True)
    for split in ("train", "validation"):
        (root / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in task.rows))
    yaml_path = root / "planted.yaml"
    yaml_path.write_text(
        "name: planted\nkind: classification\ntemplate: '{text}:'\n"
        "label_words: {neg: ' no', pos: ' yes'}\n"
        "data: {train: train.jsonl, validation: validation.jsonl}\n"
    )
    return yaml_path


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--steps", "0"], "--steps must be"),
        (["--lr", "-1"], "--lr must be"),
        (["--targets", "q,qq"], "unknown LoRA target"),
        (["--task", "no-such-task"], 'unknown task "no-such-task"'),
        (["--eval-limit", "-3"], "--eval-limit"),
        (["--patience", "3"], "--patience needs --eval-every"),
        (["--eval-every", "10", "--holdout", "0"], "keep --holdout > 0"),
    ],
)
def test_cli_validation_errors(tmp_path, capsys, extra, message):
    from taskvec.cli.main import main

    argv = ["finetune", "--task", "sst2", "--out", str(tmp_path / "o"), *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err


def test_cli_refuses_non_empty_out(tmp_path, capsys):
    from taskvec.cli.main import main

    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "x").write_text("x")
    assert main(["finetune", "--task", "sst2", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert "not empty" in err and "--resume" in err and "\n" not in err


def test_cli_trains_and_evaluates(tmp_path, capsys):
    from taskvec.cli.main import main

    model, tok = tiny_model("llama")
    model.save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")
    task = _write_task(tmp_path / "task")
    argv = ["finetune", "--model", str(tmp_path / "model"), "--task", str(task), "--out",
            str(tmp_path / "o"), "--steps", "3", "--batch-size", "2", "--lora-r", "2",
            "--targets", "q,v", "--eval-limit", "4", "--no-progress"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "final loss" in out and "accuracy" in out and str(tmp_path / "o" / "adapter") in out
    recipe = json.loads((tmp_path / "o" / "recipe.json").read_text())
    assert recipe["target_modules"] == ["q_proj", "v_proj"] and recipe["task"] == "planted"


_SLOW_STEPS = """
import time
import torch.optim

_step = torch.optim.AdamW.step

def _slow_step(self, *a, **k):
    time.sleep(0.25)
    return _step(self, *a, **k)

torch.optim.AdamW.step = _slow_step
"""


@pytest.mark.slow
def test_cli_sigkill_then_resume(tmp_path):
    """Kill `python -m taskvec finetune` mid-run; --resume ends with the uninterrupted weights."""
    from taskvec.cli.main import main

    model, tok = tiny_model("llama")
    model.save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")
    task = _write_task(tmp_path / "task")
    common = ["finetune", "--model", str(tmp_path / "model"), "--task", str(task), "--steps", "10",
              "--batch-size", "4", "--lr", "1e-2", "--lora-r", "4", "--checkpoint-every", "3",
              "--no-progress", "--json"]
    assert main([*common, "--out", str(tmp_path / "ref")]) == 0
    ref = lora_tensors(tmp_path / "ref" / "adapter")

    slow = tmp_path / "slow"
    slow.mkdir()
    (slow / "sitecustomize.py").write_text(_SLOW_STEPS)  # 0.25 s per step: time to kill
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(slow), str(REPO / "src"), os.environ.get("PYTHONPATH", "")]))
    out = tmp_path / "cut"
    cmd = [sys.executable, "-m", "taskvec", *common, "--out", str(out)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    for _ in range(2400):  # poll for the checkpoint (a hang guard of ~2 min, not a speed target)
        if (out / "checkpoints" / "step-6").exists():
            break
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        time.sleep(0.05)
    else:
        proc.kill()
        pytest.fail("no checkpoint appeared")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "adapter").exists() and not (out / "recipe.json").exists()

    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])
    done = subprocess.run([*cmd, "--resume"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout)
    assert report["recipe"]["resumed_from_step"] in (3, 6)
    got = lora_tensors(out / "adapter")
    assert set(got) == set(ref)
    for k in got:
        assert torch.equal(got[k], ref[k]), k


def test_lr_schedules():
    from taskvec.weights.finetune import lr_at

    assert lr_at(1, 1.0, 0) == 1.0 and lr_at(50, 1.0, 0) == 1.0
    assert lr_at(5, 1.0, 10) == 0.5  # warmup
    # linear: warmup 10, decay to 0 at step 110
    assert lr_at(10, 1.0, 10, "linear", 110) == 1.0
    assert lr_at(60, 1.0, 10, "linear", 110) == 0.5
    assert lr_at(110, 1.0, 10, "linear", 110) == 0.0


def test_length_groups_hand_computed():
    from taskvec.weights.finetune_data import length_groups

    assert length_groups([10, 100, 10, 100], overhead=5) == [[1, 3], [0, 2]]  # 2*100+5 + 2*10+5 < 4*100+5
    assert length_groups([10, 100, 10, 100], overhead=1000) == [[1, 3, 0, 2]]
    g = length_groups([7, 3, 9, 9, 1, 30, 2, 5], overhead=4)
    assert sorted(i for grp in g for i in grp) == list(range(8))
    assert length_groups([5], overhead=0) == [[0]]


def test_grouped_backward_equals_one_padded_batch():
    """Same mean answer loss and gradient as the single left-padded batch (float tolerance)."""
    from taskvec.weights.finetune_data import encode_example

    model, tok = tiny_model("llama", seed=0)
    task = FakeTask(12)
    pairs = [encode_example(tok, task.prompt(r) + " extra" * (8 * (i % 4)), task.answer(r), 256)
             for i, r in enumerate(task.rows)]
    from taskvec.weights.finetune_data import length_groups

    assert len(length_groups([len(p) + len(a) for p, a in pairs])) > 1  # the split path runs
    _assert_same_step(model, pairs, "length-grouped", rel=1e-5, rtol=1e-4, atol=1e-6)


def _assert_same_step(model, pairs, batching, rel, rtol, atol):
    """``grouped_backward(batching)`` gives the single padded batch's loss and gradients."""
    from taskvec.weights.finetune_data import answer_loss, collate, grouped_backward

    model.zero_grad(set_to_none=True)
    loss, n = answer_loss(model, collate(pairs, 0))
    loss.backward()
    ref = {k: p.grad.clone() for k, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    loss2, n2 = grouped_backward(model, pairs, 0, torch.device("cpu"), True, batching)
    assert n2 == n and float(loss2) == pytest.approx(float(loss.detach()), rel=rel)
    for k, p in model.named_parameters():
        torch.testing.assert_close(p.grad, ref[k], rtol=rtol, atol=atol)


@pytest.mark.parametrize("arch", ["llama", "mistral", "gemma2", "gemma3", "qwen2", "gpt2"])
def test_packed_batch_equals_padded_batch(arch):
    """Packed rows (block-diagonal attention from position ids): the same loss and gradient."""
    from taskvec.weights.finetune_data import encode_example
    from taskvec.weights.finetune_pack import packed_batch, packing_supported

    model, tok = tiny_model(arch, seed=0)
    task = FakeTask(10)
    pairs = [encode_example(tok, task.prompt(r) + " more" * (3 * (i % 3)), task.answer(r), 256)
             for i, r in enumerate(task.rows)]
    ids, pos, labels = packed_batch(pairs, 0, capacity=120)
    assert ids.shape[0] > 1 and int((labels != -100).sum()) == sum(len(a) for _, a in pairs)
    assert packing_supported(model, pairs, 0, True), arch
    _assert_same_step(model, pairs, "packed", rel=1e-4, rtol=1e-3, atol=1e-5)


def test_pack_rows_first_fit_decreasing():
    from taskvec.weights.finetune_pack import pack_rows

    assert pack_rows([5, 3, 4, 2], 7) == [[0, 3], [2, 1]]
    assert pack_rows([9, 1], 4) == [[0], [1]]  # too long: a row of its own
