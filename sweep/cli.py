"""The `noisesweep` command line: one subcommand per module in sweep/commands/.

Errors a user can fix become one line on stderr and exit code 2; nothing prints a traceback
unless NOISESWEEP_DEBUG=1.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from quant.errors import ProfileError
from sweep.errors import UserError

# Order is the order of `noisesweep --help`.
COMMAND_MODULES = (
    "srdd",
    "trial",
    "run",
    "status",
    "best",
    "confirm",
    "export",
    "report",
    "dashboard",
)

USER_ERRORS: tuple[type[BaseException], ...] = (UserError, ProfileError, ValueError, FileNotFoundError)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("noisesweep")
    except PackageNotFoundError:  # running from a source tree without install
        return "0+unknown"


class OneLineArgumentParser(argparse.ArgumentParser):
    """argparse prints its usage block before an error; a user gets one line naming the problem."""

    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: error: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineArgumentParser(
        prog="noisesweep",
        description="Bayesian-optimization sweeps of AQN/RIN noise for quantized RL fine-tuning.",
    )
    parser.add_argument("--version", action="version", version=f"noisesweep {_version()}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"sweep.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"sweep.commands.{name}":
                continue  # command not built yet
            raise
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("noisesweep: interrupted", file=sys.stderr)
        return 130
    except USER_ERRORS as exc:
        if os.environ.get("NOISESWEEP_DEBUG"):
            raise
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"noisesweep: error: {message}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - the last line of defence against tracebacks
        if os.environ.get("NOISESWEEP_DEBUG"):
            raise
        first = str(exc).splitlines()[0] if str(exc) else ""
        print(
            f"noisesweep: internal error: {type(exc).__name__}: {first} "
            "(NOISESWEEP_DEBUG=1 for a traceback)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
