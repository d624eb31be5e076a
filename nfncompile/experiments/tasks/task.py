"""What a task is: a name, the dataclass of its ``eval`` section and a ``run`` function."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["Task"]


@dataclass(frozen=True)
class Task:
    """A task an experiment spec can name (see :mod:`nfncompile.experiments.registry`).

    Attributes
    ----------
    name : str
        What an experiment spec's ``task:`` names.
    eval_config : type
        Frozen dataclass of the spec's ``eval`` section.
    run : callable
        ``run(ctx: RunContext) -> Results``.
    help : str
        One line.
    """

    name: str
    eval_config: type
    run: Callable[[Any], Any]
    help: str = ""
