"""The machine a benchmark ran on: CPU model, vector instruction sets, cores, memory, versions.

Numbers from different machines differ (an AVX-512 Xeon ran a LoRA step in 2.8 s, an AVX2-only
EPYC in 5 s), so every benchmark JSON records this next to its results.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

#: the instruction-set flags that change float32 matmul speed and results
ISA_FLAGS = ("avx", "avx2", "fma", "avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl", "avx512_vnni",
             "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")


def machine_info() -> dict[str, Any]:
    """CPU model, instruction sets, cores, memory and library versions."""
    info: dict[str, Any] = {"nproc": os.cpu_count(), "platform": platform.platform(),
                            "python": platform.python_version(), "cpu": None, "isa": []}
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        model = [ln for ln in lines if ln.startswith("model name")]
        flags = [ln for ln in lines if ln.startswith("flags")]
        info["cpu"] = model[0].split(":", 1)[1].strip() if model else None
        have = set(flags[0].split(":", 1)[1].split()) if flags else set()
        info["isa"] = [f for f in ISA_FLAGS if f in have]
        mem = [ln for ln in Path("/proc/meminfo").read_text().splitlines() if ln.startswith("MemTotal")]
        info["mem_gib"] = round(int(mem[0].split()[1]) / 2**20, 1) if mem else None
    except OSError:
        pass
    try:
        import torch

        info |= {"torch": torch.__version__, "torch_threads": torch.get_num_threads(),
                 "cpu_capability": torch.backends.cpu.get_cpu_capability(), "gpu": torch.cuda.is_available()}
        import transformers

        info["transformers"] = transformers.__version__
        import peft

        info["peft"] = peft.__version__
    except ImportError:
        pass
    return info


def describe(info: dict[str, Any]) -> str:
    """One line: ``Intel Xeon ..., 2 cores, AVX-512 (avx512f, ...), torch 2.13.0``."""
    isa = info.get("isa") or []
    top = "AVX-512" if "avx512f" in isa else ("AVX2" if "avx2" in isa else "no AVX2")
    return (f"{info.get('cpu')}, {info.get('nproc')} cores, {top} ({', '.join(isa)}), "
            f"torch {info.get('torch')} ({info.get('cpu_capability')})")


def write_result(path: Path, result: dict[str, Any]) -> None:
    """Write a benchmark's JSON (indented, newline-terminated), creating its folder."""
    import json

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
