"""Load: many no-op trials finishing at once, several drivers on one study, nothing run twice or lost.

PostgreSQL: 2 drivers (separate processes, each its own local Ray) x 500 no-op trials on one
study, 4 concurrent trials each, the study's budget 1000 shared. SQLite: 1 driver x 500, 4
concurrent. Each driver is the product's run_sweep (Ray Tune + NoisesweepSearch + storage) on
the shipped tiny study's space and sampler, with an objective that reports the four validation
steps and returns at once, so what is measured is the driver and the database, not training.

Printed per storage:
  trials/s       finished trials / wall time from the first driver start to the last exit
                 (Ray's start-up included: it is paid once per driver)
  p50/p99 s      a trial's time in the study, RUNNING -> finished (datetime_start to
                 datetime_complete), per driver: ask, sampling, launch, 4 reports, tell
  duplicates     COMPLETE trials with identical params AND seed (one evaluation run twice; a
                 racing replicate is the same config on another seed, not a duplicate) + seed configs
                 run more than once (must be 0)
  lost           budget - counted finished trials, + trials left RUNNING or WAITING (must be 0)

The PostgreSQL server is the tests' throwaway one (tests/servers.py: 127.0.0.1, a random port),
installed with apt-get when missing; without it that row says why it is missing.

    .venv/bin/python bench/load.py [--quick] [--trials N] [--sampler study|random] [--json PATH]
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

STEPS = (5, 10, 15, 20)
METRIC = "val-core/tiny-arith/acc/mean@1"
URL_ENV = "NOISESWEEP_LOAD_URL"  # the storage URL reaches a driver here, never on its command line


def noop_objective(config: dict[str, Any], report: Any) -> Any:
    """The product's objective_fn shape: four validation reports, then a finished result."""
    from objective.result import TrialResult

    acc = 0.9 - 0.1 * (math.log10(float(config["sigma_start"])) + 1.6) ** 2
    history = []
    for step in STEPS:
        metrics = {METRIC: acc * step / STEPS[-1]}
        report(step, metrics)
        history.append({"step": step, "metrics": metrics})
    return TrialResult(status="complete", value=history[-1]["metrics"][METRIC], step=STEPS[-1],
                       history=history, wall_time_s=0.0)


# --------------------------------------------------------------------------- one driver (a subprocess)
def drive(name: str, budget: int, concurrent: int, sampler: str, results_dir: Path) -> dict[str, Any]:
    """Run the product's driver until the study's budget is met; what it did, as JSON."""
    import optuna

    from sweep.budget import Budget
    from sweep.runner import plan_from_spec, run_sweep

    overrides = [f"name={name}", "pruning.enabled=false", f"resources.max_concurrent={concurrent}",
                 f"resources.cpus_per_trial={1.0 / concurrent:g}"]
    if sampler == "random":
        overrides.append("sampler.kind=random")
    plan = plan_from_spec(C.tiny_study_spec(overrides), objective_fn=noop_objective)
    plan.budget = Budget(trials=budget)
    plan.set_torch_threads = False
    t0 = time.time()
    summary = run_sweep(plan, storage_url=os.environ[URL_ENV], results_dir=results_dir, stream=io.StringIO(),
                        summary_every_s=1e9)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return {"pid": os.getpid(), "start": t0, "end": time.time(), "ran": len(summary.ran_now),
            "outages": summary.outages}


# --------------------------------------------------------------------------- the coordinator
def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    k = (len(s) - 1) * q
    lo, hi = math.floor(k), math.ceil(k)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def _start_driver(url: str, name: str, budget: int, concurrent: int, sampler: str, work: Path, tag: str) -> subprocess.Popen:
    env = dict(os.environ, **{URL_ENV: url}, RAY_USAGE_STATS_ENABLED="0", PYTHONUNBUFFERED="1")
    env.pop("RAY_ADDRESS", None)
    out = work / f"{tag}.json"
    cmd = [sys.executable, __file__, "--driver", name, "--budget", str(budget), "--concurrent", str(concurrent),
           "--sampler", sampler, "--results-dir", str(work / f"ray-{tag}"), "--json", str(out)]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=open(work / f"{tag}.stderr", "w"))


