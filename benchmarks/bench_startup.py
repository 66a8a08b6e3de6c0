"""Benchmark: start-up time of light commands (no torch, transformers or peft imported).

Usage: python benchmarks/bench_startup.py [--repeat 5] [--json-out benchmarks/results/startup.json]

Each command runs ``--repeat`` times in a fresh interpreter (``python -m taskvec.cli.main``);
the median wall time is reported next to a bare interpreter start and ``import torch`` in the
same run, so the numbers from different machines can be compared as ratios.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe, machine_info  # noqa: E402


def wall(argv: list[str], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        subprocess.run(argv, capture_output=True, check=False)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--json-out", type=Path, default=Path("benchmarks/results/startup.json"))
    args = p.parse_args(argv)
    import torch

    from taskvec.weights import LowRankDelta, TaskVector

    py = sys.executable
    with tempfile.TemporaryDirectory() as tmp:
        vec = TaskVector({"w": LowRankDelta(torch.ones(8, 64), torch.ones(64, 8))}).save(Path(tmp) / "v.safetensors")
        runs = {
            "python -c pass": [py, "-c", "pass"],
            "python -c 'import torch'": [py, "-c", "import torch"],
            "taskvec --help": [py, "-m", "taskvec.cli.main", "--help"],
            "taskvec models": [py, "-m", "taskvec.cli.main", "models"],
            "taskvec tasks": [py, "-m", "taskvec.cli.main", "tasks"],
            "taskvec inspect VECTOR": [py, "-m", "taskvec.cli.main", "inspect", str(vec)],
        }
        rows = {name: round(wall(cmd, args.repeat), 3) for name, cmd in runs.items()}
    info = machine_info()
    out = {"benchmark": "start-up wall time, median of fresh interpreters", "date": time.strftime("%Y-%m-%d"),
           "repeat": args.repeat, "machine": info, "machine_line": describe(info), "seconds": rows}
    args.json_out.parent.mkdir(parents=True, exist_ok=True)
    args.json_out.write_text(json.dumps(out, indent=2) + "\n")
    print(f"{describe(info)}\n| command | median wall |\n|---|---|")
    for k, v in rows.items():
        print(f"| `{k}` | {v:.2f} s |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
