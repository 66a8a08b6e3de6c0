"""``taskvec compare``: cosine similarities and sign conflicts of task vectors
(docs/task_arithmetic.md)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from taskvec.cli.coefficient_opts import (
    load_vectors,
)
from taskvec.cli.options import add_json, add_progress, new_command
from taskvec.cli.output import print_json, print_table
from taskvec.errors import UserInputError


def register(sub: Any) -> None:
    p = new_command(sub, "compare", "cosine similarities and sign conflicts of task vectors")
    p.add_argument("vectors", nargs="+", metavar="VECTOR", help="vector files or basis files (FILE#TASK for one task)")
    p.add_argument("--plot", default=None, help="write the cosine matrix as a heatmap (.png or .html)")
    p.add_argument("--no-signs", action="store_true", help="skip the sign-conflict pass (cosines only)")
    add_json(p)
    add_progress(p)  # accepted for consistency; compare shows no bar
    p.set_defaults(func=run_compare)


def run_compare(args: argparse.Namespace) -> int:
    from taskvec.weights.compare import compare

    if args.plot and Path(args.plot).suffix not in (".png", ".html"):
        raise UserInputError(f"--plot {args.plot}: give a .png or .html path.")
    if args.plot:
        from taskvec.io_utils import check_writable

        check_writable(args.plot)
    vectors, labels = load_vectors(args.vectors)
    res = compare(vectors, labels, signs=not args.no_signs)
    out = res.to_dict()
    if args.plot:
        out["plot"] = _plot(res, Path(args.plot))
    if args.json:
        print_json(out)
        return 0
    print_table([[lab, f"{n:.4g}", *[f"{c:+.3f}" for c in row]] for lab, n, row in zip(res.labels, res.norms, res.cosine)],
                ["vector", "norm", *res.labels], title="cosine similarity")
    if not args.no_signs:
        print()
        print_table([[lab, *["-" if c is None else f"{c:.3f}" for c in row]]
                     for lab, row in zip(res.labels, res.sign_conflict)],
                    ["vector", *res.labels], title="pairwise sign conflicts (opposite signs / both nonzero)")
        rate = "-" if res.conflict_rate is None else f"{res.conflict_rate:.4f}"
        print(f"\noverall sign-conflict rate: {rate} ({res.overlap_entries:,} of {res.entries:,} entries "
              "have >= 2 nonzero vectors)")
    if args.plot:
        print(f"wrote {out['plot']}")
    return 0


def _plot(res: Any, path: Path) -> str:
    import numpy as np

    from taskvec.eval.report import heatmap_html, heatmap_png
    from taskvec.io_utils import atomic_path

    mat = np.array(res.cosine, dtype=float)
    title = "task vector cosine similarity"
    if path.suffix == ".png":
        heatmap_png(mat, res.labels, res.labels, path, title=title, cbar="cosine", cmap="coolwarm")
    else:
        with atomic_path(path) as tmp:
            Path(tmp).write_text(heatmap_html(mat, res.labels, res.labels, title=title), encoding="utf-8")
    return str(path)
