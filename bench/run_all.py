"""Run every benchmark and write one table, bench/RESULTS.md, with the machine and versions.

Each script runs as a child process with --json (so one crash costs one row, not the table);
its printed table goes into the details section. Raw numbers: bench/data/last_run/*.json.
`--quick` shrinks every script (fewer repetitions, shorter trials); rows measured on a reduced
setting say so. `make bench` runs the full version.

    .venv/bin/python bench/run_all.py [--quick] [--only NAME,...] [--out bench/RESULTS.md]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

RAW = C.DATA / "last_run"

# name -> (script, full args, quick args); every script also gets --json PATH
JOBS: dict[str, tuple[str, list[str], list[str]]] = {
    "quant_throughput": ("quant_throughput", [], ["--reps", "3", "--skip-compile-time"]),
    "trial_time": ("trial_time", [], ["--set", "steps.total=6", "--set", "steps.val_at=[0,3,6]", "--set", "task.num_val=64"]),
    "sweep_overhead": ("sweep_overhead", [], ["--quick"]),
    "pruning_savings": ("pruning_savings", [], ["--quick"]),
    "sample_efficiency": ("sample_efficiency", ["--surface", "synthetic"], ["--quick", "--surface", "synthetic"]),
    # on the GP fitted to the cached real tiny trials (bench/data/sample_design.json); skipped without it
    "sample_efficiency_measured": ("sample_efficiency", ["--surface", "measured"], ["--quick", "--surface", "measured"]),
    "memory": ("memory", [], ["--quick"]),
    "scaling": ("scaling", [], ["--quick"]),
}
PLOTS = [("scaling_layers.png", "Trial step time vs decoder layers"),
         ("scaling_batch.png", "Trial step time vs rollout batch"),
         ("scaling_study_size.png", "Driver time per trial vs study size"),
         ("sample_efficiency_synthetic.png", "Sample efficiency on the documented synthetic surface"),
         ("sample_efficiency_measured.png", "Sample efficiency on the surrogate fitted to real tiny trials")]


def run_job(name: str, quick: bool, timeout_s: float) -> dict[str, Any]:
    """Run bench/<name>.py with --json; its stdout, JSON (or None) and wall time."""
    script, full, q = JOBS[name]
    out = RAW / f"{name}.json"
    out.unlink(missing_ok=True)
    cmd = [sys.executable, str(C.BENCH / f"{script}.py"), *(q if quick else full), "--json", str(out)]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=C.ROOT, timeout=timeout_s)
        rc, stdout, stderr = proc.returncode, proc.stdout, proc.stderr
    except subprocess.TimeoutExpired as exc:
        rc, stdout, stderr = -1, (exc.stdout or b"").decode() if isinstance(exc.stdout, bytes) else (exc.stdout or ""), \
            f"timed out after {timeout_s:.0f} s"
    wall = time.perf_counter() - t0
    data = json.loads(out.read_text()) if rc == 0 and out.is_file() else None
    err = None
    if data is None:
        lines = [ln for ln in stderr.strip().splitlines() if ln.strip()]
        err = f"exit {rc}: {lines[-1] if lines else 'no output'}"[:300]
    return {"name": name, "args": cmd[2:-2], "rc": rc, "stdout": stdout, "data": data, "error": err, "wall_s": wall}


def _met(v: bool | None) -> str:
    return "n/a" if v is None else ("yes" if v else "**no**")


def rows_for(name: str, res: dict[str, Any], quick: bool) -> list[list[Any]]:
    """Table rows (figure, compared with, target, measured, met?) for one script's JSON."""
    d = res["data"]
    if d is None:
        return [[name, "-", "-", f"not measured ({res['error']})", "n/a"]]
    rows: list[list[Any]] = []
    if name == "quant_throughput":
        for r in d["rows"]:
            label = f"{r['format'].upper()} fake-quant throughput, {r['size']}x{r['size']} {r['dtype']}"
            oc = r["fused_over_clone"]
            rows.append([label, "`clone()` same run", ">= 50 % of clone", f"{100 * oc:.0f} % of clone "
                         f"({r['fused_gbps']:.2f} vs {r['clone_gbps']:.2f} GB/s)", _met(oc >= 0.5)])
            ao = r.get("fused_speedup_vs_torchao")
            rows.append([label, "torchao 0.18 eager, same run", ">= 10x", "n/a" if ao is None else f"{ao:.1f}x",
                         _met(None if ao is None else ao >= 10)])
    elif name == "trial_time":
        ratio = d.get("step_time_ratio")
        reduced = " (reduced trial: " + ", ".join(d.get("sets", [])) + ")" if d.get("sets") else ""
        rows.append(["W4A4 training step, tiny model", "same step unquantized, same run", "<= 1.5x",
                     f"{C.fmt(ratio)}x (median of steps 2..; train phase only {C.fmt(d.get('train_phase_ratio'))}x)",
                     _met(None if ratio is None else ratio <= 1.5)])
        wall = d["runs"]["quantized"]["wall_s"]
        rows.append(["one tiny trial (20 steps + 5 validations)", "-", "<= 60 s",
                     f"{wall:.1f} s{reduced}", "n/a (reduced)" if reduced else _met(wall <= 60)])
    elif name == "sweep_overhead":
        rows.append(["sweep overhead per trial (Ray Tune + Optuna + SQLite), no-op objective",
                     "plain `study.optimize`, same sampler + SQLite", "<= 1 s extra per trial",
                     f"{d['extra_per_trial_s']:.2f} s extra ({d['sweep_per_trial_s']:.2f} vs {d['plain_per_trial_s']:.2f} "
                     f"s/trial, {d['trials']} trials x {d['reps']} reps; Ray start {d['ray_start_s']:.1f} s once)",
                     _met(d["met"])])
    elif name == "pruning_savings":
        a, b = d["arms"]["with ASHA"], d["arms"]["without pruning"]
        saved = d["saved_fraction"]
        s = d["settings"]
        rows.append(["compute saved by pruning (tiny study, reduced)", "same budget without pruning",
                     ">= 40 % fewer trial-steps",
                     f"{C.fmt(None if saved is None else 100 * saved, 0)} % fewer ({a['trial_steps']} vs {b['trial_steps']} "
                     f"trial-steps, {s['trials']} trials each)", _met(d["met_steps"])])

        def conf(x: dict[str, Any]) -> str:
            if x.get("confirmed_mean") is None:
                return "n/a"
            return f"{100 * x['confirmed_mean']:.1f} [{C.fmt(None if x.get('ci_low') is None else 100 * x['ci_low'], 1)}, " \
                   f"{C.fmt(None if x.get('ci_high') is None else 100 * x['ci_high'], 1)}]"

        rows.append(["best confirmed accuracy with pruning", "without pruning", "within noise",
                     f"{conf(a)} vs {conf(b)} (mean [95 % CI], {s['confirm_seeds']} seeds)", _met(d["within_noise"])])
    elif name.startswith("sample_efficiency"):
        m = d["methods"]

        def med(k: str) -> str:
            return f">{m[k]['budget']}" if m[k]["censored"] else f"{m[k]['median']:g}"

        fit = d.get("fit")
        if fit:
            surf = f"GP fitted to {fit['n']} real tiny trials, LOO R^2 {C.fmt(fit['loo_r2'])}"
        else:
            surf = "synthetic surface documented from DOMAIN.md"
        measured = (f"SRDD-seeded {med('prior')} vs random {med('random')} (median of {d['reps']} reps, budget {d['budget']}); "
                    f"plain TPE {med('tpe')}; 8 hand-made {med('hand-made')} ({m['hand-made']['reached']}/{d['reps']} reached)")
        met = _met(d["met"])
        if fit and (fit["loo_r2"] is None or fit["loo_r2"] < 0.3):
            measured += "; the surrogate predicts no better than the mean, so this row is not evidence either way"
            met = "n/a (surrogate uninformative)"
        rows.append([f"sample efficiency: trials until best confirmed acc. within 1 pt (on a surrogate: {surf})",
                     "random search", "SRDD-seeded <= half of random", measured, met])
    elif name == "memory":
        t, dr = d["trial"], d["driver"]
        rows.append(["peak RSS of a tiny trial", "-", "reported",
                     f"{t['peak_rss_mb']:.0f} MB ({t['steps']} steps, {t['num_val']} val problems)", "reported"])
        rows.append(["peak RSS of the driver during a sweep", "-", "reported",
                     f"{dr['peak_rss_mb']:.0f} MB driver; {C.fmt(dr['tree_peak_rss_mb'], 0)} MB with Ray's processes "
                     f"({dr['trials']} no-op trials)", "reported"])
    elif name == "scaling":
        if "layers" in d:
            rel = d["layers"]["relative"]
            rows.append(["trial step time vs layers", "8 layers, same run", "reported",
                         ", ".join(f"{k}: {C.fmt(v)}x" for k, v in rel.items()), "reported"])
        if "batch" in d:
            rel = d["batch"]["relative"]
            rows.append(["trial step time vs rollout batch", "16x8, same run", "reported",
                         ", ".join(f"{k}: {C.fmt(v)}x" for k, v in rel.items()), "reported"])
        if "study" in d:
            per = d["study"]["per_size"]
            rows.append(["driver time per trial vs stored trials", "empty study, same run", "reported",
                         ", ".join(f"{k}: {v['total_ms']:.0f} ms ({C.fmt(d['study']['relative'][k])}x)" for k, v in per.items()),
                         "reported"])
    return rows


