"""Fake-quantization throughput: noisesweep fused vs eager vs torchao, against x.clone().

Run: .venv/bin/python bench/quant_throughput.py [--size 4096] [--reps 7] [--cpu-reps 9] [--json out.json]

For each format (mxfp4, nvfp4) and dtype (fp32, bf16) on a size x size tensor it times, in
one process and interleaved round-robin (so CPU contention hits every contender alike), the
median of `--reps` calls of: x.clone() of the same tensor (so of the same dtype), the fused
(torch.compile) path, the eager reference and torchao's eager path (to_mx + to_dtype for MXFP4;
NVFP4Tensor.to_nvfp4 with a per-tensor scale + dequantize for NVFP4). Bandwidth counts one read
and one write of the tensor, as for clone. Next to each median ratio it prints the range of the
per-round ratios (clone and fused timed back to back), which shows how noisy the machine was.

Wall-clock times on a shared machine swing with the other processes' load. So a second table
times clone and fused on one thread by the thread's CPU time (`time.thread_time`, page faults
included, time spent descheduled excluded), in a subprocess started with one thread (Inductor
bakes the thread count into its kernels, so it cannot be changed in a running process).

Targets (issue 11): fused >= 50 % of clone for fp32, >= 30 % for bf16.
The one-off compile cost is measured in fresh subprocesses with a cold and then warm Inductor
cache (a private cache directory, so the user's cache is neither used nor disturbed).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from quant import fp4_compiled  # noqa: E402
from quant.fp4_kernels import eager_fake_quantize  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
FORMATS = ("mxfp4", "nvfp4")


def torchao_fn(fmt: str) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """torchao's eager quantize + dequantize for `fmt`, or None if torchao is missing."""
    try:
        from torchao.prototype.mx_formats import mx_tensor, nvfp4_tensor
    except ImportError:
        return None
    if fmt == "mxfp4":
        e2m1 = torch.float4_e2m1fn_x2

        def mx(x: torch.Tensor) -> torch.Tensor:
            scale, data = mx_tensor.to_mx(x, e2m1, 32, mx_tensor.ScaleCalculationMode.FLOOR)
            return mx_tensor.to_dtype(data, scale, e2m1, 32, x.dtype)

        return mx

    def nv(x: torch.Tensor) -> torch.Tensor:
        pts = nvfp4_tensor.per_tensor_amax_to_scale(x.float().abs().amax())
        return nvfp4_tensor.NVFP4Tensor.to_nvfp4(x, per_tensor_scale=pts).dequantize(x.dtype)

    return nv


def fused_fn(fmt: str) -> Callable[[torch.Tensor], torch.Tensor]:
    def run(x: torch.Tensor) -> torch.Tensor:
        out = fp4_compiled.quantize(x, fmt)
        if out is None:
            raise RuntimeError("fused path unavailable (compile failed or NOISESWEEP_COMPILE=0)")
        return out

    return run


TARGETS = {"fp32": 0.5, "bf16": 0.3}  # fused / clone, issue 11


def measure(
    fns: dict[str, Callable[[torch.Tensor], torch.Tensor]],
    x: torch.Tensor,
    reps: int,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, list[float]]:
    """Seconds per call of each fn by `clock`, interleaved round-robin after one warm-up call each."""
    for fn in fns.values():
        fn(x)
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            t0 = clock()
            fn(x)
            times[name].append(clock() - t0)
    return times


def ratio_range(clone: list[float], other: list[float]) -> tuple[float, float]:
    """(min, max) over rounds of clone / other, each round's two calls timed back to back."""
    ratios = [c / o for c, o in zip(clone, other, strict=True)]
    return min(ratios), max(ratios)


def test_tensor(size: int, dtype: torch.dtype) -> torch.Tensor:
    return torch.randn(size, size, generator=torch.Generator().manual_seed(0)).to(dtype)


def single_thread_child(size: int, reps: int) -> None:
    """Subprocess body: clone vs fused on one thread, by the thread's CPU time."""
    torch.set_num_threads(1)
    out = []
    for fmt in FORMATS:
        for dname, dtype in DTYPES.items():
            fns = {"clone": torch.Tensor.clone, "fused": fused_fn(fmt)}
            t = measure(fns, test_tensor(size, dtype), reps, time.thread_time)
            out.append({"format": fmt, "dtype": dname, "clone": t["clone"], "fused": t["fused"]})
    print(json.dumps(out))


