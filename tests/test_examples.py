"""Run every example script and check what it prints; check every hand-written weight-space
spec in specs/weight_spaces/ against the network it describes."""

from __future__ import annotations

import re
import runpy
import sys
import tempfile
from pathlib import Path

import pytest
import torch

import nfncompile as nfc

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
WEIGHT_SPACES = ROOT / "specs" / "weight_spaces"

# Each example prints lines "<label> ... <error>" whose error must be ~0.
ERROR_LINES = {
    "01_trace_a_cnn.py": [r"function unchanged: max \|f_perm\(x\) - f\(x\)\| = (\S+)"],
    "02_nf_layer.py": [r"NFLinear equivariance error: (\S+)", r"NFPool invariance error: (\S+)"],
    "03_weights_from_safetensors.py": [
        r"max \|feature - file\| = (\S+)",
        r"NFN invariance error: (\S+)",
    ],
    "04_verify_a_claimed_symmetry.py": [r"fixed spec holds: True, max error (\S+)"],
    "05_trace_your_own_architecture.py": [r"verification max error: (\S+)"],
    "06_nfn_from_yaml_on_a_zoo.py": [r"NFN invariance error: (\S+)"],
    "07_trace_a_transformer.py": [
        r"verification \(np mode\): OK, max error (\S+)",
        r"NFLinear equivariant to (\S+)",
    ],
}
# ... and lines that must appear as they are.
EXACT_LINES = {
    "03_weights_from_safetensors.py": [
        "in the files: torch.float64",
        "dtype torch.float32",
        "mis-shaped keys: Dense_0.kernel: expected [4, 16], got [16, 4]",
    ],
    "04_verify_a_claimed_symmetry.py": [
        "claimed spec holds: False; failing spaces: stream, r",
        "moves: fc2.weight, fc2.bias",
        "first diverging node: add = call_function operator.add on fc_in, fc2",
        "my_models.py:",
        ": h = h + self.fc2(torch.relu(self.fc1(h)))",
        "traced: fc2.weight's output axis is 'fc_in', fc_in.weight's is 'fc_in'",
    ],
    "07_trace_a_transformer.py": [
        "input space (the features): 12",
        "block 0: q/k features 'blocks.0.qkv/0', v features 'blocks.0.qkv/1', 2 heads moved by "
        "'blocks.0.qkv.heads'",
        "heads x features per head: (2, 8) (2, 8)",
    ],
    "05_trace_your_own_architecture.py": [
        "stem and block2 share a space: True",
        "side's output axis, split in two by the slicing: ('side/0', 'side/1')",
        "broken by torch.cumsum (cumsum): cumsum depends on neuron positions; fixed neurons of extra",
        "extra's output axis is fixed: True",
    ],
}
# ... and lines "<from> -> <to>" where <to> must be under half of <from> (training learns).
HALVED = {"06_nfn_from_yaml_on_a_zoo.py": r"train loss: epoch 1 (\S+) -> epoch \d+ (\S+)"}
# Modules the examples import that are not examples themselves.
HELPERS = {"my_models.py"}


def test_every_example_is_listed():
    assert sorted(p.name for p in EXAMPLES.glob("*.py")) == sorted({*ERROR_LINES, *HELPERS})


@pytest.fixture
def examples_on_path(monkeypatch):
    """What ``python examples/NAME.py`` gives: the examples folder first on sys.path."""
    monkeypatch.syspath_prepend(str(EXAMPLES))
    monkeypatch.delitem(sys.modules, "my_models", raising=False)


@pytest.mark.parametrize("name", sorted(ERROR_LINES))
def test_example_runs(name, capsys, monkeypatch, tmp_path, examples_on_path):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # what examples write goes here
    try:
        runpy.run_path(str(EXAMPLES / name), run_name="__main__")
    except ModuleNotFoundError as e:  # a pipeline stage not written yet
        if e.name and e.name.startswith("nfncompile."):
            pytest.skip(f"{name} needs {e.name}, which does not exist yet")
        raise
    out = capsys.readouterr().out
    for pattern in ERROR_LINES[name]:
        match = re.search(pattern, out)
        assert match, f"{name} did not print a line matching {pattern!r}:\n{out}"
        assert float(match.group(1)) < 1e-4, match.group(0)
    for line in EXACT_LINES.get(name, ()):
        assert line in out, f"{name} did not print {line!r}:\n{out}"
    if name in HALVED:
        match = re.search(HALVED[name], out)
        assert match, f"{name} did not print a line matching {HALVED[name]!r}:\n{out}"
        first, last = map(float, match.groups())
        assert last < first / 2, match.group(0)


