"""The equivariant NF-Layer generated from a weight-space spec: :class:`NFLinear`.

Examples
--------
>>> import torch
>>> from nfncompile.spec import WeightSpaceSpec
>>> from nfncompile.features import WeightSpaceFeatures
>>> spec = WeightSpaceSpec.from_dict({
...     "spaces": {"in": {"size": 2, "role": "input"}, "h": {"size": 3, "role": "hidden"},
...                "out": {"size": 1, "role": "output"}},
...     "params": {"l1.weight": {"shape": [3, 2], "axes": ["h", "in"]},
...                "l1.bias": {"shape": [3], "axes": ["h"]},
...                "l2.weight": {"shape": [1, 3], "axes": ["out", "h"]}}})
>>> layer = NFLinear(spec, 1, 4, mode="hnp")
>>> layer
NFLinear(in_channels=1, out_channels=4, mode='hnp', terms=21, params=144)
>>> feats = WeightSpaceFeatures({n: torch.randn(5, 1, *spec[n].shape) for n in spec.names})
>>> layer(feats)
WeightSpaceFeatures(B=5, C=4, l1.weight=(5, 4, 3, 2), l1.bias=(5, 4, 3), l2.weight=(5, 4, 1, 3))
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import nn

from ..backend.codegen import generate
from ..backend.plan import Plan, build_plan
from ..features import WeightSpaceFeatures
from ..spec import WeightSpaceSpec, check_mode
from .checks import check_channels, check_features

__all__ = ["NFLinear"]

#: Second moment of an input per unit pre-activation variance, in a ReLU network: a pointwise
#: read sees ``E[x^2] = v / 2``; a mean sees about ``E[x]^2``, which is ``v / (2 pi)`` for a
#: centred pre-activation and grows with the per-channel offsets that mean terms create. The
#: value 1/3 was calibrated by measurement (8 NFLinear+ReLU layers keep std within 0.3-2.1 on
#: MLPs, CNNs and residual MLPs in both modes; see tests/nn/test_linear.py).
POINTWISE_MOMENT = 0.5
MEAN_MOMENT = 1.0 / 3.0


class NFLinear(nn.Module):
    """The most general equivariant affine map between weight-space features.

    The layer is compiled: the orbit basis of ``spec`` in ``mode`` is enumerated
    (:mod:`nfncompile.backend.basis`), fused into a plan (:mod:`nfncompile.backend.plan`) and generated as a
    ``torch.fx.GraphModule`` (:mod:`nfncompile.backend.codegen`) that owns the weights.

    Parameters
    ----------
    spec : WeightSpaceSpec
        The weight space read and written.
    in_channels, out_channels : int
        ``C`` of the input and output features.
    mode : {"np", "hnp"}
        ``np``: equivariant to every space's permutations; ``hnp``: input and output spaces are
        fixed (their axes fold into channels).
    io_embed : bool
        Add learned position embeddings along the axes of ``input``/``output`` role spaces
        before the map (breaks their symmetry, as the ``nfn`` package's ``io_embed``): the layer
        is then equivariant only under ``hnp``.
    bias : bool
        Include the equivariant biases.

    Attributes
    ----------
    plan : Plan
        The fused plan (print it).
    code : str
        The generated forward's source.
    num_terms : int
        Number of basis terms (bias terms included).
    num_params : int
        Free parameters.

    Raises
    ------
    SpecError
        Unknown ``mode``.
    ConfigError
        Non-positive channel counts.

    Examples
    --------
    >>> from nfncompile.spec import WeightSpaceSpec
    >>> spec = WeightSpaceSpec.from_dict({
    ...     "spaces": {"i": {"size": 2, "role": "input"}, "o": {"size": 2, "role": "output"}},
    ...     "params": {"w": {"shape": [2, 2], "axes": ["o", "i"]}}})
    >>> NFLinear(spec, 1, 1).num_terms
    5
    """

    def __init__(
        self,
        spec: WeightSpaceSpec,
        in_channels: int,
        out_channels: int,
        mode: str = "np",
        io_embed: bool = False,
        bias: bool = True,
    ) -> None:
        super().__init__()
        check_mode(mode)
        self.spec = spec
        self.mode = mode
        self.in_channels = check_channels("in_channels", in_channels)
        self.out_channels = check_channels("out_channels", out_channels)
        self.io_embed = bool(io_embed)
        self.bias = bool(bias)
        self.plan: Plan = build_plan(spec, mode, in_channels, out_channels, bias=bias)
        self.graph_module = generate(self.plan, io_embed=io_embed)
        self._names = spec.names
        self.reset_parameters()

    # ---- introspection ------------------------------------------------------------------

    @property
    def code(self) -> str:
        """The generated ``forward`` (Python source of the ``GraphModule``)."""
        return self.graph_module.code

    @property
    def num_terms(self) -> int:
        return len(self.plan.terms)

    @property
    def num_params(self) -> int:
        return self.plan.num_params

    def fan_in(self, effective: bool = False) -> dict:
        """Per output block name: the number of inputs summed into each of its entries.

        With ``effective=True`` each input is weighted by its expected second moment after a
        ReLU of unit-variance pre-activations: ``1/2`` for a pointwise (or diagonal) read,
        ``1/3`` for one that averages (means of ReLU outputs concentrate on their mean).
        """
        out: dict = {}
        for g in self.plan.groups:
            name = g.pattern.block.name
            if not effective:
                total = g.in_channels
            else:
                total = 0.0
                for c in g.contributions:
                    red = self.plan.reductions[c.reduction]
                    moment = POINTWISE_MOMENT if all(red.kept) else MEAN_MOMENT
                    total += moment * (c.columns[1] - c.columns[0])
            out[name] = out.get(name, 0) + total
        return out

    def term_weight(self, term: int) -> torch.Tensor:
        """A view of term ``term``'s weight: ``(C_out * Q fixed, C_in * P fixed)`` for a linear
        term, ``(C_out * Q fixed,)`` for a bias (writes go to the layer)."""
        loc = self.plan.term_location(term)
        if loc[0] == "bias":
            return getattr(self.graph_module, f"bias{loc[1]}")
        _, mix, rows, cols = loc
        return getattr(self.graph_module, f"mix{mix}")[rows, cols]

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Initialise for unit-scale activations through depth (ReLU networks).

        Each output entry sums inputs over all its basis terms and channels. Every mixing
        weight is drawn from ``U(-a, a)`` with ``a = sqrt(3 / F)``, where ``F`` is the
        output's effective fan-in (:meth:`fan_in` with ``effective=True``: the inputs weighted
        by their second moment after a ReLU), so that the pre-activations keep unit variance.
        Biases are drawn from ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` and position embeddings
        from ``N(0, 1)``.
        """
        fan = self.fan_in()
        eff = self.fan_in(effective=True)
        gm = self.graph_module
        for mi, mix in enumerate(self.plan.mixes):
            w = getattr(gm, f"mix{mi}")
            for gi in mix.groups:
                g = self.plan.groups[gi]
                bound = math.sqrt(3.0 / eff[g.pattern.block.name])
                rows = w[g.rows[0] : g.rows[1]]
                rows.copy_(torch.rand(rows.shape, generator=generator) * 2 * bound - bound)
        for gi, g in enumerate(self.plan.groups):
            if g.bias_terms:
                b = getattr(gm, f"bias{gi}")
                bound = 1.0 / math.sqrt(fan[g.pattern.block.name])
                b.copy_(torch.rand(b.shape, generator=generator) * 2 * bound - bound)
        for name, p in gm.named_parameters():
            if name.startswith("embed"):
                p.copy_(torch.randn(p.shape, generator=generator))

    # ---- forward ------------------------------------------------------------------------

    def forward(self, features: Mapping[str, torch.Tensor]) -> WeightSpaceFeatures:
        """Map ``(B, C_in, *shape)`` features to ``(B, C_out, *shape)`` features."""
        check_features(self.spec, features, self.in_channels, "NFLinear")
        outs = self.graph_module(*[features[n] for n in self._names])
        return WeightSpaceFeatures(dict(zip(self._names, outs)))

    def extra_repr(self) -> str:
        extra = ", io_embed=True" if self.io_embed else ""
        extra += "" if self.bias else ", bias=False"
        return (
            f"in_channels={self.in_channels}, out_channels={self.out_channels}, "
            f"mode={self.mode!r}{extra}, terms={self.num_terms}, params={self.num_params}"
        )

    def __repr__(self) -> str:
        return f"NFLinear({self.extra_repr()})"
