"""Errors the CLI reports as one line and a non-zero exit, never a traceback."""


class UserError(Exception):
    """Something the user supplied (study file, CLI flag, storage URL) is wrong."""
