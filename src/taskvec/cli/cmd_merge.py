"""``taskvec merge``: merge task vector files (task arithmetic, TIES, DARE, TSV-M, Breadcrumbs)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from taskvec.cli.options import add_json, add_progress, new_command, parse_params, show_progress
from taskvec.cli.output import print_json, print_table
from taskvec.errors import UserInputError


def register(sub: Any) -> None:
    p = new_command(
        sub, "merge", "merge task vectors (task_arithmetic, ties, dare, tsv, iso_c, iso_cts, breadcrumbs)",
        description=(
            "Merge task vector files into one, streaming tensor by tensor (memory ~ one tensor per "
            "input). Low-rank (LoRA) inputs stay low-rank: task_arithmetic, tsv, iso_c and iso_cts "
            "work exactly in the inputs' shared core space; ties/dare/breadcrumbs do with "
            "--param space=core (a different method). Give --method/--vectors/--out, or a "
            "mergekit-style YAML with --config. See docs/merging.md and docs/lora.md."
        ),
    )
    p.add_argument("--method", default=None, help="merge method (see --list)")
    p.add_argument("--vectors", nargs="+", default=None, metavar="FILE", help="input vector files")
    p.add_argument("--weights", nargs="+", type=str, default=None, metavar="W",
                   help="one weight per vector (default 1 each)")
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                   help="method parameter, repeatable (e.g. density=0.2, lambda=0.8; per-model: density=0.2,0.5)")
    p.add_argument("--config", default=None, help="merge YAML (mergekit subset) instead of the options above")
    p.add_argument("--out", default=None, help="output .safetensors (required unless the config has out:)")
    p.add_argument("--base-model", default=None, help="check the vectors' base against this model name or directory")
    p.add_argument("--force", action="store_true", help="merge even if the vectors' base fingerprints differ")
    trunc = p.add_mutually_exclusive_group()
    trunc.add_argument("--rank", type=int, default=None, metavar="R",
                       help="truncate every low-rank output to rank R (SVD of its core; error reported)")
    trunc.add_argument("--energy", type=float, default=None, metavar="E",
                       help="keep the fewest components holding fraction E of each low-rank output's energy")
    p.add_argument("--seed", type=int, default=None,
                   help="seed of the methods that draw (DARE's drop masks; default 0); "
                        "--param seed=S or the config's seed take precedence")
    p.add_argument("--list", action="store_true", help="list the merge methods and their parameters")
    add_progress(p)
    add_json(p)
    p.set_defaults(func=run)


def _list(args: argparse.Namespace) -> int:
    from taskvec.weights.merge.registry import aliases_of, list_methods

    rows = []
    for m in list_methods():
        params = [
            {"name": p.name, "type": p.kind.__name__, "default": p.default, "per_model": p.per_model,
             "range": p.describe_range(), "help": p.help}
            for p in m.params
        ]
        rows.append({"name": m.name, "aliases": aliases_of(m.name), "summary": m.summary, "params": params})
    if args.json:
        print_json(rows)
        return 0
    print_table([[r["name"], ", ".join(r["aliases"]), r["summary"]] for r in rows], ["method", "aliases", "summary"])
    print()
    print_table(
        [[r["name"], p["name"], p["default"], p["range"], "yes" if p["per_model"] else "", p["help"]]
         for r in rows for p in r["params"]],
        ["method", "parameter", "default", "range", "per model", "meaning"],
    )
    return 0


def _with_seed(method: str, params: dict[str, Any], seed: int | None) -> dict[str, Any]:
    """``params`` with ``seed`` from --seed when the method draws and none was given otherwise."""
    from taskvec.weights.merge.registry import get_method

    if seed is None or "seed" in params:
        return params
    if not any(p.name == "seed" for p in get_method(method).params):
        return params  # this method draws nothing: --seed has no effect on it
    return {**params, "seed": str(seed)}


def run(args: argparse.Namespace) -> int:
    from taskvec.weights.merge import merge_files

    if args.list:
        return _list(args)
    notes: list[str] = []
    if args.config:
        from taskvec.weights.merge_config import load_merge_config

        mixed = [f for f, v in (("--method", args.method), ("--vectors", args.vectors),
                                ("--weights", args.weights), ("--param", args.param)) if v]
        if mixed:
            raise UserInputError(f"--config already names the method, vectors and parameters: drop {', '.join(mixed)}.")
        cfg = load_merge_config(args.config)
        method, vectors, weights, params = cfg.method, cfg.vectors, cfg.weights, cfg.params
        base_model = args.base_model or cfg.base_model
        out = args.out or cfg.out
        notes.extend(cfg.notes)
        if out is None:
            raise UserInputError(f"no output: pass --out FILE.safetensors or add out: to {args.config}.")
    else:
        missing = [f for f, v in (("--method", args.method), ("--vectors", args.vectors), ("--out", args.out)) if not v]
        if missing:
            raise UserInputError(f"missing {', '.join(missing)}: give --method, --vectors and --out, or --config FILE.")
        method, vectors, out, base_model = args.method, args.vectors, args.out, args.base_model
        weights = args.weights
        params = parse_params(args.param)
    params = _with_seed(method, params, args.seed)
    from taskvec.basis import open_sources

    report = merge_files(method, open_sources(vectors), out, weights=weights, params=params, force=args.force,
                         base_model=base_model, progress=show_progress(args) and not args.json,
                         rank=args.rank, energy=args.energy)
    report.notes[:0] = notes
    from taskvec.cli.options import peak_rss_bytes

    data = report.to_dict() | {"peak_rss_bytes": peak_rss_bytes()}
    if args.json:
        print_json(data)
        return 0
    for note in report.notes:
        print(f"note: {note}", file=sys.stderr)
    if report.truncation:
        t = report.truncation
        print(f"truncation: relative Frobenius error {t['relative_error']:.3g} overall, worst "
              f"{t['worst_relative_error']:.3g} ({t['worst_tensor']})", file=sys.stderr)
    print_table(
        [[report.method, len(report.inputs), report.tensors, report.storage, f"{report.bytes_written / 1e6:.1f} MB",
          f"{report.seconds:.1f}s", str(report.out)]],
        ["method", "inputs", "tensors", "storage", "written", "time", "out"],
    )
    return 0
