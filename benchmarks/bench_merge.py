"""Benchmark: `taskvec merge` vs mergekit on the same T inputs (task_arithmetic and ties).

Inputs: T dense random task vectors on every 2-D weight of the embedded model (seeds 1..T,
``bench_apply.build_inputs``) and, for mergekit, the T fine-tuned directories base + vector_i.
For each method, each in a fresh process with wall time and peak RSS from ``os.wait4``:

(a) ``taskvec merge`` of the T vector files -> one merged vector file (streaming, tensor by tensor);
(b) ``taskvec apply`` of that merged vector to the base -> a model directory (streaming), so
    (a) + (b) produce what mergekit produces;
(c) ``mergekit-yaml`` on base + the T fine-tuned directories -> a model directory.

The merged models of (b) and (c) are compared tensor by tensor (max abs difference, and how
many entries differ). mergekit sees ``fine-tuned - base`` recomputed from the rounded fine-tuned
weights, not the exact vectors; TIES's top-k trim is sensitive to that rounding at the threshold.
``--same-deltas`` gives taskvec exactly mergekit's deltas (``taskvec extract --dense`` from the
fine-tuned directories, not timed) to check the two agree when the inputs are bit-identical.

    python benchmarks/bench_merge.py [--t 3] [--density 0.5] [--lam 0.5] [--same-deltas]

Results: a table on stdout and ``benchmarks/results/merge.json``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import sys
from pathlib import Path
from typing import Any

from bench_apply import (
    DEFAULT_MERGEKIT_VENV,
    REPO,
    build_inputs,
    dir_bytes,
    machine_info,
    run_measured,
)


def diff_stats(ref_dir: Path, other_dir: Path, tol: float = 1e-5) -> dict[str, Any]:
    """Max |ref - other| and how many entries differ by more than ``tol`` (tensor by tensor)."""
    from taskvec.formats import model_safetensors_files, open_tensors

    ref, _ = open_tensors(model_safetensors_files(ref_dir))
    oth, _ = open_tensors(model_safetensors_files(other_dir))
    worst, worst_name, n_diff, n_total = 0.0, None, 0, 0
    for name in ref:
        if name not in oth:
            continue
        d = (ref[name].get_tensor(name).double() - oth[name].get_tensor(name).double()).abs()
        n_total += d.numel()
        n_diff += int((d > tol).sum())
        if d.numel() and float(d.max()) > worst:
            worst, worst_name = float(d.max()), name
    for r in set(ref.values()) | set(oth.values()):
        r.close()
    return {"max_abs_diff": worst, "worst_tensor": worst_name, "entries_differing": n_diff,
            "entries_total": n_total, "tolerance": tol}


def mergekit_yaml(method: str, base: Path, fts: list[Path], lam: float, density: float) -> str:
    lines = [f"merge_method: {method}", f"base_model: {base}", "models:"]
    for ft in fts:
        lines += [f"  - model: {ft}", "    parameters:", "      weight: 1.0"]
        if method == "ties":
            lines.append(f"      density: {density!r}")
    lines += ["parameters:", f"  lambda: {lam!r}",
              f"  normalize: {'true' if method == 'ties' else 'false'}", "dtype: float32"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--t", type=int, default=3, help="number of task vectors")
    p.add_argument("--lam", type=float, default=0.5, help="lambda for both methods")
    p.add_argument("--density", type=float, default=0.5, help="ties density")
    p.add_argument("--methods", default="task_arithmetic,ties")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/taskvec-bench-apply"))
    p.add_argument("--same-deltas", action="store_true",
                   help="merge the deltas re-extracted from the fine-tuned dirs (what mergekit sees)")
    p.add_argument("--mergekit-venv", type=Path, default=DEFAULT_MERGEKIT_VENV)
    p.add_argument("--json-out", type=Path, default=REPO / "benchmarks" / "results" / "merge.json")
    args = p.parse_args(argv)

    work: Path = args.workdir
    inputs = [build_inputs(args.model, work, seed) for seed in range(1, args.t + 1)]
    base = inputs[0][0]
    vecs = [v for _, v, _ in inputs]
    fts = [ft for _, _, ft in inputs]
    if args.same_deltas:
        import subprocess

        same = []
        for ft in fts:
            out = work / f"{ft.name}-delta.safetensors"
            if not out.exists():
                subprocess.run([sys.executable, "-m", "taskvec", "extract", "--base", str(base), "--finetuned",
                                str(ft), "--dense", "--task", ft.name, "--out", str(out)], check=True,
                               capture_output=True)
            same.append(out)
        vecs = same
    mk_bin = args.mergekit_venv / "bin" / "mergekit-yaml"
    if not mk_bin.exists():
        print(f"bench_merge: error: mergekit not installed at {mk_bin} (see benchmarks/bench_apply.py)", file=sys.stderr)
        return 2
    results: list[dict[str, Any]] = []
    for method in [m.strip() for m in args.methods.split(",") if m.strip()]:
        merged = work / f"merged-{method}.safetensors"
        out_tv, out_mk = work / f"model-{method}-taskvec", work / f"model-{method}-mergekit"
        for d in (out_tv, out_mk):
            shutil.rmtree(d, ignore_errors=True)
        merged.unlink(missing_ok=True)
        params = ["--param", f"lambda={args.lam!r}"]
        if method == "ties":
            params += ["--param", f"density={args.density!r}"]
        cfg = work / f"mergekit-{method}.yml"
        cfg.write_text(mergekit_yaml(method, base, fts, args.lam, args.density))
        runs = {
            "taskvec merge": [sys.executable, "-m", "taskvec", "merge", "--method", method, "--vectors",
                              *map(str, vecs), *params, "--out", str(merged), "--no-progress", "--json"],
            "taskvec apply": [sys.executable, "-m", "taskvec", "apply", "--base", str(base), "--vector", str(merged),
                              "--out", str(out_tv), "--no-progress", "--json"],
            "mergekit-yaml": [str(mk_bin), str(cfg), str(out_mk), "--quiet"],
        }
        row: dict[str, Any] = {"method": method, "runs": {}}
        for label, cmd in runs.items():
            print(f"{method}: {label} ...", file=sys.stderr)
            r = run_measured(cmd, work / f"{method}-{label.replace(' ', '_')}.log")
            if r["rc"] != 0:
                r["error_tail"] = Path(r["log"]).read_text(errors="replace")[-2000:]
            row["runs"][label] = r
        if all(r["rc"] == 0 for r in row["runs"].values()):
            row["merged_vector_bytes"] = merged.stat().st_size
            row["model_bytes"] = dir_bytes(out_tv)
            row |= diff_stats(out_mk, out_tv)
        results.append(row)
        for d in (out_tv, out_mk):  # ~0.5 GB each
            shutil.rmtree(d, ignore_errors=True)
    report = {"date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "machine": machine_info(),
              "model": args.model, "same_deltas": args.same_deltas, "T": args.t, "lambda": args.lam, "density": args.density,
              "vector_bytes": [v.stat().st_size for v in vecs], "results": results}
    args.json_out.parent.mkdir(parents=True, exist_ok=True)
    args.json_out.write_text(json.dumps(report, indent=2) + "\n")
    mib = 2**20
    print(f"\n{args.model}, T = {args.t} dense vectors of {vecs[0].stat().st_size / mib:.0f} MiB, lambda {args.lam}")
    print(f"{'method':<16} {'step':<14} {'wall s':>7} {'peak RSS MiB':>13}")
    for row in results:
        for label, r in row["runs"].items():
            rss = f"{r['peak_rss_bytes'] / mib:.0f}" if r["rc"] == 0 else f"failed rc={r['rc']}"
            print(f"{row['method']:<16} {label:<14} {r['wall_s']:>7.1f} {rss:>13}")
        if "max_abs_diff" in row:
            print(f"{'':<16} max |mergekit - taskvec| = {row['max_abs_diff']:.2e} ({row['worst_tensor']}); "
                  f"{row['entries_differing']:,} of {row['entries_total']:,} entries differ by > {row['tolerance']:g}")
    print(f"\nwrote {args.json_out}")
    return 0 if all(r["rc"] == 0 for row in results for r in row["runs"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
