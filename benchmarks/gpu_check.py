"""The GPU path, checked end to end: short real jobs on ``cuda`` through the CLI, one JSON.

Usage (normally through ``bash benchmarks/gpu_check.sh``, which also runs the CUDA tests):
    python benchmarks/gpu_check.py [--out benchmarks/results/gpu_check.json] [--model smollm2-135m]

On a machine with CUDA, in one work directory, each step a ``taskvec`` command with ``--json``:
fine-tune SST-2 (LoRA rank 8, 40 steps, batch 16) in float32 and in bfloat16, extract both
vectors, evaluate base + vector on 300 validation examples (and the base), stream-apply the
vector to a model directory, merge the two vectors (task arithmetic), extract a function vector
(antonym, small settings) and train a soft task vector (antonym, 30 steps). Times, accuracies
with their 95% intervals and peak GPU memory go to one JSON with the machine's description.

Without CUDA it writes ``{"cuda": false, ...}`` and exits 0 (the path CI runs).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe, machine_info  # noqa: E402


def taskvec(*argv: str) -> tuple[dict[str, Any], float]:
    """``taskvec ARGV --json --no-progress`` in a child: (its JSON, wall seconds)."""
    cmd = [sys.executable, "-m", "taskvec", *argv, "--json", "--no-progress"]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:2])} failed (rc {p.returncode}): {p.stderr.strip()[-800:]}")
    return json.loads(p.stdout), round(wall, 1)


def steps(model: str, work: Path) -> dict[str, Any]:
    """Every step through the CLI; a failing step records its error and the others still run
    (a GPU machine is lent for minutes: one broken step must not lose the rest)."""
    out: dict[str, Any] = {}
    dev = ["--model", model, "--device", "cuda"]

    def step(name: str, fn: Callable[[], dict[str, Any]]) -> None:
        try:
            out[name] = fn()
        except (RuntimeError, KeyError, ValueError) as exc:
            out[name] = {"error": str(exc)}
        print(f"gpu_check: {name}: {json.dumps(out[name])[:300]}", flush=True)

    for dtype in ("float32", "bfloat16"):
        run, vec = work / f"ft-{dtype}", work / f"sst2-{dtype}.safetensors"

        def finetune(dtype: str = dtype, run: Path = run, vec: Path = vec) -> dict[str, Any]:
            ft, s = taskvec("finetune", *dev, "--dtype", dtype, "--task", "sst2", "--out", str(run), "--steps", "40",
                            "--batch-size", "16", "--lora-r", "8", "--lr", "1e-3", "--checkpoint-every", "0")
            ex, _ = taskvec("extract", "--finetuned", str(run), "--base", model, "--out", str(vec))
            return {"wall_s": s, "final_loss": ft["final_loss"], "seconds": ft["seconds"],
                    "batching": ft["recipe"].get("batching"), "vector_form": ex["form"]}

        def evaluate(dtype: str = dtype, vec: Path = vec) -> dict[str, Any]:
            ev, se = taskvec("eval", *dev, "--dtype", dtype, "--task", "sst2", "--limit", "300", "--vector", str(vec))
            return {"wall_s": se, "accuracy": ev["accuracy"], "ci95": ev["ci95"], "n": ev["n"]}

        step(f"finetune_{dtype}", finetune)
        step(f"eval_vector_{dtype}", evaluate)

    def eval_base() -> dict[str, Any]:
        base, s = taskvec("eval", *dev, "--task", "sst2", "--limit", "300")
        return {"wall_s": s, "accuracy": base["accuracy"], "ci95": base["ci95"], "n": base["n"]}

    def apply() -> dict[str, Any]:
        ap, s = taskvec("apply", "--base", model, "--vector", str(work / "sst2-float32.safetensors"),
                        "--out", str(work / "applied"))
        return {"wall_s": s, "seconds": ap["seconds"], "peak_rss_bytes": ap["peak_rss_bytes"]}

    def merge() -> dict[str, Any]:
        mg, s = taskvec("merge", "--method", "task_arithmetic", "--vectors", str(work / "sst2-float32.safetensors"),
                        str(work / "sst2-bfloat16.safetensors"), "--out", str(work / "merged.safetensors"))
        return {"wall_s": s, "seconds": mg.get("seconds")}

    def fv_extract() -> dict[str, Any]:
        fv, s = taskvec("fv", "extract", *dev, "--task", "antonym", "--out", str(work / "antonym-fv.safetensors"),
                        "--n-prompts", "20", "--ie-prompts", "10", "--layer", "auto", "--sweep-limit", "40")
        return {"wall_s": s, "layer": fv.get("layer")}

    def soft_train() -> dict[str, Any]:
        sv, s = taskvec("soft", "train", *dev, "--task", "antonym", "--out", str(work / "antonym-soft.safetensors"),
                        "--steps", "30", "--n-prompts", "20", "--val-limit", "40")
        return {"wall_s": s, "val_accuracy": sv.get("val_accuracy")}

    for name, fn in (("eval_base_float32", eval_base), ("apply", apply), ("merge", merge),
                     ("fv_extract", fv_extract), ("soft_train", soft_train)):
        step(name, fn)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/gpu_check.json"))
    p.add_argument("--model", default="smollm2-135m")
    args = p.parse_args(argv)
    import torch

    info = machine_info()
    report: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": info, "machine_line": describe(info),
                              "cuda": torch.cuda.is_available()}
    if not report["cuda"]:
        report["skipped"] = "no CUDA device: nothing to check (this is the path CI runs)"
        print(f"gpu_check: {report['skipped']}")
    else:
        report["gpu"] = torch.cuda.get_device_name(0)
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="taskvec-gpu-") as tmp:
            report["steps"] = steps(args.model, Path(tmp))
        report["seconds"] = round(time.perf_counter() - t0, 1)
        print(json.dumps(report["steps"], indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
