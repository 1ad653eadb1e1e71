"""Command-line subcommands of noisesweep, one module each.

Rule: `register(subparsers)` may use only light modules (stdlib, sweep.errors, the name tuples
in quant.format_names / sweep.export_formats); heavy ones (torch, optuna, sqlalchemy, pydantic
models, matplotlib, ray) are imported inside `run(args)`, because sweep.cli imports every command
module to build the parser and `noisesweep --help` would otherwise take seconds
(tests/test_cli_startup.py checks it).
"""
