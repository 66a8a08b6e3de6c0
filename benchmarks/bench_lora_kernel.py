"""Benchmark: the fused LoRA linear against PEFT's LoRA forward, as an interleaved A/B test.

Usage:
    python benchmarks/bench_lora_kernel.py [--model smollm2-135m] [--task sst2] [--pairs 12] \
        [--batch-size 16] [--lora-r 8] [--json-out benchmarks/results/lora_kernel.json]

Whole-run timings of two training runs differ by about 10% from step to step on a shared 2-core
machine, more than the kernel changes. So this benchmark times the same packed training step
(the demo recipe: LoRA rank 8 on the seven projections, batch 16 of SST-2, forward + backward)
with the two kernels in alternating order, ``--pairs`` times each, on the same batches
(a new batch for every pair), after one warm-up of each. Reported: median seconds per step of
each kernel, the per-pair ratios peft / fused with their median and a 95% interval (a
distribution-free interval of the median from the order statistics of the ratios), and the
largest relative difference of the two kernels' losses.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from contextlib import nullcontext
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe, machine_info, write_result  # noqa: E402


def median_interval(xs: list[float], level: float = 0.95) -> tuple[float, float]:
    """Distribution-free interval of the median: order statistics j, n-j+1 with binomial coverage."""
    xs = sorted(xs)
    n = len(xs)
    best = (xs[0], xs[-1])
    for j in range(1, n // 2 + 1):  # widest-first; keep the narrowest with coverage >= level
        cover = 1 - 2 * sum(math.comb(n, i) for i in range(j)) / 2**n
        if cover >= level:
            best = (xs[j - 1], xs[n - j])
    return best


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--task", default="sst2")
    p.add_argument("--pairs", type=int, default=12)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lora-r", type=int, default=8)
    p.add_argument("--json-out", type=Path, default=Path("benchmarks/results/lora_kernel.json"))
    args = p.parse_args(argv)

    import torch

    from taskvec.eval.batching import pad_id
    from taskvec.models import load_model, tiny_model
    from taskvec.tasks import get_task
    from taskvec.weights.finetune_data import ExampleOrder, accepts_logits_to_keep, encode_example
    from taskvec.weights.finetune_options import resolve_targets
    from taskvec.weights.finetune_pack import packed_loss
    from taskvec.weights.lora_kernel import fused_lora, wrap_lora

    if args.model.startswith("tiny:"):  # a smoke run of the benchmark itself
        model, tok = tiny_model(args.model.split(":", 1)[1])
    else:
        model, tok = load_model(args.model)
    task = get_task(args.task)
    examples = task.load(task.train_split)
    _, suffixes, conv1d = resolve_targets(model, "q,k,v,o,gate,up,down")
    net = wrap_lora(model, suffixes, args.lora_r, 2 * args.lora_r, conv1d, seed=0)
    with torch.no_grad():  # a trained-looking adapter: B != 0, as after the first steps
        g = torch.Generator().manual_seed(0)
        for n, prm in net.named_parameters():
            if "lora_B" in n:
                prm.copy_(torch.randn(prm.shape, generator=g) * 0.01)
    net.train()
    keep, pad, order = accepts_logits_to_keep(net), pad_id(tok), ExampleOrder(len(examples), 0)

    def step(i: int, kernel: str) -> tuple[float, float]:
        idx = order(i, args.batch_size)
        pairs = [encode_example(tok, task.prompt(examples[j]), task.answer(examples[j]), 128) for j in idx]
        n_tok = float(sum(len(a) for _, a in pairs))
        net.zero_grad(set_to_none=True)
        with fused_lora(net) if kernel == "fused" else nullcontext():
            t0 = time.perf_counter()
            loss, _ = packed_loss(net, pairs, pad, torch.device("cpu"), keep, n_tok)
            loss.backward()
            return time.perf_counter() - t0, float(loss.detach())

    step(0, "fused"), step(0, "peft")  # warm-up
    rows = []
    for i in range(1, args.pairs + 1):
        first, second = ("fused", "peft") if i % 2 else ("peft", "fused")
        t = {first: step(i, first), second: step(i, second)}
        rows.append({"batch": i, "first": first, "fused_s": t["fused"][0], "peft_s": t["peft"][0],
                     "fused_loss": t["fused"][1], "peft_loss": t["peft"][1]})
    ratios = [r["peft_s"] / r["fused_s"] for r in rows]
    lo, hi = median_interval(ratios)
    med = sorted(ratios)[len(ratios) // 2] if len(ratios) % 2 else \
        sum(sorted(ratios)[len(ratios) // 2 - 1:len(ratios) // 2 + 1]) / 2
    fused_med = sorted(r["fused_s"] for r in rows)[len(rows) // 2]
    peft_med = sorted(r["peft_s"] for r in rows)[len(rows) // 2]
    info = machine_info()
    out = {
        "benchmark": "fused LoRA linear vs PEFT forward, interleaved A/B, packed training step",
        "date": time.strftime("%Y-%m-%d"), "machine": info, "machine_line": describe(info),
        "model": args.model, "task": args.task, "batch_size": args.batch_size, "lora_r": args.lora_r,
        "torch_threads": torch.get_num_threads(), "pairs": args.pairs,
        "median_step_s": {"fused": round(fused_med, 4), "peft": round(peft_med, 4)},
        "speedup_median": round(med, 4), "speedup_95ci": [round(lo, 4), round(hi, 4)],
        "max_rel_loss_diff": max(abs(r["fused_loss"] - r["peft_loss"]) / abs(r["peft_loss"]) for r in rows),
        "rows": rows,
    }
    write_result(args.json_out, out)
    print(describe(info))
    print(f"median step: fused {fused_med:.3f} s, peft {peft_med:.3f} s; speed-up (peft / fused, per pair) "
          f"median {med:.3f} [95% CI {lo:.3f}, {hi:.3f}], n = {len(rows)} pairs; "
          f"largest relative loss difference {out['max_rel_loss_diff']:.1e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
