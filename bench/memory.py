"""Peak memory: one tiny trial, and the sweep driver (plus its Ray processes) during a small sweep.

1. Tiny trial: the shipped tiny study's trial config (MXFP4 W4A4 + STE, LoRA r=8, 16x8 rollout,
   RMSNorm noise at the E13i-baseline schedule) run by objective.run_trial in a child process;
   peak RSS from the child's own getrusage and, independently, the parent's
   getrusage(RUSAGE_CHILDREN). --quick runs 4 steps and 2 validations on 64 problems instead of
   20 steps and 5 validations on 300 (memory depends on the batch, not on the step count).
2. Driver: a child process running sweep.runner.run_sweep on the tiny study with a no-op
   objective (bench/sweep_overhead.py's); its own peak RSS (getrusage) and, sampled every 0.2 s
   with psutil, the peak of the summed RSS of the driver and all its descendants (Ray's GCS,
   raylet, workers), which is what the machine actually has to hold.

    .venv/bin/python bench/memory.py [--quick] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402


def trial_config(quick: bool) -> dict[str, Any]:
    """The tiny study's trial config for the E13i-baseline seed config (shorter when quick)."""
    from sweep.space import SearchSpace

    spec = C.tiny_study_spec()
    space = SearchSpace.from_spec(spec)
    name, params = space.seed_configs()[0]
    cfg = space.to_trial_config(params, seed=0).model_dump()
    if quick:
        cfg["steps"] = {"total": 4, "val_at": [0, 4]}
        cfg["task"]["num_val"] = 64
    return cfg


def _trial_child(cfg: dict[str, Any]) -> dict[str, Any]:
    from objective import run_trial

    res = run_trial(cfg)
    return {"status": res.status, "reason": res.reason, "peak_rss_mb": C.peak_rss_mb(), "wall_s": res.wall_time_s}


def _driver_child(trials: int, workdir: str) -> dict[str, Any]:
    import io

    import sweep_overhead as so

    from sweep.budget import Budget
    from sweep.runner import plan_from_spec, run_sweep

    C.quiet_libraries()
    plan = plan_from_spec(C.tiny_study_spec(), objective_fn=so.noop_objective)
    plan.study_name = "memory"
    plan.budget = Budget(trials=trials)
    summary = run_sweep(plan, storage_url=f"sqlite:///{workdir}/memory.db", max_trials=trials,
                        results_dir=Path(workdir) / "ray", stream=io.StringIO(), summary_every_s=1e9)
    return {"trials": sum(summary.counts.values()), "peak_rss_mb": C.peak_rss_mb()}


class TreeRSS(threading.Thread):
    """Samples the summed RSS of a process and its descendants; keeps the peak (MB)."""

    def __init__(self, pid: int, interval: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.pid, self.interval, self.peak_mb = pid, interval, 0.0
        self.stop = threading.Event()

    def run(self) -> None:
        import psutil

        try:
            root = psutil.Process(self.pid)
        except psutil.NoSuchProcess:
            return
        while not self.stop.is_set():
            total = 0
            try:
                procs = [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                break
            for p in procs:
                try:
                    total += p.memory_info().rss
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    pass
            self.peak_mb = max(self.peak_mb, total / 2**20)
            self.stop.wait(self.interval)


def run_child(args: list[str], watch: bool) -> tuple[dict[str, Any], float | None]:
    """Run this script as a child with `args`; its JSON line and (when watched) the tree's peak RSS."""
    proc = subprocess.Popen([sys.executable, __file__, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=C.ROOT)
    watcher = TreeRSS(proc.pid) if watch else None
    if watcher:
        watcher.start()
    out, err = proc.communicate()
    if watcher:
        watcher.stop.set()
        watcher.join()
    if proc.returncode != 0:
        tail = err.strip().splitlines()[-1:] or ["(no stderr)"]
        raise RuntimeError(f"memory: child {args[0]} failed: {tail[0]}")
    return json.loads(out.strip().splitlines()[-1]), (watcher.peak_mb if watcher else None)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a 4-step trial; a 6-trial no-op sweep")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--trial-child", help=argparse.SUPPRESS)
    ap.add_argument("--driver-child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.trial_child:
        print(json.dumps(_trial_child(json.loads(args.trial_child))))
        return 0
    if args.driver_child:
        print(json.dumps(_driver_child(int(args.driver_child[0]), args.driver_child[1])))
        return 0
    cfg = trial_config(args.quick)
    trial, trial_tree = run_child(["--trial-child", json.dumps(cfg)], watch=True)
    if trial["status"] != "complete":
        raise SystemExit(f"memory: the tiny trial ended {trial['status']}: {trial['reason']}")
    children_peak = C.peak_rss_mb("children")
    trials = 6 if args.quick else 16
    with tempfile.TemporaryDirectory(prefix="ns-bench-mem-") as tmp:
        driver, driver_tree = run_child(["--driver-child", str(trials), tmp], watch=True)
    res = {
        "trial": {"peak_rss_mb": trial["peak_rss_mb"], "rusage_children_mb": children_peak, "wall_s": trial["wall_s"],
                  "steps": cfg["steps"]["total"], "num_val": cfg["task"]["num_val"]},
        "driver": {"peak_rss_mb": driver["peak_rss_mb"], "tree_peak_rss_mb": driver_tree, "trials": driver["trials"]},
    }
    print(C.render_table(["process", "peak RSS MB", "how"], [
        [f"tiny trial ({cfg['steps']['total']} steps, {cfg['task']['num_val']} val problems)", trial["peak_rss_mb"],
         "child's getrusage(SELF)"],
        ["tiny trial (parent's view)", children_peak, "getrusage(CHILDREN)"],
        [f"sweep driver ({driver['trials']} no-op trials)", driver["peak_rss_mb"], "driver's getrusage(SELF)"],
        ["sweep driver + Ray processes", driver_tree, "psutil, summed tree, 0.2 s samples"],
    ]))
    C.write_json(args.json, res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
