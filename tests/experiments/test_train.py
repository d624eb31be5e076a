"""Tests of nfncompile.experiments.train: fit, predict, model selection and resumable checkpoints."""

from __future__ import annotations

import dataclasses
import io
import json
import os

import pytest
import torch
from safetensors import safe_open
from torch import nn

from nfncompile.errors import ConfigError
from nfncompile.experiments.train import (
    BEST,
    LAST,
    STATE,
    TrainConfig,
    _flatten_optimizer,
    _unflatten_optimizer,
    collate,
    fit,
    load_best,
    predict,
    read_state,
    resolve_device,
)
from nfncompile.features import WeightSpaceFeatures
from nfncompile.files import atomic_write

mse = nn.functional.mse_loss
CFG = TrainConfig(epochs=6, batch_size=8, lr=1e-2, device="cpu")


def regression(n: int, seed: int) -> list:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    y = x @ torch.tensor([1.0, -2.0, 0.5, 0.0]) + 0.1 * torch.randn(n, generator=g)
    return list(zip(x, y))


TRAIN, VAL = regression(48, 0), regression(16, 1)


class Net(nn.Module):
    def __init__(self, seed: int = 0, n_in: int = 4, hidden: int = 16) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.net = nn.Sequential(
            nn.Linear(n_in, hidden), nn.ReLU(), nn.Dropout(0.2), nn.Linear(hidden, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1)


def neg_mse(out: torch.Tensor, target: torch.Tensor) -> float:
    return -mse(out, target).item()


def jitter(batch: tuple, generator: torch.Generator) -> tuple:
    x, y = batch
    return x + 0.05 * torch.randn(x.shape, generator=generator), y


def weights_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k].cpu(), b[k].cpu()) for k in a)


def without_seconds(history: tuple) -> list:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in history]


def scripted(values: list):
    """A metric_fn returning ``values`` in turn (one call per validation)."""
    it = iter(values)
    return lambda out, target: next(it)


# ---- config ---------------------------------------------------------------------------------


def test_config_fields_carry_help_and_min():
    for f in dataclasses.fields(TrainConfig):
        assert f.metadata["help"], f.name
        if f.name != "device":
            assert "min" in f.metadata, f.name
    assert TrainConfig(lr=1).lr == 1.0 and isinstance(TrainConfig(lr=1).lr, float)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"epochs": 0}, "epochs: must be >= 1"),
        ({"batch_size": 2.0}, "batch_size: expected an int"),
        ({"lr": 0.0}, "lr: must be > 0"),
        ({"weight_decay": -1.0}, "weight_decay: must be >= 0"),
        ({"grad_clip": 0}, "grad_clip: must be > 0"),
        ({"patience": 0}, "patience: must be >= 1"),
        ({"val_every": True}, "val_every: expected an int"),
        ({"lr": float("nan")}, "lr: expected a finite number"),
        ({"device": "tpu"}, "unknown device 'tpu'; valid: auto, cpu, cuda"),
    ],
)
def test_config_rejects_bad_values(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        TrainConfig(**kwargs)


def test_resolve_device():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device("cuda", local_rank=3) == torch.device("cuda", 3)
    assert resolve_device("cpu") == torch.device("cpu")


# ---- training and selection ------------------------------------------------------------------


def test_fit_learns_and_restores_the_best_epoch():
    model = Net()
    before = mse(predict(model, VAL), torch.stack([y for _, y in VAL])).item()
    result = fit(model, TRAIN, VAL, loss_fn=mse, metric_fn=neg_mse, config=CFG, progress=False)
    assert result.epochs_completed == 6 and len(result.history) == 6
    assert result.resumed_from == 0 and not result.stopped_early
    scores = [r["val_metric"] for r in result.history]
    assert result.best_epoch == 1 + scores.index(max(scores))
    assert result.best_score == max(scores) == result.best_record["val_metric"]
    assert weights_equal(model.state_dict(), result.best_state)
    after = mse(predict(model, VAL), torch.stack([y for _, y in VAL])).item()
    assert after < before
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]


@pytest.mark.parametrize("higher, best", [(True, 2), (False, 1)])
def test_selection_follows_the_metric_and_its_direction(higher, best):
    metric = scripted([0.1, 0.5, 0.3])
    cfg = dataclasses.replace(CFG, epochs=3)
    model = Net()
    result = fit(
        model,
        TRAIN,
        VAL,
        loss_fn=mse,
        metric_fn=metric,
        higher_is_better=higher,
        config=cfg,
        progress=False,
    )
    assert result.best_epoch == best
    # the restored weights are those after epoch `best`: compare with a run stopped there
    ref = Net()
    cfg = dataclasses.replace(CFG, epochs=best)
    fit(ref, TRAIN, VAL, loss_fn=mse, config=cfg, progress=False, restore_best=False)
    assert weights_equal(model.state_dict(), ref.state_dict())
    assert not weights_equal(model.state_dict(), Net().state_dict())


