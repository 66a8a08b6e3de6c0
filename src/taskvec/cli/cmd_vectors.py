"""``taskvec extract``, ``taskvec inspect``, ``taskvec export-peft``: making and examining vectors."""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from taskvec.cli.common import add_json, new_command, print_json, print_table
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

    p = new_command(sub, "inspect", "show any taskvec file: a vector's metadata, size and norms; the "
                    "envelope and tensors of a basis, function / residual / soft vector or head means")
    p.add_argument("vector", help="a taskvec file (any kind; see docs/formats.md)")
    p.add_argument("--plot", default=None, help="write a layer x module norm heatmap (PNG or .html)")
    p.add_argument("--per-tensor", action="store_true", help="list every tensor")
    add_json(p)
    p.set_defaults(func=run_inspect)

    p = new_command(sub, "export-peft", "write a PEFT LoRA adapter from a vector")
    p.add_argument("vector", help="task vector file")
    p.add_argument("--out", required=True, help="output adapter directory")
    p.add_argument("--rank", type=int, default=None, help="SVD rank for dense deltas (low-rank ones stay exact)")
    p.add_argument("--base", "--model", dest="base", default=None, help="base model to record in adapter_config.json")
    p.add_argument("--overwrite", action="store_true")
    add_json(p)
    p.set_defaults(func=run_export)


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
                      _mb(info["bytes"])]], ["vector", "form", "tensors", "values", "size"])
    return 0


def _mb(n: float) -> str:
    return f"{n / 2**20:.2f} MiB"


def norm_grid(tv: Any) -> tuple[list[int | None], list[str], dict[tuple[Any, str], float]]:
    """Per (layer, module) Frobenius norms of a vector."""
    acc: dict[tuple[Any, str], float] = defaultdict(float)
    for row in tv.stats():
        acc[(row["layer"], row["module"])] += row["norm"] ** 2
    layers = sorted({k[0] for k in acc}, key=lambda x: (x is None, x if x is not None else 0))
    modules = sorted({k[1] for k in acc})
    return layers, modules, {k: v**0.5 for k, v in acc.items()}


def _inspect_other_kind(path: Path, kind: str, args: argparse.Namespace) -> int:
    """Any other taskvec file: validated by its own loader, then its envelope and tensors."""
    import taskvec.activations.files  # noqa: F401 - each format module registers its loader
    import taskvec.activations.soft_files  # noqa: F401
    import taskvec.basis.basis  # noqa: F401
    from taskvec.formats import KINDS, LOADERS, SafetensorsReader, decode_metadata

    loaded = LOADERS.get(kind)(path)  # every check of that format
    if hasattr(loaded, "close"):
        loaded.close()
    with SafetensorsReader(path) as r:
        tensors = [[k, r.specs[k].dtype, list(r.specs[k].shape)] for k in r.keys()]
        meta = decode_metadata(r.metadata)
    info = {"file": str(path), "kind": kind, "what": KINDS[kind].noun, "use": KINDS[kind].use,
            "metadata": meta, "tensors": [{"name": n, "dtype": d, "shape": s} for n, d, s in tensors],
            "bytes_on_disk": path.stat().st_size}
    if args.json:
        print_json(info)
        return 0
    print(f"{KINDS[kind].noun}: {path} ({_mb(info['bytes_on_disk'])})")
    for k in ("task", "model", "base_model", "site", "layer", "method", "mode", "scale", "M", "T",
              "taskvec_version", "created"):
        if k in meta:
            print(f"  {k}: {meta[k]}")
    print(f"  use: {KINDS[kind].use}")
    print()
    print_table([[n, d, "x".join(map(str, s)) or "scalar"] for n, d, s in tensors], ["tensor", "dtype", "shape"])
    return 0


def run_inspect(args: argparse.Namespace) -> int:
    from taskvec.formats import file_kind
    from taskvec.weights import load_vector

    path = Path(args.vector)
    if path.suffix == ".safetensors" and path.is_file():
        kind = file_kind(path)
        if kind not in (None, "task_vector"):
            from taskvec.formats import KINDS

            if kind in KINDS:
                return _inspect_other_kind(path, kind, args)
    tv = load_vector(path)
    layers, modules, grid = norm_grid(tv)
    meta = {k: v for k, v in tv.metadata.items()}
    size = path.stat().st_size
    dense_bytes = tv.dense_numel() * 4
    info = {
        "file": str(path),
        "metadata": meta,
        "form": tv.form,
        "tensors": len(tv),
        "values": tv.numel(),
        "dense_values": tv.dense_numel(),
        "bytes_on_disk": size,
        "dense_fp32_bytes": dense_bytes,
        "size_vs_dense": size / dense_bytes if dense_bytes else None,
        "norm": tv.norm(),
        "layer_norms": {str(la): sum(grid.get((la, m), 0.0) ** 2 for m in modules) ** 0.5 for la in layers},
        "module_norms": {m: sum(grid.get((la, m), 0.0) ** 2 for la in layers) ** 0.5 for m in modules},
    }
    if args.per_tensor:
        info["tensors_detail"] = tv.stats()
    if args.plot:
        info["plot"] = str(plot_norms(layers, modules, grid, Path(args.plot), title=f"{path.name}: |delta| per layer x module"))
    if args.json:
        print_json(info)
        return 0
    print(f"vector: {path}")
    for k in ("task", "base_model", "base_fingerprint", "storage", "taskvec_version", "created"):
        if k in meta:
            print(f"  {k}: {meta[k]}")
    print(f"  tensors: {len(tv)}, values: {tv.numel():,} (dense form: {tv.dense_numel():,})")
    print(f"  size on disk: {_mb(size)}; dense fp32 would be {_mb(dense_bytes)} "
          f"({100 * size / max(dense_bytes, 1):.2f}%); norm {tv.norm():.4f}")
    print()
    print_table([[m, info["module_norms"][m]] for m in modules], ["module", "norm"])
    print()
    print_table([[la if la is not None else "-", info["layer_norms"][str(la)]] for la in layers], ["layer", "norm"])
    if args.per_tensor:
        print()
        print_table([[r["name"], r["form"], r["rank"], "x".join(map(str, r["shape"])), r["norm"]]
                     for r in info["tensors_detail"]], ["tensor", "form", "rank", "shape", "norm"])
    if args.plot:
        print(f"\nheatmap: {info['plot']}")
    return 0


def plot_norms(layers: list, modules: list[str], grid: dict, out: Path, title: str = "") -> Path:
    """Layer x module heatmap of delta norms as PNG (or a self-contained HTML table)."""
    import numpy as np

    mat = np.array([[grid.get((la, m), np.nan) for m in modules] for la in layers], dtype=float)
    ylabels = [str(la) if la is not None else "other" for la in layers]
    if out.suffix == ".html":
        from taskvec.eval.report import heatmap_html

        out.write_text(heatmap_html(mat, ylabels, modules, title, "layer", "module"))
        return out
    from taskvec.eval.report import heatmap_png

    heatmap_png(mat, ylabels, modules, out, title, "layer", "module", "Frobenius norm")
    return out


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
