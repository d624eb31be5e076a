"""Progress: a tqdm bar on a terminal, plain periodic lines in a log, nothing when switched off."""

from __future__ import annotations

import io

import pytest

from nfncompile import progress as progress_module
from nfncompile.progress import LogProgress, progress, set_progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def auto_setting():
    yield
    set_progress(None)


def test_a_log_gets_plain_lines_without_carriage_returns():
    log = io.StringIO()
    with progress(total=4, desc="zoo digits_cnn", unit="model", stream=log, interval=0) as bar:
        for _ in range(4):
            bar.update()
    text = log.getvalue()
    assert "\r" not in text and "\x1b" not in text
    lines = text.splitlines()
    assert lines[0] == "zoo digits_cnn: 0/4 model (0%), 0s elapsed"
    assert lines[-1].startswith("zoo digits_cnn: 4/4 model (100%) in ")
    assert len(lines) == 5  # the start, one per update, no repeated final line


def test_lines_are_rate_limited(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(progress_module.time, "monotonic", lambda: clock[0])
    log = io.StringIO()
    bar = progress(total=100, desc="fit", unit="epoch", stream=log, interval=30)
    for _ in range(100):
        clock[0] += 1.0
        bar.set_postfix(loss=0.25, val_tau=0.5)
        bar.update()
    bar.close()
    lines = log.getvalue().splitlines()
    assert len(lines) == 1 + 100 // 30 + 1  # start, every 30 s, the end
    assert lines[1] == "fit: 30/100 epoch (30%), 30s elapsed, ~1m10s left, loss=0.25, val_tau=0.5"
    assert lines[-1] == "fit: 100/100 epoch (100%) in 1m40s, loss=0.25, val_tau=0.5"


def test_a_resumed_step_counts_from_where_it_was():
    log = io.StringIO()
    with progress(total=10, desc="fit", unit="epoch", initial=7, stream=log, interval=0) as bar:
        bar.update(3)
    assert log.getvalue().splitlines()[0].startswith("fit: 7/10 epoch (70%)")


def test_a_terminal_gets_a_tqdm_bar():
    from tqdm import tqdm

    term = Terminal()
    with progress(total=3, desc="zoo", stream=term) as bar:
        assert isinstance(bar, tqdm)
        bar.update(3)
    assert "\r" in term.getvalue() and "3/3" in term.getvalue()


@pytest.mark.parametrize("stream", [io.StringIO, Terminal])
def test_switched_off_prints_nothing(stream):
    out = stream()
    with progress(total=3, desc="zoo", stream=out, enabled=False, interval=0) as bar:
        bar.update(3)
        bar.write("a message")
    set_progress(False)
    with progress(total=3, desc="zoo", stream=out, enabled=True, interval=0) as bar:
        bar.update(3)
    assert out.getvalue() == ""


def test_set_progress_rejects_other_values():
    with pytest.raises(TypeError, match="None, True or False"):
        set_progress("yes")


def test_unknown_total():
    log = io.StringIO()
    bar = LogProgress(None, "probe", "op", stream=log, interval=0)
    bar.update(5)
    bar.close()
    assert log.getvalue().splitlines()[-1].startswith("probe: 5 op in ")
