"""Benchmark: forward-pass overhead of a soft task vector (the per-head BlendHook on every layer).

A batch of zero-shot prompts (or k-shot with ``--shots``) of the task's test split runs through the
model as in evaluation (no KV cache, logits of the last position only), alternately without and
with the soft task vector applied at the last prompt token (a forward pre-hook on every layer's
attention output projection). Each timed forward runs inside an already-entered Intervention, so
the numbers are the hook's cost, not hook registration. Plain and blended forwards alternate
(and swap order every repetition) so that load drift on a shared machine hits both alike.
Reports the medians and the overhead, ``median(blend) / median(plain) - 1`` (goal: under 5%).

    python benchmarks/bench_blend_overhead.py --model tiny:llama        # seconds
    python benchmarks/bench_blend_overhead.py                           # SmolLM2-135M, ~1 minute
    python benchmarks/bench_blend_overhead.py --vector antonym-soft.safetensors --shots 10

Results: a table on stdout and ``benchmarks/results/blend_overhead[-<model>].json``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import statistics
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m", help="model name/dir, or tiny:<arch>")
    ap.add_argument("--task", default="antonym")
    ap.add_argument("--batch", type=int, default=16, help="prompts in the batch (default 16)")
    ap.add_argument("--shots", type=int, default=0, help="demonstrations per prompt (default 0)")
    ap.add_argument("--repeats", type=int, default=30, help="timed forwards per variant")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--vector", default=None, help="a soft task vector file (default: random coefficients)")
    ap.add_argument("--positions", default="last", help="last (default) or last+generated")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    ap.add_argument("--out", default=None, help="JSON output (default benchmarks/results/blend_overhead*.json)")
    args = ap.parse_args()

    import torch

    from taskvec.activations.soft_vector import SoftTaskVector, load_soft
    from taskvec.eval.batching import encode, left_pad, pad_id
    from taskvec.eval.harness import build_prompts
    from taskvec.eval.scoring import forward_logits
    from taskvec.models import get_adapter
    from taskvec.tasks import get_task

    if args.threads:
        torch.set_num_threads(args.threads)
    task = get_task(args.task)
    model, tok = load(args.model)
    ad = get_adapter(model)
    if args.vector:
        sv = load_soft(args.vector)
        sv.check_model(model)
    else:  # timing does not depend on the values: random coefficients and means
        g = torch.Generator().manual_seed(0)
        coef = torch.randn(ad.n_layers, ad.n_heads, generator=g) - 2.0  # (L, H)
        means = torch.randn(ad.n_layers, ad.n_heads, ad.head_dim, generator=g)  # (L, H, D)
        sv = SoftTaskVector(coef, means, {})
    split = "test" if "test" in task.splits else task.eval_split
    examples = task.load(split, limit=args.batch)
    prompts = build_prompts(task, examples, shots=args.shots)
    batch = left_pad(encode(tok, prompts), pad_id(tok))
    n_tokens = int(batch.attention_mask.sum())

    plain_t: list[float] = []
    blend_t: list[float] = []
    iv = sv.intervention(model, positions=args.positions)

    def plain() -> None:
        t0 = time.perf_counter()
        forward_logits(model, batch, 1)
        plain_t.append(time.perf_counter() - t0)

    def blended() -> None:
        with iv:
            t0 = time.perf_counter()
            forward_logits(model, batch, 1)
            blend_t.append(time.perf_counter() - t0)

    with torch.no_grad():
        for _ in range(args.warmup):
            plain()
            blended()
        plain_t.clear()
        blend_t.clear()
        for r in range(args.repeats):
            for fn in ((plain, blended) if r % 2 == 0 else (blended, plain)):
                fn()
        # the blend really changes the output (the hook ran)
        ref = forward_logits(model, batch, 1)
        with iv:
            patched = forward_logits(model, batch, 1)
        changed = float((ref - patched).abs().max())

    med_p, med_b = statistics.median(plain_t), statistics.median(blend_t)
    result = {
        "benchmark": "blend_overhead",
        "model": args.model,
        "task": task.name,
        "split": split,
        "batch": len(prompts),
        "shots": args.shots,
        "tokens": n_tokens,
        "seq_len": int(batch.input_ids.shape[1]),
        "layers": ad.n_layers,
        "heads": ad.n_heads,
        "positions": args.positions,
        "vector": args.vector,
        "repeats": args.repeats,
        "threads": torch.get_num_threads(),
        "plain_ms_median": round(med_p * 1e3, 3),
        "blend_ms_median": round(med_b * 1e3, 3),
        "plain_ms_min": round(min(plain_t) * 1e3, 3),
        "blend_ms_min": round(min(blend_t) * 1e3, 3),
        "overhead_pct_median": round((med_b / med_p - 1) * 100, 2),
        "overhead_pct_min": round((min(blend_t) / min(plain_t) - 1) * 100, 2),
        "max_abs_logit_change": changed,
        "goal_pct": 5.0,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    print(f"{task.name} {split}: {len(prompts)} prompts ({args.shots}-shot, {result['seq_len']} tokens "
          f"wide), {ad.n_layers} layers x {ad.n_heads} heads, {args.repeats} forwards each, "
          f"{result['threads']} threads")
    print(f"{'':10}{'median ms':>12}{'min ms':>10}")
    print(f"{'plain':10}{result['plain_ms_median']:>12.2f}{result['plain_ms_min']:>10.2f}")
    print(f"{'blend':10}{result['blend_ms_median']:>12.2f}{result['blend_ms_min']:>10.2f}")
    print(f"overhead: {result['overhead_pct_median']:+.2f}% (median), "
          f"{result['overhead_pct_min']:+.2f}% (min); goal < 5%")
    safe = args.model.replace("/", "_").replace(":", "-")
    out = Path(args.out) if args.out else (
        REPO / "benchmarks" / "results"
        / ("blend_overhead.json" if args.model == "smollm2-135m" else f"blend_overhead-{safe}.json")
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"-> {out}")


if __name__ == "__main__":
    main()
