"""Benchmark: LoRA fine-tuning throughput against this machine's measured float32 GEMM peak.

Usage:
    python benchmarks/bench_train.py [--model smollm2-135m] [--task sst2] [--steps 12] \
        [--batch-size 16] [--lora-r 8] [--json-out benchmarks/results/train.json]

1. **Peak**: a plain float32 ``torch.mm`` of two n x n matrices (n = 512, 1024, 2048, 4096), best of
   several repetitions, on all of torch's threads: the arithmetic limit the training step runs into.
2. **Training**: ``taskvec.weights.finetune`` with the demo recipe (LoRA rank 8 on the seven
   projections, batch 16, SST-2) for ``--steps`` steps, four times in the same process: packed
   rows with the fused LoRA kernel (the default), packed rows with PEFT's LoRA forward
   (``--lora-kernel peft``), length-grouped micro-batches, one padded batch; step times from ``train_log.jsonl``
   (the first step, which warms up allocators, is dropped). The benchmark rebuilds each step's
   batch (same seeded order) to count real tokens, padded tokens and answer positions.
3. **Useful FLOPs per step**, counted by hand for the model's shapes: per real token 2 N (forward)
   + 2 N (gradient w.r.t. the activations, needed to reach earlier layers' LoRA factors), with N
   the decoder's linear weights, plus the LoRA factors' forward and both backward products and
   the attention products (QK^T and AV: forward 4 T d per layer, backward twice that); the LM head
   (2 V d forward, 2 V d backward) only at the kept answer positions. Frozen weights need no weight
   gradient, so 4 N per token (not 6 N) is the floor a LoRA step must pay.

Reported: tokens/s (real, non-padding), useful GFLOP/s, and their fraction of the measured peak;
the padding fraction of the batches. Results: a table on stdout and ``--json-out``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe, machine_info  # noqa: E402

#: (label, batching, LoRA kernel): the default first, then one change at a time
RUNS = (("packed", "packed", "fused"), ("packed, peft kernel", "packed", "peft"),
        ("length-grouped", "length-grouped", "fused"), ("padded", "padded", "fused"))


def gemm_peak(sizes: tuple[int, ...] = (512, 1024, 2048, 4096), reps: int = 5) -> dict[str, float]:
    """Best float32 GEMM rate (GFLOP/s) per size on torch's threads."""
    import torch

    out = {}
    for n in sizes:
        a, b = torch.randn(n, n), torch.randn(n, n)
        torch.mm(a, b)  # warm-up
        best = float("inf")
        for _ in range(reps):
            t0 = time.perf_counter()
            torch.mm(a, b)
            best = min(best, time.perf_counter() - t0)
        out[str(n)] = round(2 * n**3 / best / 1e9, 1)
    return out


def model_shapes(model: Any) -> dict[str, int]:
    """Decoder linear weights N, hidden d, layers L, vocabulary V, attention width."""
    import torch

    cfg = model.config
    n_lin = sum(m.weight.numel() for name, m in model.named_modules()
                if isinstance(m, torch.nn.Linear) and "lm_head" not in name)
    heads = cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    return {"linear_weights": n_lin, "hidden": cfg.hidden_size, "layers": cfg.num_hidden_layers,
            "vocab": cfg.vocab_size, "attn_width": heads * head_dim}