def test_selection_by_val_loss_without_metric():
    result = fit(Net(), TRAIN, VAL, loss_fn=mse, config=CFG, progress=False)
    losses = [r["val_loss"] for r in result.history]
    assert all(r["val_metric"] is None for r in result.history)
    assert result.best_epoch == 1 + losses.index(min(losses))


def test_restore_best_false_keeps_the_last_weights():
    metric = scripted([1.0, 0.0, 0.0])
    model = Net()
    cfg = dataclasses.replace(CFG, epochs=3)
    result = fit(
        model,
        TRAIN,
        VAL,
        loss_fn=mse,
        metric_fn=metric,
        config=cfg,
        progress=False,
        restore_best=False,
    )
    assert result.best_epoch == 1
    assert not weights_equal(model.state_dict(), result.best_state)


def test_early_stopping_and_val_every():
    cfg = dataclasses.replace(CFG, epochs=10, patience=2)
    result = fit(
        Net(),
        TRAIN,
        VAL,
        loss_fn=mse,
        metric_fn=scripted([1.0, 0.5, 0.7, 0.9]),
        config=cfg,
        progress=False,
    )
    assert result.stopped_early and result.epochs_completed == 3 and result.best_epoch == 1

    cfg = dataclasses.replace(CFG, epochs=5, val_every=2)
    result = fit(Net(), TRAIN, VAL, loss_fn=mse, config=cfg, progress=False)
    validated = [r["epoch"] for r in result.history if r["val_loss"] is not None]
    assert validated == [2, 4, 5]


def test_fit_without_validation_selects_the_last_epoch():
    model = Net()
    result = fit(model, TRAIN, None, loss_fn=mse, config=CFG, progress=False)
    assert result.best_epoch == 6 and result.best_score is None
    assert weights_equal(model.state_dict(), result.best_state)
    with pytest.raises(ConfigError, match="patience needs val_data"):
        fit(Net(), TRAIN, None, loss_fn=mse, config=dataclasses.replace(CFG, patience=2))


def test_fit_rejects_bad_data():
    with pytest.raises(ConfigError, match="train_data is empty"):
        fit(Net(), [], VAL, loss_fn=mse, config=CFG, progress=False)
    with pytest.raises(ConfigError, match="val_data is empty"):
        fit(Net(), TRAIN, [], loss_fn=mse, config=CFG, progress=False)
    with pytest.raises(ConfigError, match=r"\(inputs, targets\) pairs"):
        fit(Net(), [x for x, _ in TRAIN], None, loss_fn=mse, config=CFG, progress=False)
    with pytest.raises(ConfigError, match="must be a TrainConfig"):
        fit(Net(), TRAIN, VAL, loss_fn=mse, config={"epochs": 1})


def test_seeding_makes_runs_reproducible():
    def run(seed: int) -> dict:
        model = Net()
        cfg = dataclasses.replace(CFG, epochs=2, seed=seed)
        fit(model, TRAIN, VAL, loss_fn=mse, config=cfg, augment=jitter, progress=False)
        return model.state_dict()

    assert weights_equal(run(0), run(0))
    assert not weights_equal(run(0), run(1))


def test_augment_sees_every_training_batch_with_a_generator():
    calls = []

    def record(batch, generator):
        calls.append((batch[0].shape[0], type(generator)))
        return batch

    fit(
        Net(),
        TRAIN,
        VAL,
        loss_fn=mse,
        config=dataclasses.replace(CFG, epochs=2),
        augment=record,
        progress=False,
    )
    assert len(calls) == 2 * 6  # 48 / 8 training batches per epoch, never validation ones
    assert {c[1] for c in calls} == {torch.Generator} and sum(c[0] for c in calls) == 96


# ---- weight-space inputs ----------------------------------------------------------------------


class FeatureNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(9, 1)

    def forward(self, feats: WeightSpaceFeatures) -> torch.Tensor:
        if not isinstance(feats, WeightSpaceFeatures):
            raise TypeError(type(feats).__name__)
        return self.lin(feats.flatten()).squeeze(-1)


def weight_items(n: int, seed: int, as_features: bool) -> list:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        sd = {"w": torch.randn(2, 3, generator=g), "b": torch.randn(3, generator=g)}
        y = sd["w"].sum() - sd["b"].sum()
        out.append((WeightSpaceFeatures.from_state_dicts(None, [sd]) if as_features else sd, y))
    return out


