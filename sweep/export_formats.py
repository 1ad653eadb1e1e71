"""The `noisesweep export --format` names, in a module without optuna.

Why: `noisesweep export --help` lists them, and building the CLI parser must not import optuna
(start-up time); sweep.export re-exports this tuple, so there is one definition.
"""

from __future__ import annotations

FORMATS = ("verl", "hydra", "yaml", "json")
