"""`noisesweep run STUDY.yaml [--storage URL] [--trials N] [--set key=value ...]`.

Runs (or continues) the study through Ray Tune with a live progress display on stderr.
Everything is validated first (study file, profile, overrides, storage reachable): bad input
writes nothing to the study. Running it again continues the same study; trials a killed
driver left RUNNING are failed and re-queued. Ends with the best config and the commands to
inspect and export it.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from sweep.errors import UserError


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "run", help="run or continue a study (Ray Tune + Optuna) within its budget",
        description=__doc__.split("\n\n")[1] if __doc__ else None,
    )
    p.add_argument("study", metavar="STUDY.yaml", help="the study file")
    p.add_argument("--storage", metavar="URL",
                   help="storage URL (default: $NOISESWEEP_STORAGE, else the study file's)")
    p.add_argument("--trials", type=int, metavar="N",
                   help="counted trials the study should reach (overrides budget.trials)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a study-file value, e.g. --set budget.trials=8 (repeatable)")
    p.set_defaults(func=run)


def prepare(args: argparse.Namespace) -> tuple[Any, Any, str]:
    """Validate everything before Ray starts or the study is touched: (spec, plan, url)."""
    from sweep.outage import outage_window_s
    from sweep.preflight import preflight
    from sweep.runner import plan_from_spec
    from sweep.storage import check_reachable
    from sweep.study_loader import load_study, resolve_storage

    if args.trials is not None and args.trials < 1:
        raise UserError(f"--trials must be >= 1, got {args.trials}")
    spec = load_study(args.study, args.overrides)
    preflight(spec)  # model/data/command paths a trial will open
    url = resolve_storage(spec, args.storage)
    check_reachable(url)
    outage_window_s(spec.storage_outage_s)  # a bad NOISESWEEP_OUTAGE_S is said before Ray starts
    plan = plan_from_spec(spec)
    return spec, plan, url


def run(args: argparse.Namespace) -> int:
    from sweep.runner import run_sweep

    spec, plan, url = prepare(args)
    summary = run_sweep(plan, storage_url=url, max_trials=args.trials)
    print(closing_text(summary, spec, url, args))
    return 0


def _best_lines(spec: Any, url: str, args: argparse.Namespace) -> list[str]:
    """The answer as `noisesweep best` gives it: over replicates where the race made them."""
    from sweep.best import best_result
    from sweep.record import open_record

    best = best_result(open_record(spec.name, url))
    how = f"mean of {best.n_seeds} seeds" if best.n_seeds > 1 else "one seed"
    ci = f" [95% CI {best.ci95[0]:.4f}, {best.ci95[1]:.4f}]" if best.ci95 else ""
    lines = [
        f"best: trial {best.trial.number}, {spec.metric} = {best.score:.4f}{ci} ({how}, chosen by {best.chosen_by})",
        "  " + json.dumps(best.params, sort_keys=True),
    ]
    if best.confirmation is None:
        lines.append(f"  (tuning seeds only: confirm it on fresh seeds with `noisesweep confirm {args.study}`)")
    return lines


def closing_text(summary: Any, spec: Any, url: str, args: argparse.Namespace) -> str:
    """The best config and where to go next."""
    from sweep.secrets import mask_url

    c = summary.counts
    lines = [
        f"study {summary.study_name} ({mask_url(url)}): {c.get('COMPLETE', 0)} complete, "
        f"{c.get('PRUNED', 0)} pruned, {c.get('FAIL', 0)} failed; "
        f"spent {summary.ledger['compute_hours']:.3f} compute-hours",
    ]
    if summary.stop_reason:
        lines.append(f"stopped launching: {summary.stop_reason}")
    if summary.outages:
        lines.append(f"rode out {summary.outages} storage outage(s); nothing was lost")
    if summary.best_number is None:
        lines.append("no trial completed yet: nothing to report as best")
    else:
        lines.extend(_best_lines(spec, url, args))
    storage_flag = f" --storage '{args.storage}'" if args.storage else ""
    if args.storage and mask_url(args.storage) != args.storage:
        storage_flag = ""  # never echo a password: point to the environment variable instead
        lines.append("(with NOISESWEEP_STORAGE set to your storage URL)")
    study_arg = args.study
    lines += [
        "next:",
        f"  noisesweep best {study_arg}{storage_flag}",
        f"  noisesweep export {study_arg} --format verl{storage_flag}",
        f"  noisesweep dashboard{storage_flag}",
        f"  noisesweep report {study_arg} -o reports/{summary.study_name}{storage_flag}",
        f"  noisesweep status{storage_flag}",
    ]
    return "\n".join(lines)


