"""`noisesweep status [--storage URL] [STUDY]`: the studies in a storage, at a glance.

For each study: trials by state, the best value (COMPLETE trials only) and the budget spent
(the study's ledger against the budget in its recorded spec). STUDY (a name or a study file)
limits the list to one study. A missing SQLite file is reported, never created.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

from sweep.errors import UserError

# Columns of the table, by Optuna TrialState name (optuna is imported only when a command runs).
STATE_NAMES = ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("status", help="studies in a storage: trials by state, best value, budget spent",
                              description=__doc__.split("\n\n")[1] if __doc__ else None)
    p.add_argument("study", metavar="STUDY", nargs="?", help="a study name or study file (default: all)")
    p.add_argument("--storage", metavar="URL",
                   help="storage URL (default: $NOISESWEEP_STORAGE, else the study file's, else sqlite:///noisesweep.db)")
    p.set_defaults(func=run)


def _target(args: argparse.Namespace) -> tuple[str | None, str]:
    """(study name or None, storage URL) from STUDY and --storage."""
    from sweep.storage import resolve_url

    name = args.study
    file_url = None
    if name and (name.endswith((".yaml", ".yml")) or Path(name).is_file()):
        from sweep.study_loader import load_study

        spec = load_study(name)
        name, file_url = spec.name, spec.storage
    return name, resolve_url(args.storage, file_url)


def _check_sqlite_exists(url: str) -> None:
    import sqlalchemy

    from sweep.secrets import mask_url

    parsed = sqlalchemy.engine.make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database and parsed.database != ":memory:":
        if not Path(parsed.database).expanduser().is_file():
            raise UserError(f"no study database at {mask_url(url)} (run `noisesweep run STUDY.yaml` first)")


def study_rows(storage: Any, only: str | None) -> list[dict[str, Any]]:
    import optuna
    from optuna.trial import TrialState

    states = [TrialState[name] for name in STATE_NAMES]
    names = optuna.get_all_study_names(storage)
    if only is not None:
        if only not in names:
            known = ", ".join(names) or "none"
            raise UserError(f"no study named {only!r} in this storage (studies: {known})")
        names = [only]
    rows = []
    for name in names:
        study = optuna.load_study(study_name=name, storage=storage)
        trials = study.get_trials(deepcopy=False)
        counts = {s.name: sum(1 for t in trials if t.state == s) for s in states}
        done = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None and math.isfinite(t.value)]
        best = None
        if done:
            b = study.best_trial
            best = (b.value, b.number)
        ledger = study.user_attrs.get("ledger", {})
        budget = (study.user_attrs.get("noisesweep_spec") or {}).get("budget", {})
        rows.append({"name": name, "counts": counts, "best": best, "ledger": ledger, "budget": budget})
    return rows


def format_rows(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "no studies in this storage"
    head = f"{'study':<28} {'done':>5} {'pruned':>6} {'failed':>6} {'running':>7} {'queued':>6}  {'best':<18} budget spent"
    out = [head]
    for r in rows:
        c = r["counts"]
        best = "-" if r["best"] is None else f"{r['best'][0]:.4f} (#{r['best'][1]})"
        led, bud = r["ledger"], r["budget"]
        spent = f"{led.get('trials', 0)}"
        if bud.get("trials"):
            spent += f"/{bud['trials']}"
        spent += f" trials, {float(led.get('compute_hours', 0.0)):.3f}"
        if bud.get("compute_hours"):
            spent += f"/{bud['compute_hours']:g}"
        spent += " h"
        out.append(
            f"{r['name']:<28} {c['COMPLETE']:>5} {c['PRUNED']:>6} {c['FAIL']:>6} {c['RUNNING']:>7} "
            f"{c['WAITING']:>6}  {best:<18} {spent}"
        )
    return "\n".join(out)


def run(args: argparse.Namespace) -> int:
    import optuna

    from sweep.secrets import mask_url
    from sweep.storage import open_storage

    name, url = _target(args)
    _check_sqlite_exists(url)
    storage = open_storage(url)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    print(f"storage: {mask_url(url)}")
    print(format_rows(study_rows(storage, name)))
    return 0
