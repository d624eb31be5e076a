"""Shared helpers of the NF-module tests: seeded features, randomised weights, equivariance and
invariance checks, and a hypothesis strategy for random weight-space specs."""

from __future__ import annotations

import torch
from hypothesis import strategies as st

from nfncompile.nn import NFLinear, NFPool
from nfncompile.spec import WeightSpaceSpec
from tests.backend.specs import make_spec


def rand_feats(spec: WeightSpaceSpec, channels: int, batch: int, gen: torch.Generator) -> dict:
    return {
        p.name: torch.randn((batch, channels, *p.shape), generator=gen, dtype=torch.float64)
        for p in spec.params
    }


def randomise(module: torch.nn.Module, gen: torch.Generator) -> None:
    """Every parameter ~ N(0, 1): no term is left at a small or zero initial value."""
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype))


def check_equivariant(layer: NFLinear, spec: WeightSpaceSpec, mode: str, seed: int = 0) -> bool:
    """Randomise the layer (float64) and compare it on permuted inputs; whether some draw
    moved something."""
    gen = torch.Generator().manual_seed(seed)
    layer = layer.double()
    randomise(layer, gen)
    x = rand_feats(spec, layer.in_channels, 3, gen)
    y = layer(x)
    moved = False
    for _ in range(3):
        for _ in range(20):  # redraw the identity (a group of few elements)
            perm = spec.sample_permutation(gen, mode=mode)
            if any(not torch.equal(v, torch.arange(len(v))) for v in perm.perms.values()):
                moved = True
                break
        y_perm = layer(perm.apply(x))
        expected = perm.apply(y)
        for n in spec.names:
            torch.testing.assert_close(y_perm[n], expected[n], msg=lambda m, n=n: f"{n}: {m}")
    return moved


def check_invariant(pool: NFPool, spec: WeightSpaceSpec, mode: str, channels: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x = rand_feats(spec, channels, 3, gen)
    y = pool(x)
    assert y.shape == (3, channels * pool.features_per_channel)
    for _ in range(3):
        perm = spec.sample_permutation(gen, mode=mode)
        torch.testing.assert_close(pool(perm.apply(x)), y)


@st.composite
def weight_space_specs(draw) -> WeightSpaceSpec:
    """Chains of spaces with square same-space weights, composite and fixed axes, and views."""
    depth = draw(st.integers(1, 3))
    sizes = [draw(st.integers(1, 3)) for _ in range(depth + 1)]
    names = ["in"] + [f"h{i}" for i in range(1, depth)] + ["out"]
    roles = ["input"] + ["hidden"] * (depth - 1) + ["output"]
    spaces = {n: (s, r) for n, s, r in zip(names, sizes, roles)}
    params: dict = {}
    for i in range(1, depth + 1):
        out_s, in_s = names[i], names[i - 1]
        kernel = draw(st.sampled_from([(), (2,), (1, 2)]))
        kind = draw(st.sampled_from(["plain", "composite", "view"]))
        if kind == "composite":
            extra = draw(st.integers(1, 2))
            in_axis = [in_s, extra] if draw(st.booleans()) else [extra, in_s, in_s]
            width = sum(sizes[names.index(p)] if isinstance(p, str) else p for p in in_axis)
            params[f"l{i}.weight"] = {
                "shape": [sizes[i], width, *kernel],
                "axes": [out_s, in_axis] + [None] * len(kernel),
            }
        elif kind == "view":
            pos = draw(st.integers(1, 3))
            params[f"l{i}.weight"] = {
                "shape": [sizes[i], sizes[i - 1] * pos],
                "view": [sizes[i], sizes[i - 1], pos],
                "axes": [out_s, in_s, None],
            }
        else:
            params[f"l{i}.weight"] = {
                "shape": [sizes[i], sizes[i - 1], *kernel],
                "axes": [out_s, in_s] + [None] * len(kernel),
            }
        if draw(st.booleans()):
            params[f"l{i}.bias"] = {"shape": [sizes[i]], "axes": [out_s]}
        if i < depth and draw(st.booleans()):
            params[f"r{i}.weight"] = {"shape": [sizes[i], sizes[i]], "axes": [out_s, out_s]}
    return make_spec(spaces, params)


@st.composite
def block_space_specs(draw) -> WeightSpaceSpec:
    """Grouped-conv chains: in -> c1 -> c2 -> out with c1, c2 cut into g shared blocks, a grouped
    weight between them (its input axis inside the block of its output row), optional biases,
    kernels, a grouped weight inside c2, and a block permutation shared with the input space."""
    g = draw(st.integers(1, 3))
    k1, k2 = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    shared_in = draw(st.booleans())
    n_in = g * draw(st.integers(1, 2)) if shared_in else draw(st.integers(1, 2))
    spaces = {
        "in": (n_in, "input", "g") if shared_in else (n_in, "input"),
        "c1": (g * k1, "hidden", "g"),
        "c2": (g * k2, "hidden", "g"),
        "out": (draw(st.integers(1, 2)), "output"),
    }
    kernel = draw(st.sampled_from([(), (2,)]))
    inner_in = {"space": "in", "block_of": 0}
    params: dict = {
        "conv1.weight": {
            "shape": [g * k1, n_in // g if shared_in else n_in, *kernel],
            "axes": ["c1", inner_in if shared_in else "in"] + [None] * len(kernel),
        },
        "conv2.weight": {
            "shape": [g * k2, k1, *kernel],
            "axes": ["c2", {"space": "c1", "block_of": 0}] + [None] * len(kernel),
        },
        "fc.weight": {"shape": [spaces["out"][0], g * k2], "axes": ["out", "c2"]},
    }
    if draw(st.booleans()):
        params["conv1.bias"] = {"shape": [g * k1], "axes": ["c1"]}
    if draw(st.booleans()):
        params["gsq.weight"] = {
            "shape": [g * k2, k2],
            "axes": ["c2", {"space": "c2", "block_of": 0}],
        }
    return make_spec(spaces, params, {"g": g})
