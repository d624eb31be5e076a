"""The tasks an experiment spec can name: the paper's four, and any registered with
:func:`register_task`.

=================== ========================================================================
task                what it measures
=================== ========================================================================
generalization      Kendall's tau of predicted vs. true test accuracy of held-out CNNs
inr_classification  test accuracy of classifying SIRENs (fit to digit images) by digit
inr_editing         test MSE of edited SIRENs vs. the dilated images
winning_tickets     accuracy of sparse nets trained from NFN-predicted masks vs. baselines
=================== ========================================================================

Each task module declares its :class:`~.tasks.task.Task` as ``TASK``; this table lists them.

Examples
--------
>>> sorted(task_names())
['generalization', 'inr_classification', 'inr_editing', 'winning_tickets']
>>> get_task("generalization").eval_config.__name__
'GeneralizationEval'
"""

from __future__ import annotations

import difflib

from ..errors import ConfigError
from .tasks import generalization, inr_classification, inr_editing, winning_tickets
from .tasks.task import Task

__all__ = ["Task", "register_task", "get_task", "task_names"]

_TASKS: dict[str, Task] = {
    task.name: task
    for task in (
        generalization.TASK,
        inr_classification.TASK,
        inr_editing.TASK,
        winning_tickets.TASK,
    )
}


def register_task(task: Task) -> Task:
    """Make ``task`` available to experiment specs (replacing one of the same name)."""
    if not isinstance(task, Task):
        raise TypeError(f"expected a Task, got {type(task).__name__}")
    _TASKS[task.name] = task
    return task


def task_names() -> list[str]:
    """Names of every task (built-in and registered)."""
    return list(_TASKS)


def get_task(name: str) -> Task:
    """The task called ``name``.

    Raises
    ------
    ConfigError
        For an unknown name (with the nearest valid one).
    """
    if name not in _TASKS:
        near = difflib.get_close_matches(str(name), task_names(), n=1)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        raise ConfigError(f"unknown task {name!r}{hint}; valid tasks: {', '.join(task_names())}")
    return _TASKS[name]
