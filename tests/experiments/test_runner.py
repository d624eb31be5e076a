"""Tests of :mod:`nfncompile.experiments.runner`: every experiment spec's ``--quick`` form end to
end (results, plots, resume), and the spec's path-qualified errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from nfncompile.cli import main
from nfncompile.errors import ConfigError
from nfncompile.experiments.registry import get_task, task_names
from nfncompile.experiments.runner import load_experiment, run_experiment
from nfncompile.experiments.tasks.config import deep_merge

ROOT = Path(__file__).resolve().parents[2]


SPECS = ROOT / "specs" / "experiments"


PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="session")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One working directory per session: the quick zoos are generated there once."""
    return tmp_path_factory.mktemp("tasks")


def _run(workdir: Path, monkeypatch: pytest.MonkeyPatch, name: str, capsys) -> dict:
    monkeypatch.chdir(workdir)
    out = workdir / "runs" / name
    rc = main(["run", str(SPECS / f"{name}.yaml"), "--out", str(out), "--quick"])
    assert rc == 0
    printed = capsys.readouterr().out
    results = json.loads((out / "results.json").read_text())
    assert results["task"] == name
    assert results["info"]["quick"] is True
    # the table on stdout has one row per model and a column per metric
    header = next(line for line in printed.splitlines() if line.startswith("| model |"))
    for model, row in results["metrics"].items():
        assert f"| {model} |" in printed
        for metric in row:
            assert f"| {metric} |" in header or header.endswith(f"| {metric} |")
    for plot in results["plots"]:
        assert (out / plot).read_bytes()[:8] == PNG_MAGIC
    assert (out / "results.md").read_text().strip() in printed
    return results


def _in_unit(x: float | None, lo: float = 0.0, hi: float = 1.0) -> bool:
    return x is not None and lo <= x <= hi


def test_generalization_quick(workdir, monkeypatch, capsys):
    r = _run(workdir, monkeypatch, "generalization", capsys)
    assert list(r["metrics"]) == ["nfn_hnp", "nfn_np", "stat_nn", "mlp"]
    for row in r["metrics"].values():
        tau = row["kendall_tau"]
        assert tau is None or -1.0 <= tau <= 1.0
        assert row["rmse"] >= 0 and row["params"] > 0
    # two model seeds (quick: seeds [0, 1]): means, stds, each seed's run in its own folder
    assert r["info"]["model_seeds"] == [0, 1]
    assert r["plots"] == ["seed0/generalization_scatter.png", "learning_curves.png"]
    for model, row in r["metrics"].items():
        runs = [r["info"]["seeds"][s]["metrics"][model] for s in ("0", "1")]
        assert row["rmse"] == pytest.approx((runs[0]["rmse"] + runs[1]["rmse"]) / 2)
        assert r["std"][model]["rmse"] == pytest.approx(
            abs(runs[0]["rmse"] - runs[1]["rmse"]) / 2**0.5
        )
        assert row["params"] == runs[0]["params"] == runs[1]["params"]
    seed_runs = [r["info"]["seeds"][s]["metrics"]["nfn_hnp"]["rmse"] for s in ("0", "1")]
    assert seed_runs[0] != seed_runs[1]  # the model seed changes the model
    info = r["info"]["seeds"]["0"]["info"]
    assert info["train"] + info["val"] + info["test"] == info["networks"]
    # the spec trains NFN-HNP on class- and neuron-permuted copies (eval.augment), no other model
    assert {m: v["augmented"] for m, v in info["models"].items()} == {
        "nfn_hnp": True,
        "nfn_np": False,
        "stat_nn": False,
        "mlp": False,
    }
    printed = (workdir / "runs/generalization/results.md").read_text()
    assert "Mean ± std over 2 model seeds [0, 1]" in printed and " ± " in printed
    assert "[learning_curves.png](learning_curves.png)" in printed
    # checkpoints were written per seed and model, so a rerun resumes instead of retraining
    assert (workdir / "runs/generalization/seed1/checkpoints/nfn_hnp/best.safetensors").exists()


def test_rerun_resumes_and_reproduces(workdir, monkeypatch, capsys):
    first = _run(workdir, monkeypatch, "generalization", capsys)
    second = _run(workdir, monkeypatch, "generalization", capsys)
    assert second["metrics"] == first["metrics"]


