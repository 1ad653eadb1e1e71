"""Error types of the quant package: user-facing problems get one-line messages."""


class ProfileError(ValueError):
    """An SRDD profile file is missing, malformed, or belongs to another model."""