def test_collate_batches_weight_space_items():
    for as_features in (True, False):
        inputs, targets = collate(weight_items(5, 0, as_features))
        assert isinstance(inputs, WeightSpaceFeatures) and inputs.batch_size == 5
        assert inputs["w"].shape == (5, 1, 2, 3) and targets.shape == (5,)


@pytest.mark.parametrize("as_features", [True, False])
def test_fit_on_weight_space_features(as_features):
    train = weight_items(32, 0, as_features)
    val = weight_items(8, 1, not as_features)
    model = FeatureNet()
    cfg = TrainConfig(epochs=15, batch_size=8, lr=5e-2, device="cpu")
    result = fit(model, train, val, loss_fn=mse, config=cfg, progress=False)
    assert result.history[-1]["val_loss"] < 0.2 * result.history[0]["val_loss"]
    out, targets = predict(model, val, batch_size=3, return_targets=True)
    assert out.shape == (8,) and torch.equal(targets, torch.stack([y for _, y in val]))


def test_predict_keeps_order_and_accepts_bare_inputs():
    model = Net()
    model.train()
    x = torch.stack([xi for xi, _ in VAL])
    out = predict(model, VAL, batch_size=5)
    assert model.training  # mode restored
    model.eval()
    torch.testing.assert_close(out, model(x))
    torch.testing.assert_close(predict(model, list(x), batch_size=3), out)
    with pytest.raises(ConfigError, match="batch_size must be a positive int"):
        predict(model, VAL, batch_size=0)


# ---- progress ---------------------------------------------------------------------------------


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_only_on_a_terminal(capsys, monkeypatch):
    cfg = dataclasses.replace(CFG, epochs=1)
    fit(Net(), TRAIN, VAL, loss_fn=mse, config=cfg, progress=True)
    assert capsys.readouterr().err == ""  # captured stderr is not a TTY
    tty = FakeTTY()
    monkeypatch.setattr("sys.stderr", tty)
    fit(Net(), TRAIN, VAL, loss_fn=mse, config=cfg, progress=True)
    assert "fit" in tty.getvalue() and "6/6" in tty.getvalue()
    tty = FakeTTY()
    monkeypatch.setattr("sys.stderr", tty)
    fit(Net(), TRAIN, VAL, loss_fn=mse, config=cfg, progress=False)
    assert tty.getvalue() == ""


# ---- checkpoints ------------------------------------------------------------------------------


class Crash(Exception):
    pass


def crash_at(step: int):
    """A loss_fn that raises on its ``step``-th training call (validation calls don't count)."""
    count = [0]

    def loss(out, target):
        if torch.is_grad_enabled():
            count[0] += 1
            if count[0] == step:
                raise Crash
        return mse(out, target)

    return loss


def checkpoint_tensors(path) -> tuple[dict, dict]:
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()  # noqa: SIM118


CUDA = pytest.param(
    "cuda",
    marks=[
        pytest.mark.gpu,
        pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
    ],
)


@pytest.mark.parametrize("device", ["cpu", CUDA])
def test_resume_after_a_crash_is_bitwise_identical(tmp_path, device):
    config = dataclasses.replace(CFG, device=device)
    kwargs = dict(loss_fn=mse, metric_fn=neg_mse, config=config, augment=jitter, progress=False)
    straight = Net()
    ref = fit(straight, TRAIN, VAL, checkpoint_dir=tmp_path / "a", restore_best=False, **kwargs)

    steps = 6  # 48 / 8 per epoch: crash in the middle of epoch 4
    with pytest.raises(Crash):
        fit(
            Net(),
            TRAIN,
            VAL,
            checkpoint_dir=tmp_path / "b",
            **{**kwargs, "loss_fn": crash_at(3 * steps + 2)},
        )
    assert read_state(tmp_path / "b")["epoch"] == 3
    assert sorted(os.listdir(tmp_path / "b")) == sorted([BEST, LAST, STATE])  # no temp files

    # a new process: different initial weights, a fresh optimizer, a scrambled global RNG
    resumed = Net(seed=99)
    torch.manual_seed(12345)
    result = fit(resumed, TRAIN, VAL, checkpoint_dir=tmp_path / "b", restore_best=False, **kwargs)
    assert result.resumed_from == 3 and result.epochs_completed == 6
    assert next(resumed.parameters()).device.type == device
    assert weights_equal(straight.state_dict(), resumed.state_dict())
    assert without_seconds(result.history) == without_seconds(ref.history)
    assert result.best_epoch == ref.best_epoch and weights_equal(result.best_state, ref.best_state)
    a, _ = checkpoint_tensors(tmp_path / "a" / LAST)
    b, _ = checkpoint_tensors(tmp_path / "b" / LAST)
    assert any(k.startswith("optim.state.") for k in a)
    assert weights_equal(a, b)  # model, best and optimizer state alike


