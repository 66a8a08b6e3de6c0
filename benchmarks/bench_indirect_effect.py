"""Benchmark: the indirect-effect (IE) head scan, naive vs batched vs cached.

- naive:   one forward pass per (prompt, head), plus one clean pass per prompt (the reference);
- batched: each prompt replicated over a batch of rows, each row patching a different head;
- cached:  the prompt minus its last token runs once with a KV cache; the patched rows only run
           the last token on top of it (taskvec's default).

All three run on the same shuffled-label prompts and head means. The naive scan is run only on
the heads of ``--naive-layers`` layers (spread over the depth) and its full-scan time is
EXTRAPOLATED (per-head time x all heads, marked ``extrapolated`` in the output); ``--batched-layers``
does the same for the batched scan. Scores are compared on the heads every method scanned.

    python benchmarks/bench_indirect_effect.py --model tiny:llama          # seconds
    python benchmarks/bench_indirect_effect.py                             # SmolLM2-135M, minutes

Results: a table on stdout and ``benchmarks/results/indirect_effect[-<model>].json``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import platform
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def load(name: str) -> tuple[Any, Any]:
    """``tiny:<arch>`` for a tiny random model, else anything ``load_model`` takes."""
    if name.startswith("tiny:"):
        from taskvec.models import tiny_model

        return tiny_model(name.split(":", 1)[1], num_hidden_layers=6)
    from taskvec.models import load_model

    return load_model(name)


def spread(n_total: int, n: int) -> list[int]:
    """``n`` layer indices spread evenly over ``range(n_total)`` (first and last included)."""
    if n >= n_total:
        return list(range(n_total))
    if n == 1:
        return [n_total // 2]
    return sorted({round(i * (n_total - 1) / (n - 1)) for i in range(n)})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m", help="model name/dir, or tiny:<arch>")
    ap.add_argument("--task", default="antonym")
    ap.add_argument("--prompts", type=int, default=5, help="shuffled-label prompts in the scan")
    ap.add_argument("--shots", type=int, default=10)
    ap.add_argument("--mean-prompts", type=int, default=20, help="prompts for the head means")
    ap.add_argument("--naive-layers", type=int, default=3, help="layers the naive scan covers")
    ap.add_argument("--batched-layers", type=int, default=None, help="layers the batched scan covers (default all)")
    ap.add_argument("--batch-size", type=int, default=64, help="patched rows per forward pass")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    ap.add_argument("--out", default=None, help="JSON output (default benchmarks/results/indirect_effect*.json)")
    args = ap.parse_args()

    import torch

    from taskvec.activations import head_means, ie_scores, top_heads
    from taskvec.activations.collect import icl_prompt_set
    from taskvec.models import get_adapter
    from taskvec.tasks import get_task

    if args.threads:
        torch.set_num_threads(args.threads)
    task = get_task(args.task)
    t0 = time.perf_counter()
    model, tok = load(args.model)
    ad = get_adapter(model)
    n_layers, n_heads = ad.n_layers, ad.n_heads
    print(f"model {args.model}: {n_layers} layers x {n_heads} heads, loaded in {time.perf_counter() - t0:.1f}s")

    t0 = time.perf_counter()
    hm = head_means(model, tok, task, n_prompts=args.mean_prompts, shots=args.shots)
    t_means = time.perf_counter() - t0
    ps = icl_prompt_set(task, tok, args.prompts, args.shots, 0, shuffle_labels=True, salt="ie")
    n_tokens = [len(tok(p)["input_ids"]) for p in ps.prompts]
    print(f"head means ({args.mean_prompts} prompts): {t_means:.1f}s; scan prompts: {len(ps.prompts)}, "
          f"{min(n_tokens)}-{max(n_tokens)} tokens")

    def scan(method: str, layers: list[int] | None) -> tuple[Any, float]:
        heads = None if layers is None else [(li, h) for li in layers for h in range(n_heads)]
        t = time.perf_counter()
        res = ie_scores(model, tok, ps.prompts, ps.targets, hm.means, method=method, heads=heads,
                        batch_size=args.batch_size)
        return res, time.perf_counter() - t

    for method in ("cached", "batched", "naive"):  # warm-up (lazy initialisation, allocator)
        ie_scores(model, tok, ps.prompts[:1], ps.targets[:1], hm.means, method=method,
                  heads=[(0, 0)], batch_size=args.batch_size)
    results: dict[str, dict[str, Any]] = {}
    all_heads = n_layers * n_heads
    cached, t_cached = scan("cached", None)
    results["cached"] = {"seconds": round(t_cached, 3), "heads_scanned": all_heads, "extrapolated": False}
    print(f"cached : {t_cached:8.2f}s for all {all_heads} heads")

    b_layers = None if args.batched_layers is None else spread(n_layers, args.batched_layers)
    batched, t_b = scan("batched", b_layers)
    nb = all_heads if b_layers is None else len(b_layers) * n_heads
    # per prompt: one row per head + the clean row, in ceil(rows / batch) forward passes
    t_b_full = t_b * math.ceil((all_heads + 1) / args.batch_size) / math.ceil((nb + 1) / args.batch_size)
    results["batched"] = {"seconds_measured": round(t_b, 3), "heads_scanned": nb,
                          "seconds": round(t_b_full, 3), "extrapolated": nb < all_heads}
    print(f"batched: {t_b:8.2f}s for {nb} heads" + (f" -> {t_b_full:.1f}s for all (extrapolated)" if nb < all_heads else ""))

    n_layers_naive = spread(n_layers, args.naive_layers)
    naive, t_n = scan("naive", n_layers_naive)
    nn_ = len(n_layers_naive) * n_heads
    t_n_full = t_n * (all_heads + 1) / (nn_ + 1)  # per prompt: one pass per head + a clean pass
    results["naive"] = {"seconds_measured": round(t_n, 3), "heads_scanned": nn_, "layers": n_layers_naive,
                        "seconds": round(t_n_full, 3), "extrapolated": nn_ < all_heads}
    print(f"naive  : {t_n:8.2f}s for {nn_} heads (layers {n_layers_naive})"
          + (f" -> {t_n_full:.1f}s for all (EXTRAPOLATED per head)" if nn_ < all_heads else ""))

    mask = torch.isfinite(naive.scores)
    both = mask & torch.isfinite(batched.scores)
    diffs = {
        "cached_vs_naive": float((cached.scores - naive.scores)[mask].abs().max()),
        "batched_vs_naive": float((batched.scores - naive.scores)[both].abs().max()) if both.any() else None,
        "cached_vs_batched": float((cached.scores - batched.scores)[torch.isfinite(batched.scores)].abs().max()),
    }
    # ranking agreement on the heads the naive scan covered
    restricted = torch.where(mask, cached.scores, torch.full_like(cached.scores, float("nan")))
    same_top = restricted.isfinite().any() and top_heads(restricted, 10) == naive.top_heads(10)
    print("\nmethod   full-scan s  speedup vs naive  note")
    for name in ("naive", "batched", "cached"):
        r = results[name]
        note = "extrapolated" if r["extrapolated"] else "measured"
        print(f"{name:8s} {r['seconds']:11.2f}  {t_n_full / r['seconds']:16.1f}x  {note}")
    print(f"\nmax |score difference|: {json.dumps(diffs)}  (scores are probability gains; "
          f"largest |IE| = {float(cached.scores.abs().max()):.3g})")

    top = cached.top_heads(10)
    report = {
        "benchmark": "indirect_effect",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "model": args.model,
        "task": args.task,
        "layers": n_layers,
        "heads": n_heads,
        "prompts": len(ps.prompts),
        "prompt_tokens": {"min": min(n_tokens), "max": max(n_tokens)},
        "shots": args.shots,
        "batch_size": args.batch_size,
        "head_means_seconds": round(t_means, 3),
        "methods": results,
        "speedup_vs_naive": {k: round(t_n_full / v["seconds"], 2) for k, v in results.items()},
        "max_abs_score_diff": diffs,
        "same_top10_among_naive_heads": bool(same_top),
        "top10_heads": [list(h) for h in top],
        "top10_scores": [float(cached.scores[li, h]) for li, h in top],
        "environment": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "machine": platform.machine(),
            "processor": platform.processor() or platform.machine(),
        },
    }
    out = Path(args.out) if args.out else REPO / "benchmarks" / "results" / (
        "indirect_effect.json" if not args.model.startswith("tiny:")
        else f"indirect_effect-{args.model.replace(':', '-')}.json"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
