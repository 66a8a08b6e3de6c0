"""Run the speed benchmarks one after another and write one table with ratios and the machine.

Usage:
    python benchmarks/run_all.py [--only startup,apply,kshot,train,lora_kernel,apply_8b] [--skip apply_8b] \
        [--out benchmarks/results/summary]          # make bench

Each benchmark runs as a child process (one at a time: two real-model jobs on the same cores
slow each other several-fold), writes its own JSON under ``benchmarks/results/``, and every
ratio in the table compares two numbers measured in the same child, on the same machine:

| benchmark | measured | against (same run) | goal |
|---|---|---|---|
| startup | ``taskvec --help`` | bare interpreter, ``import torch`` | < 1 s |
| apply | ``taskvec apply`` own time (no interpreter start) | page-cache read + write of its bytes; naive script; mergekit if installed | <= 3x the I/O |
| kshot | 10-shot SST-2 with shared demonstrations (prefix reused) | zero-shot on the same split | <= 1.5x |
| train | LoRA tokens/s and useful GFLOP/s | a plain float32 GEMM | >= 50% of the GEMM peak |
| lora_kernel | training step with the fused LoRA linear | PEFT's LoRA forward, interleaved on the same batches | faster (CI > 1) |
| apply_8b | streaming apply of a 16 GB bf16 Llama-3-8B-shape checkpoint | the disk's read / write speed | RSS < 1 GB |

``apply_8b`` needs about 32 GB of free disk and a few minutes; skip it with ``--skip apply_8b``.
The summary (``<out>.md`` and ``<out>.json``) starts with the machine (CPU model, instruction
sets, cores, torch), so tables from different machines can be told apart.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
sys.path.insert(0, str(HERE))
from machine import describe, machine_info  # noqa: E402

#: name -> (script and arguments, its JSON)
SUITE: dict[str, tuple[list[str], str]] = {
    "startup": (["bench_startup.py"], "startup.json"),
    "apply": (["bench_apply.py", "--skip-mergekit"], "apply.json"),
    "kshot": (["bench_kshot.py"], "kshot.json"),
    "train": (["bench_train.py"], "train.json"),
    "lora_kernel": (["bench_lora_kernel.py"], "lora_kernel.json"),
    "apply_8b": (["bench_apply_8b.py"], "apply_8b.json"),
}


def _startup(d: dict[str, Any]) -> list[list[Any]]:
    s = d["seconds"]
    return [["startup: `taskvec --help`", f"{s['taskvec --help']:.2f} s",
             f"`import torch` {s[next(k for k in s if 'import torch' in k)]:.2f} s", "< 1 s",
             s["taskvec --help"] < 1]]


def _apply(d: dict[str, Any]) -> list[list[Any]]:
    stream = next(r for r in d["results"] if r["key"] == "stream")
    rows = []
    if "vs_io_baseline" in stream:
        runs = len(stream.get("command_seconds_runs", [0]))
        if "no_fsync_vs_io_baseline" in stream:  # like for like: no fsync on either side
            rows.append(["apply --no-fsync (embedded model, dense vector)",
                         f"{stream['command_seconds_no_fsync']:.2f} s own time (median of {runs})",
                         f"page-cache I/O {d['io_baseline_seconds']:.2f} s: {stream['no_fsync_vs_io_baseline']}x",
                         "<= 3x", stream["no_fsync_vs_io_baseline"] <= 3])
            rows.append(["apply, default (fsync before rename)",
                         f"{stream['command_seconds']:.2f} s own time (median of {runs})",
                         f"read + write + fsync {d['io_durable_baseline_seconds']:.2f} s: "
                         f"{stream['vs_durable_io_baseline']}x; page cache alone {stream['vs_io_baseline']}x",
                         "-", None])
        else:  # JSON of an older run: one number
            rows.append(["apply (embedded model, dense vector)", f"{stream['command_seconds']:.2f} s own time",
                         f"page-cache I/O {d['io_baseline_seconds']:.2f} s: {stream['vs_io_baseline']}x",
                         "<= 3x", stream["vs_io_baseline"] <= 3])
    for r in d["results"]:
        if r["key"] != "stream" and r.get("rc") == 0:
            rows.append([f"apply vs {r['method']}", f"{stream['wall_s']:.1f} s wall", f"{r['wall_s']:.1f} s wall: "
                         f"{r['wall_s'] / stream['wall_s']:.1f}x slower", "-", None])
    return rows


def _kshot(d: dict[str, Any]) -> list[list[Any]]:
    r = d["ratio_kshot_to_zero_shot"]
    return [[f"{d['shots']}-shot {d['task']} (shared demos, prefix reused)", f"{d['rows'][1]['seconds']:.1f} s",
             f"zero-shot {d['rows'][0]['seconds']:.1f} s: {r}x; predictions equal {d['agreeing_predictions']}/"
             f"{d['checked_predictions']}", "<= 1.5x", r <= 1.5]]


def _train(d: dict[str, Any]) -> list[list[Any]]:
    g = d["runs"]["packed"]
    peak = max(d["gemm_peak_gflops"].values())
    return [["LoRA training (SmolLM2, batch 16, rank 8)", f"{g['tokens_per_s']} tokens/s, {g['useful_gflops']} GFLOP/s",
             f"fp32 GEMM {peak} GFLOP/s: {g['fraction_of_peak']:.1%}; packed {g['seconds_per_step']} s/step, padded "
             f"{d['runs']['padded']['seconds_per_step']}", ">= 50%",
             g["fraction_of_peak"] >= 0.5]]


def _lora_kernel(d: dict[str, Any]) -> list[list[Any]]:
    lo, hi = d["speedup_95ci"]
    return [["fused LoRA linear (training step, interleaved A/B)", f"{d['median_step_s']['fused']:.3f} s/step",
             f"PEFT forward {d['median_step_s']['peft']:.3f} s/step: {d['speedup_median']}x [{lo}, {hi}], "
             f"n = {d['pairs']} pairs", "CI > 1", lo > 1]]


def _apply_8b(d: dict[str, Any]) -> list[list[Any]]:
    return [["streaming apply, 16 GB bf16 (Llama-3-8B shapes)",
             f"{d['apply_seconds']:.0f} s, peak RSS {d['peak_rss_bytes'] / 2**20:.0f} MiB",
             f"{d['fraction_of_disk_read_speed']:.0%} of disk read speed, {d['fraction_of_serial_read_write_bound']:.0%} "
             "of serial read + write", "RSS < 1 GB", d["peak_rss_bytes"] < 2**30]]


ROWS: dict[str, Callable[[dict[str, Any]], list[list[Any]]]] = {
    "startup": _startup, "apply": _apply, "kshot": _kshot, "train": _train, "lora_kernel": _lora_kernel,
    "apply_8b": _apply_8b}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", default=",".join(SUITE))
    p.add_argument("--skip", default="")
    p.add_argument("--summarize-only", action="store_true", help="only rebuild the table from the JSONs")
    p.add_argument("--out", type=Path, default=RESULTS / "summary")
    args = p.parse_args(argv)
    names = [n for n in args.only.split(",") if n and n not in args.skip.split(",")]
    for n in names:
        if n not in SUITE:
            print(f"run_all: unknown benchmark {n!r}; known: {', '.join(SUITE)}", file=sys.stderr)
            return 2
    status: dict[str, Any] = {}
    for n in names:
        if args.summarize_only:
            break
        script, *rest = SUITE[n][0]
        print(f"== {n}", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        rc = subprocess.run([sys.executable, str(HERE / script), *rest], check=False).returncode
        status[n] = {"rc": rc, "seconds": round(time.perf_counter() - t0, 1)}
    rows = []
    for n in names:
        path = RESULTS / SUITE[n][1]
        if path.exists() and status.get(n, {}).get("rc", 0) == 0:
            rows += ROWS[n](json.loads(path.read_text()))
    info = machine_info()
    lines = [f"Machine: {describe(info)}; {info.get('mem_gib')} GiB; {time.strftime('%Y-%m-%d')}", "",
             "| benchmark | measured | against (same run) | goal | met |", "|---|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {g} | {'-' if m is None else ('yes' if m else 'no')} |" for a, b, c, g, m in rows]
    md = "\n".join(lines) + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".md").write_text(md)
    args.out.with_suffix(".json").write_text(json.dumps({"machine": info, "runs": status, "rows": rows}, indent=2) + "\n")
    print(md)
    return 0 if all(s["rc"] == 0 for s in status.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