def measure(url: str, label: str, *, drivers: int, per_driver: int, concurrent: int, sampler: str, work: Path) -> dict[str, Any]:
    """Start `drivers` drivers on one fresh study; wait; judge the study record."""
    import optuna
    from optuna.trial import TrialState

    from sweep.budget import counts

    name = f"load-{label}"
    budget = drivers * per_driver
    procs = [_start_driver(url, name, budget, concurrent, sampler, work, f"{label}-{i}") for i in range(drivers)]
    t0 = time.time()
    codes = [p.wait(timeout=3600) for p in procs]
    wall = time.time() - t0
    for i, rc in enumerate(codes):
        if rc != 0:
            err = (work / f"{label}-{i}.stderr").read_text(errors="replace").strip().splitlines()
            raise RuntimeError(f"{label} driver {i} exited {rc}: {err[-1] if err else ''}")
    reports = [json.loads((work / f"{label}-{i}.json").read_text()) for i in range(drivers)]
    storage = optuna.storages.RDBStorage(url, skip_table_creation=True)
    try:
        trials = optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)
    finally:
        storage.engine.dispose()
    counted = [t for t in trials if counts(t)]
    left = [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    keys = [json.dumps([t.params, t.user_attrs.get("seed")], sort_keys=True) for t in complete]
    seed_runs: dict[str, int] = {}
    for t in counted:
        if t.user_attrs.get("seed_config") and "replicate_of" not in t.user_attrs:
            seed_runs[t.user_attrs["seed_config"]] = seed_runs.get(t.user_attrs["seed_config"], 0) + 1
    duplicates = (len(keys) - len(set(keys))) + sum(n - 1 for n in seed_runs.values() if n > 1)
    per_driver_s: dict[int, list[float]] = {}
    for t in counted:
        if t.datetime_start and t.datetime_complete:
            pid = (t.user_attrs.get("driver") or {}).get("pid", -1)
            per_driver_s.setdefault(pid, []).append((t.datetime_complete - t.datetime_start).total_seconds())
    all_s = [s for v in per_driver_s.values() for s in v]
    return {
        "storage": label, "drivers": drivers, "concurrent_per_driver": concurrent, "budget": budget,
        "sampler": sampler, "finished": len(counted), "wall_s": wall, "trials_per_s": len(counted) / wall,
        "p50_s": _percentile(all_s, 0.5), "p99_s": _percentile(all_s, 0.99),
        "per_driver": {str(pid): {"trials": len(v), "p50_s": _percentile(v, 0.5), "p99_s": _percentile(v, 0.99)}
                       for pid, v in sorted(per_driver_s.items())},
        "duplicates": duplicates, "lost": (budget - len(counted)) + len(left),
        "drivers_ran": [r["ran"] for r in reports], "outages": sum(r["outages"] for r in reports),
    }


def _postgres(work: Path) -> tuple[Any, str] | tuple[None, str]:
    """The tests' throwaway PostgreSQL (a fresh database), or None and why not."""
    sys.path.insert(0, str(C.ROOT / "tests"))
    try:
        from servers import start_postgres

        server = start_postgres("Load-Bench-Pw-3e1")
        return server, server.create_database("load")
    except Exception as exc:  # noqa: BLE001 - the SQLite row still runs
        return None, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="2 x 15 trials on PostgreSQL, 15 on SQLite (a smoke test)")
    ap.add_argument("--trials", type=int, default=None, help="trials per driver (default 500; quick 15)")
    ap.add_argument("--concurrent", type=int, default=4, help="concurrent trials per driver (default 4)")
    ap.add_argument("--sampler", choices=("study", "random"), default="study",
                    help="the tiny study's own sampler (TPE + SRDD prior) or random sampling")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--driver", metavar="STUDY", help=argparse.SUPPRESS)  # internal: run one driver
    ap.add_argument("--budget", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--results-dir", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.driver:
        C.write_json(args.json, drive(args.driver, args.budget, args.concurrent, args.sampler, args.results_dir))
        return 0
    per_driver = args.trials or (15 if args.quick else 500)
    if per_driver < 1 or args.concurrent < 1:
        raise SystemExit("load: --trials and --concurrent must be >= 1")
    rows: list[dict[str, Any]] = []
    missing: dict[str, str] = {}
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="ns-bench-load-") as tmp:
        work = Path(tmp)
        server, url_or_why = _postgres(work)
        try:
            if server is not None:
                rows.append(measure(url_or_why, "postgresql", drivers=2, per_driver=per_driver,
                                    concurrent=args.concurrent, sampler=args.sampler, work=work))
            else:
                missing["postgresql"] = url_or_why
        finally:
            if server is not None:
                server.stop()
        rows.append(measure(f"sqlite:///{work / 'load.db'}", "sqlite", drivers=1, per_driver=per_driver,
                            concurrent=args.concurrent, sampler=args.sampler, work=work))
    print(C.render_table(
        ["storage", "drivers x trials", "concurrent each", "trials/s", "p50 s/trial", "p99 s/trial", "duplicates", "lost"],
        [[r["storage"], f"{r['drivers']} x {r['budget'] // r['drivers']}", r["concurrent_per_driver"],
          r["trials_per_s"], r["p50_s"], r["p99_s"], r["duplicates"], r["lost"]] for r in rows]
        + [[name, "not run", "-", "-", "-", "-", "-", why] for name, why in missing.items()],
    ))
    for r in rows:
        print(f"{r['storage']}: {r['finished']} trials in {r['wall_s']:.1f} s (Ray start-up included); "
              f"per driver {r['drivers_ran']} trials; sampler {r['sampler']}")
    C.write_json(args.json, {"rows": rows, "missing": missing, "total_s": time.time() - t0, "machine": C.machine_info()})
    bad = [r for r in rows if r["duplicates"] or r["lost"]]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
