"""`noisesweep best STUDY [--storage URL] [--json]`: the best config of a study.

The best COMPLETE trial (pruned and failed trials never count); when `noisesweep confirm`
has run, the config with the best confirmed mean wins over a lucky single run.
"""

from __future__ import annotations

import argparse
import json


def add_study_args(p: argparse.ArgumentParser) -> None:
    """STUDY + --storage, shared by best/confirm/export/report."""
    p.add_argument("study", metavar="STUDY", help="a study name, or a study YAML file (its name and storage)")
    p.add_argument("--storage", metavar="URL",
                   help="storage URL (default: $NOISESWEEP_STORAGE, else the study file's, else sqlite:///noisesweep.db)")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("best", help="print the best config of a study (confirmed results first)",
                              description=__doc__.split("\n\n")[1] if __doc__ else None)
    add_study_args(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of the readable block")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from sweep.best import best_result
    from sweep.best_text import best_json, format_best
    from sweep.record import open_record
    from sweep.strict_json import jsonable

    record = open_record(args.study, args.storage)
    best = best_result(record)
    if args.json:
        print(json.dumps(jsonable(best_json(record, best)), indent=1))
    else:
        print(format_best(record, best))
        print(f"\nexport it: noisesweep export {record.name} --format verl   (or hydra, yaml, json)")
    return 0
