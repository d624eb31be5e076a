"""``torch.compile`` of an NFN: the generated layers trace as one graph (no graph break, no
recompilation per tile) and compute what eager does, values and gradients (float64).

In eager the layers run their custom autograd paths (one-pass chunked means and sums, forced
here on small tiles, which ``fused.FUSE_MIN`` would otherwise send to plain ops); while the compiler traces, the plain composition of the same ops.
``aot_eager`` checks the traced forward and backward graphs without compiling C++ code.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nfncompile.backend import fused
from nfncompile.nn import NFActivation, NFLinear, NFPool
from tests.backend.specs import SPECS
from tests.nn.helpers import rand_feats, randomise


def _nfn(spec, mode: str, basis: str) -> nn.Module:
    return nn.Sequential(
        NFLinear(spec, 2, 3, mode=mode, basis=basis),
        NFActivation("relu"),
        NFLinear(spec, 3, 2, mode=mode, basis=basis),
        NFPool(spec, mode=mode),
    ).double()


@pytest.mark.parametrize("basis", ["complete", "linear"])
@pytest.mark.parametrize("name", ["cnn", "concat", "square_composite", "grouped"])
def test_a_compiled_nfn_is_one_graph_and_the_eager_map(name, basis, monkeypatch):
    torch._dynamo.reset()
    spec = SPECS[name]
    gen = torch.Generator().manual_seed(0)
    model = _nfn(spec, "np", basis)
    randomise(model, gen)
    x = {k: v.requires_grad_() for k, v in rand_feats(spec, 2, 3, gen).items()}
    monkeypatch.setattr(fused, "FUSE_MIN", 0)
    monkeypatch.setattr(fused, "CHUNK_MIN", 1)
    monkeypatch.setattr(fused, "CHUNK_BYTES", 64)
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    inputs = [*x.values(), *model.parameters()]
    y_eager, y_compiled = model(x), compiled(x)
    torch.testing.assert_close(y_compiled, y_eager)
    seed = torch.randn(y_eager.shape, generator=gen, dtype=y_eager.dtype)
    g_eager = torch.autograd.grad(y_eager, inputs, seed)
    g_compiled = torch.autograd.grad(y_compiled, inputs, seed)
    for a, b in zip(g_compiled, g_eager):
        torch.testing.assert_close(a, b)


def test_the_custom_paths_stand_aside_only_while_compiling(monkeypatch):
    """Eager (outside any compiler) still takes the custom autograd function: the check above
    compares two different code paths, not one with itself."""
    calls = []
    monkeypatch.setattr(fused, "FUSE_MIN", 0)
    monkeypatch.setattr(fused._TileSum, "apply", lambda *a: calls.append(1) or a[0] @ a[1].t())
    fused.tile_sum(torch.ones(2, 3), torch.ones(4, 3))
    assert calls == [1]
    torch._dynamo.reset()
    out = torch.compile(lambda x, w: fused.tile_sum(x, w), backend="eager", fullgraph=True)(
        torch.ones(2, 3), torch.ones(4, 3)
    )
    assert calls == [1] and out.shape == (2, 4)