def single_thread_times(size: int, reps: int) -> list[dict[str, Any]]:
    """Run `single_thread_child` in a fresh one-thread process (the user's Inductor cache is reused)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", fp4_compiled.ENV_VAR: "1"}
    cmd = [sys.executable, __file__, "--_single_thread", "--size", str(size), "--cpu-reps", str(reps)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    rows: list[dict[str, Any]] = json.loads(proc.stdout.strip().splitlines()[-1])
    return rows


def compile_time_child(fmt: str, dtype: str, size: int) -> None:
    """Subprocess body: time the first (compiling) and a second call of the fused path."""
    x = torch.randn(size, size).to(DTYPES[dtype])
    fn = fused_fn(fmt)
    t0 = time.perf_counter()
    fn(x)
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    fn(x)
    second = time.perf_counter() - t0
    print(json.dumps({"first_call_s": first, "second_call_s": second}))


def compile_times(fmt: str, size: int) -> dict[str, float]:
    """First-call seconds in a fresh process, with a cold then a warm private Inductor cache."""
    out: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="noisesweep-inductor-") as cache:
        env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache, fp4_compiled.ENV_VAR: "1"}
        for label in ("cold", "warm"):
            cmd = [sys.executable, __file__, "--_child", fmt, "--size", str(size)]
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
            res = json.loads(proc.stdout.strip().splitlines()[-1])
            out[f"{label}_first_call_s"] = res["first_call_s"]
        out["steady_call_s"] = res["second_call_s"]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=4096, help="tensor is size x size (default 4096)")
    ap.add_argument("--reps", type=int, default=7, help="interleaved repetitions (median taken)")
    ap.add_argument("--cpu-reps", type=int, default=9, help="repetitions of the one-thread CPU-time table (0: skip)")
    ap.add_argument("--json", type=Path, default=None, help="write the numbers to this file")
    ap.add_argument("--skip-compile-time", action="store_true", help="skip the subprocess compile timing")
    ap.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--_single_thread", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.size < 1 or args.reps < 1 or args.cpu_reps < 0:
        ap.error("--size and --reps must be positive, --cpu-reps >= 0")
    if args._child:
        compile_time_child(args._child, "fp32", args.size)
        return 0
    if args._single_thread:
        single_thread_child(args.size, args.cpu_reps)
        return 0
    os.environ[fp4_compiled.ENV_VAR] = "1"

    rows = []
    for fmt in FORMATS:
        for dname, dtype in DTYPES.items():
            x = test_tensor(args.size, dtype)
            fns: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
                "clone": torch.Tensor.clone,
                "fused": fused_fn(fmt),
                "eager": lambda t, f=fmt: eager_fake_quantize(t, f),
            }
            ao = torchao_fn(fmt)
            if ao is not None:
                fns["torchao"] = ao
            assert torch.equal(fns["fused"](x).float().view(torch.int32), fns["eager"](x).float().view(torch.int32))
            times = measure(fns, x, args.reps)
            med = {k: statistics.median(v) for k, v in times.items()}
            nbytes = 2 * x.numel() * x.element_size()
            row: dict[str, Any] = {"format": fmt, "dtype": dname, "size": args.size, "reps": args.reps}
            row.update({f"{k}_s": v for k, v in med.items()})
            row.update({f"{k}_gbps": nbytes / v / 1e9 for k, v in med.items()})
            row["fused_over_clone"] = med["clone"] / med["fused"]
            row["fused_over_clone_range"] = ratio_range(times["clone"], times["fused"])
            row["target_over_clone"] = TARGETS[dname]
            row["fused_speedup_vs_eager"] = med["eager"] / med["fused"]
            if "torchao" in med:
                row["fused_speedup_vs_torchao"] = med["torchao"] / med["fused"]
            rows.append(row)
            print(f"measured {fmt} {dname}", file=sys.stderr, flush=True)

    print(f"\nFake quantization of a {args.size}x{args.size} tensor, median of {args.reps} interleaved reps "
          f"({torch.get_num_threads()} threads, wall clock; fused/clone range = per-round ratios)\n")
    print("| format | dtype | clone GB/s | fused GB/s | eager GB/s | torchao GB/s | fused/clone | range | target "
          "| fused vs torchao | fused vs eager |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        ao_gbps = f"{r['torchao_gbps']:.2f}" if "torchao_gbps" in r else "n/a"
        ao_x = f"{r['fused_speedup_vs_torchao']:.1f}x" if "fused_speedup_vs_torchao" in r else "n/a"
        lo, hi = r["fused_over_clone_range"]
        print(f"| {r['format']} | {r['dtype']} | {r['clone_gbps']:.2f} | {r['fused_gbps']:.2f} | {r['eager_gbps']:.2f} "
              f"| {ao_gbps} | {100 * r['fused_over_clone']:.0f} % | {100 * lo:.0f}-{100 * hi:.0f} % "
              f"| >= {100 * r['target_over_clone']:.0f} % | {ao_x} | {r['fused_speedup_vs_eager']:.1f}x |")

    if args.cpu_reps:
        print(f"\nOne thread, CPU time of the thread (median of {args.cpu_reps} interleaved reps, fresh process)\n")
        print("| format | dtype | clone ms | fused ms | fused/clone | range | target |")
        print("|---|---|---|---|---|---|---|")
        for st, r in zip(single_thread_times(args.size, args.cpu_reps), rows, strict=True):
            clone_t, fused_t = st["clone"], st["fused"]
            ratio = statistics.median(clone_t) / statistics.median(fused_t)
            lo, hi = ratio_range(clone_t, fused_t)
            r.update({"cpu1_clone_s": statistics.median(clone_t), "cpu1_fused_s": statistics.median(fused_t),
                      "cpu1_fused_over_clone": ratio, "cpu1_fused_over_clone_range": (lo, hi)})
            print(f"| {st['format']} | {st['dtype']} | {1e3 * statistics.median(clone_t):.1f} "
                  f"| {1e3 * statistics.median(fused_t):.1f} | {100 * ratio:.0f} % | {100 * lo:.0f}-{100 * hi:.0f} % "
                  f"| >= {100 * TARGETS[str(st['dtype'])]:.0f} % |")

    compile_info: dict[str, dict[str, float]] = {}
    if not args.skip_compile_time:
        print("\nOne-off compile cost (fresh process, fp32, private Inductor cache):\n")
        print("| format | cold cache first call s | warm cache first call s | steady call s |")
        print("|---|---|---|---|")
        for fmt in FORMATS:
            c = compile_times(fmt, args.size)
            compile_info[fmt] = c
            print(f"| {fmt} | {c['cold_first_call_s']:.1f} | {c['warm_first_call_s']:.1f} | {c['steady_call_s']:.3f} |")

    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"rows": rows, "compile": compile_info}, indent=2))
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
