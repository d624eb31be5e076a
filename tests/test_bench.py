"""The benchmark scripts in ``bench/`` run, print their tables, and measure fairly.

They are not timed tests: each runs here on a small catalogue entry for one round, and the
round order of ``arch_scale`` is checked against a machine whose every other step is slow.
"""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
import torch
from torch import nn

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _script(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(BENCH / script), *args],
        capture_output=True,
        text=True,
        cwd=BENCH,
        timeout=300,
    )


def _run(script: str, *args: str) -> str:
    out = _script(script, *args)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_arch_scale_prints_a_row_per_basis_with_its_ratios():
    text = _run("arch_scale.py", "--models", "resnet20", "--rounds", "1", "--no-memory")
    rows = [line.split() for line in text.splitlines() if line.startswith("resnet20")]
    assert [r[3] for r in rows] == ["complete", "linear"]
    for r in rows:
        ratio, (low, high) = float(r[9]), map(float, r[10].split("-"))
        assert 0 < low <= ratio <= high


def test_arch_profile_prints_each_side_of_a_round():
    text = _run("arch_profile.py", "resnet20", "--steps", "1", "--channels", "4")
    (line,) = [line for line in text.splitlines() if line.startswith("step 1")]
    # every generated call with its milliseconds, most first (tile_sum among them: which is
    # first moves with the machine's load at these small sizes)
    calls = re.search(r"ours forward [\d.]+ ms \(((?:\w+ [\d.]+, )*\w+ [\d.]+)\)", line)
    assert calls and "tile_sum" in dict(c.split() for c in calls.group(1).split(", "))
    assert re.search(r"floor forward [\d.]+ ms, backward [\d.]+ ms, \d+ page faults", line)


def test_step_modes_prints_a_row_per_mode():
    text = _run(
        "step_modes.py", "--model", "resnet20", "--batch", "1", "--channels", "4",
        "--modes", "eager,bf16", "--rounds", "1", "--device", "cpu",
    )  # fmt: skip
    rows = [line.split() for line in text.splitlines()[2:]]
    assert [r[0] for r in rows] == ["eager", "bf16"]
    assert all(float(r[1]) > 0 and float(r[3]) > 0 for r in rows)


def test_step_modes_refuses_an_unknown_mode():
    out = _script("step_modes.py", "--modes", "eager,fp8")
    assert out.returncode == 2 and "fp8" in out.stderr and "eager, compile, bf16" in out.stderr


class _Alternating(nn.Module):
    """A module whose step costs ``base`` seconds, plus ``extra`` on every other step of
    *any* module sharing ``clock`` (a machine state that alternates step to step)."""

    def __init__(self, clock: list, base: float, extra: float) -> None:
        super().__init__()
        self.clock, self.base, self.extra = clock, base, extra
        self.w = nn.Parameter(torch.ones(1))

    def forward(self, x: dict) -> dict:
        self.clock[0] += 1
        time.sleep(self.base + (self.extra if self.clock[0] % 2 else 0.0))
        return {"a": self.w * x["a"]}


