"""einops calls in a traced forward (research code writes its reshapes with einops)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import nfncompile as nfc
from tests.frontend.helpers import model_, spaces_, x_

einops = pytest.importorskip("einops")
from einops import rearrange, reduce, repeat  # noqa: E402
from einops.layers.torch import Rearrange, Reduce  # noqa: E402


class Mixer(nn.Module):
    """An MLP-Mixer block with a class token, every reshape written with einops: patches
    by the ``Rearrange`` layer, token mixing between two ``rearrange`` calls, the class
    token by ``repeat``, pooling by ``reduce`` and by the ``Reduce`` layer."""

    def __init__(self) -> None:
        super().__init__()
        self.patch = nn.Sequential(
            Rearrange("b c (h p1) (w p2) -> b (h w) (p1 p2 c)", p1=4, p2=4), nn.Linear(48, 16)
        )
        self.cls = nn.Parameter(torch.randn(1, 1, 16))
        self.tok = nn.Linear(5, 5)
        self.ch1, self.ch2 = nn.Linear(16, 32), nn.Linear(32, 16)
        self.head = nn.Sequential(Reduce("b n c -> b c", "max"), nn.Linear(16, 10))

    def forward(self, x):
        x = self.patch(x)
        x = torch.cat([repeat(self.cls, "() n c -> b n c", b=x.shape[0]), x], dim=1)
        x = x + rearrange(self.tok(rearrange(x, "b n c -> b c n")), "b c n -> b n c")
        x = x + self.ch2(torch.relu(self.ch1(x)))
        return self.head(x) + reduce(x, "b n c -> b c", "mean").sum(1, keepdim=True)


def test_einops_calls_are_traced_as_the_reshapes_they_make():
    # before: "Tensor type unknown to einops" (an fx Proxy) for every functional call, and
    # the layers kept as one call
    spec, report = nfc.trace_with_report(model_(Mixer), x_(2, 3, 8, 8))
    assert spaces_(spec) == [
        ("in", 3, "input"), ("patch.1", 16, "hidden"), ("ch1", 32, "hidden"),
        ("out", 10, "output"),
    ]  # fmt: skip
    # the patch's 48 inputs are (p1 p2 c): the image's channels are the innermost factor
    assert spec["patch.1.weight"].axes == ("patch.1", (("in",) * 16))
    assert spec["cls"].axes == (None, None, "patch.1")
    assert spec["tok.weight"].axes == (None, None)  # tokens are positions
    assert not report.leaf_calls and report.verification.ok
