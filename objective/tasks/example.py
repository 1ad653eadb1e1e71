"""One problem of a task: its own module so task loaders import it without importing the package's loader."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Example:
    """One problem: the prompt (raw text, or chat-message content for GSM8K) and its answer."""

    prompt: str
    ground_truth: str
    data_source: str
    messages: tuple[Mapping[str, str], ...] | None = field(default=None, compare=False)