def render(results: list[dict[str, Any]], machine: dict[str, Any], quick: bool, total_s: float) -> str:
    rows = [r for res in results for r in rows_for(res["name"], res, quick)]
    lines = [
        "# noisesweep benchmarks",
        "",
        f"Generated by `bench/run_all.py{' --quick' if quick else ''}` "
        f"({'quick mode: fewer repetitions, shorter trials' if quick else 'full mode'}), "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {total_s / 60:.1f} min in all. "
        "Ratios are measured side by side in the same run (interleaved, medians); "
        "absolute times on this shared machine are indicative only.",
        "",
        f"Machine: {machine['cpu']}, {machine['cores']} cores, {machine['ram_gb']} GB RAM; "
        f"load average at start {machine['load_avg']} (shared with other work).  ",
        f"Versions: python {machine['python']}, torch {machine['torch']}, optuna {machine['optuna']}, ray {machine['ray']}, "
        f"transformers {machine['transformers']}, peft {machine['peft']}, torchao {machine['torchao']}, "
        f"noisesweep {machine['noisesweep_commit']}.",
        "",
        C.render_table(["figure", "compared with", "target", "measured", "met?"], rows),
        "",
        "## Plots",
        "",
    ]
    for fname, title in PLOTS:
        if (C.BENCH / fname).is_file():
            lines += [f"**{title}**", "", f"![{title}]({fname})", ""]
    lines += ["## Details (each script's own output)", ""]
    for res in results:
        lines += [f"### {res['name']} ({res['wall_s']:.0f} s)", "",
                  f"`bench/{JOBS[res['name']][0]}.py {' '.join(res['args'])}`", ""]
        if res["error"]:
            lines += [f"Failed: {res['error']}", ""]
        table = "\n".join(ln for ln in res["stdout"].splitlines() if ln.strip() and not ln.startswith("wrote "))
        if table:
            lines += [table, ""]
    return "\n".join(lines) + "\n"


