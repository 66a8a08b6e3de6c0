"""``taskvec --help``, ``models`` and ``tasks`` start without importing torch, transformers or
peft; ``inspect`` without transformers or peft (it reads tensors, so it needs torch)."""

from __future__ import annotations

import subprocess
import sys

import pytest

PROBE = """
import sys
from taskvec.cli.main import main
try:
    code = main(sys.argv[1:])
except SystemExit as e:
    code = e.code
heavy = [m for m in ("torch", "transformers", "peft") if m in sys.modules]
print("HEAVY=" + ",".join(heavy), file=sys.stderr)
"""


def heavy_imports(*argv: str) -> list[str]:
    proc = subprocess.run([sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, timeout=120)
    line = [ln for ln in proc.stderr.splitlines() if ln.startswith("HEAVY=")][-1]
    return [m for m in line.removeprefix("HEAVY=").split(",") if m]


@pytest.mark.parametrize("argv", [["--help"], ["models"], ["tasks"], ["merge", "--help"], []])
def test_light_commands_import_no_torch(argv):
    assert heavy_imports(*argv) == []


def test_inspect_imports_no_transformers_or_peft(tmp_path):
    import torch

    from taskvec.weights import LowRankDelta, TaskVector

    p = TaskVector({"w": LowRankDelta(torch.ones(2, 3), torch.ones(4, 2))}).save(tmp_path / "v.safetensors")
    assert set(heavy_imports("inspect", str(p))) <= {"torch"}
