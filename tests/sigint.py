"""Ctrl-C for real: run the ``nfncompile`` command line in a subprocess, send it SIGINT once it
is busy, and check it stops at once with one line that says how to resume."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence


def interrupt(argv: Sequence[str], busy: Callable[[], bool], *, wait: float = 240) -> str:
    """Run ``nfncompile argv``, send SIGINT when ``busy()`` first holds, return its last stderr
    line after checking: exit code 130 within 2 s, no traceback, the command that resumes."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "nfncompile.cli", *argv],
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
    assert proc.returncode == 130, err
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
