"""`noisesweep confirm STUDY --top K --seeds S [--storage URL]`: re-run the best configs on fresh seeds.

Runs the top-K COMPLETE configs again on S seeds the sweep never used (sequentially, in this
process), prints each config's sweep value beside its confirmed mean and 95 % interval, and
stores them in the study's `confirmations` user_attr (trials are never changed).
"""

from __future__ import annotations

import argparse

from sweep.commands.best import add_study_args


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("confirm", help="re-run the top configs on fresh seeds: mean and 95%% CI",
                              description=__doc__.split("\n\n")[1] if __doc__ else None)
    add_study_args(p)
    p.add_argument("--top", type=int, default=None, metavar="K", help="how many configs (default: the study's confirm.top)")
    p.add_argument("--seeds", type=int, default=None, metavar="S", help="fresh seeds per config (default: the study's confirm.seeds)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from sweep.confirm import confirm_study, format_table
    from sweep.record import open_record

    record = open_record(args.study, args.storage)
    spec_confirm = record.spec.confirm if record.spec is not None else None
    top = args.top if args.top is not None else (spec_confirm.top if spec_confirm else 3)
    seeds = args.seeds if args.seeds is not None else (spec_confirm.seeds if spec_confirm else 3)
    confs = confirm_study(record, top=top, seeds=seeds)
    print(format_table(record, confs))
    return 0 if any(c.mean is not None for c in confs) else 1
