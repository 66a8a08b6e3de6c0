"""Merged, negated and truncated LoRA vectors stay low-rank and export to PEFT adapters that
reproduce base + vector logits, on tiny models of every architecture."""

from __future__ import annotations

import pytest
import torch

from taskvec.models.tiny import TINY_ARCHS, tiny_model
from taskvec.weights.lowrank import LowRankDelta
from taskvec.weights.merge import merge, merge_files
from taskvec.weights.peft_io import export_peft
from taskvec.weights.vector import TaskVector
from tolerance import assert_forward_close

IDS = torch.tensor([[1, 5, 9, 2, 7, 3, 11, 4]])


def random_lora_vector(model: torch.nn.Module, r: int, seed: int) -> TaskVector:
    """A LoRA-shaped vector on every 2-D weight inside the transformer blocks."""
    g = torch.Generator().manual_seed(seed)
    deltas = {}
    for name, p in model.named_parameters():
        if p.dim() == 2 and (".layers." in name or ".h." in name):
            out, inn = p.shape
            deltas[name] = LowRankDelta(torch.randn(r, inn, generator=g) * 0.3,
                                        torch.randn(out, r, generator=g) * 0.3, 0.5)
    return TaskVector(deltas, {"base_model": "tiny"})


def logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=IDS).logits


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_export_peft_of_merged_and_negated_vectors_reproduces_base_plus_vector(tmp_path, arch):
    peft = pytest.importorskip("peft")
    base, _ = tiny_model(arch, seed=0)
    vs = [random_lora_vector(base, r, seed) for r, seed in ((2, 1), (3, 2), (2, 3))]
    results = {
        "tsv": merge("tsv", vs),
        "iso_cts": merge("iso_cts", vs, [1.0, 0.5, -0.5], lam=0.7),
        "ties_core": merge("ties", vs, space="core", density=0.5),
        "negated": merge("task_arithmetic", [vs[1]], [-1.0]),
        "truncated": merge("task_arithmetic", vs, [1.0, -1.0, 0.5], rank=3),
        "energy": merge("tsv", vs, energy=0.8),  # ranks differ per module: PEFT's rank_pattern
    }
    assert len({d.rank for d in results["energy"].deltas.values()}) > 1
    fan = arch == "gpt2"
    for label, vec in results.items():
        ranks = {d.rank for d in vec.deltas.values()}
        assert vec.form == "low-rank", label
        assert max(ranks) <= 7, label  # at most the sum of the input ranks
        model, _ = tiny_model(arch, seed=0)
        vec.apply_to(model)
        want = logits(model)
        export_peft(vec, tmp_path / label, fan_in_fan_out=fan)
        fresh, _ = tiny_model(arch, seed=0)
        pm = peft.PeftModel.from_pretrained(fresh, tmp_path / label)
        assert_forward_close(logits(pm), want)  # W + B A merged vs PEFT's x W + (x A) B


def test_cli_merge_rank_and_export_peft_of_a_merged_file(tmp_path, capsys):
    from taskvec.cli.main import main

    base, _ = tiny_model("llama", seed=0)
    paths = []
    for i, seed in enumerate((4, 5)):
        paths.append(str(random_lora_vector(base, 2, seed).save(tmp_path / f"v{i}.safetensors")))
    out = tmp_path / "m.safetensors"
    assert main(["merge", "--method", "iso_c", "--vectors", *paths, "--out", str(out), "--rank", "3", "--json"]) == 0
    import json

    rep = json.loads(capsys.readouterr().out)
    assert rep["storage"] == "low-rank" and rep["truncation"]["rank"] == 3
    assert 0 < rep["truncation"]["relative_error"] < 1
    m = TaskVector.load(out)
    assert max(d.rank for d in m.deltas.values()) <= 3
    assert main(["export-peft", str(out), "--out", str(tmp_path / "adapter"), "--json"]) == 0
    assert (tmp_path / "adapter" / "adapter_config.json").exists()
    assert main(["merge", "--method", "iso_c", "--vectors", *paths, "--out", str(tmp_path / "x.safetensors"),
                 "--rank", "2", "--energy", "0.9"]) == 2  # mutually exclusive: usage error


def test_merge_files_matches_in_memory_for_low_rank_merges(tmp_path):
    base, _ = tiny_model("qwen2", seed=0)
    vs = [random_lora_vector(base, 2, s) for s in (6, 7, 8)]
    paths = [v.save(tmp_path / f"v{i}.safetensors") for i, v in enumerate(vs)]
    for method, params in (("tsv", {}), ("iso_c", {}), ("dare_ties", {"space": "core"})):
        rep = merge_files(method, paths, tmp_path / f"{method}.safetensors", params=params)
        assert rep.storage == "low-rank"
        got, want = TaskVector.load(tmp_path / f"{method}.safetensors"), merge(method, vs, **params)
        for name in want.names:
            assert torch.equal(got[name].A, want[name].A) and torch.equal(got[name].B, want[name].B)
