"""``taskvec extract``: a task vector from a fine-tuning run, a PEFT adapter or a fine-tuned model."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from taskvec.cli.options import add_json, new_command
from taskvec.cli.output import format_mib, print_json, print_table
from taskvec.errors import MissingFileError, UserInputError


def register(sub: Any) -> None:
    p = new_command(sub, "extract", "extract a task vector: finetuned - base")
    p.add_argument("--base", "--model", dest="base", default="smollm2-135m", help="base model (name or HF directory)")
    p.add_argument("--finetuned", required=True,
                   help="a `taskvec finetune` output dir, a PEFT adapter dir, or a fine-tuned HF model dir")
    p.add_argument("--out", required=True, help="output .safetensors (or .pth for a plain dense state dict)")
    p.add_argument("--dense", action="store_true", help="store dense deltas instead of exact LoRA factors")
    p.add_argument("--task", default=None, help="task name to record (default: from recipe.json)")
    add_json(p)
    p.set_defaults(func=run_extract)


def _finetune_parts(path: Path) -> tuple[Path | None, Path | None, dict[str, Any]]:
    """(adapter dir, full model dir, recipe) of a finetune output / adapter / model dir."""
    recipe: dict[str, Any] = {}
    if (path / "recipe.json").exists():
        recipe = json.loads((path / "recipe.json").read_text())
    if (path / "adapter" / "adapter_config.json").exists():
        return path / "adapter", None, recipe
    if (path / "adapter_config.json").exists():
        return path, None, recipe
    if (path / "model" / "config.json").exists():
        return None, path / "model", recipe
    if (path / "config.json").exists():
        return None, path, recipe
    raise UserInputError(
        f"{path} is not a fine-tuning output: expected adapter/ (LoRA), model/ (--full), "
        "an adapter_config.json or a config.json."
    )


def run_extract(args: argparse.Namespace) -> int:
    from taskvec.io_utils import check_writable
    from taskvec.models import fingerprint, model_dir
    from taskvec.weights import TaskVector

    ft = Path(args.finetuned)
    if not ft.exists():
        raise MissingFileError(f"{ft} does not exist: pass the directory `taskvec finetune --out` wrote.")
    out = check_writable(args.out, (ft,))
    if out.suffix not in (".safetensors", ".pth", ".pt"):
        raise UserInputError(f"--out must end in .safetensors or .pth, got {out.name}.")
    adapter, full, recipe = _finetune_parts(ft)
    base = model_dir(args.base)
    meta = {
        "base_model": str(args.base),
        "base_fingerprint": fingerprint(base),
        "task": args.task or recipe.get("task"),
        "recipe": recipe or None,
    }
    rfp = recipe.get("base_fingerprint")
    if rfp and rfp != meta["base_fingerprint"]:
        raise UserInputError(
            f"{ft} was fine-tuned from a base with fingerprint {rfp}, not {args.base} "
            f"({meta['base_fingerprint']}): pass the right --base."
        )
    meta = {k: v for k, v in meta.items() if v is not None}
    if adapter is not None:
        tv = TaskVector.from_peft(adapter, metadata=meta)
        if args.dense:
            tv = tv.to_dense()
    else:
        tv = TaskVector.from_models(base, full, metadata=meta)
    tv.save(out)
    info = {"out": str(out), "form": tv.form, "tensors": len(tv), "values": tv.numel(),
            "dense_values": tv.dense_numel(), "bytes": out.stat().st_size, "task": tv.metadata.get("task")}
    if args.json:
        print_json(info)
    else:
        print_table([[info["out"], info["form"], info["tensors"], f"{info['values']:,}",
                      format_mib(info["bytes"])]], ["vector", "form", "tensors", "values", "size"])
    return 0
