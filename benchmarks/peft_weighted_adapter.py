"""Correctness of combining LoRA adapters: PEFT's ``add_weighted_adapter`` vs taskvec, both
against the exact dense reference ``sum_i w_i * scale_i * B_i A_i`` of every module.

Usage:
    python benchmarks/peft_weighted_adapter.py [--vectors runs/collection/sst2.safetensors \
        runs/collection/mnli.safetensors] [--model smollm2-135m] [--out benchmarks/results/peft_combine.json]

Each vector is written as a PEFT adapter twice: plain LoRA (``alpha = r``, scale 1, what
``taskvec export-peft`` writes) and rsLoRA (``use_rslora``, ``alpha = sqrt(r)``: the same
deltas). Then, per adapter kind and weight set, PEFT's ``add_weighted_adapter`` with
``combination_type`` linear / cat / svd (its default rank, and ``svd_rank`` = the sum of the
ranks) builds a new adapter, whose deltas (``get_delta_weight``) are compared with the reference
(float64). taskvec reads the same adapters (``TaskVector.from_peft``), merges them with
``task_arithmetic`` (stacked factors), exports the result with ``export_peft``, and PEFT loads it
back; both the merged vector and the re-loaded adapter are compared. The error is the relative
Frobenius error over all modules, ``sqrt(sum ||D - R||^2 / sum ||R||^2)``.

Without ``--vectors`` two random rank-8 vectors on a tiny Llama are used (seconds, no model).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe, machine_info  # noqa: E402

WEIGHT_SETS = {"w = (1, 1)": [1.0, 1.0], "w = (1, -1)": [1.0, -1.0], "w = (0.5, -0.7)": [0.5, -0.7]}


def write_adapters(vec: Any, out: Path, base: str | None) -> dict[str, Path]:
    """The vector as a plain LoRA adapter and as an rsLoRA adapter with the same deltas."""
    from taskvec.weights.peft_io import export_peft

    plain = export_peft(vec, out / "lora", base_model=base, overwrite=True)
    rs = export_peft(vec, out / "rslora", base_model=base, overwrite=True)
    cfg = json.loads((rs / "adapter_config.json").read_text())
    cfg["use_rslora"] = True  # scale = alpha / sqrt(r): alpha = sqrt(r) keeps every delta
    cfg["lora_alpha"] = math.sqrt(cfg["r"])
    cfg["alpha_pattern"] = {k: math.sqrt(r) for k, r in cfg["rank_pattern"].items()}
    (rs / "adapter_config.json").write_text(json.dumps(cfg, indent=2))
    return {"lora": plain, "rslora": rs}


def lora_layers(model: Any) -> dict[str, Any]:
    from peft.tuners.lora import LoraLayer

    return {name.removeprefix("base_model.model."): mod for name, mod in model.named_modules() if isinstance(mod, LoraLayer)}


def rel_error(got: dict[str, torch.Tensor], ref: dict[str, torch.Tensor]) -> float:
    e2 = sum(float((got[k].double() - ref[k]).pow(2).sum()) for k in ref)
    n2 = sum(float(ref[k].pow(2).sum()) for k in ref)
    return math.sqrt(e2 / n2)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vectors", nargs=2, type=Path, default=None)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/peft_combine.json"))
    args = ap.parse_args(argv)

    import peft
    from peft import PeftModel

    from taskvec.models.tiny import tiny_model
    from taskvec.weights.lowrank import LowRankDelta
    from taskvec.weights.merge import merge
    from taskvec.weights.peft_io import export_peft
    from taskvec.weights.vector import TaskVector

    t0 = time.perf_counter()
    if args.vectors:
        from taskvec.models import load_model

        vecs = [TaskVector.load(p) for p in args.vectors]
        labels = [p.stem for p in args.vectors]

        def fresh() -> Any:
            return load_model(args.model)[0]
        source = f"{args.model}: {', '.join(str(p) for p in args.vectors)}"
    else:
        base0, _ = tiny_model("llama", seed=0)
        g = torch.Generator().manual_seed(0)
        vecs = []
        for _ in range(2):
            deltas = {}
            for n, p in base0.named_parameters():
                if p.dim() == 2 and ".layers." in n:
                    deltas[n] = LowRankDelta(torch.randn(8, p.shape[1], generator=g) * 0.1,
                                             torch.randn(p.shape[0], 8, generator=g) * 0.1, 2.0)
            vecs.append(TaskVector(deltas))
        labels = ["random_a", "random_b"]

        def fresh() -> Any:
            return tiny_model("llama", seed=0)[0]
        source = "tiny llama, two random rank-8 vectors (scale 2)"
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        tmpd = Path(tmp)
        dirs = [write_adapters(v, tmpd / lab, None) for v, lab in zip(vecs, labels)]
        for kind in ("lora", "rslora"):
            model = PeftModel.from_pretrained(fresh(), dirs[0][kind], adapter_name="a")
            model.load_adapter(dirs[1][kind], adapter_name="b")
            layers = lora_layers(model)
            deltas = {k: [m.get_delta_weight(a).detach().double() for a in ("a", "b")] for k, m in layers.items()}
            read = [TaskVector.from_peft(d[kind]) for d in dirs]
            for wname, w in WEIGHT_SETS.items():
                ref = {k: w[0] * d[0] + w[1] * d[1] for k, d in deltas.items()}
                combos: list[tuple[str, dict[str, Any]]] = [
                    ("linear", {}), ("cat", {}), ("svd", {}), ("svd", {"svd_rank": 16})]
                for ct, kw in combos:
                    label = f"PEFT {ct}" + (f" (svd_rank {kw['svd_rank']})" if kw else "")
                    try:
                        model.add_weighted_adapter(["a", "b"], w, "m", combination_type=ct, **kw)
                        got = {k: m.get_delta_weight("m").detach() for k, m in lora_layers(model).items()}
                        err: float | None = rel_error(got, ref)
                        model.delete_adapter("m")
                        note = ""
                    except Exception as exc:  # noqa: BLE001 - a refusal is a result too
                        err, note = None, f"{type(exc).__name__}: {str(exc)[:80]}"
                    rows.append({"adapters": kind, "weights": wname, "method": label, "rel_error": err, "note": note})
                tv = merge("task_arithmetic", read, w)
                got = {k[: -len(".weight")]: d.to_dense() for k, d in tv.items()}
                rows.append({"adapters": kind, "weights": wname, "method": "taskvec task_arithmetic",
                             "rel_error": rel_error(got, ref), "note": "stacked factors, rank 16"})
                export_peft(tv, tmpd / "merged", overwrite=True)
                back = PeftModel.from_pretrained(fresh(), tmpd / "merged", adapter_name="t")
                got = {k: m.get_delta_weight("t").detach() for k, m in lora_layers(back).items()}
                rows.append({"adapters": kind, "weights": wname, "method": "taskvec -> export-peft -> PEFT",
                             "rel_error": rel_error(got, ref), "note": "loaded by PeftModel.from_pretrained"})
    info = machine_info()
    result = {"benchmark": "combining two LoRA adapters: PEFT add_weighted_adapter vs taskvec",
              "date": time.strftime("%Y-%m-%d"), "source": source, "peft": peft.__version__,
              "machine": info, "machine_line": describe(info), "seconds": round(time.perf_counter() - t0, 1),
              "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print("| adapters | weights | method | rel. error vs exact | note |\n|---|---|---|---|---|")
    for r in rows:
        e = "refused" if r["rel_error"] is None else f"{r['rel_error']:.2e}"
        print(f"| {r['adapters']} | {r['weights']} | {r['method']} | {e} | {r['note']} |")
    print(f"\n{describe(info)}; {result['seconds']} s; wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
