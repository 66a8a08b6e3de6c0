"""Benchmark: streaming ``taskvec apply`` on a synthetic checkpoint with Llama-3-8B shapes in bf16.

Usage:
    python benchmarks/bench_apply_8b.py [--workdir /tmp/taskvec-bench-8b] [--layers 32] [--keep]

The base (about 16 GB: 32 layers, hidden 4096, MLP 14336, 8 KV heads, vocabulary 128256, untied
head, bf16, 4 GiB shards + index) is written by this benchmark with constant-valued tensors (the
values do not change the cost) and a rank-16 LoRA vector on all seven projections of every layer
(float32 factors). Then, in the same run:

1. the disk's sequential read speed: the base's shards are flushed and dropped from the page
   cache (``fsync`` + ``posix_fadvise(DONTNEED)``) and read once in 16 MiB chunks;
2. they are dropped again, and ``taskvec apply --json`` runs in a child process: its own time
   (no interpreter start), its wall time and its peak RSS (``ru_maxrss`` from ``os.wait4``).

Reported: peak RSS (goal: under 1 GB), apply throughput (base bytes read per second of the
command) as a fraction of the measured read speed. Everything is deleted afterwards unless
``--keep``. Needs about 2 x 16 GB of free disk.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe, machine_info  # noqa: E402

HIDDEN, MLP, KV, VOCAB, RANK = 4096, 14336, 1024, 128256, 16
PROJ = {"q_proj": ("self_attn", HIDDEN, HIDDEN), "k_proj": ("self_attn", KV, HIDDEN),
        "v_proj": ("self_attn", KV, HIDDEN), "o_proj": ("self_attn", HIDDEN, HIDDEN),
        "gate_proj": ("mlp", MLP, HIDDEN), "up_proj": ("mlp", MLP, HIDDEN), "down_proj": ("mlp", HIDDEN, MLP)}


def specs(layers: int) -> list[tuple[str, tuple[int, ...]]]:
    out = [("model.embed_tokens.weight", (VOCAB, HIDDEN))]
    for i in range(layers):
        p = f"model.layers.{i}."
        out += [(p + "input_layernorm.weight", (HIDDEN,)), (p + "post_attention_layernorm.weight", (HIDDEN,))]
        out += [(f"{p}{mod}.{name}.weight", (o, n)) for name, (mod, o, n) in PROJ.items()]
    return out + [("model.norm.weight", (HIDDEN,)), ("lm_head.weight", (VOCAB, HIDDEN))]


def write_base(d: Path, layers: int, shard_bytes: int = 4 * 2**30) -> list[Path]:
    import torch

    from taskvec.formats import StreamingSafetensorsWriter, TensorSpec
    from taskvec.weights.stream_apply import plan_shards

    d.mkdir(parents=True, exist_ok=True)
    shards = plan_shards([TensorSpec(n, "BF16", s) for n, s in specs(layers)], shard_bytes)
    files, weight_map = [], {}
    for k, group in enumerate(shards):
        f = d / f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
        with StreamingSafetensorsWriter(f, group, {"format": "pt"}) as w:
            for j, s in enumerate(group):
                w.write(s.name, torch.full(s.shape, 0.01 * (1 + j % 7), dtype=torch.bfloat16))
                weight_map[s.name] = f.name
        files.append(f)
    (d / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (d / "config.json").write_text(json.dumps({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": HIDDEN,
        "intermediate_size": MLP, "num_hidden_layers": layers, "num_attention_heads": 32,
        "num_key_value_heads": 8, "vocab_size": VOCAB, "tie_word_embeddings": False,
        "torch_dtype": "bfloat16"}))
    return files


def write_vector(path: Path, layers: int) -> None:
    import torch

    from taskvec.weights import LowRankDelta, TaskVector

    g = torch.Generator().manual_seed(0)
    deltas = {}
    for i in range(layers):
        for name, (mod, o, n) in PROJ.items():
            deltas[f"model.layers.{i}.{mod}.{name}.weight"] = LowRankDelta(
                torch.randn(RANK, n, generator=g) * 0.01, torch.randn(o, RANK, generator=g) * 0.01, 1.0)
    TaskVector(deltas, {"task": "synthetic"}).save(path)


def drop_cache(files: list[Path]) -> None:
    for f in files:
        fd = os.open(f, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def read_speed(files: list[Path], chunk: int = 16 * 2**20) -> float:
    """Bytes per second of one sequential cold read of ``files``."""
    drop_cache(files)
    buf = memoryview(bytearray(chunk))
    total, t0 = 0, time.perf_counter()
    for f in files:
        with open(f, "rb", buffering=0) as fh:
            while n := fh.readinto(buf):
                total += n
    return total / (time.perf_counter() - t0)


def write_speed(path: Path, nbytes: int = 4 * 2**30, chunk: int = 16 * 2**20) -> float:
    """Bytes per second of one sequential write of ``nbytes`` to ``path``, fsync included."""
    buf = memoryview(bytearray(chunk))
    t0 = time.perf_counter()
    with open(path, "wb", buffering=0) as fh:
        left = nbytes
        while left > 0:
            left -= fh.write(buf[: min(chunk, left)])
        os.fsync(fh.fileno())
    speed = nbytes / (time.perf_counter() - t0)
    path.unlink()
    return speed


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "taskvec-bench-8b")
    p.add_argument("--layers", type=int, default=32)
    p.add_argument("--keep", action="store_true")
    p.add_argument("--json-out", type=Path, default=Path("benchmarks/results/apply_8b.json"))
    args = p.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_apply import run_measured

    work = args.workdir
    shutil.rmtree(work, ignore_errors=True)
    try:
        t0 = time.perf_counter()
        files = write_base(work / "base", args.layers)
        write_vector(work / "vector.safetensors", args.layers)
        gen_s = time.perf_counter() - t0
        base_bytes = sum(f.stat().st_size for f in files)
        speed = read_speed(files)
        wspeed = write_speed(work / "write-test.tmp")
        drop_cache(files)
        r = run_measured([sys.executable, "-m", "taskvec", "apply", "--base", str(work / "base"), "--vector",
                          str(work / "vector.safetensors"), "--out", str(work / "out"), "--json", "--no-progress",
                          "--max-shard-size", "4GiB"], work / "apply.log")
        log = (work / "apply.log").read_text(errors="replace")
        rep = json.loads(log[log.index("{"):]) if r["rc"] == 0 else {}
        if r["rc"] != 0:
            print(log[-2000:], file=sys.stderr)
            return 1
        seconds = rep["seconds"]
        info = machine_info()
        out = {"benchmark": "streaming apply, Llama-3-8B shapes, bf16", "date": time.strftime("%Y-%m-%d"),
               "machine": info, "machine_line": describe(info), "layers": args.layers, "base_bytes": base_bytes,
               "vector_bytes": (work / "vector.safetensors").stat().st_size, "generate_seconds": round(gen_s, 1),
               "disk_read_bytes_per_s": round(speed), "apply_seconds": seconds, "apply_wall_seconds": r["wall_s"],
               "peak_rss_bytes": r["peak_rss_bytes"], "bytes_written": rep["bytes_written"],
               "apply_read_bytes_per_s": round(base_bytes / seconds),
               "fraction_of_disk_read_speed": round(base_bytes / seconds / speed, 3),
               "disk_write_bytes_per_s": round(wspeed),
               # a serial read-then-write of the bytes cannot beat this: 1 / (1/read + 1/write)
               "fraction_of_serial_read_write_bound": round(
                   (base_bytes / seconds) / (1 / (1 / speed + 1 / wspeed)), 3)}
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    args.json_out.parent.mkdir(parents=True, exist_ok=True)
    args.json_out.write_text(json.dumps(out, indent=2) + "\n")
    gb = 1e9
    print(describe(info))
    print(f"base {base_bytes / gb:.1f} GB bf16 ({args.layers} layers), rank-{RANK} vector; disk sequential read "
          f"{speed / gb:.2f} GB/s, write (fsync) {wspeed / gb:.2f} GB/s")
    print(f"taskvec apply: {seconds:.1f} s ({r['wall_s']:.1f} s wall), peak RSS {r['peak_rss_bytes'] / 2**20:.0f} MiB, "
          f"{base_bytes / seconds / gb:.2f} GB/s = {out['fraction_of_disk_read_speed']:.0%} of the read speed, "
          f"{out['fraction_of_serial_read_write_bound']:.0%} of a serial read + write of the same bytes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
