"""Helpers shared by the architecture tests."""

from __future__ import annotations

from torch import nn


def count_modules(model: nn.Module, kind: type) -> int:
    """How many submodules of ``model`` (itself included) are instances of ``kind``."""
    return sum(isinstance(m, kind) for m in model.modules())
