"""``nfncompile run`` and ``nfncompile zoo`` as a new user meets them (issue 11): progress from
the first second, mistakes reported before any work, Ctrl-C that stops at once and resumes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from nfncompile.zoo import generate_zoo, load_zoo_config

from .sigint import interrupt
from .test_cli import assert_user_error, run


def assert_error_line(code: int, err: str, *fragments: str) -> None:
    """Exit code 2 and, after the run's stage lines, one ``nfncompile: error:`` line."""
    assert code == 2 and "Traceback" not in err, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("nfncompile: error: "), err
    for fragment in fragments:
        assert fragment in last, err


ZOO_SPEC = Path(__file__).resolve().parent.parent / "specs" / "zoos" / "digits_cnn.yaml"


def experiment(path: Path, zoo_dir: Path, epochs: int = 2, model: str = "mlp") -> Path:
    """A generalization experiment on the quick digits CNN zoo with one small model."""
    models = {
        "mlp": "mlp: {mlp: {hidden: [16], out_features: 1}}",
        "nfn_hnp": "nfn_hnp: {nfn: {mode: hnp, layers: [{type: nf_linear, channels: 4}, "
        "{type: activation, fn: relu}, {type: nf_pool}, {type: mlp, hidden: [8], "
        "out_features: 1}]}}",
    }[model]
    path.write_text(
        "task: generalization\n"
        "threads: 1\n"
        f"zoo: {{spec: {ZOO_SPEC}, dir: {zoo_dir}, quick: true}}\n"
        f"models:\n  {models}\n"
        f"train: {{epochs: {epochs}, batch_size: 8, lr: 1.0e-3}}\n"
        "eval: {split: [0.5, 0.25, 0.25]}\n"
    )
    return path


@pytest.fixture(scope="module")
def zoo_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("zoo") / "digits_cnn_quick"
    config = load_zoo_config(ZOO_SPEC, quick=True)
    assert generate_zoo(config, out, progress=False, spec=str(ZOO_SPEC), quick=True).complete
    return out


def no_run_allowed(monkeypatch) -> None:
    import nfncompile.experiments.runner as runner

    def boom(*args, **kwargs):
        raise AssertionError("the experiment ran although the arguments are invalid")

    monkeypatch.setattr(runner, "run_experiment", boom)


# --------------------------------------------------------------------------------------------
# mistakes found before any work
# --------------------------------------------------------------------------------------------


def test_an_unknown_device_is_rejected_before_the_zoo_stage(capsys, tmp_path, monkeypatch):
    no_run_allowed(monkeypatch)
    spec = experiment(tmp_path / "exp.yaml", tmp_path / "zoo_to_generate")
    code, _, err = run(capsys, "run", str(spec), "--out", str(tmp_path / "out"), "--device", "tpu")
    assert_user_error(code, err, "--device tpu: ", "unknown device 'tpu'", "cpu, cuda")
    assert not (tmp_path / "out").exists() and not (tmp_path / "zoo_to_generate").exists()


def test_cuda_without_a_cuda_build_is_a_message(capsys, tmp_path, monkeypatch):
    no_run_allowed(monkeypatch)
    monkeypatch.setattr(torch.version, "cuda", None)
    spec = experiment(tmp_path / "exp.yaml", tmp_path / "zoo")
    code, _, err = run(capsys, "run", str(spec), "--out", str(tmp_path / "o"), "--device", "cuda")
    assert_user_error(code, err, "--device cuda: ", "CPU-only build", "use cpu or auto")