# --------------------------------------------------------------------------------------------
# specs/weight_spaces/: every hand-written spec holds on the network it describes
# --------------------------------------------------------------------------------------------

# spec file -> example input shape; the network is examples/my_models.py's factory of the
# same name.
SPEC_INPUTS = {
    "concat_mlp.yaml": (8, 4),
    "flax_mlp.yaml": (8, 4),
    "flax_grouped_cnn.yaml": (4, 3, 6, 6),
    "per_head_attention.yaml": (4, 4, 5),
    "multi_query_attention.yaml": (4, 4, 5),
    "ensemble_own_data.yaml": (6, 4, 3),
    "channel_shuffle.yaml": (4, 3, 4, 4),
}


def test_every_weight_space_spec_is_listed():
    assert sorted(p.name for p in WEIGHT_SPACES.glob("*.yaml")) == sorted(SPEC_INPUTS)


@pytest.mark.parametrize("name", sorted(SPEC_INPUTS))
@pytest.mark.parametrize("mode", ["np", "hnp"])
def test_weight_space_spec_holds(name, mode, examples_on_path):
    import my_models

    torch.manual_seed(0)
    model = getattr(my_models, name.removesuffix(".yaml"))().double()
    spec = nfc.WeightSpaceSpec.from_yaml(WEIGHT_SPACES / name).with_mode(mode)
    x = torch.randn(SPEC_INPUTS[name], dtype=torch.float64)
    report = nfc.verify(model, spec, x, trials=4, seed=1)
    assert report.ok, str(report)


@pytest.mark.parametrize(
    ("name", "edit", "failing"),
    [
        ("concat_mlp.yaml", ("[h2, [h1, in]]", "[h2, [in, h1]]"), "h1"),  # pieces out of order
        ("flax_mlp.yaml", ("[h1, h2]", "[h2, h1]"), "h1"),  # PyTorch's [out, in] read as Flax's
        ("flax_grouped_cnn.yaml", ("{space: c1, block_of: 3}", "null"), "c1"),  # groups ignored
        # the qkv rows' q and v pieces swapped: not the network's layout
        (
            "per_head_attention.yaml",
            (
                "[{space: qk, block_of: 0}, {space: qk, block_of: 0}, {space: v, block_of: 0}], in]",
                "[{space: v, block_of: 0}, {space: qk, block_of: 0}, {space: qk, block_of: 0}], in]",
            ),
            "v",
        ),
        # each query head's rows read as fixed features: the keys' permutation breaks them
        (
            "multi_query_attention.yaml",
            ("[[{space: h, span: qk}, qk, v], in]", "[[{space: h, span: 2}, qk, v], in]"),
            "qk",
        ),
        # the members claimed to move as blocks: each reads its own data, so they may not
        ("ensemble_own_data.yaml", ("{count: 3, fixed: true}", "{count: 3}"), "members (blocks)"),
        # the head's columns read in stored order, as if the shuffle had not interleaved them
        ("channel_shuffle.yaml", (", order: {1: [0, 2, 1, 3]}", ""), "b"),
    ],
)
def test_a_wrong_label_in_a_weight_space_spec_is_caught(name, edit, failing, examples_on_path):
    """The specs' claims are not vacuous: one wrong label, and verification fails."""
    import my_models

    torch.manual_seed(0)
    model = getattr(my_models, name.removesuffix(".yaml"))().double()
    text = (WEIGHT_SPACES / name).read_text()
    assert edit[0] in text
    spec = nfc.WeightSpaceSpec.from_yaml(text.replace(*edit))
    report = nfc.verify(model, spec, torch.randn(SPEC_INPUTS[name], dtype=torch.float64))
    assert not report.ok and failing in report.failed, str(report)


def test_public_functions_survive_submodule_imports():
    """``nfc.trace`` / ``nfc.verify`` / ``nfc.build`` stay the functions the examples call after
    every submodule was imported (no submodule shares a public function's name)."""
    import importlib
    import pkgutil

    import nfncompile as nfc

    for info in pkgutil.iter_modules(nfc.__path__):
        importlib.import_module(f"nfncompile.{info.name}")
    for name in ("trace", "verify", "build"):
        assert callable(getattr(nfc, name)), f"nfc.{name} is {getattr(nfc, name)!r}"
        assert not isinstance(getattr(nfc, name), type(nfc)), f"nfc.{name} is a module"
