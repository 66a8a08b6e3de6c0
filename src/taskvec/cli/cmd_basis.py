"""``taskvec basis build | info | recover``: task vector bases (compressed task arithmetic)."""

from __future__ import annotations

import argparse
from typing import Any

from taskvec.cli.options import add_json, add_progress, new_command, parse_params, show_progress
from taskvec.cli.output import print_json, print_table
from taskvec.errors import UserInputError

_METHODS = ("pca", "autoencoder", "random", "random_sample")


def register(sub: Any) -> None:
    from taskvec.cli.options import OneLineParser

    p = new_command(sub, "basis", "task vector bases: build, inspect, recover (compressed task arithmetic)")
    bsub = p.add_subparsers(dest="basis_command", metavar="SUBCOMMAND", parser_class=OneLineParser)
    p.set_defaults(func=lambda args: _help(p))

    b = new_command(bsub, "build", "build a basis of M vectors from T task vector files (streaming)")
    b.add_argument("vectors", nargs="+", help="task vector files (.safetensors from `taskvec extract`)")
    b.add_argument("--out", required=True, help="output basis file (.safetensors)")
    b.add_argument("--method", default="pca", help=f"basis method: {', '.join(_METHODS)} (default pca)")
    b.add_argument("--m", "--n-basis", dest="m", type=int, default=None,
                   help="number of basis vectors (default T // 2); under torchrun write --n-basis")
    b.add_argument("--per-layer", action="store_true", help="one basis per decoder layer (and one for the rest)")
    b.add_argument("--seed", type=int, default=0, help="seed (autoencoder init, random basis, random_sample choice)")
    b.add_argument("--tau", type=float, default=None, help="autoencoder: softmax temperature (default 5.0)")
    b.add_argument("--steps", type=int, default=None, help="autoencoder: Adam steps (default 4000)")
    b.add_argument("--lr", type=float, default=None, help="autoencoder: Adam learning rate (default 0.01)")
    b.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="another method option, repeatable, e.g. refit=false, weight_decay=1e-6, "
                        "loss_norm=t2 (autoencoder: the uiuctml/TaskVectorBasis options, docs/bases.md)")
    b.add_argument("--space", default="auto", choices=("auto", "core", "dense"),
                   help="core: atoms as small cores over the LoRA collection's shared span (smaller than "
                        "the LoRA files); dense: dense atoms; auto (default): core when every input is LoRA")
    b.add_argument("--span-rank", type=int, default=None, metavar="K",
                   help="core space: rank of the stored span per module (default M x the inputs' mean rank)")
    b.add_argument("--chunk-elems", type=int, default=None,
                   help="elements per row block and task (default 1048576; 0 = whole tensors)")
    add_json(b)
    add_progress(b)
    b.set_defaults(func=run_build)

    i = new_command(bsub, "info", "storage and reconstruction error (per task, per layer) of a basis")
    i.add_argument("basis", help="basis file")
    i.add_argument("--vectors", nargs="+", default=None,
                   help="the original vector files (same order): also measure the error against them")
    i.add_argument("--layers", action="store_true", help="print the per-layer error table")
    add_json(i)
    add_progress(i)
    i.set_defaults(func=run_info)

    im = new_command(bsub, "import", "convert a uiuctml/TaskVectorBasis run directory into a basis file")
    im.add_argument("run_dir", help="the source's _basis_runs/<run> directory (method_info.json, basis_vectors.pt, ...)")
    im.add_argument("--out", required=True, help="output basis file (.safetensors)")
    im.add_argument("--tasks", default=None, help="task names in the source's order (default: its datasets)")
    add_json(im)
    add_progress(im)
    im.set_defaults(func=run_import)

    r = new_command(bsub, "recover", "write one task's vector reconstructed from the basis")
    r.add_argument("basis", help="basis file")
    r.add_argument("--task", required=True, help="task name (or index)")
    r.add_argument("--out", required=True, help="output vector file (.safetensors or .pth)")
    add_json(r)
    add_progress(r)
    r.set_defaults(func=run_recover)


def _help(p: argparse.ArgumentParser) -> int:
    p.print_help()
    return 2


def _mb(n: float | None) -> str:
    return "" if n is None else f"{n / 2**20:.2f} MB"


def _err(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3g}"


def _option_value(text: str) -> Any:
    """``--option`` values: true/false, an int, a float, else the text (e.g. a mode name)."""
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def run_import(args: argparse.Namespace) -> int:
    from taskvec.basis.source_import import import_source_basis

    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()] if args.tasks else None
    basis = import_source_basis(args.run_dir, args.out, tasks)
    inf = basis.info()
    if args.json:
        print_json({"out": str(basis.path)} | inf)
        return 0
    print(f"imported {basis.metadata['imported']['method']} run {args.run_dir} as a {basis.method} basis "
          f"(M={basis.M}, T={basis.T}): {basis.path}")
    print("errors: not stored by the source; measure them with `taskvec basis info BASIS --vectors ...`")
    return 0


def _core_space(args: argparse.Namespace) -> bool:
    """Whether to build in core space: asked for, or ``auto`` with every input a LoRA vector."""
    if args.space == "dense":
        return False
    from taskvec.basis.core_basis import all_low_rank

    if args.space == "core":
        return True
    return all_low_rank(args.vectors)


