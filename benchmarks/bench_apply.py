"""Benchmark: applying a dense task vector to the embedded model, three ways, each in its own process.

(a) ``taskvec apply`` (streaming, one tensor at a time)
(b) naive: load the whole model with transformers, ``TaskVector.apply_to``, ``save_pretrained``
(c) mergekit ``task_arithmetic`` (base + a "fine-tuned" directory = base + vector, weight = scale),
    run from a separate virtual environment so it cannot disturb taskvec's

Every method runs in a fresh subprocess; its wall time and peak RSS come from ``os.wait4``
(the child's own ``ru_maxrss``). Outputs are compared tensor by tensor with the streaming one
(max abs difference). Results: a table on stdout and ``benchmarks/results/apply.json``.

    python benchmarks/bench_apply.py                       # all three
    python benchmarks/bench_apply.py --skip-mergekit       # (a) and (b) only

The inputs (vector, fine-tuned directory) are built once under ``--workdir`` and reused.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MERGEKIT_VENV = REPO / ".venv-mergekit"


# -- the naive method, run as `bench_apply.py --naive BASE VECTOR SCALE OUT` -----------------
def naive_apply(base: str, vector: str, scale: float, out: str) -> None:
    """What a script without streaming does: whole model in memory, add, save_pretrained."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from taskvec.weights import TaskVector

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    TaskVector.load(vector).apply_to(model, scale)
    model.save_pretrained(out, safe_serialization=True)
    AutoTokenizer.from_pretrained(base).save_pretrained(out)


# -- setup ----------------------------------------------------------------------------------------
def build_inputs(model: str, work: Path, seed: int) -> tuple[Path, Path, Path]:
    """(base dir, vector file, fine-tuned dir = base + vector); built once, then reused."""
    import torch

    from taskvec.formats import model_safetensors_files, open_tensors
    from taskvec.models import fingerprint, model_dir
    from taskvec.weights import TaskVector
    from taskvec.weights.stream_apply import stream_apply

    base = model_dir(model)
    work.mkdir(parents=True, exist_ok=True)
    vec_path = work / f"vector-seed{seed}.safetensors"
    if not vec_path.exists():
        print(f"setup: writing a random dense vector on every 2-D weight of {model} ...", file=sys.stderr)
        readers, specs = open_tensors(model_safetensors_files(base))
        g = torch.Generator().manual_seed(seed)
        deltas = {s.name: torch.randn(s.shape, generator=g) * 1e-3 for s in specs if len(s.shape) == 2}
        for r in set(readers.values()):
            r.close()
        TaskVector(deltas, {"base_model": model, "base_fingerprint": fingerprint(base),
                            "task": f"bench-random-seed{seed}"}).save(vec_path)
    ft = work / f"finetuned-seed{seed}"
    if not ft.exists():
        print("setup: writing the fine-tuned directory (base + vector) for mergekit ...", file=sys.stderr)
        stream_apply(base, vec_path, ft, scale=1.0, progress=False)
    return base, vec_path, ft


def mergekit_config(base: Path, ft: Path, scale: float) -> str:
    return (
        "merge_method: task_arithmetic\n"
        f"base_model: {base}\n"
        "models:\n"
        f"  - model: {ft}\n"
        "    parameters:\n"
        f"      weight: {scale!r}\n"
        "parameters:\n"
        "  normalize: false\n"
        "dtype: float32\n"
    )


# -- measuring ------------------------------------------------------------------------------------
# A minimal launcher process runs each command and reports the command's own rusage. A child
# started straight from this (large) process would not do: with vfork + exec, Linux carries
# the parent's peak RSS into the child's ru_maxrss, so every method would look as big as the
# benchmark driver. The launcher's own footprint (~10 MB) is what the command inherits.
_LAUNCHER = (
    "import json, os, subprocess, sys, time\n"
    "t = time.perf_counter()\n"
    "p = subprocess.Popen(sys.argv[2:])\n"
    "_, st, ru = os.wait4(p.pid, 0)\n"
    "json.dump({'rc': os.waitstatus_to_exitcode(st), 'maxrss_kib': ru.ru_maxrss,\n"
    "           'wall_s': time.perf_counter() - t}, open(sys.argv[1], 'w'))\n"
)


