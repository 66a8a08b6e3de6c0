"""``taskvec apply``: write ``base + scale * vector`` as a new model directory, streaming."""

from __future__ import annotations

import argparse
import math
import re
from pathlib import Path
from typing import Any

from taskvec.cli.options import add_json, add_progress, new_command, peak_rss_bytes, show_progress
from taskvec.cli.output import print_json, print_table

_UNITS = {
    "": 1, "b": 1,
    "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
}


def parse_size(text: str) -> int:
    """``"1GB"`` -> 10**9, ``"512MiB"`` -> 2**29, ``"1000"`` -> 1000 bytes (HF conventions)."""
    from taskvec.errors import UserInputError

    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", text)
    unit = m.group(2).lower() if m else None
    if not m or unit not in _UNITS:
        raise UserInputError(f'cannot read the size "{text}": use e.g. 500MB, 2GB, 1GiB or a byte count.')
    n = int(float(m.group(1)) * _UNITS[unit])
    if n <= 0:
        raise UserInputError(f"--max-shard-size must be positive, got {text!r}.")
    return n


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def register(sub: Any) -> None:
    p = new_command(
        sub, "apply", "write base + scale * vector as a new model directory (streaming, low memory)",
        description=(
            "Add a task vector to a base model and write a Hugging Face model directory, reading "
            "and writing one tensor at a time: memory stays about the size of the largest tensor. "
            "The output directory appears only when complete."
        ),
    )
    p.add_argument("--base", "--model", dest="base", required=True, help="embedded model name (e.g. smollm2-135m) or HF model directory")
    p.add_argument("--vector", required=True, help="task vector file (.safetensors from `taskvec extract`, or .pth)")
    p.add_argument("--scale", type=float, default=1.0, help="scaling coefficient lambda (default 1.0; negative subtracts)")
    p.add_argument("--out", required=True, help="output model directory (must not exist unless --overwrite)")
    p.add_argument("--force", action="store_true", help="apply even if the base fingerprint differs from the vector's")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists (only after the new one is complete)")
    p.add_argument("--max-shard-size", default="1GiB",
                   help="largest output shard, e.g. 500MB, 2GB, 1GiB (default 1GiB)")
    p.add_argument("--no-fsync", action="store_true",
                   help="skip the fsync before the output is renamed into place: faster on slow disks; a killed "
                        "process still leaves no partial --out, but a power loss soon after may")
    add_progress(p)
    add_json(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from taskvec.errors import MissingFileError, NonFiniteError, UserInputError

    # Validate everything cheap before reading any weights.
    if not math.isfinite(args.scale):
        raise NonFiniteError(f"--scale must be a finite number, got {args.scale}.")
    max_shard = parse_size(args.max_shard_size)
    vec = Path(args.vector).expanduser()
    if not vec.exists():
        raise MissingFileError(f"vector file {vec} does not exist.")
    if vec.is_dir():
        raise UserInputError(f"--vector {vec} is a directory: pass a vector file (.safetensors).")
    from taskvec.io_utils import durable_writes
    from taskvec.weights.stream_apply import stream_apply_report

    with durable_writes(not args.no_fsync):
        rep = stream_apply_report(
            args.base, vec, args.out, scale=args.scale, force=args.force, max_shard_bytes=max_shard,
            progress=show_progress(args), overwrite=args.overwrite,
        )
    peak = peak_rss_bytes()
    out = rep.to_dict() | {"vector": str(vec), "peak_rss_bytes": peak, "fsync": not args.no_fsync}
    if args.json:
        print_json(out)
        return 0
    print_table(
        [[str(rep.out_dir), f"{rep.tensors_changed}/{rep.tensors}", rep.shards,
          human_bytes(rep.bytes_written), f"{rep.seconds:.1f}s", human_bytes(peak)]],
        ["out", "changed", "shards", "written", "time", "peak RSS"],
        title=f"applied {vec.name} x {args.scale:g} to {args.base}"
        + ("" if rep.fingerprint_checked else " (fingerprint not checked)"),
    )
    return 0