def test_zoo_workers_must_be_positive(capsys, tmp_path):
    code, _, err = run(capsys, "zoo", str(ZOO_SPEC), "--quick", "--workers", "0")
    assert_user_error(code, err, "--workers must be a positive int, got 0")


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda t: t[: len(t) // 2], "the file is cut short (its last line is incomplete)"),
        (lambda t: t[: t.index("\n", len(t) // 2)].rsplit(",", 3)[0] + "\n", "fields"),
        (lambda t: "\n".join(t.splitlines()[:10]) + "\n", "9 rows for a zoo of 32 models"),
    ],
)
def test_a_damaged_metadata_csv_is_a_message(capsys, tmp_path, zoo_dir, damage, message):
    import shutil

    zoo = shutil.copytree(zoo_dir, tmp_path / "zoo")
    csv = zoo / "metadata.csv"
    csv.write_text(damage(csv.read_text()))
    spec = experiment(tmp_path / "exp.yaml", zoo)
    code, _, err = run(capsys, "run", str(spec), "--out", str(tmp_path / "out"), "--no-progress")
    assert_error_line(code, err, "metadata.csv", message, f"nfncompile zoo {ZOO_SPEC} --quick")
    # ... and the command it names repairs the file
    assert run(capsys, "zoo", str(ZOO_SPEC), "--quick", "--out", str(zoo), "--no-progress")[0] == 0
    assert csv.read_bytes() == (zoo_dir / "metadata.csv").read_bytes()


# --------------------------------------------------------------------------------------------
# progress
# --------------------------------------------------------------------------------------------


def test_progress_lines_in_a_log_by_default(capsys, tmp_path, zoo_dir):
    spec = experiment(tmp_path / "exp.yaml", zoo_dir, epochs=3)
    code, _, err = run(capsys, "run", str(spec), "--out", str(tmp_path / "out"))
    assert code == 0 and "\r" not in err
    assert "mlp: 0/6 step (0%)" in err and "mlp: 6/6 step (100%) in " in err
    assert "epoch=3/3, loss=" in err and "val=" in err
    code, _, quiet = run(capsys, "run", str(spec), "--out", str(tmp_path / "o2"), "--no-progress")
    assert code == 0 and "step (" not in quiet


def test_zoo_progress_lines_by_default(capsys, tmp_path):
    out = tmp_path / "zoo"
    code, _, err = run(capsys, "zoo", str(ZOO_SPEC), "--quick", "--out", str(out), "--workers", "1")
    assert code == 0
    assert "zoo digits_cnn: 0/32 model (0%)" in err and "zoo digits_cnn: 32/32 model (100%)" in err
    assert "\r" not in err


# --------------------------------------------------------------------------------------------
# Ctrl-C and resuming
# --------------------------------------------------------------------------------------------


def test_a_finished_training_is_not_reported_as_trained_again(capsys, tmp_path, zoo_dir):
    spec = experiment(tmp_path / "exp.yaml", zoo_dir, epochs=3)
    out = tmp_path / "out"
    assert run(capsys, "run", str(spec), "--out", str(out), "--no-progress")[0] == 0
    code, _, err = run(capsys, "run", str(spec), "--out", str(out), "--no-progress")
    assert code == 0
    assert "mlp: already trained (3 epochs, read from " in err and "trained 3 epochs in" not in err


@pytest.mark.slow
def test_ctrl_c_during_training_stops_at_once_and_resumes(capsys, tmp_path, zoo_dir):
    spec = experiment(tmp_path / "exp.yaml", zoo_dir, epochs=400, model="nfn_hnp")
    argv = ["run", str(spec), "--out", str(tmp_path / "out")]
    state = tmp_path / "out" / "checkpoints" / "nfn_hnp" / "state.json"
    last = interrupt(argv, lambda: json.loads(state.read_text())["epoch"] >= 3)
    assert last.startswith("nfncompile: interrupted: nfn_hnp: stopped during epoch "), last
    epoch = json.loads(state.read_text())["epoch"]
    assert 3 <= epoch < 400

    code, _, err = run(capsys, *argv, "--no-progress")  # the same command resumes
    assert code == 0 and f"nfn_hnp: resumed at epoch {epoch}, trained epochs {epoch + 1}-400" in err
    assert run(capsys, "run", str(spec), "--out", str(tmp_path / "ref"), "--no-progress")[0] == 0
    got, want = (json.loads((tmp_path / d / "results.json").read_text()) for d in ("out", "ref"))
    assert got["metrics"] == want["metrics"]
    from safetensors import safe_open

    best = {}
    for d in ("out", "ref"):  # (not bytes: safetensors orders metadata keys by string hash)
        with safe_open(str(tmp_path / d / "checkpoints/nfn_hnp/best.safetensors"), "pt") as f:
            best[d] = (f.metadata(), {k: f.get_tensor(k) for k in f.keys()})  # noqa: SIM118
    assert best["out"][0] == best["ref"][0]
    assert best["out"][1].keys() == best["ref"][1].keys()
    for k, v in best["ref"][1].items():
        assert torch.equal(best["out"][1][k], v), k
