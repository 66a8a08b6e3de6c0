"""``taskvec inspect``: any taskvec file (metadata, size, norms of a vector; envelope and tensors
of the other kinds)."""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path
from typing import Any

from taskvec.cli.options import add_json, new_command
from taskvec.cli.output import format_mib, print_json, print_table


def register(sub: Any) -> None:
    p = new_command(sub, "inspect", "show any taskvec file: a vector's metadata, size and norms; the "
                    "envelope and tensors of a basis, function / residual / soft vector or head means")
    p.add_argument("vector", help="a taskvec file (any kind; see docs/formats.md)")
    p.add_argument("--plot", default=None, help="write a layer x module norm heatmap (PNG or .html)")
    p.add_argument("--per-tensor", action="store_true", help="list every tensor")
    add_json(p)
    p.set_defaults(func=run_inspect)


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
    import taskvec.activations.activation_vector  # noqa: F401 - each format module registers its loader
    import taskvec.activations.soft_vector  # noqa: F401
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
    print(f"{KINDS[kind].noun}: {path} ({format_mib(info['bytes_on_disk'])})")
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
    print(f"  size on disk: {format_mib(size)}; dense fp32 would be {format_mib(dense_bytes)} "
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