def step_flops(shapes: dict[str, int], lengths: list[int], answers: list[int], lora_params: int) -> float:
    """Useful FLOPs of one LoRA training step on rows of the given real lengths (see the module doc)."""
    n, d, layers, v, w = (shapes[k] for k in ("linear_weights", "hidden", "layers", "vocab", "attn_width"))
    total = 0.0
    for t, a in zip(lengths, answers):
        per_token = 4 * n + 6 * lora_params  # frozen: fwd + input grad; LoRA factors: fwd + 2 bwd
        attn = 12 * layers * w * t / 2  # fwd 4 T w (causal: half) + bwd 8 T w
        total += t * (per_token + attn) + (a + 1) * 4 * v * d
    return total


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--task", default="sst2")
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lora-r", type=int, default=8)
    p.add_argument("--json-out", type=Path, default=Path("benchmarks/results/train.json"))
    args = p.parse_args(argv)

    import torch

    from taskvec.models import load_model
    from taskvec.tasks import get_task
    from taskvec.weights.finetune import finetune
    from taskvec.weights.finetune_data import ExampleOrder, encode_example, length_groups

    peak = gemm_peak()
    if args.model.startswith("tiny:"):  # a smoke run of the benchmark itself
        from taskvec.models import tiny_model

        model, tok = tiny_model(args.model.split(":", 1)[1])
    else:
        model, tok = load_model(args.model)
    task = get_task(args.task)
    shapes = model_shapes(model)
    examples = task.load(task.train_split)
    best_peak = max(peak.values())
    results = {}
    for label, name, kernel in RUNS:
        with tempfile.TemporaryDirectory() as tmp:
            res = finetune(model, tok, task, Path(tmp) / "run", steps=args.steps, batch_size=args.batch_size,
                           lr=5e-4, lora_r=args.lora_r, lora_alpha=2 * args.lora_r, seed=0, checkpoint_every=0,
                           progress=False, warmup_steps=2, schedule="linear", batching=name,
                           lora_kernel=kernel)
            log = [json.loads(x) for x in (Path(tmp) / "run" / "train_log.jsonl").read_text().splitlines()]
            lora = sum(p.numel() for n, p in res.model.named_parameters() if p.requires_grad)
            res.unload()
        order = ExampleOrder(len(examples), 0)
        rows = []
        for rec in log[1:]:  # the first step warms up
            idx = order(rec["step"] - 1, args.batch_size)
            enc = [encode_example(tok, task.prompt(examples[i]), task.answer(examples[i]), 128) for i in idx]
            lengths = [len(a) + len(b) for a, b in enc]
            answers = [len(b) for _, b in enc]
            groups = length_groups(lengths) if name == "length-grouped" else [list(range(len(lengths)))]
            rows.append({"step": rec["step"], "seconds": rec["seconds"], "loss": rec["loss"],
                         "real_tokens": sum(lengths),
                         "padded_tokens": (sum(lengths) if name == "packed"
                                           else sum(max(lengths[i] for i in g) * len(g) for g in groups)),
                         "micro_batches": len(groups), "flops": step_flops(shapes, lengths, answers, lora)})
        secs = sum(r["seconds"] for r in rows)
        real = sum(r["real_tokens"] for r in rows)
        padded = sum(r["padded_tokens"] for r in rows)
        flops = sum(r["flops"] for r in rows)
        results[label] = {
            "batching": name, "lora_kernel": kernel, "timed_steps": len(rows), "seconds_per_step": round(secs / len(rows), 3),
            "tokens_per_s": round(real / secs, 1), "padding_fraction": round(1 - real / padded, 3),
            "useful_gflops": round(flops / secs / 1e9, 1), "fraction_of_peak": round(flops / secs / 1e9 / best_peak, 3),
            "tokens_per_s_at_peak": round(real / (flops / (best_peak * 1e9)), 1), "steps": rows}
    info = machine_info()
    out = {
        "benchmark": "LoRA fine-tuning throughput vs float32 GEMM peak", "date": time.strftime("%Y-%m-%d"),
        "machine": info, "machine_line": describe(info), "model": args.model, "task": args.task,
        "recipe": {"steps": args.steps, "batch_size": args.batch_size, "lora_r": args.lora_r,
                   "targets": "q,k,v,o,gate,up,down"},
        "gemm_peak_gflops": peak, "shapes": shapes, "lora_params": lora, "torch_threads": torch.get_num_threads(),
        "runs": results,
        "speedup_vs_padded": {k: round(results["padded"]["seconds_per_step"] / v["seconds_per_step"], 3)
                              for k, v in results.items()},
        "fused_vs_peft": round(results["packed, peft kernel"]["seconds_per_step"]
                               / results["packed"]["seconds_per_step"], 3),
    }
    args.json_out.parent.mkdir(parents=True, exist_ok=True)
    args.json_out.write_text(json.dumps(out, indent=2) + "\n")
    print(describe(info))
    print(f"float32 GEMM peak: {best_peak} GFLOP/s")
    print("| run | s/step | tokens/s | padding | useful GFLOP/s | of peak | tokens/s at peak |")
    print("|---|---|---|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['seconds_per_step']} | {r['tokens_per_s']} | {r['padding_fraction']:.1%} | "
              f"{r['useful_gflops']} | {r['fraction_of_peak']:.1%} | {r['tokens_per_s_at_peak']} |")
    print(f"speed-up over padded batches: {out['speedup_vs_padded']}")
    print(f"fused LoRA kernel vs PEFT's forward (packed): {out['fused_vs_peft']}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
