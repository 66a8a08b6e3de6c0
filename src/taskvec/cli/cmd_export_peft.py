"""``taskvec export-peft``: a vector as a PEFT LoRA adapter directory."""

from __future__ import annotations

import argparse
import json
from typing import Any

from taskvec.cli.options import add_json, new_command
from taskvec.cli.output import print_json
from taskvec.errors import UserInputError


def register(sub: Any) -> None:
    p = new_command(sub, "export-peft", "write a PEFT LoRA adapter from a vector")
    p.add_argument("vector", help="task vector file")
    p.add_argument("--out", required=True, help="output adapter directory")
    p.add_argument("--rank", type=int, default=None, help="SVD rank for dense deltas (low-rank ones stay exact)")
    p.add_argument("--base", "--model", dest="base", default=None, help="base model to record in adapter_config.json")
    p.add_argument("--overwrite", action="store_true")
    add_json(p)
    p.set_defaults(func=run_export)


def run_export(args: argparse.Namespace) -> int:
    from taskvec.models.loading import model_dir
    from taskvec.weights import export_peft, load_vector

    tv = load_vector(args.vector)
    if args.rank is not None and args.rank <= 0:
        raise UserInputError(f"--rank must be positive, got {args.rank}.")
    base = args.base or tv.metadata.get("base_model")
    fan = False
    if base:
        try:
            cfg = json.loads((model_dir(base) / "config.json").read_text())
            fan = cfg.get("model_type") == "gpt2"
        except Exception:  # noqa: BLE001 - the base is only recorded, not required
            fan = False
    out = export_peft(tv, args.out, rank=args.rank, base_model=base, fan_in_fan_out=fan, overwrite=args.overwrite)
    info = {"out": str(out), "modules": len(tv), "exact": tv.form == "low-rank" and args.rank is None}
    if args.json:
        print_json(info)
    else:
        print(f"wrote PEFT adapter {out} ({len(tv)} modules, {'exact' if info['exact'] else 'SVD-truncated where dense'})")
    return 0