def run_measured(cmd: list[str], log: Path) -> dict[str, Any]:
    """Run ``cmd`` in a fresh process: wall seconds, its peak RSS (bytes) and exit code."""
    stats = log.with_suffix(".rusage.json")
    with open(log, "wb") as fh:
        subprocess.run([sys.executable, "-S", "-c", _LAUNCHER, str(stats), *cmd],
                       stdout=fh, stderr=subprocess.STDOUT, cwd=REPO, check=False)
    st = json.loads(stats.read_text())
    shown = [str(Path(c).relative_to(REPO)) if Path(c).is_absolute() and Path(c).is_relative_to(REPO) else c
             for c in map(str, cmd)]  # no paths of this machine in the results
    return {"cmd": shown, "rc": st["rc"], "wall_s": round(st["wall_s"], 2),
            "peak_rss_bytes": int(st["maxrss_kib"]) * 1024, "log": str(log)}


def max_abs_diff(ref_dir: Path, other_dir: Path) -> dict[str, Any]:
    """Max |ref - other| over the tensors of two model directories (read one tensor at a time)."""
    from taskvec.formats import model_safetensors_files, open_tensors

    ref, _ = open_tensors(model_safetensors_files(ref_dir))
    oth, _ = open_tensors(model_safetensors_files(other_dir))
    worst, worst_name = 0.0, None
    for name in ref:
        if name not in oth:
            continue
        a = ref[name].get_tensor(name).double()
        b = oth[name].get_tensor(name).double()
        d = float((a - b).abs().max()) if a.numel() else 0.0
        if d > worst:
            worst, worst_name = d, name
    for r in set(ref.values()) | set(oth.values()):
        r.close()
    return {"max_abs_diff": worst, "worst_tensor": worst_name,
            "missing": sorted(set(ref) - set(oth)), "extra": sorted(set(oth) - set(ref))}


def dir_bytes(d: Path) -> int:
    return sum(f.stat().st_size for f in d.rglob("*") if f.is_file())


def machine_info() -> dict[str, Any]:
    info: dict[str, Any] = {"nproc": os.cpu_count(), "platform": platform.platform(),
                            "python": platform.python_version()}
    try:
        cpu = [ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("model name")]
        info["cpu"] = cpu[0].split(":", 1)[1].strip() if cpu else None
        mem = [ln for ln in Path("/proc/meminfo").read_text().splitlines() if ln.startswith("MemTotal")]
        info["mem_gib"] = round(int(mem[0].split()[1]) / 2**20, 1) if mem else None
    except OSError:
        pass
    import safetensors
    import torch
    import transformers

    info |= {"torch": torch.__version__, "transformers": transformers.__version__,
             "safetensors": safetensors.__version__, "gpu": torch.cuda.is_available()}
    return info


