"""`noisesweep export STUDY --format verl|hydra|yaml|json [-o FILE]`: hand the best config on.

verl: the fork's `trainer.noise_injection` YAML block (layer_multipliers as its {layer: m}
dict); hydra: one shell-quoted line of overrides; yaml: a trainer config `noisesweep trial
FILE.yaml` runs again; json: everything. Confirmed results are preferred when present.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sweep.commands.best import add_study_args
from sweep.errors import UserError
from sweep.export_formats import FORMATS


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("export", help="export the best config (verl, hydra, yaml, json)",
                              description=__doc__.split("\n\n")[1] if __doc__ else None)
    add_study_args(p)
    p.add_argument("--format", dest="fmt", default="verl", metavar="FORMAT", help=f"one of {', '.join(FORMATS)} (default verl)")
    p.add_argument("-o", "--output", metavar="FILE", help="write to FILE instead of stdout")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.fmt not in FORMATS:  # before touching the storage
        raise UserError(f"--format: unknown format {args.fmt!r} (choose from {', '.join(FORMATS)})")
    from sweep.atomic import write_text_atomic
    from sweep.best import best_result
    from sweep.export import export_text
    from sweep.record import open_record

    record = open_record(args.study, args.storage)
    best = best_result(record)
    text = export_text(record, best, args.fmt)
    if args.output:
        out = Path(args.output)
        if not out.parent.is_dir():
            raise UserError(f"-o: folder {out.parent} does not exist")
        if out.is_dir():
            raise UserError(f"-o: {out} is a folder; give a file path such as best.yaml")
        write_text_atomic(out, text)
        print(f"noisesweep export: trial {best.trial.number} ({best.chosen_by}) written to {out} as {args.fmt}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0