def test_inr_classification_quick(workdir, monkeypatch, capsys):
    r = _run(workdir, monkeypatch, "inr_classification", capsys)
    assert list(r["metrics"]) == ["nfn_hnp", "nfn_np", "stat_nn", "mlp", "mlp_aug"]
    for row in r["metrics"].values():
        assert _in_unit(row["test_accuracy"])
        assert row["test_loss"] > 0
    assert r["info"]["models"]["mlp_aug"]["augmented"] is True
    assert r["info"]["models"]["mlp"]["augmented"] is False
    assert r["plots"] == ["inr_classification_confusion.png", "learning_curves.png"]
    # the quick zoo has two views per image; the split is by image
    assert r["info"]["networks"] == 40 and r["info"]["test"] % 2 == 0


def test_inr_editing_quick(workdir, monkeypatch, capsys):
    r = _run(workdir, monkeypatch, "inr_editing", capsys)
    assert list(r["metrics"]) == ["no_edit", "nfn_np", "nfn_hnp", "mlp"]
    for row in r["metrics"].values():
        assert row["test_mse"] >= 0
    # the unedited SIRENs fit their own image better than the dilated one
    assert r["metrics"]["no_edit"]["fit_mse"] < r["metrics"]["no_edit"]["test_mse"]
    assert r["plots"] == ["inr_editing_examples.png", "learning_curves.png"]


def test_winning_tickets_quick(workdir, monkeypatch, capsys):
    r = _run(workdir, monkeypatch, "winning_tickets", capsys)
    m = r["metrics"]
    assert set(m) == {
        "dense",
        "magnitude",
        "nfn_hnp",
        "nfn_np",
        "random",
        "random_uniform",
        "init_magnitude",
    }
    for row in m.values():
        assert _in_unit(row["mlp_accuracy"]) and _in_unit(row["cnn_accuracy"])
    assert m["magnitude"]["mlp_overlap_magnitude"] == 1.0
    for src in ("mlp", "cnn"):
        s = r["info"]["sources"][src]
        assert s["kept_weights"] == round(0.05 * s["prunable_weights"])
        assert sum(s["layer_budgets"].values()) == s["kept_weights"]
        # the quick form adds one density to the accuracy-vs-density curve
        assert sorted(s["accuracy_by_density"]) == ["0.05", "0.2"]
        assert set(s["accuracy_by_density"]["0.2"]) == set(m) - {"dense"}
    assert r["plots"] == [
        "winning_tickets_accuracy.png",
        "winning_tickets_density.png",
        "learning_curves.png",
    ]


def _write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _base() -> dict:
    return yaml.safe_load((SPECS / "generalization.yaml").read_text())


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ({"train": {"lr": -1.0}}, "bad.yaml: train.lr: expected a non-negative number, got -1.0"),
        ({"task": "generalisation"}, "task: expected one of"),
        ({"trian": {}}, "trian: unknown key (did you mean 'train'?)"),
        (
            {"models": {"nfn_np": {"nfn": {"layers": [{"type": "nf_linear", "channels": 0}]}}}},
            "models.nfn_np.nfn.layers[0].channels: expected a positive int, got 0",
        ),
        ({"eval": {"split": [0.7, 0.3]}}, "eval.split: expected a list of 3 items, got 2"),
        ({"eval": {"targt": "x"}}, "eval.targt: unknown key (did you mean 'target'?)"),
        ({"zoo": {"dir": "z"}}, "zoo.spec: missing required key"),
        ({"model_train": {"nfn": {"lr": 1.0}}}, "model_train.nfn: no such model"),
        ({"model_train": {"mlp": {"lr": -2.0}}}, "model_train.mlp.lr: expected a non-negative"),
        ({"quick": {"train": {"epochs": 0}}}, "with its quick overrides): train.epochs"),
    ],
)
def test_schema_errors_are_path_qualified(tmp_path, edit, message):
    data = _base()
    if "zoo" in edit:
        data.pop("zoo")
    path = _write(tmp_path, deep_merge(data, edit))
    with pytest.raises(ConfigError) as err:
        load_experiment(path)
    assert message in str(err.value)
    assert str(err.value).startswith(str(path))


def test_quick_needs_a_quick_section(tmp_path):
    data = _base()
    data.pop("quick")
    path = _write(tmp_path, data)
    assert load_experiment(path)[0].quick is None
    with pytest.raises(ConfigError, match="no quick: section"):
        load_experiment(path, quick=True)


