"""Data-parallel evaluation under torchrun (gloo, 2 CPU processes) equals one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from taskvec.models import tiny_model
from tolerance import assert_forward_close


def _run(args, nproc=None, timeout=600):
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    if nproc:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
               "--master_port", "29517", "-m", "taskvec", *args]
    else:
        cmd = [sys.executable, "-m", "taskvec", *args]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    assert p.returncode == 0, p.stderr[-3000:]
    return p.stdout


def _compare(args, nproc=2):
    single = json.loads(_run(args))
    out = _run(args, nproc=nproc)
    docs = [ln for ln in out.splitlines() if ln.strip()]
    multi = json.loads(out)  # exactly one JSON document printed (rank 0 only)
    assert docs[0].startswith("{")
    for key in ("n", "accuracy", "per_class"):
        assert multi[key] == single[key], key
    return single, multi


def test_torchrun_eval_equals_single_process_tiny(tmp_path):
    d = tmp_path / "tiny"
    model, tok = tiny_model("llama", seed=0)
    model.save_pretrained(d)
    tok.save_pretrained(d)
    _compare(["eval", "--model", str(d), "--task", "sst2", "--limit", "24", "--json", "--no-progress"])
    _compare(["eval", "--model", str(d), "--task", "antonym", "--limit", "12", "--json", "--no-progress"])


@pytest.mark.slow
def test_torchrun_eval_embedded_sst2(embedded):
    _compare(["eval", "--task", "sst2", "--limit", "64", "--json", "--no-progress"])


def test_torchrun_head_means_equal_single_process(tmp_path):
    from taskvec.activations.activation_vector import load_activation

    d = tmp_path / "tiny"
    model, tok = tiny_model("llama", seed=0)
    model.save_pretrained(d)
    tok.save_pretrained(d)
    args = ["fv", "means", "--model", str(d), "--task", "antonym", "--n-prompts", "10", "--shots", "3",
            "--batch-size", "3", "--no-progress", "--json"]
    single = json.loads(_run([*args, "--out", str(tmp_path / "one.safetensors")]))
    multi = json.loads(_run([*args, "--out", str(tmp_path / "two.safetensors")], nproc=2))
    assert multi["world_size"] == 2 and single["world_size"] == 1
    assert multi["n_prompts"] == single["n_prompts"] == 10
    assert multi["icl_accuracy"] == single["icl_accuracy"]
    a = load_activation(tmp_path / "one.safetensors").tensors["head_means"]
    b = load_activation(tmp_path / "two.safetensors").tensors["head_means"]
    # Same prompts, different batch padding per rank: equal up to float32 rounding.
    assert_forward_close(b, a)
    assert a.shape == b.shape


def test_leave_is_a_no_op_in_one_process_and_exits_under_torchrun(monkeypatch, capsys):
    """``dist.leave`` ends a torchrun rank with os._exit (after flushing), skipping gloo's teardown."""
    from taskvec import dist

    calls: list[int] = []

    def fake_exit(code: int) -> None:
        calls.append(code)

    monkeypatch.setattr(dist.os, "_exit", fake_exit)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    dist.leave(0)
    assert calls == []
    monkeypatch.setenv("WORLD_SIZE", "2")
    print("written before leaving", end="")
    dist.leave(3)
    assert calls == [3]
    assert capsys.readouterr().out == "written before leaving"


def test_cli_main_leaves_only_as_the_command(monkeypatch, capsys):
    """Under torchrun the `taskvec` command (argv from sys.argv) leaves through ``dist.leave``;
    ``main([...])`` called from Python returns its code and never ends the process."""
    from taskvec import dist
    from taskvec.cli.main import main

    calls: list[int] = []
    monkeypatch.setattr(dist, "finish", lambda: None)  # no process group in this test
    monkeypatch.setattr(dist.os, "_exit", calls.append)
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["tasks", "--json"]) == 0
    assert calls == []
    monkeypatch.setattr(sys, "argv", ["taskvec", "tasks", "--json"])
    assert main() == 0
    assert calls == [0]
    capsys.readouterr()