def run_build(args: argparse.Namespace) -> int:
    from taskvec.basis import build_basis
    from taskvec.basis.gram import DEFAULT_CHUNK_ELEMS

    opts = {k: _option_value(v) for k, v in parse_params(args.option, "--option").items()}
    opts |= {k: v for k, v in {"tau": args.tau, "steps": args.steps, "lr": args.lr}.items() if v is not None}
    chunk = DEFAULT_CHUNK_ELEMS if args.chunk_elems is None else args.chunk_elems
    if _core_space(args):
        from taskvec.basis.core_basis import build_core_basis

        basis = build_core_basis(args.vectors, args.out, method=args.method, m=args.m, per_layer=args.per_layer,
                                 seed=args.seed, options=opts or None, span_rank=args.span_rank,
                                 progress=show_progress(args))
    else:
        if args.span_rank is not None:
            raise UserInputError("--span-rank applies to core-space bases: add --space core (LoRA inputs).")
        basis = build_basis(args.vectors, args.out, method=args.method, m=args.m, per_layer=args.per_layer,
                            seed=args.seed, options=opts or None, chunk_elems=chunk, progress=show_progress(args))
    if basis is None:  # under torchrun: a rank other than 0 (it shared the Gram pass, rank 0 writes)
        return 0
    inf = basis.info()
    if args.json:
        print_json({"out": str(basis.path)} | inf)
        return 0
    _print_summary(inf)
    _print_tasks(inf)
    return 0


def _print_summary(inf: dict[str, Any]) -> None:
    st = inf["storage"]
    ratio = st.get("basis_vs_collection")
    print(f"basis: {inf['file']}  method={inf['method']}  M={inf['M']}  T={inf['T']}  "
          f"per_layer={inf['per_layer']}  seed={inf['seed']}")
    print(f"storage: basis {_mb(st['basis_bytes'])} vs collection {_mb(st.get('collection_bytes'))} "
          f"as stored ({'' if ratio is None else f'{ratio:.2f}x'}), {_mb(st.get('collection_dense_bytes'))} "
          "as dense float32")
    space = inf.get("space")
    if space:
        ranks = sorted({k for ku_kv in (space.get("span_rank") or {}).values() for k in ku_kv})
        print(f"space: core (low-rank atoms over a shared span of rank {', '.join(map(str, ranks))} per module; "
              "errors include what lies outside the span)")
    fit = inf.get("fit") or {}
    if isinstance(fit, dict) and "loss_final" in fit:
        print(f"autoencoder loss (unreconstructed fraction): {fit['loss_initial']:.4g} -> {fit['loss_final']:.4g}")


def _print_tasks(inf: dict[str, Any]) -> None:
    measured = any("rel_error_measured" in r for r in inf["tasks"])
    headers = ["task", "in basis", "rel. error (Gram)"] + (["rel. error (files)"] if measured else [])
    rows = []
    for r in inf["tasks"]:
        row = [r["task"], "yes" if r["in_basis"] else "no (projection)", _err(r["rel_error"])]
        if measured:
            row.append(_err(r.get("rel_error_measured")))
        rows.append(row)
    print_table(rows, headers)


def _print_layers(inf: dict[str, Any]) -> None:
    key = "per_layer_rel_error_measured" if "per_layer_rel_error_measured" in inf else "per_layer_rel_error"
    table: dict[str, dict[str, float | None]] = inf[key]
    tasks = [r["task"] for r in inf["tasks"]]
    rows = [[lk] + [_err(v.get(t)) for t in tasks] for lk, v in table.items()]
    print()
    print_table(rows, ["layer"] + tasks, title="relative error per layer group" + (
        " (measured against the files)" if key.endswith("measured") else " (from the stored Gram)"))


def run_info(args: argparse.Namespace) -> int:
    from taskvec.basis import load_basis

    with load_basis(args.basis) as basis:
        inf = basis.info(vectors=args.vectors, progress=show_progress(args))
    if args.json:
        print_json(inf)
        return 0
    _print_summary(inf)
    _print_tasks(inf)
    if args.layers or args.vectors:
        _print_layers(inf)
    return 0


def run_recover(args: argparse.Namespace) -> int:
    from taskvec.basis import load_basis
    from taskvec.errors import UserInputError
    from taskvec.io_utils import check_writable

    out = check_writable(args.out, (args.basis,))
    if out.suffix not in (".safetensors", ".pth", ".pt"):
        raise UserInputError(f"--out must end in .safetensors or .pth, got {out.name}.")
    with load_basis(args.basis) as basis:
        tv = basis.recover(args.task, progress=show_progress(args))
        i = basis.task_index(args.task)
        est = basis.info()["tasks"][i]
    tv.save(out)
    res = {"out": str(out), "task": est["task"], "in_basis": est["in_basis"], "rel_error": est["rel_error"],
           "tensors": len(tv), "bytes": out.stat().st_size}
    if args.json:
        print_json(res)
    else:
        print_table([[res["out"], res["task"], _err(res["rel_error"]), _mb(res["bytes"])]],
                    ["vector", "task", "rel. error", "size"])
    return 0
