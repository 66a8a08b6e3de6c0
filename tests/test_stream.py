"""Streaming apply: the safetensors writer, ``stream_apply`` vs in-memory ``apply_to``, ``taskvec apply``."""

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
from safetensors import safe_open
from safetensors.torch import save_file

from taskvec.cli.cmd_apply import parse_size
from taskvec.cli.main import main
from taskvec.errors import (
    FingerprintMismatchError,
    NonFiniteError,
    ShapeMismatchError,
    UserInputError,
)
from taskvec.formats import (
    SafetensorsReader,
    StreamingSafetensorsWriter,
    TensorSpec,
    model_safetensors_files,
    open_tensors,
)
from taskvec.models.fingerprint import fingerprint, fingerprint_tensors
from taskvec.models.tiny import tiny_model
from taskvec.weights import LowRankDelta, TaskVector
from taskvec.weights.stream_apply import plan_shards, stream_apply, stream_apply_report
from tolerance import reduction_atol, ulp

SCALE = 0.7


# -- fixtures ---------------------------------------------------------------------------------
def _save_base(path: Path, dtype: torch.dtype = torch.float32) -> Path:
    model, tok = tiny_model("llama")
    model.to(dtype).save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _save_base(tmp_path_factory.mktemp("stream") / "base")


def _load(path: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype="auto")


def _dense_vector(base: Path, seed: int = 1) -> TaskVector:
    g = torch.Generator().manual_seed(seed)
    deltas = {k: torch.randn(p.shape, generator=g) * 0.01 for k, p in _load(base).named_parameters()}
    return TaskVector(deltas, {"base_fingerprint": fingerprint(base), "task": "dense-test"})


def _lowrank_vector(base: Path, seed: int = 2) -> TaskVector:
    """LoRA-like factors on every 2-D projection, dense deltas on the norms (a mixed vector)."""
    g = torch.Generator().manual_seed(seed)
    deltas: dict = {}
    for k, p in _load(base).named_parameters():
        if p.dim() == 2 and "embed" not in k:
            out, inp = p.shape
            deltas[k] = LowRankDelta(torch.randn(4, inp, generator=g), torch.randn(out, 4, generator=g) * 0.01, 0.5)
        elif p.dim() == 1:
            deltas[k] = torch.randn(p.shape, generator=g) * 0.01
    return TaskVector(deltas, {"base_fingerprint": fingerprint(base), "task": "lowrank-test"})


def _assert_matches_in_memory(base: Path, out: Path, vector: TaskVector, scale: float) -> None:
    """Dense deltas: the same elementwise ops, so bitwise. Low-rank deltas: ``addmm(base, B, A)``
    may be computed in row blocks by other matmul kernels, so each entry (a length-(r + 1) sum:
    the base value and r products) may round differently: bound 2 gamma_(r+1) (|p| +
    |scale| (|B| @ |A|)), plus one ulp of the result."""
    expected = vector.apply_to(_load(base), scale)
    got = dict(_load(out).named_parameters())
    for name, p in expected.named_parameters():
        assert got[name].dtype == p.dtype, name
        diff = (got[name].float() - p.float()).abs()
        delta = vector.deltas.get(name)
        if isinstance(delta, LowRankDelta):
            terms = p.detach().abs().double() + abs(scale * delta.scale) * (delta.B.abs().double() @ delta.A.abs().double())
            tol = reduction_atol(delta.rank + 1, terms).float() + ulp(p.detach())
            assert (diff <= tol).all(), f"{name}: max diff {diff.max()} over the rounding bound"
        else:
            assert torch.equal(got[name], p), f"{name}: max diff {diff.max()}"


