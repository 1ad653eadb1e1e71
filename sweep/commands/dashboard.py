"""`noisesweep dashboard [--storage URL] [--host 127.0.0.1] [--port 8080] [--artifact-dir DIR]`.

Starts optuna-dashboard on the study storage, bound to 127.0.0.1 unless --host says otherwise,
after writing each noisesweep study's settings and SRDD profile as a note and artifacts.
"""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("dashboard", help="optuna-dashboard with the SRDD profile and study settings",
                              description=__doc__.split("\n\n")[1] if __doc__ else None)
    p.add_argument("--storage", metavar="URL", help="storage URL (default: $NOISESWEEP_STORAGE, else sqlite:///noisesweep.db)")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--artifact-dir", metavar="DIR", help="artifact store folder (default: next to the sqlite file, else ./noisesweep-artifacts)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from sweep.dashboard import serve
    from sweep.storage import resolve_url

    serve(resolve_url(args.storage, None), host=args.host, port=args.port, artifact_dir=args.artifact_dir)
    return 0