def test_cli_reports_config_errors(tmp_path, capsys):
    path = _write(tmp_path, deep_merge(_base(), {"train": {"batch_size": "big"}}))
    assert main(["run", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("nfncompile: error: ") and "train.batch_size" in err


@pytest.mark.parametrize("task", ["inr_classification", "generalization"])
def test_bad_augment_is_named_before_the_zoo(task, tmp_path, workdir):
    spec = yaml.safe_load((SPECS / f"{task}.yaml").read_text())
    spec["eval"]["augment"] = ["mpl_aug"]
    zoo = "digits_inr" if task == "inr_classification" else "digits_cnn"
    spec["zoo"]["spec"] = str(SPECS.parent / "zoos" / f"{zoo}.yaml")
    spec["zoo"]["quick"] = True
    spec["zoo"]["dir"] = str(workdir / "never")
    path = _write(tmp_path, spec)
    with pytest.raises(ConfigError, match=r"eval\.augment: no model 'mpl_aug'"):
        load_experiment(path)
    with pytest.raises(ConfigError, match=r"eval\.augment: no model 'mpl_aug'"):
        run_experiment(path, tmp_path / "o", echo=False)
    assert not (workdir / "never").exists()  # the error comes before any zoo is generated
    assert not (tmp_path / "o").exists()  # and before the output folder is made


def test_missing_model_file(tmp_path, workdir, monkeypatch):
    data = _base()
    data.pop("quick")
    data["models"] = {"extra": "no/such.yaml"}
    data["eval"]["augment"] = []  # it names the base's models
    path = _write(tmp_path, data)
    cfg, ev, source, base = load_experiment(path)
    from nfncompile.experiments.tasks.context import RunContext

    ctx = RunContext(cfg, ev, source, base, tmp_path)
    with pytest.raises(ConfigError, match=r"models\.extra: no such model spec"):
        ctx.model_config("extra")


def test_every_spec_and_its_quick_form_validate():
    assert sorted(p.stem for p in SPECS.glob("*.yaml")) == sorted(task_names())
    for path in SPECS.glob("*.yaml"):
        full, _, _, _ = load_experiment(path)
        quick, _, _, _ = load_experiment(path, quick=True)
        assert full.task == quick.task == path.stem
        assert quick.train.epochs < full.train.epochs
    with pytest.raises(ConfigError, match="unknown task 'inr'"):
        get_task("inr")


def test_set_replaces_spec_values_and_is_recorded(workdir, monkeypatch, capsys):
    monkeypatch.chdir(workdir)
    out = workdir / "runs" / "set"
    sets = ["--set", "eval.augment=[]", "--set", "seeds=[3]", "--set", "train.epochs=1"]
    args = ["run", str(SPECS / "generalization.yaml"), "--out", str(out), "--quick"]
    assert main([*args, *sets]) == 0
    r = json.loads((out / "results.json").read_text())
    assert r["info"]["overrides"] == ["eval.augment=[]", "seeds=[3]", "train.epochs=1"]
    assert r["info"]["model_seeds"] == [3]
    seed = r["info"]["seeds"]["3"]["info"]["models"]
    assert not any(m["augmented"] for m in seed.values())
    assert all(m["epochs"] == 1 for m in seed.values())
    assert "With `--set eval.augment=[]` `--set seeds=[3]`" in (out / "results.md").read_text()
    # a rerun into the same folder with a changed spec refuses the old checkpoints
    capsys.readouterr()
    assert main([*args, *sets, "--set", "eval.augment_mode=np", "--set", "eval.augment=[mlp]"]) == 2
    err = capsys.readouterr().err
    assert "checkpoints/nfn_hnp: these checkpoints were trained for another spec" in err
    assert "eval.augment differs: [] then, ['mlp'] now" in err


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("train.epochs", r"--set 'train.epochs': expected KEY=VALUE"),
        ("train..lr=1", r"expected KEY=VALUE"),
        ("train.lr=[1", r"--set 'train.lr=\[1': line 1, column 3: malformed YAML"),
        (
            "models.nfn_hnp.nfn.layers.9.channels=8",
            r"nfn\.layers\.9: a list of 9 items; expected an index 0-8",
        ),
        ("train.epochs.x=1", r"train\.epochs is 60, not a mapping or a list"),
        ("train.lr=fast", r"\(with --set train\.lr=fast\): train\.lr: "),
        ("train.lerning_rate=1", r"train\.lerning_rate: unknown key; valid keys: epochs, "),
    ],
)
def test_set_errors_name_the_override(item, message):
    with pytest.raises(ConfigError, match=message):
        load_experiment(SPECS / "generalization.yaml", overrides=[item])
