"""Time one default tiny trial (MXFP4 W4A4 + STE) against the same trial unquantized.

Prints the W4A4/unquantized step-time ratio (target <= 1.5), each trial's wall time (target
<= 60 s for 20 steps + 5 validations on the 2-core CPU), the per-phase breakdown (rollout /
train / validation), peak RSS and the accuracy at the first and last validation. Each trial runs
in its own child process so peak RSS and torch's thread pool belong to that trial alone.

    python bench/trial_time.py [--threads N] [--set key=value ...] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def build_config(sets: list[str], threads: int, fmt: str | None) -> dict[str, Any]:
    """Nested dict from dotted `key=value` overrides (values parsed as JSON when they parse)."""
    cfg: dict[str, Any] = {"threads": threads}
    for item in sets:
        if "=" not in item:
            raise SystemExit(f"trial_time: --set needs key=value, got {item!r}")
        key, value = item.split("=", 1)
        node = cfg
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = _parse_value(value)
    if fmt is not None:
        cfg.setdefault("quant", {})["format"] = fmt
    return cfg


def run_one(cfg: dict[str, Any]) -> dict[str, Any]:
    """Run one trial in this process; the numbers the parent prints."""
    from objective import run_trial

    t0 = time.monotonic()
    res = run_trial(cfg)
    wall = time.monotonic() - t0
    train = res.applied.get("train", [])
    steps = [h["metrics"]["time/step_s"] for h in train]
    primary = [k for k in (res.history[-1]["metrics"] if res.history else {}) if k.startswith("val-core/")]
    key = primary[0] if primary else None
    return {
        "status": res.status,
        "reason": res.reason,
        "wall_s": wall,
        "phase_s": res.applied.get("phase_s", {}),
        "step_s_mean": sum(steps) / len(steps) if steps else None,
        # steady state: step 1 also pays the one-off torch.compile of the fake-quant kernels
        "step_s_median": statistics.median(steps[1:] or steps) if steps else None,
        "setup_s": wall - sum(res.applied.get("phase_s", {}).values()),
        "train_phase_s_per_step": res.applied.get("phase_s", {}).get("train", 0.0) / max(len(steps), 1),
        "acc": {h["step"]: h["metrics"].get(key) for h in res.history} if key else {},
        "metric": key,
        "quant": res.applied.get("quant"),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def child(cfg: dict[str, Any]) -> dict[str, Any]:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps(cfg)], capture_output=True, text=True, env=env, cwd=ROOT
    )
    if proc.returncode != 0:
        raise SystemExit(f"trial_time: child trial crashed: {proc.stderr.strip().splitlines()[-1:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1, help="torch threads per trial (default 1, as TrialConfig)")
    ap.add_argument("--set", dest="sets", action="append", default=[], help="config override key=value")
    ap.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(run_one(json.loads(args.child))))
        return 0
    quant_cfg = build_config(args.sets, args.threads, None)
    base_cfg = build_config(args.sets, args.threads, "none")
    runs = {"quantized": child(quant_cfg), "unquantized": child(base_cfg)}
    q, b = runs["quantized"], runs["unquantized"]
    ratio = q["step_s_median"] / b["step_s_median"] if q["step_s_median"] and b["step_s_median"] else None
    mean_ratio = q["step_s_mean"] / b["step_s_mean"] if q["step_s_mean"] and b["step_s_mean"] else None
    train_ratio = q["train_phase_s_per_step"] / b["train_phase_s_per_step"] if b["train_phase_s_per_step"] else None
    for name, r in runs.items():
        ph = r["phase_s"]
        accs = " ".join(f"{s}:{a:.3f}" for s, a in r["acc"].items())
        print(
            f"{name:12s} {r['quant']}\n"
            f"  status={r['status']} trial={r['wall_s']:.1f}s setup={r['setup_s']:.1f}s "
            f"step median={r['step_s_median']:.3f}s mean={r['step_s_mean']:.3f}s "
            f"rollout={ph.get('rollout', 0):.1f}s train={ph.get('train', 0):.1f}s "
            f"validation={ph.get('validation', 0):.1f}s peak_rss={r['peak_rss_mb']:.0f}MB\n"
            f"  {r['metric']}: {accs}" + (f"\n  reason: {r['reason']}" if r["reason"] else "")
        )
    if ratio is not None:
        print(
            f"step-time ratio W4A4/unquantized: {ratio:.2f} median of steps 2.. "
            f"(mean incl. step 1's compile: {mean_ratio:.2f}; train phase only: {train_ratio:.2f}; target <= 1.5)"
        )
    print(f"trial time (quantized): {q['wall_s']:.1f} s (target <= 60 s)")
    if args.json:
        args.json.write_text(json.dumps({"runs": runs, "step_time_ratio": ratio, "step_time_ratio_mean": mean_ratio, "train_phase_ratio": train_ratio,
                                         "threads": args.threads, "sets": args.sets}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