@pytest.fixture
def arch_scale(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    return importlib.import_module("arch_scale")


def test_a_round_gives_both_sides_the_same_share_of_slow_steps(arch_scale):
    clock = [0]
    ours, floor = _Alternating(clock, 0.01, 0.04), _Alternating(clock, 0.01, 0.04)
    _, _, ratios = arch_scale.time_pair(ours, floor, {"a": torch.ones(1)}, rounds=2)
    # equal modules: 1 whatever the parity (one step each per round would give 5 or 1/5)
    assert all(0.8 < r < 1.25 for r in ratios), ratios


def test_a_round_still_tells_a_slower_module(arch_scale):
    clock = [0]
    ours, floor = _Alternating(clock, 0.03, 0.0), _Alternating(clock, 0.01, 0.0)
    _, _, ratios = arch_scale.time_pair(ours, floor, {"a": torch.ones(1)}, rounds=1)
    assert 2.0 < ratios[0] < 3.5, ratios


def test_model_sweep_says_what_to_install_without_torchvision():
    """The sweep reads torchvision's or timm's models, which nfncompile does not depend on."""
    try:
        import torchvision  # noqa: F401
    except Exception:  # absent (or a build that does not load): the message path
        out = _script("model_sweep.py", "--models", "resnet18")
        assert out.returncode == 2 and "install torchvision" in out.stderr
    else:
        out = _script("model_sweep.py", "--models", "resnet18", "--channels", "2")
        assert out.returncode == 0 and "resnet18" in out.stdout and "ok: 1" in out.stdout


def test_model_sweep_skips_a_model_too_large_for_memory(monkeypatch):
    """A model whose check would not fit is skipped with its estimate, before tracing, and a
    skip is not a failure; one that fits (or where memory is unknown) runs."""
    monkeypatch.syspath_prepend(str(BENCH))
    sweep = importlib.import_module("model_sweep")
    model = nn.Linear(1000, 1000)  # 1.0M weights: about 0.6 GiB with the base
    monkeypatch.setattr(sweep, "available_memory", lambda: 2**28)
    why = sweep._too_large(model)
    assert why == "SKIP 1M weights need about 0.6 GiB, 0.2 GiB available"
    row = sweep.sweep_one(lambda: model, "big", None)  # returns before reading any argument
    assert row == [why]
    monkeypatch.setattr(sweep, "available_memory", lambda: 2**34)
    assert sweep._too_large(model) is None
    monkeypatch.setattr(sweep, "available_memory", lambda: None)
    assert sweep._too_large(model) is None


def test_a_step_computes_input_gradients_without_accumulating_them(arch_scale):
    """With ``--input-grad`` both sides' backward reaches the inputs (as inside a stack); the
    gradients are dropped after each step, so no step pays for adding into the last one's."""
    x = {"a": torch.ones(3, requires_grad=True)}
    seen = []
    x["a"].register_hook(seen.append)
    step = arch_scale.Step()
    step(_Alternating([0], 0.0, 0.0), x)
    step(_Alternating([0], 0.0, 0.0), x)
    assert len(seen) == 2 and x["a"].grad is None


def test_arch_scale_with_input_gradients():
    text = _run(
        "arch_scale.py", "--models", "resnet20", "--bases", "linear", "--rounds", "1",
        "--no-memory", "--channels", "4", "--input-grad",
    )  # fmt: skip
    assert "inputs require gradients" in text.splitlines()[0]
    (r,) = [line.split() for line in text.splitlines() if line.startswith("resnet20")]
    assert r[3] == "linear" and float(r[9]) > 0


def test_model_sweep_traces_a_fixed_size_model_at_its_own_size(monkeypatch):
    """timm's models that take one input size say so (``fixed_input_size``); torchvision's
    vision transformers are known by name; every other model gets ``--size``."""
    monkeypatch.syspath_prepend(str(BENCH))
    sweep = importlib.import_module("model_sweep")
    model = nn.Linear(2, 2)
    assert sweep.input_size(model, "resnet18", 64) == 64
    assert sweep.input_size(model, "vit_b_16", 64) == 224
    model.pretrained_cfg = {"input_size": (3, 256, 256), "fixed_input_size": True}
    assert sweep.input_size(model, "maxvit_pico_rw_256", 64) == 256
    model.pretrained_cfg = {"input_size": (3, 256, 256), "fixed_input_size": False}
    assert sweep.input_size(model, "halonet26t", 64) == 64


def test_model_sweep_makes_each_tasks_example_input(monkeypatch):
    """Images for classification and segmentation, clips for video (16 frames of 224
    pixels where the model pools over a fixed window), two images for optical flow."""
    monkeypatch.syspath_prepend(str(BENCH))
    sweep = importlib.import_module("model_sweep")
    model = nn.Linear(2, 2)
    assert sweep.example_input(model, "fcn_resnet50", "segmentation", 64).shape == (1, 3, 64, 64)
    assert sweep.example_input(model, "r3d_18", "video", 64).shape == (1, 3, 8, 64, 64)
    assert sweep.example_input(model, "s3d", "video", 64).shape == (1, 3, 16, 224, 224)
    pair = sweep.example_input(model, "raft_small", "optical_flow", 100)
    assert [tuple(t.shape) for t in pair] == [(1, 3, 128, 128)] * 2
    pair = sweep.example_input(model, "raft_small", "optical_flow", 250)
    assert [tuple(t.shape) for t in pair] == [(1, 3, 256, 256)] * 2
    # transformers: the config's image size (a pair falls back to --size), or token ids
    model.config = types.SimpleNamespace(image_size=48, vocab_size=50)
    assert sweep.example_input(model, "ViTModel", "transformers", 64).shape == (1, 3, 48, 48)
    ids = sweep.example_input(model, "BertModel", "transformers", 64)
    assert ids.shape == (1, 8) and ids.dtype == torch.int64 and int(ids.max()) < 50
    model.config.image_size = (48, 48)
    assert sweep.example_input(model, "ViTModel", "transformers", 64).shape == (1, 3, 64, 64)
    # model code: --size, whatever the name says
    assert sweep.example_input(model, "vit_pytorch.vit:ViT", "code", 32).shape == (1, 3, 32, 32)


class _Fussy(nn.Module):
    """A CNN whose own forward refuses images below 100 pixels (Inception's padding
    arithmetic, in short)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        if x.shape[-1] < 100:
            raise ValueError(f"an image of {x.shape[-1]} pixels is too small")
        return self.conv(x).mean((2, 3))


def test_model_sweep_retries_at_a_larger_image_only_where_the_model_refuses(monkeypatch):
    """The trace's failure at 64 pixels is the model's own: the row is traced at 128 and says
    so; a model that accepts the image keeps the trace's error."""
    monkeypatch.syspath_prepend(str(BENCH))
    sweep = importlib.import_module("model_sweep")
    assert sweep.larger_image(_Fussy(), torch.randn(1, 3, 64, 64)).shape == (1, 3, 128, 128)
    assert sweep.larger_image(_Fussy(), torch.randn(1, 3, 128, 128)) is None
    assert sweep.larger_image(_Fussy(), torch.randn(1, 3, 8, 64, 64)) is None  # no image
    args = types.SimpleNamespace(source="code", size=64, mode="np", channels=2)
    row = sweep.sweep_one(_Fussy, "fussy", args)
    assert row[-1] == "ok (at 128 px)" and float(row[-2]) < 1e-10


def test_model_sweep_imports_model_code_from_a_path(tmp_path):
    """``--source code``: models of a checkout that is no package, with literal arguments."""
    (tmp_path / "cifar_models.py").write_text(
        "import torch.nn as nn\n"
        "def Net(width=4):\n"
        "    return nn.Sequential(nn.Conv2d(3, width, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1),\n"
        "                         nn.Flatten(), nn.Linear(width, 2))\n"
    )
    run = _script(
        "model_sweep.py", "--source", "code", "--path", str(tmp_path), "--models",
        "cifar_models:Net,cifar_models:Net(5),cifar_models:Net(width=3),cifar_models:Missing",
        "--size", "8",
        "--channels", "2",
    )  # fmt: skip
    out = run.stdout
    assert run.returncode == 1 and out.splitlines()[-1] == "# FAIL: 1, ok: 3"
    rows = {line.split()[0]: line for line in out.splitlines() if line.startswith("cifar")}
    assert rows["cifar_models:Net"].split()[2:4] == ["4", "3"]  # tensors, spaces
    assert rows["cifar_models:Net(5)"].endswith("ok")
    assert rows["cifar_models:Net(width=3)"].endswith("ok")
    assert "FAIL AttributeError" in rows["cifar_models:Missing"]
    assert _script("model_sweep.py", "--source", "code").returncode == 2


def test_the_floor_mixes_each_batch_entry_as_it_mixes_a_batch_of_one(arch_scale):
    """Above a batch of one the floor takes one GEMM per entry (a batch of channels-first tiles
    does not merge into one matrix); its output is, entry by entry, that of a batch of one,
    for tiles with and without fixed dims and for a composite tensor's tiles."""
    spec, _ = arch_scale.load_spec("densenet_block")
    floor = arch_scale.Floor(spec, 3, 2).double()
    x = {k: v.double() for k, v in arch_scale.make_inputs(spec, 3, 3).items()}
    y = floor(x)
    for b in range(3):
        one = floor({k: v[b : b + 1] for k, v in x.items()})
        for name in spec.names:
            torch.testing.assert_close(y[name][b : b + 1], one[name])
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(4, 3, generator=gen, dtype=torch.float64)
    rows = torch.randn(2, 3, 5, 6, generator=gen, dtype=torch.float64).permute(0, 2, 3, 1)
    torch.testing.assert_close(arch_scale._pointwise(rows, w), rows @ w.t())


def test_model_sweep_traces_at_least_the_size_torchvisions_weights_accept(monkeypatch):
    """A torchvision model whose weights say it needs more pixels than ``--size`` (their
    ``min_size``: Inception-v3 refuses under 75) is traced at that size; a name torchvision has
    no weights for, and a machine without torchvision, keep ``--size``."""
    monkeypatch.syspath_prepend(str(BENCH))
    sweep = importlib.import_module("model_sweep")
    metas = {"inception_v3": {"min_size": (75, 75)}, "resnet18": {"min_size": (1, 1)}}

    def get_model_weights(name):
        if name not in metas:
            raise ValueError(f"Unknown model {name}")
        return types.SimpleNamespace(DEFAULT=types.SimpleNamespace(meta=metas[name]))

    models = types.ModuleType("torchvision.models")
    models.get_model_weights = get_model_weights
    vision = types.ModuleType("torchvision")
    vision.models = models
    monkeypatch.setitem(sys.modules, "torchvision", vision)
    monkeypatch.setitem(sys.modules, "torchvision.models", models)
    model = nn.Linear(2, 2)
    assert sweep.example_input(model, "inception_v3", "torchvision", 64).shape == (1, 3, 75, 75)
    assert sweep.example_input(model, "inception_v3", "torchvision", 96).shape == (1, 3, 96, 96)
    assert sweep.example_input(model, "resnet18", "torchvision", 64).shape == (1, 3, 64, 64)
    assert sweep.example_input(model, "my_net", "torchvision", 64).shape == (1, 3, 64, 64)
    monkeypatch.setitem(sys.modules, "torchvision", None)  # import fails: not installed
    monkeypatch.setitem(sys.modules, "torchvision.models", None)
    assert sweep.min_side("inception_v3") == 1
