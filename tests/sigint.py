"""Ctrl-C for real: run the ``nfncompile`` command line in a subprocess, send it SIGINT once it
is busy, and check it stops at once with one line that says how to resume."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence

#: ``python -c`` program: the command line with the default SIGINT handler installed first
_CLI = (
    "import runpy, signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "runpy.run_module('nfncompile.cli', run_name='__main__', alter_sys=True)"
)


def _sigint_ignored_here() -> bool:
    """Whether this process ignores SIGINT at the kernel's level (``SigIgn`` in its status)."""
    try:
        with open("/proc/self/status") as f:
            mask = next(int(line.split()[1], 16) for line in f if line.startswith("SigIgn:"))
    except (OSError, StopIteration):
        return signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    return bool(mask >> (signal.SIGINT - 1) & 1)


def interrupt(argv: Sequence[str], busy: Callable[[], bool], *, wait: float = 240) -> str:
    """Run ``nfncompile argv``, send SIGINT when ``busy()`` first holds, return its last stderr
    line after checking: exit code 130 within 2 s, no traceback, the command that resumes."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    ignored = _sigint_ignored_here()
    proc = subprocess.Popen(
        # as from a terminal: Python's own SIGINT handler, even where this process ignores the
        # signal (a child would inherit that, and Python keeps an inherited SIG_IGN)
        [sys.executable, "-c", _CLI, *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    deadline = time.monotonic() + wait
    while proc.poll() is None and time.monotonic() < deadline and not _safe(busy):
        time.sleep(0.02)
    assert proc.poll() is None, f"finished before it could be interrupted:\n{proc.stderr.read()}"
    sent = time.monotonic()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    stopped = time.monotonic() - sent
    assert proc.returncode == 130, f"(SIGINT ignored by the test process: {ignored})\n{err}"
    assert stopped < 2.0, f"took {stopped:.1f} s to stop"
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    last = err.strip().splitlines()[-1]
    assert last.endswith(" to resume, run the same command: nfncompile " + " ".join(argv)), last
    return last


def _safe(busy: Callable[[], bool]) -> bool:
    try:
        return bool(busy())
    except (OSError, ValueError, KeyError):  # a file being written: not yet
        return False
