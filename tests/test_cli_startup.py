"""`noisesweep --help` must start fast: building the parser imports no heavy library.

Why: every command module is imported to register its subparser, so one top-level
`import torch` (or optuna, ray, matplotlib, transformers) in any of them costs every
invocation seconds, `--help` included. Each check runs in a fresh interpreter, because this
test process has long since imported all of them.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "optuna", "ray", "matplotlib", "transformers")


def _fresh(code: str) -> dict:
    """Run `code` in a new interpreter; it prints one JSON object as its last line."""
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


_PROBE = """
import json, sys
import sweep.cli
parser = sweep.cli.build_parser()
{extra}
heavy = sorted(m for m in sys.modules if m.split(".")[0] in {heavy!r})
choices = parser._subparsers._group_actions[0].choices
print(json.dumps({{"heavy": heavy, "commands": list(choices)}}))
"""


def test_build_parser_imports_no_heavy_library() -> None:
    out = _fresh(_PROBE.format(extra="", heavy=HEAVY))
    assert out["heavy"] == []
    # every command still registered (a lazily imported module must not drop out of the CLI)
    from sweep.cli import COMMAND_MODULES

    assert out["commands"] == list(COMMAND_MODULES)


@pytest.mark.parametrize("argv", [["--help"], ["run", "--help"], ["srdd", "--help"], ["export", "--help"]])
def test_help_imports_no_heavy_library(argv: list[str]) -> None:
    extra = (
        "import contextlib, io\n"
        "buf = io.StringIO()\n"
        "with contextlib.redirect_stdout(buf):\n"
        "    try:\n"
        f"        sweep.cli.main({argv!r})\n"
        "    except SystemExit as exc:\n"
        "        assert exc.code == 0, exc.code\n"
        "assert 'usage: noisesweep' in buf.getvalue(), buf.getvalue()\n"
    )
    out = _fresh(_PROBE.format(extra=extra, heavy=HEAVY))
    assert out["heavy"] == []


def test_format_names_have_one_definition() -> None:
    """The light modules hold the tuples the heavy modules use, so help text and checks agree."""
    import quant.format_names
    import quant.formats
    import sweep.export
    import sweep.export_formats

    assert quant.formats.KNOWN_FORMATS is quant.format_names.KNOWN_FORMATS
    assert sweep.export.FORMATS is sweep.export_formats.FORMATS