# -- the writer -------------------------------------------------------------------------------
def test_writer_matches_save_file(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    tensors = {
        "f32": torch.randn(5, 7, generator=g),
        "bf16": torch.randn(3, 4, 2, generator=g).to(torch.bfloat16),
        "f16": torch.randn(9, generator=g).to(torch.float16),
        "i64": torch.randint(-(2**40), 2**40, (4, 3), generator=g),
        "scalar": torch.tensor(3.5),
        "empty": torch.zeros(0, 4),
    }
    meta = {"format": "pt", "note": "x"}
    ref, ours = tmp_path / "ref.safetensors", tmp_path / "ours.safetensors"
    save_file(tensors, str(ref), metadata=meta)
    specs = [TensorSpec(k, {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16",
                            torch.int64: "I64"}[t.dtype], tuple(t.shape)) for k, t in tensors.items()]
    with StreamingSafetensorsWriter(ours, specs, meta) as w:
        for k, t in tensors.items():
            w.write(k, t)
    assert ours.stat().st_size == w.bytes_total
    with safe_open(str(ref), framework="pt") as a, safe_open(str(ours), framework="pt") as b:
        assert set(a.keys()) == set(b.keys()) and a.metadata() == b.metadata() == meta
        for k in a.keys():
            x, y = a.get_tensor(k), b.get_tensor(k)
            assert x.dtype == y.dtype and x.shape == y.shape and torch.equal(x, y), k
    with SafetensorsReader(ours) as r:  # our reader too
        for k, t in tensors.items():
            assert torch.equal(r.get_tensor(k), t)


def test_writer_refuses_wrong_order_dtype_and_missing(tmp_path: Path) -> None:
    specs = [TensorSpec("a", "F32", (2,)), TensorSpec("b", "F32", (3,))]
    with pytest.raises(UserInputError, match='expected tensor "a"'):
        with StreamingSafetensorsWriter(tmp_path / "x.safetensors", specs) as w:
            w.write("b", torch.zeros(3))
    with pytest.raises(ShapeMismatchError):
        with StreamingSafetensorsWriter(tmp_path / "y.safetensors", specs) as w:
            w.write("a", torch.zeros(2, dtype=torch.float16))
    with pytest.raises(UserInputError, match="not written"):
        with StreamingSafetensorsWriter(tmp_path / "z.safetensors", specs) as w:
            w.write("a", torch.zeros(2))
    with pytest.raises(ShapeMismatchError, match="got 4 bytes"):  # row blocks must add up
        with StreamingSafetensorsWriter(tmp_path / "p.safetensors", specs) as w:
            w.write_parts("a", [torch.zeros(1)])
    with StreamingSafetensorsWriter(tmp_path / "q.safetensors", specs) as w:
        w.write_parts("a", [torch.ones(1), torch.full((1,), 2.0)])
        w.write_parts("b", [torch.zeros(3)])
    with SafetensorsReader(tmp_path / "q.safetensors") as r:
        assert r.get_tensor("a").tolist() == [1.0, 2.0]


def test_plan_shards() -> None:
    specs = [TensorSpec(f"t{i}", "F32", (10,)) for i in range(5)] + [TensorSpec("big", "F32", (100,))]
    shards = plan_shards(specs, 80)
    assert [[s.name for s in sh] for sh in shards] == [["t0", "t1"], ["t2", "t3"], ["t4"], ["big"]]
    mixed = plan_shards([TensorSpec("h", "F16", (2,)), TensorSpec("f", "F32", (2,))], 10**6)
    assert [s.name for s in mixed[0]] == ["f", "h"]  # wider dtypes first keeps data aligned
    with pytest.raises(UserInputError):
        plan_shards(specs, 0)


def test_parse_size() -> None:
    assert parse_size("1GB") == 10**9 and parse_size("1GiB") == 2**30
    assert parse_size("500mb") == 5 * 10**8 and parse_size("1000") == 1000
    for bad in ("", "1XB", "-5MB", "0"):
        with pytest.raises(UserInputError):
            parse_size(bad)


# -- stream_apply vs in-memory apply ----------------------------------------------------------
def test_dense_file_matches_in_memory(base_dir: Path, tmp_path: Path) -> None:
    vec = _dense_vector(base_dir)
    vec.save(tmp_path / "v.safetensors")
    rep = stream_apply_report(base_dir, tmp_path / "v.safetensors", tmp_path / "out", scale=SCALE, progress=False)
    assert rep.tensors_changed == len(vec) and rep.shards == 1 and rep.fingerprint_checked
    _assert_matches_in_memory(base_dir, tmp_path / "out", vec, SCALE)
    names = {p.name for p in (tmp_path / "out").iterdir()}
    assert {"config.json", "generation_config.json", "tokenizer.json", "model.safetensors"} <= names
    with safe_open(str(tmp_path / "out" / "model.safetensors"), framework="pt") as f:
        meta = f.metadata()
    applied = json.loads(meta["taskvec_applied"])
    assert meta["format"] == "pt" and applied["scale"] == SCALE and applied["task"] == "dense-test"
    assert applied["base_fingerprint"] == fingerprint(base_dir)


def test_lowrank_vector_object_and_file(base_dir: Path, tmp_path: Path) -> None:
    vec = _lowrank_vector(base_dir)
    assert vec.form == "mixed"
    out = stream_apply(base_dir, vec, tmp_path / "a", scale=-1.3, progress=False)
    _assert_matches_in_memory(base_dir, out, vec, -1.3)
    vec.save(tmp_path / "lr.safetensors")
    out = stream_apply(base_dir, tmp_path / "lr.safetensors", tmp_path / "b", scale=-1.3, progress=False)
    _assert_matches_in_memory(base_dir, out, vec, -1.3)


def test_pth_vector(base_dir: Path, tmp_path: Path) -> None:
    vec = _dense_vector(base_dir)
    vec.save(tmp_path / "v.pth")  # plain {name: delta}: no fingerprint to check
    rep = stream_apply_report(base_dir, tmp_path / "v.pth", tmp_path / "out", scale=SCALE, progress=False)
    assert not rep.fingerprint_checked
    _assert_matches_in_memory(base_dir, tmp_path / "out", vec, SCALE)


def test_sharded_output(base_dir: Path, tmp_path: Path) -> None:
    vec = _dense_vector(base_dir)
    rep = stream_apply_report(base_dir, vec, tmp_path / "out", scale=SCALE, max_shard_bytes=60_000, progress=False)
    files = sorted(p.name for p in (tmp_path / "out").glob("*.safetensors"))
    assert rep.shards == len(files) > 2 and files[0] == f"model-00001-of-{rep.shards:05d}.safetensors"
    index = json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == set(files) and len(index["weight_map"]) == rep.tensors
    _assert_matches_in_memory(base_dir, tmp_path / "out", vec, SCALE)
    # a sharded base streams too, back into one file
    out2 = stream_apply(tmp_path / "out", vec, tmp_path / "out2", scale=-SCALE, force=True, progress=False)
    ref = dict(_load(base_dir).named_parameters())
    for k, p in _load(out2).named_parameters():
        # (w + s d) - s d, elementwise: two roundings of ulp(|w| + |s d|) < 1e-6 here
        assert (p - ref[k]).abs().max() <= 1e-6, k


def test_bf16_base_keeps_dtype(tmp_path: Path) -> None:
    base = _save_base(tmp_path / "bf16", torch.bfloat16)
    vec = _dense_vector(base)
    out = stream_apply(base, vec, tmp_path / "out", scale=SCALE, progress=False)
    with safe_open(str(out / "model.safetensors"), framework="pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"BF16"}
    _assert_matches_in_memory(base, out, vec, SCALE)


def test_embedded_name_resolves_through_model_dir(base_dir: Path, tmp_path: Path, monkeypatch) -> None:
    import taskvec.models.loading as loading

    real = loading.model_dir
    monkeypatch.setattr(loading, "model_dir", lambda n: base_dir if n == "fake-embedded" else real(n))
    rep = stream_apply_report("fake-embedded", _dense_vector(base_dir), tmp_path / "out", progress=False)
    assert rep.base_dir == base_dir and (tmp_path / "out" / "model.safetensors").exists()


def test_row_blocks_match_in_memory(base_dir: Path, tmp_path: Path, monkeypatch) -> None:
    """Tensors larger than CHUNK_BYTES are processed in row blocks, with the same result."""
    import taskvec.weights.stream_apply as stream

    monkeypatch.setattr(stream, "CHUNK_BYTES", 1000)  # a few rows per block
    dense, lowrank = _dense_vector(base_dir), _lowrank_vector(base_dir)
    dense.save(tmp_path / "d.safetensors")
    lowrank.save(tmp_path / "lr.safetensors")
    for i, (vec, src) in enumerate([(dense, tmp_path / "d.safetensors"), (lowrank, lowrank),
                                    (lowrank, tmp_path / "lr.safetensors")]):
        out = stream_apply(base_dir, src, tmp_path / f"out{i}", scale=SCALE, progress=False)
        _assert_matches_in_memory(base_dir, out, vec, SCALE)


@pytest.mark.parametrize("arch", ["llama", "gpt2", "qwen2"])
def test_fingerprint_tensors_equals_fingerprint(arch: str, tmp_path: Path) -> None:
    model, _ = tiny_model(arch)
    model.save_pretrained(tmp_path, safe_serialization=True, max_shard_size="100KB")
    readers, _ = open_tensors(model_safetensors_files(tmp_path))
    assert fingerprint_tensors(readers) == fingerprint(tmp_path) == fingerprint(model)


def test_reader_rows(tmp_path: Path) -> None:
    t = torch.arange(60, dtype=torch.float32).reshape(5, 3, 4)
    save_file({"t": t, "s": torch.tensor(2.0)}, str(tmp_path / "x.safetensors"))
    with SafetensorsReader(tmp_path / "x.safetensors") as r:
        assert torch.equal(r.get_rows("t", 1, 3), t[1:3]) and r.get_rows("t", 4, 9).shape == (1, 3, 4)
        assert r.get_rows("t", 3, 3).shape == (0, 3, 4) and torch.equal(r.get_rows("s", 0, 1), t.new_tensor(2.0))


# -- refusals: nothing written ----------------------------------------------------------------
def _no_output(parent: Path, name: str = "out") -> None:
    assert not (parent / name).exists()
    assert not [p for p in parent.iterdir() if p.name.startswith(f".{name}.")]


def test_fingerprint_mismatch_refused_and_force(base_dir: Path, tmp_path: Path) -> None:
    vec = _dense_vector(base_dir)
    vec.metadata["base_fingerprint"] = "0123456789abcdef"
    with pytest.raises(FingerprintMismatchError, match="--force"):
        stream_apply(base_dir, vec, tmp_path / "out", progress=False)
    _no_output(tmp_path)
    rep = stream_apply_report(base_dir, vec, tmp_path / "out", force=True, progress=False)
    assert not rep.fingerprint_checked
    _assert_matches_in_memory(base_dir, tmp_path / "out", vec, 1.0)


def test_wrong_shape_and_unknown_name_refused(base_dir: Path, tmp_path: Path) -> None:
    fp = fingerprint(base_dir)
    bad = TaskVector({"model.norm.weight": torch.zeros(3)}, {"base_fingerprint": fp})
    bad.save(tmp_path / "bad.safetensors")
    with pytest.raises(ShapeMismatchError, match="model.norm.weight"):
        stream_apply(base_dir, tmp_path / "bad.safetensors", tmp_path / "out", progress=False)
    _no_output(tmp_path)
    missing = TaskVector({"model.layers.9.mlp.up_proj.weight": torch.zeros(2, 2)}, {"base_fingerprint": fp})
    with pytest.raises(ShapeMismatchError, match="no such tensor"):
        stream_apply(base_dir, missing, tmp_path / "out", progress=False)
    _no_output(tmp_path)


def test_tied_head_refused(base_dir: Path, tmp_path: Path) -> None:
    emb = _load(base_dir).get_input_embeddings().weight
    vec = TaskVector({"lm_head.weight": torch.zeros(emb.shape)}, {"base_fingerprint": fingerprint(base_dir)})
    with pytest.raises(ShapeMismatchError, match="ties it to"):
        stream_apply(base_dir, vec, tmp_path / "out", progress=False)
    _no_output(tmp_path)


def test_bad_scale_and_output_paths(base_dir: Path, tmp_path: Path) -> None:
    vec = _dense_vector(base_dir)
    with pytest.raises(NonFiniteError):
        stream_apply(base_dir, vec, tmp_path / "out", scale=float("nan"), progress=False)
    with pytest.raises(UserInputError, match="base directory"):
        stream_apply(base_dir, vec, base_dir, progress=False)
    with pytest.raises(UserInputError, match="contains the base"):
        stream_apply(base_dir, vec, base_dir.parent, overwrite=True, progress=False)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("old")
    with pytest.raises(UserInputError, match="already exists"):
        stream_apply(base_dir, vec, tmp_path / "out", progress=False)
    assert (tmp_path / "out" / "keep.txt").exists()
    stream_apply(base_dir, vec, tmp_path / "out", overwrite=True, progress=False)
    assert not (tmp_path / "out" / "keep.txt").exists() and (tmp_path / "out" / "model.safetensors").exists()


def test_nonfinite_delta_leaves_no_output(base_dir: Path, tmp_path: Path) -> None:
    vec = _dense_vector(base_dir)
    name = next(iter(vec.names))
    vec.deltas[name].view(-1)[0] = float("nan")
    with pytest.raises(NonFiniteError, match=name):
        stream_apply(base_dir, vec, tmp_path / "out", progress=False)
    _no_output(tmp_path)


# -- CLI --------------------------------------------------------------------------------------
def test_cli_apply_json(base_dir: Path, tmp_path: Path, capsys) -> None:
    _dense_vector(base_dir).save(tmp_path / "v.safetensors")
    rc = main(["apply", "--base", str(base_dir), "--vector", str(tmp_path / "v.safetensors"), "--scale", "0.5",
               "--out", str(tmp_path / "out"), "--max-shard-size", "100KB", "--no-progress", "--json"])
    assert rc == 0
    res = json.loads(capsys.readouterr().out)
    assert res["shards"] > 1 and res["tensors_changed"] == res["tensors"] and res["peak_rss_bytes"] > 0
    rc = main(["apply", "--base", str(base_dir), "--vector", str(tmp_path / "v.safetensors"),
               "--out", str(tmp_path / "out2"), "--no-progress"])
    assert rc == 0 and "peak RSS" in capsys.readouterr().out


def test_cli_apply_no_fsync_same_bytes(base_dir: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    """--no-fsync skips every fsync of the apply and writes the same bytes; the default fsyncs."""
    import os

    _dense_vector(base_dir).save(tmp_path / "v.safetensors")
    calls: list[int] = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (calls.append(fd), real(fd))[1])
    outs = {}
    for flag in ([], ["--no-fsync"]):
        calls.clear()
        out = tmp_path / f"out{len(flag)}"
        assert main(["apply", "--base", str(base_dir), "--vector", str(tmp_path / "v.safetensors"), "--scale", "0.5",
                     "--out", str(out), "--max-shard-size", "100KB", "--no-progress", "--json", *flag]) == 0
        res = json.loads(capsys.readouterr().out)
        assert res["fsync"] is (not flag)
        outs[bool(flag)] = (len(calls), {f.name: f.read_bytes() for f in sorted(out.iterdir())})
    assert outs[False][0] > res["shards"] and outs[True][0] == 0
    assert outs[True][1] == outs[False][1]
    from taskvec.io_utils import _DURABLE

    assert _DURABLE.get() is True


@pytest.mark.parametrize(
    "extra, match",
    [
        (["--vector", "missing.safetensors"], "does not exist"),
        (["--scale", "nan"], "finite"),
        (["--max-shard-size", "lots"], "cannot read the size"),
        (["--base", "no-such-model-dir"], "unknown model"),
        (["--out", "BASE"], "base directory"),
        (["--vector", "WRONGFP"], "fingerprint"),
    ],
)
def test_cli_bad_input_exit_2(base_dir: Path, tmp_path: Path, capsys, extra: list[str], match: str) -> None:
    vec = _dense_vector(base_dir)
    vec.save(tmp_path / "v.safetensors")
    vec.metadata["base_fingerprint"] = "0123456789abcdef"
    vec.save(tmp_path / "wrong.safetensors")
    args = {"--base": str(base_dir), "--vector": str(tmp_path / "v.safetensors"), "--out": str(tmp_path / "out")}
    subst = {"BASE": str(base_dir), "WRONGFP": str(tmp_path / "wrong.safetensors"),
             "missing.safetensors": str(tmp_path / "missing.safetensors")}
    argv = ["apply"]
    for k, v in args.items():
        argv += [k, v]
    argv += [subst.get(x, x) for x in extra] + ["--no-progress"]
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err and match in err, err
    _no_output(tmp_path)


def test_killed_apply_leaves_no_output(base_dir: Path, tmp_path: Path) -> None:
    """SIGKILL midway through writing: ``--out`` never appears (only a hidden temp dir)."""
    _dense_vector(base_dir).save(tmp_path / "v.safetensors")
    out = tmp_path / "out"
    # The tiny model writes in milliseconds: slow the writer (a test-only hook) so the kill
    # lands while the first shard is half written.
    env = os.environ | {"TASKVEC_TEST_SLOW_WRITE": "0.25"}
    cmd = [sys.executable, "-m", "taskvec", "apply", "--base", str(base_dir), "--vector",
           str(tmp_path / "v.safetensors"), "--out", str(out), "--no-progress", "--max-shard-size", "100KB"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            partial = [f for f in tmp_path.glob(".out.*.tmp/*.safetensors") if f.stat().st_size > 0]
            if partial:
                break
            time.sleep(0.02)
        assert proc.poll() is None, "apply finished before it could be killed"
        assert partial, "no partial output appeared"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    assert not out.exists()
    leftovers = [p.name for p in tmp_path.iterdir() if p.name not in ("v.safetensors",)]
    assert leftovers and all(n.startswith(".out.") and n.endswith(".tmp") for n in leftovers)
    # a rerun is not disturbed by the leftover temp directory
    assert stream_apply(base_dir, tmp_path / "v.safetensors", out, progress=False) == out
