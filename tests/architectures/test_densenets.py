"""Tests of the DenseNet block factory."""

from __future__ import annotations

import torch
import torch.fx

from nfncompile import architectures as A


def test_densenet_concatenates():
    model = A.densenet_block(in_channels=6, growth=3, layers=4)
    assert [layer.conv.in_channels for layer in model.block] == [6, 9, 12, 15]
    assert model.transition.in_channels == 18
    graph = torch.fx.symbolic_trace(model).graph
    assert sum(n.target is torch.cat for n in graph.nodes) == 4
