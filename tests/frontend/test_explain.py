"""A failed verification explains itself: the parameters a failing space permutes and the
first node of the model whose values diverge (nfncompile.frontend.explain)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

import nfncompile as nfc
from nfncompile.frontend.explain import explain_failure, params_moved
from nfncompile.testing import mlp_spec

THIS_FILE = __file__


def check_sorted(order: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Raise unless ``order`` is increasing (kept as one fx call by torch.fx.wrap)."""
    if not bool((order[1:] > order[:-1]).all()):
        raise ValueError("rows reordered")
    return x


torch.fx.wrap("check_sorted")


def _x(*shape: int) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def _relabel(spec: nfc.WeightSpaceSpec, old: str, new: str) -> nfc.WeightSpaceSpec:
    text = spec.to_yaml()
    assert old in text
    return nfc.WeightSpaceSpec.from_yaml(text.replace(old, new))


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.l1 = nn.Linear(3, 5)
        self.l2 = nn.Linear(5, 4)
        self.l3 = nn.Linear(4, 2)

    def forward(self, x):
        h = torch.tanh(self.l1(x))
        h = torch.tanh(self.l2(h))
        return self.l3(h)


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.l1 = nn.Linear(3, 4)
        self.l2 = nn.Linear(4, 4)
        self.l3 = nn.Linear(4, 2)

    def forward(self, x):
        h = self.l1(x)
        h = h + self.l2(torch.relu(h))  # the line the explanation must point at
        return self.l3(torch.relu(h))


RESIDUAL_SPEC = """\
spaces:
  in: {size: 3, role: input}
  s: {size: 4, role: hidden}
  r: {size: 4, role: hidden}
  out: {size: 2, role: output}
params:
  l1.weight: {shape: [4, 3], axes: [s, in]}
  l1.bias: {shape: [4], axes: [s]}
  l2.weight: {shape: [4, 4], axes: [r, s]}
  l2.bias: {shape: [4], axes: [r]}
  l3.weight: {shape: [2, 4], axes: [out, s]}
  l3.bias: {shape: [2], axes: [out]}
"""


def test_an_untied_residual_diverges_at_the_add_on_the_users_line():
    spec = nfc.WeightSpaceSpec.from_yaml(RESIDUAL_SPEC)
    report = nfc.verify(Residual(), spec, _x(6, 3))
    assert not report.ok and report.failed == ["s", "r"]
    by_space = {d.space: d for d in report.explanations}
    assert by_space["r"].params == ("l2.weight[0]", "l2.bias[0]")
    assert by_space["s"].params == ("l1.weight[0]", "l1.bias[0]", "l2.weight[1]", "l3.weight[1]")
    for d in by_space.values():
        assert d.node == "add" and "operator.add" in d.op
        assert d.error > d.tolerance > 0
        source = Path(THIS_FILE).read_text().splitlines()
        line = next(i for i, t in enumerate(source, 1) if "the line the explanation" in t)
        assert d.source.startswith(f"{THIS_FILE}:{line}: h = h + self.l2(torch.relu(h))")
    text = str(report)
    assert "moves: l2.weight, l2.bias" in text and "first diverging node: add" in text
    assert f"at {THIS_FILE}:" in text


def test_a_weight_axis_wrongly_fixed_diverges_at_its_layer():
    spec = _relabel(mlp_spec([3, 5, 4, 2]), "axes: [h2, h1]", "axes: [h2, null]")
    d = explain_failure(MLP(), spec, _x(6, 3), ["h1"], mode="hnp")
    assert d.params == ("l1.weight[0]", "l1.bias[0]")
    assert d.node == "l2" and d.op == "call_module l2 (Linear) on tanh"