def io_baseline(inputs: list[Path], out_bytes: int, work: Path, chunk: int = 16 * 2**20,
                durable: bool = False) -> float:
    """Seconds to read ``inputs`` (warm: from the page cache) and write ``out_bytes`` to a file,
    in 16 MiB chunks: the I/O an apply cannot avoid, measured in the same run. ``durable`` adds
    the ``fsync`` that ``taskvec apply`` does before its rename (then the disk's write speed counts)."""
    buf = bytearray(chunk)
    view = memoryview(buf)

    def read_all() -> None:
        for f in inputs:
            with open(f, "rb", buffering=0) as fh:
                while fh.readinto(view):
                    pass

    read_all()  # warm the page cache, as the apply runs found it
    tmp = work / "io-baseline.tmp"
    t0 = time.perf_counter()
    read_all()
    with open(tmp, "wb", buffering=0) as fh:
        left = out_bytes
        while left > 0:
            left -= fh.write(view[: min(chunk, left)])
        if durable:
            os.fsync(fh.fileno())
    seconds = time.perf_counter() - t0
    tmp.unlink()
    return seconds


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--scale", type=float, default=0.5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "taskvec-bench-apply")
    p.add_argument("--mergekit-venv", type=Path, default=DEFAULT_MERGEKIT_VENV)
    p.add_argument("--skip-mergekit", action="store_true")
    p.add_argument("--repeat", type=int, default=3,
                   help="runs of the streaming apply; its own time is their median (default 3)")
    p.add_argument("--json-out", type=Path, default=REPO / "benchmarks" / "results" / "apply.json")
    p.add_argument("--naive", nargs=4, metavar=("BASE", "VECTOR", "SCALE", "OUT"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.naive:
        base, vec, scale, out = args.naive
        naive_apply(base, vec, float(scale), out)
        return 0

    from taskvec.formats import SafetensorsReader, model_safetensors_files

    work: Path = args.workdir
    base, vec, ft = build_inputs(args.model, work, args.seed)
    largest = max(s.nbytes for f in model_safetensors_files(base) for s in SafetensorsReader(f).specs.values())
    model_bytes = sum(f.stat().st_size for f in model_safetensors_files(base))
    outs = {k: work / f"out-{k}" for k in ("stream", "naive", "mergekit")}
    for d in outs.values():
        shutil.rmtree(d, ignore_errors=True)

    methods: list[tuple[str, list[str] | None, str]] = [
        ("taskvec apply (streaming)",
         [sys.executable, "-m", "taskvec", "apply", "--base", str(base), "--vector", str(vec), "--scale",
          repr(args.scale), "--out", str(outs["stream"]), "--no-progress", "--json"], "stream"),
        ("naive (transformers load + apply_to + save_pretrained)",
         [sys.executable, str(Path(__file__).resolve()), "--naive", str(base), str(vec), repr(args.scale),
          str(outs["naive"])], "naive"),
    ]
    mk_note = None
    mk_bin = args.mergekit_venv / "bin" / "mergekit-yaml"
    if args.skip_mergekit:
        mk_note = "skipped (--skip-mergekit)"
    elif not mk_bin.exists():
        mk_note = f"mergekit not installed at {mk_bin}"
    else:
        cfg = work / "mergekit.yml"
        cfg.write_text(mergekit_config(base, ft, args.scale))
        methods.append(("mergekit task_arithmetic", [str(mk_bin), str(cfg), str(outs["mergekit"]), "--quiet"],
                        "mergekit"))
        ver = subprocess.run([str(args.mergekit_venv / "bin" / "python"), "-c",
                              "import importlib.metadata as m; print(m.version('mergekit'))"],
                             capture_output=True, text=True, check=False)
        mk_note = f"mergekit {ver.stdout.strip() or '?'} from {args.mergekit_venv}"

    # The setup just wrote about 1 GB; flush it now, so its write-back does not compete with the
    # first timed method (a first run measured 2.31 s of own time here vs 1.16-1.88 s after).
    os.sync()
    results = []
    for label, cmd, key in methods:
        print(f"running {label} ...", file=sys.stderr)
        r = run_measured(cmd, work / f"{key}.log") | {"method": label, "key": key}
        if r["rc"] == 0:
            r["out_bytes"] = dir_bytes(outs[key])
            if key != "stream" and (outs["stream"] / "config.json").exists():
                r |= max_abs_diff(outs["stream"], outs[key])
        else:
            r["error_tail"] = (work / f"{key}.log").read_text(errors="replace")[-2000:]
        results.append(r)

    stream = next(r for r in results if r["key"] == "stream")
    io_s = io_durable = None
    io_runs: dict[bool, list[float]] = {False: [], True: []}
    if stream["rc"] == 0:
        # The command's own time (without interpreter start and imports), median of --repeat runs,
        # with its default fsync and with --no-fsync (the like-for-like pair of the page-cache I/O).
        for key, extra in (("command_seconds", []), ("command_seconds_no_fsync", ["--no-fsync"])):
            own = []
            for _ in range(max(1, args.repeat)):
                if own or extra:
                    shutil.rmtree(outs["stream"], ignore_errors=True)
                    os.sync()
                    if run_measured([*methods[0][1], *extra], work / "stream.log")["rc"] != 0:
                        break
                try:
                    log = (work / "stream.log").read_text(errors="replace")
                    own.append(json.loads(log[log.index("{"):])["seconds"])
                except (ValueError, KeyError):
                    break
            if own:
                stream[key + "_runs"] = own
                stream[key] = statistics.median(own)
        in_files = [*model_safetensors_files(base), vec]
        for _ in range(max(1, args.repeat)):  # interleaved, each after a sync, medians
            for durable in (False, True):
                os.sync()
                io_runs[durable].append(io_baseline(in_files, stream["out_bytes"], work, durable=durable))
        io_s, io_durable = statistics.median(io_runs[False]), statistics.median(io_runs[True])
        if "command_seconds" in stream:
            stream["vs_io_baseline"] = round(stream["command_seconds"] / io_s, 2)
            stream["vs_durable_io_baseline"] = round(stream["command_seconds"] / io_durable, 2)
        if "command_seconds_no_fsync" in stream:
            stream["no_fsync_vs_io_baseline"] = round(stream["command_seconds_no_fsync"] / io_s, 2)
    report = {
        "io_baseline_seconds": None if io_s is None else round(io_s, 3),
        "io_durable_baseline_seconds": None if io_s is None else round(io_durable, 3),
        "io_baseline_runs": {"page_cache": io_runs[False], "with_fsync": io_runs[True]},
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine_info(),
        "model": args.model, "base_dir": str(base), "scale": args.scale,
        "model_bytes": model_bytes, "largest_tensor_bytes": largest, "vector_bytes": vec.stat().st_size,
        "mergekit_note": mk_note, "results": results,
    }
    args.json_out.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(report, indent=2).replace(str(Path.home()), "~")  # no home directory in results
    args.json_out.write_text(text + "\n")

    mib = 2**20
    print(f"\nmodel {args.model}: {model_bytes / mib:.0f} MiB of safetensors, largest tensor "
          f"{largest / mib:.0f} MiB; vector {vec.stat().st_size / mib:.0f} MiB; scale {args.scale}")
    print(f"{'method':<56} {'wall s':>7} {'peak RSS MiB':>13} {'max|diff| vs (a)':>17}")
    for r in results:
        diff = "-" if r["key"] == "stream" else (f"{r['max_abs_diff']:.2e}" if "max_abs_diff" in r else "n/a")
        rss = f"{r['peak_rss_bytes'] / mib:.0f}" if r["rc"] == 0 else f"failed rc={r['rc']}"
        print(f"{r['method']:<56} {r['wall_s']:>7.1f} {rss:>13} {diff:>17}")
    if mk_note:
        print(f"mergekit: {mk_note}")
    if io_s is not None and "command_seconds" in stream:
        print(f"taskvec apply's own time {stream['command_seconds']:.2f} s (median of "
              f"{len(stream['command_seconds_runs'])}; it fsyncs its output) vs reading + writing + fsync of the "
              f"same bytes {io_durable:.2f} s: {stream['vs_durable_io_baseline']}x; vs the page cache alone "
              f"{io_s:.2f} s: {stream['vs_io_baseline']}x")
    if io_s is not None and "command_seconds_no_fsync" in stream:
        print(f"taskvec apply --no-fsync own time {stream['command_seconds_no_fsync']:.2f} s vs reading + writing "
              f"the bytes from the page cache {io_s:.2f} s: {stream['no_fsync_vs_io_baseline']}x")
    print(f"\nwrote {args.json_out}")
    return 0 if all(r["rc"] == 0 for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
