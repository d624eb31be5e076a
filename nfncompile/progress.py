"""Progress of long steps: a tqdm bar on a terminal, plain periodic lines in a log.

Every step that can take more than a few seconds (zoo shards, INR fitting, training epochs,
evaluation) reports through :func:`progress`. Where it goes is decided once per process by
:func:`set_progress` (the command line's ``--progress/--no-progress``):

- ``None`` (the default, "auto"): a tqdm bar when stderr is a terminal, otherwise a plain line
  every ``interval`` seconds and one when the step ends (a log file stays readable: no ``\\r``);
- ``True``: the same, also asked for explicitly;
- ``False``: nothing.

A function that takes a ``progress`` argument passes it through (``None`` follows the process
setting, ``False`` silences that one step).

Examples
--------
>>> import io
>>> log = io.StringIO()
>>> with progress(total=3, desc="zoo digits", unit="shard", stream=log, interval=0) as bar:
...     for i in range(3):
...         bar.set_postfix(loss=0.5 / (i + 1))
...         bar.update()
>>> print(log.getvalue())  # doctest: +ELLIPSIS
zoo digits: 0/3 shard (0%), 0s elapsed
zoo digits: 1/3 shard (33%), 0s elapsed, ~0s left, loss=0.5
zoo digits: 2/3 shard (66%), 0s elapsed, ~0s left, loss=0.25
zoo digits: 3/3 shard (100%) in 0s, loss=0.1667
<BLANKLINE>
"""

from __future__ import annotations

import sys
import time
from typing import IO, Any

__all__ = ["progress", "set_progress", "progress_setting", "LogProgress"]

_SETTING: list[bool | None] = [None]


def set_progress(enabled: bool | None) -> None:
    """Set the process-wide default: ``None`` auto (bar on a terminal, lines in a log),
    ``True`` on, ``False`` off."""
    if enabled not in (None, True, False):
        raise TypeError(f"progress must be None, True or False, got {enabled!r}")
    _SETTING[0] = enabled


def progress_setting() -> bool | None:
    """The process-wide setting (see :func:`set_progress`)."""
    return _SETTING[0]


def _format_seconds(seconds: float) -> str:
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def _format_value(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


class LogProgress:
    """A tqdm-like counter that writes plain lines: one when it starts, at most one every
    ``interval`` seconds, and one at the end.

    ``desc: n/total unit (pct%), elapsed, ~left, key=value, ...``

    Parameters
    ----------
    total : int or None
    desc : str
    unit : str
    initial : int
        Already done (a resumed step).
    stream : file
        Where lines go (default stderr).
    interval : float
        Seconds between lines (``0``: a line per update).
    """

    def __init__(
        self,
        total: int | None = None,
        desc: str = "",
        unit: str = "it",
        initial: int = 0,
        stream: IO[str] | None = None,
        interval: float = 30.0,
    ) -> None:
        self.total, self.desc, self.unit = total, desc, unit
        self.n = initial
        self.stream = stream if stream is not None else sys.stderr
        self.interval = interval
        self.postfix: dict[str, Any] = {}
        self._start = self._last = time.monotonic()
        self._initial = initial
        self._final = False  # whether the last line was the final one
        self._closed = False
        self._emit()  # what runs now, from its first second

    def line(self) -> str:
        """The current line."""
        elapsed = time.monotonic() - self._start
        head = f"{self.desc}: " if self.desc else ""
        if self.total:
            head += f"{self.n}/{self.total} {self.unit} ({100 * self.n // self.total}%)"
        else:
            head += f"{self.n} {self.unit}"
        done = self.n - self._initial
        if self._closed or (self.total and self.n >= self.total):
            head += f" in {_format_seconds(elapsed)}"
        else:
            head += f", {_format_seconds(elapsed)} elapsed"
            if self.total and done > 0:
                left = elapsed / done * (self.total - self.n)
                head += f", ~{_format_seconds(left)} left"
        if self.postfix:
            head += ", " + ", ".join(f"{k}={_format_value(v)}" for k, v in self.postfix.items())
        return head

    def _emit(self) -> None:
        print(self.line(), file=self.stream, flush=True)
        self._last = time.monotonic()
        self._final = self._closed or bool(self.total and self.n >= self.total)

    def update(self, n: int = 1) -> None:
        self.n += n
        if time.monotonic() - self._last >= self.interval:
            self._emit()

    def set_postfix(
        self, ordered_dict: dict | None = None, refresh: bool = True, **kw: Any
    ) -> None:
        self.postfix = {**(ordered_dict or {}), **kw}

    def set_description(self, desc: str, refresh: bool = True) -> None:
        self.desc = desc

    def write(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            if not self._final and self.n != self._initial:
                self._emit()

    def __enter__(self) -> LogProgress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class _Silent(LogProgress):
    def _emit(self) -> None:
        pass

    def write(self, text: str) -> None:
        pass


def progress(
    total: int | None = None,
    desc: str = "",
    unit: str = "it",
    *,
    initial: int = 0,
    enabled: bool | None = None,
    stream: IO[str] | None = None,
    interval: float = 30.0,
) -> Any:
    """A progress counter for one long step: a tqdm bar, a :class:`LogProgress` or a silent one.

    Parameters
    ----------
    total, desc, unit, initial
        As for tqdm.
    enabled : bool or None
        ``False`` silences this step; ``None`` or ``True`` follow :func:`set_progress` (a
        process set to ``False`` stays silent).
    stream : file, optional
        Default stderr. A bar is drawn only when it is a terminal; elsewhere plain lines.
    interval : float
        Seconds between plain lines.

    Returns
    -------
    tqdm or LogProgress
        Either way: ``update(n)``, ``set_postfix(**kw)``, ``set_description``, ``write``,
        ``close()``, and a context manager.
    """
    stream = sys.stderr if stream is None else stream
    if enabled is False or _SETTING[0] is False:
        return _Silent(total, desc, unit, initial, stream, interval)
    isatty = getattr(stream, "isatty", None)
    if callable(isatty) and isatty():
        from tqdm import tqdm

        return tqdm(
            total=total, desc=desc, unit=unit, initial=initial, file=stream, dynamic_ncols=True
        )
    return LogProgress(total, desc, unit, initial, stream, interval)
