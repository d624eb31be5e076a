"""Tests of :mod:`nfncompile.experiments.train.loop`: fit, model selection, seeding, progress."""

from __future__ import annotations

import copy
import dataclasses
import io

import pytest
import torch

from nfncompile.errors import ConfigError
from nfncompile.experiments.train import TrainConfig, fit, predict
from nfncompile.experiments.train.config import lr_factor
from tests.experiments.train.helpers import (
    CFG,
    TRAIN,
    VAL,
    FeatureNet,
    Net,
    jitter,
    mse,
    neg_mse,
    scripted,
    weight_items,
    weights_equal,
)


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


def test_cosine_schedule_anneals_the_learning_rate_per_step():
    cfg = dataclasses.replace(CFG, schedule="cosine")
    result = fit(Net(), TRAIN, VAL, loss_fn=mse, config=cfg, progress=False)
    steps = 6  # 48 examples, batches of 8
    for r in result.history:  # the lr of each epoch's last step
        expected = cfg.lr * lr_factor("cosine", r["epoch"] * steps - 1, cfg.epochs * steps)
        assert r["lr"] == pytest.approx(expected)
    assert result.history[-1]["lr"] < 0.01 * cfg.lr < result.history[0]["lr"]
    flat = fit(Net(), TRAIN, VAL, loss_fn=mse, config=CFG, progress=False)
    assert {r["lr"] for r in flat.history} == {CFG.lr}
    with pytest.raises(ConfigError, match="schedule: expected one of constant, cosine"):
        TrainConfig(schedule="linear")


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


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_on_a_terminal_and_plain_lines_in_a_log(capsys, monkeypatch):
    cfg = dataclasses.replace(CFG, epochs=1)
    fit(Net(), TRAIN, VAL, loss_fn=mse, config=cfg, progress=True, desc="net")
    log = capsys.readouterr().err  # captured stderr is not a TTY: lines, no bar
    assert "\r" not in log and log.startswith("net: 0/6 step (0%)")
    assert "net: 6/6 step (100%) in " in log and "epoch=1/1, loss=" in log
    tty = FakeTTY()
    monkeypatch.setattr("sys.stderr", tty)
    fit(Net(), TRAIN, VAL, loss_fn=mse, config=cfg, progress=True)
    assert "fit" in tty.getvalue() and "6/6" in tty.getvalue()
    tty = FakeTTY()
    monkeypatch.setattr("sys.stderr", tty)
    fit(Net(), TRAIN, VAL, loss_fn=mse, config=cfg, progress=False)
    assert tty.getvalue() == ""


def test_fit_uses_fused_adamw_with_the_default_steps():
    from nfncompile.experiments.train.loop import _adamw

    torch.manual_seed(0)
    model = torch.nn.Linear(5, 3).double()
    twin = copy.deepcopy(model)
    cfg = TrainConfig(lr=1e-2, weight_decay=0.1)
    fused = _adamw(model, cfg)
    assert fused.defaults["fused"] is True
    plain = torch.optim.AdamW(twin.parameters(), lr=1e-2, weight_decay=0.1)
    for _ in range(3):
        x = torch.randn(4, 5, dtype=torch.float64)
        for m, opt in ((model, fused), (twin, plain)):
            opt.zero_grad()
            m(x).pow(2).sum().backward()
            opt.step()
    for a, b in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(a, b)
    # a model with an integer parameter cannot use the fused kernel: the plain loop is chosen
    model.register_parameter("count", torch.nn.Parameter(torch.zeros(2, dtype=torch.long), False))
    assert not _adamw(model, cfg).defaults["fused"]
