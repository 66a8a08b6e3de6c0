"""Benchmark: core-space merges of LoRA vectors of real 8B shapes vs the dense path.

Llama-3-8B shapes: 32 layers, hidden 4096, MLP 14336, 8 KV heads (k/v 1024 x 4096); random
LoRA factors of rank 16 on all seven projections; T = 8 vectors (168 MB each as float32
factors). Each merge runs as ``taskvec merge`` in a child process, which reports its time
(excluding interpreter start) and peak RSS; the file it writes is measured and deleted.

* core path (the default for LoRA inputs): every method on all 32 layers;
* dense path (``space=dense`` / the published element-wise methods): each tensor densified,
  on the first ``--dense-layers`` layers (default 1, i.e. 7 tensors of every shape). Its peak
  RSS does not grow with the number of layers (streaming: one tensor of every input at a
  time), so the subset's peak is the full model's; its time is linear in the number of
  tensors and is scaled by 32 / dense-layers, and its file size is computed for 32 layers.
  The core path is also run on the same subset, so the ratio is measured in one run.

Usage: python benchmarks/bench_core_merge_8b.py [--methods tsv,iso_c,ties] [--dense-layers 1]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from child import taskvec_merge  # noqa: E402
from machine import describe, machine_info  # noqa: E402

LAYERS, HIDDEN, MLP, KV = 32, 4096, 14336, 1024
SHAPES = {  # name -> (out, in)
    "self_attn.q_proj": (HIDDEN, HIDDEN), "self_attn.k_proj": (KV, HIDDEN), "self_attn.v_proj": (KV, HIDDEN),
    "self_attn.o_proj": (HIDDEN, HIDDEN), "mlp.gate_proj": (MLP, HIDDEN), "mlp.up_proj": (MLP, HIDDEN),
    "mlp.down_proj": (HIDDEN, MLP),
}
#: (method, core params, dense params): the dense counterpart of each (None: not run; task
#: arithmetic has no dense path for LoRA inputs, iso_cts's takes T + 1 full SVDs per matrix)
METHODS = {
    "task_arithmetic": ({}, None),
    "tsv": ({}, {"space": "dense"}),
    "iso_c": ({}, {"space": "dense"}),
    "iso_cts": ({}, None),  # dense path not run here: T + 1 full SVDs of every matrix
    "ties": ({"space": "core"}, {}),
    "dare_ties": ({"space": "core"}, {}),
}


def make_vectors(work: Path, T: int, rank: int, layers: int, tag: str) -> list[Path]:
    """T random LoRA vector files (cached in ``work``)."""
    from taskvec.weights.lowrank import LowRankDelta
    from taskvec.weights.vector import TaskVector

    paths = []
    for t in range(T):
        path = work / f"{tag}-{t}.safetensors"
        paths.append(path)
        if path.exists():
            continue
        g = torch.Generator().manual_seed(1000 + t)
        deltas = {}
        for layer in range(layers):
            for mod, (out, inn) in SHAPES.items():
                deltas[f"model.layers.{layer}.{mod}.weight"] = LowRankDelta(
                    torch.randn(rank, inn, generator=g) / inn**0.5, torch.randn(out, rank, generator=g) * 1e-3, 2.0)
        TaskVector(deltas, {"task": f"random{t}", "base_model": "llama-3-8b-shapes"}).save(path)
    return paths


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--T", type=int, default=8)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--dense-layers", type=int, default=1)
    p.add_argument("--work", type=Path, default=Path("/tmp/taskvec-bench-8b"))
    p.add_argument("--json-out", type=Path, default=Path("benchmarks/results/core_merge_8b.json"))
    args = p.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    full = make_vectors(args.work, args.T, args.rank, LAYERS, f"full-r{args.rank}")
    subset = make_vectors(args.work, args.T, args.rank, args.dense_layers, f"sub{args.dense_layers}-r{args.rank}")
    gen = time.perf_counter() - t0
    scale = LAYERS / args.dense_layers
    dense_bytes_32 = sum(o * i for o, i in SHAPES.values()) * LAYERS * 4
    rows = []
    for method in [m.strip() for m in args.methods.split(",") if m.strip()]:
        core_params, dense_params = METHODS[method]
        row: dict[str, Any] = {"method": method, "core_params": core_params, "dense_params": dense_params}
        print(f"{method}: core, {LAYERS} layers", file=sys.stderr)
        row["core_full"] = taskvec_merge(method, core_params, full, args.work / "out.safetensors")
        row["core_subset"] = taskvec_merge(method, core_params, subset, args.work / "out.safetensors")
        if dense_params is not None:
            print(f"{method}: dense, {args.dense_layers} layer(s)", file=sys.stderr)
            d = taskvec_merge(method, dense_params, subset, args.work / "out.safetensors")
            row["dense_subset"] = d
            row["dense_full_estimate"] = {"seconds": round(d["seconds"] * scale, 1), "peak_rss_bytes": d["peak_rss_bytes"],
                                          "file_bytes": dense_bytes_32, "how": f"time x {scale:g}; RSS as measured; size from shapes"}
            row["time_ratio_dense_over_core_subset"] = round(d["seconds"] / max(row["core_subset"]["seconds"], 1e-9), 1)
            row["rss_ratio_dense_over_core"] = round(d["peak_rss_bytes"] / row["core_full"]["peak_rss_bytes"], 2)
        rows.append(row)
        print(json.dumps(row), file=sys.stderr)
    info = machine_info()
    input_bytes = sum(f.stat().st_size for f in full)
    result = {"benchmark": "core-space vs dense merges, Llama-3-8B shapes, random LoRA rank 16, all 7 projections",
              "date": time.strftime("%Y-%m-%d"), "machine": info, "machine_line": describe(info), "T": args.T,
              "rank": args.rank, "layers": LAYERS, "dense_layers": args.dense_layers, "input_bytes_total": input_bytes,
              "generate_seconds": round(gen, 1), "rows": rows}
    args.json_out.parent.mkdir(parents=True, exist_ok=True)
    args.json_out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"inputs: {args.T} x {input_bytes / args.T / 2**20:.0f} MiB; {describe(info)}")
    print("| method | core: time (32 layers) | core: peak RSS | core: file | dense: time (32 layers, est.) | dense: peak RSS | dense: file | time ratio (same subset) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        c = r["core_full"]
        d = r.get("dense_full_estimate")
        dcells = (f"{d['seconds']:.0f} s | {d['peak_rss_bytes'] / 2**30:.2f} GiB | {d['file_bytes'] / 2**30:.1f} GiB"
                  if d else "- | - | -")
        ratio = f"{r['time_ratio_dense_over_core_subset']}x" if d else "-"
        print(f"| {r['method']} | {c['seconds']:.1f} s | {c['peak_rss_bytes'] / 2**30:.2f} GiB | "
              f"{c['file_bytes'] / 2**30:.2f} GiB | {dcells} | {ratio} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
