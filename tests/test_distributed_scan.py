"""Data-parallel IE scan and basis Gram under torchrun (gloo, 2 CPU processes) equal one process.

The worker half of the first two tests is :func:`compute`: ``torchrun`` runs this file as a
script on 2 ranks, each rank saves what it computed, and the test compares both ranks with the
same function run in the test process (a single process: ``taskvec.dist`` is a no-op there).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

PROMPTS = [
    "Q: hot\nA: cold\n\nQ: up\nA:",
    "Q: big\nA: small\n\nQ: a long one here\nA: x\n\nQ: left\nA:",
    "Q: in\nA: out\n\nQ: day\nA:",
    "Q: wet\nA: dry\n\nQ: old\nA: new\n\nQ: fast\nA:",
    "Q: on\nA:",
]
TARGETS = [32, 100, 7, 55, 90]
SHAPES = {
    "model.embed_tokens.weight": (13, 8),
    "model.layers.0.self_attn.q_proj.weight": (8, 8),
    "model.layers.0.mlp.up_proj.weight": (12, 8),
    "model.layers.0.input_layernorm.weight": (8,),
    "model.layers.1.self_attn.q_proj.weight": (8, 8),
    "model.layers.1.mlp.down_proj.weight": (8, 12),
    "model.layers.2.mlp.down_proj.weight": (8, 12),
    "model.norm.weight": (8,),
}


ABORT = "terminate called without an active exception"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _torchrun(args: list[str], nproc: int = 2, timeout: int = 300) -> str:
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    if nproc:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
               "--master_port", str(_free_port()), *args]
    else:
        cmd = [sys.executable, *args]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    if p.returncode != 0 and ABORT in p.stderr:
        # a rank aborted in gloo's teardown at interpreter exit (once, oldest-versions CI run of
        # 2026-12-06); `taskvec` now leaves through dist.leave (os._exit after finish), which skips
        # that teardown. Kept as a guard: rerun once, only for that message, so any other failure
        # still fails
        p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    assert p.returncode == 0, p.stderr[-3000:]
    return p.stdout


def _vector_files(d: Path, T: int = 4) -> list[Path]:
    """T small task vectors: dense and low-rank deltas, one vector missing a tensor."""
    from taskvec.weights import LowRankDelta, TaskVector

    g = torch.Generator().manual_seed(0)
    d.mkdir(parents=True, exist_ok=True)
    paths = []
    for t in range(T):
        deltas: dict = {}
        for n, s in SHAPES.items():
            if t == 1 and n == "model.norm.weight":
                continue
            if t % 2 and len(s) == 2:
                deltas[n] = LowRankDelta(torch.randn(2, s[1], generator=g), torch.randn(s[0], 2, generator=g), 0.5)
            else:
                deltas[n] = torch.randn(s, generator=g)
        p = d / f"v{t}.safetensors"
        TaskVector(deltas, {"task": f"task{t}", "base_fingerprint": "fp0", "base_model": "tiny"}).save(p)
        paths.append(p)
    return paths


def compute(vectors: list[str]) -> dict[str, torch.Tensor]:
    """The IE scan (every method, all or some heads, fewer prompts than ranks) and the Gram stats."""
    from taskvec.activations import ie_scores
    from taskvec.basis.gram import VectorSet, gather_stats, streaming_gram
    from taskvec.models import get_adapter, tiny_model

    model, tok = tiny_model("llama", seed=0)
    ad = get_adapter(model)
    g = torch.Generator().manual_seed(0)
    means = torch.randn(ad.n_layers, ad.n_heads, ad.head_dim, generator=g) * 3.0  # (L, H, D)
    heads = [(0, 1), (ad.n_layers - 1, ad.n_heads - 1)]
    out: dict[str, torch.Tensor] = {}
    for method, kw in (("cached", {"batch_size": 5}), ("batched", {"batch_size": 3}),
                       ("naive", {"heads": heads})):
        r = ie_scores(model, tok, PROMPTS, TARGETS, means, method=method, **kw)
        out[f"ie.{method}.scores"] = r.scores
        out[f"ie.{method}.per_prompt"] = r.per_prompt
        out[f"ie.{method}.clean"] = r.clean_prob
    one = ie_scores(model, tok, PROMPTS[:1], TARGETS[:1], means, method="cached")  # rank 1 gets no prompt
    out["ie.one.scores"] = one.scores
    out["gram"] = streaming_gram(vectors, chunk_elems=7)
    with VectorSet(vectors) as vs:
        stats = gather_stats(vs, random_m=3, seed=1, chunk_elems=11)
    for key, st in stats.items():
        out[f"stats.{key}.gram"] = st.gram
        out[f"stats.{key}.rr"] = st.rr
        out[f"stats.{key}.rx"] = st.rx
    return out


def _check_equal(single: dict[str, torch.Tensor], ranks: list[dict[str, torch.Tensor]], prefix: str) -> None:
    keys = sorted(k for k in single if k.startswith(prefix))
    assert keys
    for r in ranks:
        assert sorted(k for k in r if k.startswith(prefix)) == keys
        for k in keys:
            a, b = single[k], r[k]
            assert a.shape == b.shape and a.dtype == b.dtype, k
            assert torch.equal(torch.isnan(a), torch.isnan(b)), k  # the same heads scanned
            torch.testing.assert_close(b, a, atol=1e-6, rtol=1e-9 if a.dtype == torch.float64 else 1e-6,
                                       equal_nan=True, msg=k)
    for k in keys:  # and every rank holds the same result
        for r in ranks[1:]:
            assert torch.equal(torch.nan_to_num(r[k]), torch.nan_to_num(ranks[0][k])), k


@pytest.fixture(scope="module")
def workers(tmp_path_factory) -> tuple[dict, list[dict]]:
    """(single-process result, [rank 0 result, rank 1 result]): one torchrun launch for two tests."""
    tmp = tmp_path_factory.mktemp("scan")
    vecs = [str(p) for p in _vector_files(tmp / "vecs")]
    res = tmp / "ranks"
    res.mkdir()
    _torchrun([__file__, str(res), *vecs])
    ranks = [torch.load(res / f"rank{r}.pt") for r in range(2)]
    assert all(r["world"] == 2 for r in ranks)
    return compute(vecs), [r["out"] for r in ranks]


def test_torchrun_ie_scan_equals_single_process(workers):
    single, ranks = workers
    _check_equal(single, ranks, "ie.")
    assert torch.isnan(single["ie.naive.scores"]).sum() == single["ie.naive.scores"].numel() - 2
    assert single["ie.cached.per_prompt"].shape[0] == len(PROMPTS)
    assert torch.isfinite(single["ie.cached.scores"]).all() and single["ie.cached.scores"].abs().max() > 0


def test_torchrun_streaming_gram_equals_single_process(workers):
    single, ranks = workers
    _check_equal(single, ranks, "gram")
    _check_equal(single, ranks, "stats.")
    groups = {k[len("stats."):].rsplit(".", 1)[0] for k in single if k.startswith("stats.")}
    assert groups == {"layer.0", "layer.1", "layer.2", "other"}


def test_torchrun_basis_build_writes_one_file(tmp_path):
    from taskvec.basis import load_basis

    vecs = [str(p) for p in _vector_files(tmp_path / "vecs")]
    # --n-basis, not --m: torchrun's own parser rejects --m as an ambiguous abbreviation
    args = ["basis", "build", *vecs, "--method", "pca", "--n-basis", "2", "--per-layer", "--chunk-elems", "9",
            "--json", "--no-progress"]
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    single = json.loads(_torchrun(["-m", "taskvec", *args, "--out", str(tmp_path / "one" / "b.safetensors")],
                                  nproc=0))
    out = _torchrun(["-m", "taskvec", *args, "--out", str(tmp_path / "two" / "b.safetensors")])
    multi = json.loads(out)  # exactly one JSON document: only rank 0 printed
    assert sorted(os.listdir(tmp_path / "two")) == ["b.safetensors"]  # one file, no temp leftovers
    assert multi["M"] == single["M"] and multi["T"] == single["T"] == 4
    for a, b in zip(single["tasks"], multi["tasks"]):
        assert a["task"] == b["task"]
        assert abs(a["rel_error"] - b["rel_error"]) <= 1e-9
    with load_basis(tmp_path / "one" / "b.safetensors") as b1, load_basis(tmp_path / "two" / "b.safetensors") as b2:
        for t in range(4):
            v1, v2 = b1.recover(t).to_dense(), b2.recover(t).to_dense()
            assert sorted(v1.deltas) == sorted(v2.deltas)
            for name in v1.deltas:
                torch.testing.assert_close(v2.deltas[name], v1.deltas[name], atol=1e-5, rtol=1e-5)


def test_torchrun_fv_extract_writes_one_file_with_the_single_process_scores(tmp_path):
    from taskvec.activations.activation_vector import load_activation
    from taskvec.models import tiny_model

    d = tmp_path / "tiny"
    model, tok = tiny_model("llama", seed=0)
    model.save_pretrained(d)
    tok.save_pretrained(d)
    args = ["-m", "taskvec", "fv", "extract", "--model", str(d), "--task", "antonym", "--n-prompts", "6",
            "--shots", "2", "--ie-prompts", "5", "--top-k", "3", "--sweep-limit", "6", "--batch-size", "4",
            "--json", "--no-progress"]
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    single = json.loads(_torchrun([*args, "--out", str(tmp_path / "one" / "fv.safetensors")], nproc=0))
    multi = json.loads(_torchrun([*args, "--out", str(tmp_path / "two" / "fv.safetensors")]))
    assert sorted(os.listdir(tmp_path / "two")) == ["fv.safetensors"]
    a = load_activation(tmp_path / "one" / "fv.safetensors")
    b = load_activation(tmp_path / "two" / "fv.safetensors")
    assert b.heads == a.heads and multi["heads"] == single["heads"]
    torch.testing.assert_close(b.tensors["ie_scores"], a.tensors["ie_scores"], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(b.tensors["head_means"], a.tensors["head_means"], atol=1e-5, rtol=1e-5)


if __name__ == "__main__":  # the torchrun worker: python -m torch.distributed.run ... this_file OUT VECTORS...
    from taskvec import dist

    rank, world = dist.world()
    result = compute(sys.argv[2:])
    torch.save({"world": world, "out": result}, Path(sys.argv[1]) / f"rank{rank}.pt")
    dist.finish()
    dist.leave(0)
