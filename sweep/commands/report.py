"""`noisesweep report STUDY -o DIR`: PNG plots and summary.md answering the seeds' hypotheses."""

from __future__ import annotations

import argparse
import sys

from sweep.commands.best import add_study_args


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("report", help="plots + markdown summary (H1-H5) of a study", description=__doc__)
    add_study_args(p)
    p.add_argument("-o", "--output", dest="out_dir", required=True, metavar="DIR", help="folder for the PNGs and summary.md")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from sweep.record import open_record
    from sweep.report import PLOTS, write_report

    record = open_record(args.study, args.storage)
    summary = write_report(record, args.out_dir)
    print(f"noisesweep report: wrote {summary} and {', '.join(PLOTS)} in {summary.parent}", file=sys.stderr)
    return 0