def test_a_kernel_axis_declared_permutable_diverges_at_the_conv():
    class CNN(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(1, 4, 3)
            self.conv2 = nn.Conv2d(4, 4, 3)
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            h = torch.relu(self.conv2(torch.relu(self.conv1(x))))
            return self.fc(h.mean((2, 3)))

    model = CNN()
    spec = nfc.trace(model, _x(2, 1, 7, 7).float())
    c2 = spec["conv2.weight"].axes[0]
    wrong = nfc.WeightSpaceSpec.from_dict(
        {
            "spaces": {
                **{s.name: {"size": s.size, "role": s.role} for s in spec.spaces.values()},
                "k": {"size": 3, "role": "hidden"},
            },
            "params": {
                **{p.name: {"shape": list(p.shape), "axes": list(p.axes)} for p in spec.params},
                "conv2.weight": {"shape": [4, 4, 3, 3], "axes": [c2, spec["conv1.weight"].axes[0], "k", None]},
            },
        }
    )  # fmt: skip
    report = nfc.verify(model, wrong, _x(2, 1, 7, 7))
    assert report.failed == ["k"]
    (d,) = report.explanations
    assert d.params == ("conv2.weight[2]",) and d.node == "conv2"


def test_block_spaces_read_as_plain_spaces_diverge_at_the_grouped_conv():
    from tests.test_spec import GROUPED_YAML, Grouped

    wrong = nfc.WeightSpaceSpec.from_yaml(GROUPED_YAML.replace("{space: c1, block_of: 0}", "null"))
    report = nfc.verify(Grouped(), wrong, _x(3, 3, 5, 5))
    assert "c1" in report.failed
    d = next(d for d in report.explanations if d.space == "c1")
    assert d.node == "conv2" and "Conv2d" in d.op


def test_a_rearrangement_along_two_axes_is_not_blamed():
    """A Gram matrix of a hidden layer moves along both its axes: still only a rearrangement.
    The divergence is at the layer the wrong label describes, after it."""

    class Gram(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.l1 = nn.Linear(3, 5)
            self.l2 = nn.Linear(5, 2)

        def forward(self, x):
            h = torch.tanh(self.l1(x))
            gram = h.unsqueeze(2) * h.unsqueeze(1)  # (B, 5, 5): both axes permute
            return self.l2(h) + gram.sum((1, 2)).unsqueeze(1)

    spec = _relabel(mlp_spec([3, 5, 2]), "axes: [out, h1]", "axes: [out, null]")
    d = explain_failure(Gram(), spec, _x(4, 3), ["h1"], mode="hnp")
    assert d.node == "l2", d


def test_a_true_symmetry_has_no_diverging_node():
    d = explain_failure(MLP(), mlp_spec([3, 5, 4, 2]), _x(6, 3), ["h1", "h2"], mode="hnp")
    assert d.node is None and "no node differs" in d.note


def test_a_node_that_raises_on_permuted_weights():
    class Checked(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.l1 = nn.Linear(3, 4)
            self.register_buffer("order", torch.arange(4.0))

        def forward(self, x):
            return self.l1(check_sorted(self.order, x))

    spec = nfc.WeightSpaceSpec.from_dict(
        {
            "spaces": {"in": {"size": 3, "role": "input"}, "out": {"size": 4, "role": "output"}},
            "params": {
                "l1.weight": {"shape": [4, 3], "axes": ["out", "in"]},
                "l1.bias": {"shape": [4], "axes": ["out"]},
                "order": {"shape": [4], "axes": ["out"]},
            },
        }
    )
    d = explain_failure(Checked(), spec, _x(2, 3), ["out"])
    assert d.node == "check_sorted" and math.isinf(d.error)
    assert "raised" in d.note and "rows reordered" in d.note


def test_an_untraceable_model_still_names_the_parameters():
    class Branchy(MLP):
        def forward(self, x):
            h = torch.tanh(self.l1(x))
            if h.sum() > 1e9:  # data-dependent control flow: torch.fx cannot trace it
                h = -h
            return self.l3(torch.tanh(self.l2(h)))

    spec = _relabel(mlp_spec([3, 5, 4, 2]), "axes: [h2, h1]", "axes: [h2, null]")
    report = nfc.verify(Branchy(), spec, _x(6, 3), mode="hnp")
    (d,) = report.explanations
    assert d.params == ("l1.weight[0]", "l1.bias[0]") and d.node is None
    assert "torch.fx cannot trace Branchy" in d.note and "torch.fx cannot" in str(report)


def test_an_untraceable_submodule_is_one_node():
    class Branch(nn.Module):
        def forward(self, h):
            return -h if h.sum() > 1e9 else h  # control flow: kept as one call

    class WithBranch(MLP):
        def __init__(self) -> None:
            super().__init__()
            self.branch = Branch()

        def forward(self, x):
            h = self.branch(torch.tanh(self.l1(x)))
            return self.l3(torch.tanh(self.l2(h)))

    spec = _relabel(mlp_spec([3, 5, 4, 2]), "axes: [h2, h1]", "axes: [h2, null]")
    d = explain_failure(WithBranch(), spec, _x(6, 3), ["h1"], mode="hnp")
    assert d.node == "l2" and d.op == "call_module l2 (Linear) on branch"


def test_explain_can_be_turned_off():
    spec = nfc.WeightSpaceSpec.from_yaml(RESIDUAL_SPEC)
    report = nfc.verify(Residual(), spec, _x(6, 3), explain=False)
    assert not report.ok and report.explanations == []
    assert "diverging" not in str(report)


@pytest.mark.parametrize(
    ("moved", "expected"),
    [
        (["h1"], ("l1.weight[0]", "l1.bias[0]", "l2.weight[1]")),
        (["in"], ("l1.weight[1]",)),
        (["h1", "h2"], ("l1.weight[0]", "l1.bias[0]", "l2.weight[0]", "l2.weight[1]", "l2.bias[0]", "l3.weight[1]")),
    ],
)  # fmt: skip
def test_params_moved(moved, expected):
    assert params_moved(mlp_spec([3, 5, 4, 2]), moved) == expected


def test_params_moved_by_composite_and_block_labels():
    from tests.test_spec import grouped_spec

    spec = grouped_spec()
    assert params_moved(spec, ["c1"]) == ("conv1.weight[0]", "conv1.bias[0]", "conv2.weight[1]")
    assert params_moved(spec, ["g"]) == (
        "conv1.weight[0]", "conv1.bias[0]", "conv2.weight[0]", "conv2.weight[1]",
        "conv2.bias[0]", "fc.weight[1]",
    )  # fmt: skip
    concat = nfc.WeightSpaceSpec.from_yaml(
        "spaces: {a: {size: 2, role: hidden}, b: {size: 3, role: hidden}}\n"
        "params: {w: {shape: [5, 4], axes: [[a, b], null]}, v: {shape: [2], axes: [a]}}\n"
    )
    assert params_moved(concat, ["b"]) == ("w[0]",)


def test_complex_values_held_as_conjugate_views_are_compared():
    # Autoformer's conj(fft) is a lazy conjugate view, which view_as_real refuses: explaining
    # a failed verification at such a node raised instead of naming the node
    from nfncompile.frontend.explain import _difference

    x = torch.randn(3, 4, dtype=torch.complex128, generator=torch.Generator().manual_seed(0))
    err, _ = _difference(x.conj(), x.conj().flip(0), 1e-8, 1e-6)
    assert err == 0.0  # the same numbers in another order
    err, _ = _difference(x.conj(), x, 1e-8, 1e-6)
    assert err > 0.1  # the conjugate is not the same
