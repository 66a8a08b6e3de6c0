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
    out: dict[str, Any] = {}
    dev = ["--model", model, "--device", "cuda"]
    for dtype in ("float32", "bfloat16"):
        run = work / f"ft-{dtype}"
        ft, s = taskvec("finetune", *dev, "--dtype", dtype, "--task", "sst2", "--out", str(run), "--steps", "40",
                        "--batch-size", "16", "--lora-r", "8", "--lr", "1e-3", "--checkpoint-every", "0")
        vec = work / f"sst2-{dtype}.safetensors"
        ex, _ = taskvec("extract", "--finetuned", str(run), "--base", model, "--out", str(vec))
        ev, se = taskvec("eval", *dev, "--dtype", dtype, "--task", "sst2", "--limit", "300", "--vector", str(vec))
        out[f"finetune_{dtype}"] = {"wall_s": s, "final_loss": ft["final_loss"], "seconds": ft["seconds"],
                                    "batching": ft["recipe"].get("batching"), "vector_form": ex["form"]}
        out[f"eval_vector_{dtype}"] = {"wall_s": se, "accuracy": ev["accuracy"], "ci95": ev["ci95"], "n": ev["n"]}
    base, s = taskvec("eval", *dev, "--task", "sst2", "--limit", "300")
    out["eval_base_float32"] = {"wall_s": s, "accuracy": base["accuracy"], "ci95": base["ci95"], "n": base["n"]}
    ap, s = taskvec("apply", "--base", model, "--vector", str(work / "sst2-float32.safetensors"),
                    "--out", str(work / "applied"))
    out["apply"] = {"wall_s": s, "seconds": ap["seconds"], "peak_rss_bytes": ap["peak_rss_bytes"]}
    mg, s = taskvec("merge", "--method", "task_arithmetic", "--vectors", str(work / "sst2-float32.safetensors"),
                    str(work / "sst2-bfloat16.safetensors"), "--out", str(work / "merged.safetensors"))
    out["merge"] = {"wall_s": s, "seconds": mg.get("seconds")}
    fv, s = taskvec("fv", "extract", *dev, "--task", "antonym", "--out", str(work / "antonym-fv.safetensors"),
                    "--n-prompts", "20", "--ie-prompts", "10", "--layer", "auto", "--sweep-limit", "40")
    out["fv_extract"] = {"wall_s": s, "layer": fv.get("layer")}
    sv, s = taskvec("soft", "train", *dev, "--task", "antonym", "--out", str(work / "antonym-soft.safetensors"),
                    "--steps", "30", "--n-prompts", "20", "--val-limit", "40")
    out["soft_train"] = {"wall_s": s, "val_accuracy": sv.get("val_accuracy")}
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