def test_checkpoint_files(tmp_path):
    model = Net()
    result = fit(
        model,
        TRAIN,
        VAL,
        loss_fn=mse,
        metric_fn=neg_mse,
        config=CFG,
        checkpoint_dir=tmp_path,
        progress=False,
    )
    assert sorted(os.listdir(tmp_path)) == sorted([BEST, LAST, STATE])
    state = json.loads((tmp_path / STATE).read_text())
    assert state == read_state(tmp_path)
    assert state["epoch"] == 6 and state["best_epoch"] == result.best_epoch
    assert state["config"] == dataclasses.asdict(CFG) and len(state["history"]) == 6
    rng = state["rng"]["shuffle"]
    assert isinstance(rng, list) and all(isinstance(i, int) and 0 <= i < 256 for i in rng)
    tensors, meta = checkpoint_tensors(tmp_path / LAST)
    assert meta["format"] == "nfncompile.train/1"
    assert {k for k in tensors if k.startswith("model.")} == {
        f"model.{k}" for k in model.state_dict()
    }
    groups = json.loads(meta["optimizer"])["param_groups"]
    assert groups[0]["lr"] == CFG.lr and groups[0]["weight_decay"] == CFG.weight_decay
    fresh = load_best(tmp_path, Net(seed=5))
    assert weights_equal(fresh.state_dict(), result.best_state)
    assert weights_equal(fresh.state_dict(), model.state_dict())


def test_rerunning_a_finished_run_trains_nothing(tmp_path):
    model = Net()
    kwargs = dict(metric_fn=neg_mse, config=CFG, checkpoint_dir=tmp_path, progress=False)
    first = fit(model, TRAIN, VAL, loss_fn=mse, **kwargs)

    def never(out, target):
        raise AssertionError("a finished run must not train or validate again")

    again = Net(seed=7)
    second = fit(again, TRAIN, VAL, loss_fn=never, **kwargs)
    assert second.resumed_from == 6 and second.best_epoch == first.best_epoch
    assert weights_equal(again.state_dict(), model.state_dict())
    # more epochs continue the run
    third = fit(
        again, TRAIN, VAL, loss_fn=mse, **{**kwargs, "config": dataclasses.replace(CFG, epochs=7)}
    )
    assert third.resumed_from == 6 and third.epochs_completed == 7


def test_resume_rejects_a_changed_config_or_model(tmp_path):
    fit(
        Net(),
        TRAIN,
        VAL,
        loss_fn=mse,
        config=dataclasses.replace(CFG, epochs=1),
        checkpoint_dir=tmp_path,
        progress=False,
    )
    with pytest.raises(ConfigError, match=r"different config \(lr: 0.01 -> 0.02"):
        fit(
            Net(),
            TRAIN,
            VAL,
            loss_fn=mse,
            config=dataclasses.replace(CFG, lr=0.02),
            checkpoint_dir=tmp_path,
            progress=False,
        )
    with pytest.raises(ConfigError, match="does not fit this model"):
        fit(
            Net(hidden=8),
            TRAIN,
            VAL,
            loss_fn=mse,
            config=CFG,
            checkpoint_dir=tmp_path,
            progress=False,
        )


def test_atomic_write_never_leaves_half_a_file(tmp_path, monkeypatch):
    path = tmp_path / "f.bin"
    atomic_write(path, b"old")

    def fail(fd):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", fail)
    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, b"new contents")
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["f.bin"]


def test_optimizer_state_round_trips():
    model = Net()
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.randn(3, 4)).sum().backward()
    opt.step()
    tensors, meta = _flatten_optimizer(opt.state_dict())
    meta = json.loads(json.dumps(meta))  # through JSON, as in a checkpoint
    fresh = torch.optim.AdamW(Net().parameters(), lr=0.1)
    fresh.load_state_dict(_unflatten_optimizer(tensors, meta, fresh.state_dict()))
    a, b = opt.state_dict(), fresh.state_dict()
    assert a["param_groups"] == b["param_groups"]  # betas back to a tuple
    assert a["state"].keys() == b["state"].keys()
    for i in a["state"]:
        assert weights_equal(a["state"][i], b["state"][i])