GENERATED_SECTIONS = ("Plots", "Details (each script's own output)")


def kept_sections(old_text: str) -> str:
    """The `## ` sections of an earlier RESULTS.md that this script does not generate (benches run
    on their own, such as signal, search quality and load, with their hand-written readings), so a
    re-run replaces its own tables without dropping them."""
    kept: list[str] = []
    keep = False
    for line in old_text.splitlines():
        if line.startswith("## "):
            keep = line[3:].strip() not in GENERATED_SECTIONS
        if keep:
            kept.append(line)
    return "\n".join(kept).strip()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smoke-check sizes (a quarter hour on 2 busy cores)")
    ap.add_argument("--only", help=f"comma list of: {', '.join(JOBS)}")
    ap.add_argument("--out", type=Path, default=C.BENCH / "RESULTS.md")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds per script (default 3600)")
    args = ap.parse_args(argv)
    names = list(JOBS)
    if args.only:
        names = [n.strip() for n in args.only.split(",") if n.strip()]
        bad = [n for n in names if n not in JOBS]
        if bad:
            raise SystemExit(f"run_all: --only: unknown benchmark(s) {bad} (known: {', '.join(JOBS)})")
    RAW.mkdir(parents=True, exist_ok=True)
    machine = C.machine_info()
    t0 = time.perf_counter()
    results = []
    for name in names:
        print(f"run_all: {name} ...", file=sys.stderr, flush=True)
        res = run_job(name, args.quick, args.timeout)
        print(f"run_all: {name} {'ok' if res['error'] is None else res['error']} ({res['wall_s']:.0f} s)",
              file=sys.stderr, flush=True)
        results.append(res)
    text = render(results, machine, args.quick, time.perf_counter() - t0)
    old = kept_sections(args.out.read_text()) if args.out.is_file() else ""
    if old:
        text += "\n" + old + "\n"
    args.out.write_text(text)
    (RAW / "machine.json").write_text(json.dumps(machine, indent=2))
    print(text)
    return 0 if all(r["error"] is None for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
