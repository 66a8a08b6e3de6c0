"""Run ``taskvec merge`` in a child process and read what it reports (time, peak RSS, file)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


def taskvec_merge(method: str, params: dict[str, Any], files: list[Path], out: Path, keep: bool = False) -> dict[str, Any]:
    """``taskvec merge --json`` as a child: its seconds (no interpreter start) and peak RSS, the
    wall time around it, and the size of the file it wrote (deleted unless ``keep``)."""
    argv = [sys.executable, "-m", "taskvec.cli.main", "merge", "--method", method, "--vectors", *map(str, files),
            "--out", str(out), "--json", "--no-progress"]
    for k, v in params.items():
        argv += ["--param", f"{k}={v}"]
    t0 = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"taskvec merge {method} {params}: {proc.stderr.strip()[-500:]}")
    rep = json.loads(proc.stdout)
    size = out.stat().st_size
    if not keep:
        out.unlink()
    return {"seconds": rep["seconds"], "wall_seconds": round(wall, 2), "peak_rss_bytes": rep["peak_rss_bytes"],
            "file_bytes": size, "storage": rep["storage"], "tensors": rep["tensors"]}
