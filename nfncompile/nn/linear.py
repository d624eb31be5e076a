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
NFLinear(in_channels=1, out_channels=4, mode='hnp', basis='complete', terms=21, params=144)
>>> feats = WeightSpaceFeatures({n: torch.randn(5, 1, *spec[n].shape) for n in spec.names})
>>> layer(feats)
WeightSpaceFeatures(B=5, C=4, l1.weight=(5, 4, 3, 2), l1.bias=(5, 4, 3), l2.weight=(5, 4, 1, 3))
"""

from __future__ import annotations

import gc
import math
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import torch
from torch import nn

from ..backend.basis import bias_term, term_of
from ..backend.codegen import generate
from ..backend.plan import BASES, Plan, build_plan, complete_num_params
from ..backend.tiles import MAX_FOLD
from ..errors import ConfigError
from ..features import WeightSpaceFeatures
from ..spec import WeightSpaceSpec, check_mode
from .checks import check_channels, check_features
from .reorder import Reorders

__all__ = [
    "NFLinear",
    "BASIS_CHOICES",
    "AUTO_COMPLETE_MAX_PARAMS",
    "MAX_FOLD",
    "available_memory",
]

#: What ``NFLinear(basis=...)`` accepts.
BASIS_CHOICES = ("auto", *BASES)

#: Bytes a float32 weight needs in training: itself, its gradient and two Adam moments.
TRAIN_BYTES_PER_WEIGHT = 16

#: ``basis="auto"`` picks the complete basis when it has at most this many parameters
#: (64 MiB of float32), else the linear-size one.
AUTO_COMPLETE_MAX_PARAMS = 2**24

#: Second moment of an input per unit pre-activation variance, in a ReLU network: a pointwise
#: read sees ``E[x^2] = v / 2``; a mean sees about ``E[x]^2``, which is ``v / (2 pi)`` for a
#: centred pre-activation and grows with the per-channel offsets that mean terms create. The
#: value 1/3 was calibrated by measurement (8 NFLinear+ReLU layers keep std within 0.3-2.1 on
#: MLPs, CNNs and residual MLPs in both modes; see tests/nn/test_linear.py).
POINTWISE_MOMENT = 0.5
MEAN_MOMENT = 1.0 / 3.0


def available_memory() -> int | None:
    """Bytes of memory the system can still give (``MemAvailable``), ``None`` if unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


class NFLinear(nn.Module):
    """An equivariant affine map between weight-space features.

    The layer is compiled: the orbit basis of ``spec`` in ``mode`` is enumerated
    (:mod:`nfncompile.backend.basis`), fused into a plan (:mod:`nfncompile.backend.plan`) and
    generated as a ``torch.fx.GraphModule`` (:mod:`nfncompile.backend.codegen`) that owns the
    weights.

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
    basis : {"auto", "complete", "linear"}
        ``complete``: every equivariant affine map, one weight per basis term; its size grows
        with the square of the number of tensors (every tensor's invariants reach every
        other). ``linear``: the terms between tensors that share a space, with weights indexed
        by the relation between the two tensors (not their position), and the all-to-all
        invariant terms through an invariant channel of ``width`` numbers; its size grows with
        the number of kinds of tensors, not with depth, and :meth:`to_spec` applies the layer
        to another weight space of the same kinds. ``auto`` (default): complete when that has
        at most :data:`AUTO_COMPLETE_MAX_PARAMS` parameters, else linear.
    width : int, optional
        The linear basis's channel width (default ``4 * max(in_channels, out_channels)``): of
        the invariant channel, and of the channel (``width`` features per neuron) through which
        many kinds of tensors on one space meet when a weight per pair of kinds would cost over
        :data:`~nfncompile.backend.plan.CHANNEL_GAIN` times more.
    max_fold : int or None
        Linear basis: fixed dims (those the group does not move: kernel dims, ``hnp``'s
        input/output neurons, axes the front end found no symmetry for) are folded into the
        channels, which costs ``(C * fold)**2`` weights per relation; a tile that would fold
        more than ``max_fold`` entries (default :data:`MAX_FOLD`; above 16, more than
        ``sqrt(entries / (in_channels * out_channels))``, so that a relation has no more
        weights than its tile has entries) has fixed dims treated as exchangeable instead (still
        exactly equivariant: only symmetry the true group lacks is added; their positions
        are no longer told apart). ``None`` folds everything. The complete basis always
        folds everything.

    Attributes
    ----------
    plan : Plan
        The fused plan (print it).
    basis : str
        The basis in use (``"complete"`` or ``"linear"``, after ``auto``).
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
        Non-positive channel counts, an unknown ``basis``, or weights that would not fit in
        memory to train (weights, gradients and Adam's moments: 16 bytes per weight), checked
        before allocating: the message gives the size, the linear basis's for a complete one,
        and the tensors whose fixed dims fold the most.

    Examples
    --------
    >>> from nfncompile.testing import mlp_spec
    >>> spec = mlp_spec([2, 3, 3, 2])
    >>> NFLinear(spec, 1, 1).num_terms
    68
    >>> NFLinear(spec, 16, 16, basis="linear", width=32)
    NFLinear(in_channels=16, out_channels=16, mode='np', basis='linear', width=32, terms=68, params=6944)

    A linear-basis layer reads any weight space with the same kinds of relations, with the same
    weights (here an MLP of depth 3 and one of depth 5):

    >>> layer = NFLinear(mlp_spec([4, 8, 8, 2]), 2, 2, basis="linear")
    >>> deeper = layer.to_spec(mlp_spec([4, 8, 8, 8, 8, 2]))
    >>> deeper.num_params == layer.num_params, deeper.w0 is layer.w0
    (True, True)
    """

    def __init__(
        self,
        spec: WeightSpaceSpec,
        in_channels: int,
        out_channels: int,
        mode: str = "np",
        io_embed: bool = False,
        bias: bool = True,
        basis: str = "auto",
        width: int | None = None,
        max_fold: int | None = MAX_FOLD,
    ) -> None:
        super().__init__()
        check_mode(mode)
        self.spec = spec
        self.mode = mode
        self.in_channels = check_channels("in_channels", in_channels)
        self.out_channels = check_channels("out_channels", out_channels)
        self.io_embed = bool(io_embed)
        self.bias = bool(bias)
        if basis not in BASIS_CHOICES:
            raise ConfigError(f"unknown basis {basis!r}; valid: {', '.join(BASIS_CHOICES)}")
        if width is not None:
            check_channels("width", width)
        self.width = width or 4 * max(in_channels, out_channels)
        if max_fold is not None:
            check_channels("max_fold", max_fold)
        self.max_fold = max_fold
        if basis != "linear":
            n = complete_num_params(spec, mode, in_channels, out_channels, bias=bias)
            if basis == "auto":
                basis = "complete" if n <= AUTO_COMPLETE_MAX_PARAMS else "linear"
            else:
                self._check_fits(n, "complete")
        self.basis = basis
        self._compile(spec, None)
        self.reset_parameters()

    def _plan(self, spec: WeightSpaceSpec, basis: str) -> Plan:
        """This layer's plan for ``spec`` in ``basis`` (its other settings its own)."""
        return build_plan(
            spec,
            self.mode,
            self.in_channels,
            self.out_channels,
            bias=self.bias,
            basis=basis,
            width=self.width,
            io_embed=self.io_embed,
            max_fold=self.max_fold,
        )

    def _check_fits(self, n: int, basis: str, plan: Plan | None = None) -> None:
        """Raise before allocating when ``n`` weights of ``basis`` would not fit in memory for
        training: float32 weights, their gradients and two Adam moments (16 bytes each)."""
        avail = available_memory()
        need = TRAIN_BYTES_PER_WEIGHT * n
        if avail is None or need <= avail:
            return
        msg = (
            f"NFLinear: the {basis} basis of this weight space ({len(self.spec.params)} "
            f"tensors, mode {self.mode!r}, C {self.in_channels} -> {self.out_channels}) has "
            f"{n:,} weights ({4 * n / 2**30:.1f} GiB in float32, {need / 2**30:.1f} GiB to train "
            f"with their gradients and Adam's moments), more than the {avail / 2**30:.1f} GiB "
            "of memory available"
        )
        if basis == "complete":
            plan = self._plan(self.spec, "linear")
            msg += f"; use basis='linear' ({plan.num_params:,} weights)"
            if TRAIN_BYTES_PER_WEIGHT * plan.num_params <= avail:
                raise ConfigError(msg)
        folds = sorted({(t.fixed_size, t.param, t.shape) for t in plan.tiles}, reverse=True)
        named = "; ".join(f"{p!r} {tuple(s)} folds {f:,}" for f, p, s in folds[:3])
        fold = "None" if self.max_fold is None else f"{self.max_fold:,}"
        raise ConfigError(
            f"{msg}. Each relation of a tile mixes (C x fold)**2 weights, fold being its fixed "
            f"entries (dims the group does not move) folded into the channels; the largest: "
            f"{named} (max_fold={fold}). Use fewer channels or a smaller max_fold (larger fixed "
            "dims are then exchanged, see NFLinear's max_fold); `nfncompile trace` tells why a "
            "tensor's axes are fixed (e.g. an auxiliary head the eval-mode forward never runs)"
        )

    def _compile(self, spec: WeightSpaceSpec, weights: Mapping | None) -> None:
        with _gc_paused():
            self._build(spec, weights)

    def _build(self, spec: WeightSpaceSpec, weights: Mapping | None) -> None:
        self.spec = spec
        self.plan: Plan = self._plan(spec, self.basis)
        if weights is None:
            self._check_fits(self.plan.num_params, self.basis, self.plan)
        else:
            missing = [r.key for r in self.plan.relations if r.key not in weights]
            if missing:
                more = f" (and {len(missing) - 3} more)" if len(missing) > 3 else ""
                raise ConfigError(
                    f"NFLinear.to_spec: the new weight space needs {len(missing)} relations "
                    f"this layer has no weights for: {'; '.join(missing[:3])}{more}"
                )
        self.graph_module = generate(self.plan, weights=weights)
        self._names = spec.names
        self.reorders = Reorders(spec) if spec.ordered else None

    # ---- introspection ------------------------------------------------------------------

    @property
    def code(self) -> str:
        """The generated ``forward`` (Python source of the ``GraphModule``)."""
        return self.graph_module.code

    @property
    def num_terms(self) -> int:
        return self.plan.num_terms

    @property
    def num_params(self) -> int:
        return self.plan.num_params

    @property
    def relation_weights(self) -> dict:
        """Linear basis: relation key -> its weight (the layer's whole vocabulary)."""
        return {
            r.key: getattr(self.graph_module, f"w{i}") for i, r in enumerate(self.plan.relations)
        }

    def __getattr__(self, name: str):
        if name.startswith("w") and name[1:].isdigit():
            return getattr(self.graph_module, name)
        return super().__getattr__(name)

    def to_spec(self, spec: WeightSpaceSpec) -> NFLinear:
        """This layer, for another weight space, with the same weights (shared, not copied).

        Only for ``basis="linear"``: its weights belong to relations between kinds of tensors,
        so any spec whose relations are all among this layer's can be read (a deeper network of
        the same family). The features of the new spec go through the new layer; training
        either one trains both.

        Raises
        ------
        ConfigError
            For a complete-basis layer, or when the new spec needs a relation this layer does
            not have (the message names them).
        """
        if self.basis != "linear":
            raise ConfigError(
                "NFLinear.to_spec needs basis='linear' (a complete basis's weights belong to "
                "positions in one weight space)"
            )
        new = NFLinear.__new__(NFLinear)
        nn.Module.__init__(new)
        for k in (
            "mode",
            "in_channels",
            "out_channels",
            "io_embed",
            "bias",
            "basis",
            "width",
            "max_fold",
        ):
            setattr(new, k, getattr(self, k))
        new._compile(spec, self.relation_weights)
        return new

    def fan_in(self, effective: bool = False) -> dict:
        """Per output tile name: the number of inputs summed into each of its entries.

        With ``effective=True`` each input is weighted by its expected second moment after a
        ReLU of unit-variance pre-activations: ``1/2`` for a pointwise (or diagonal) read,
        ``1/3`` for one that averages (means of ReLU outputs concentrate on their mean); the
        linear basis's invariant channel counts ``width`` inputs of moment 1.
        """
        plan = self.plan
        out: dict = {}

        def moment(r: int) -> float:
            if not effective:
                return 1.0
            return POINTWISE_MOMENT if all(plan.reductions[r].side.linked) else MEAN_MOMENT

        for m in plan.mixes:
            cols = [plan.reductions[r].channels * moment(r) for r, _ in m.inputs]
            per_group = [0.0] * len(m.groups)
            if plan.basis == "complete":
                per_group = [sum(cols)] * len(m.groups)
            else:
                for loc in m.local:
                    fan = sum(cols[j] for j in loc.cols)
                    for i in loc.groups:
                        per_group[i] += fan
                if m.shared is not None:
                    if m.shared.channel:
                        extra = float(plan.width)
                    else:
                        extra = sum(cols[ks[0]] for ks in m.shared.col_kinds)
                    per_group = [v + extra for v in per_group]
            for gi, v in zip(m.groups, per_group):
                name = plan.groups[gi].tile.name
                out[name] = out.get(name, 0) + v
        for t in plan.tiles:
            out.setdefault(t.name, 0)
        return out

    def terms(self) -> list:
        """Complete basis: every term with where its weight lives, ``(Term, location)``:
        ``("mix", mix index, row slice, column slice)`` or ``("bias", group index)``."""
        if self.basis != "complete":
            raise ConfigError("NFLinear.terms: per-term weights exist only with basis='complete'")
        plan = self.plan
        out = []
        for mi, (m, c) in enumerate(zip(plan.mixes, plan.couplings)):
            order = dict(c.rows)
            starts, col = [], 0
            for r, _ in m.inputs:
                starts.append(col)
                col += plan.reductions[r].channels
            for gi in m.groups:
                g = plan.groups[gi]
                for j, column in enumerate(c.cols):
                    width = plan.reductions[m.inputs[j][0]].channels
                    loc = ("mix", mi, slice(*g.rows), slice(starts[j], starts[j] + width))
                    out.append((term_of(column, (g.side, order[g.side])), loc))
        for gi, g in enumerate(plan.groups):
            if g.bias:
                out.append((bias_term(g.side), ("bias", gi)))
        return out

    def term_weight(self, location: tuple) -> torch.Tensor:
        """A view of one term's weight (a location from :meth:`terms`): ``(C_out * Q fixed,
        C_in * P fixed)`` for a linear term, ``(C_out * Q fixed,)`` for a bias (writes go to
        the layer)."""
        if location[0] == "bias":
            return getattr(self.graph_module, f"bias{location[1]}")
        _, mix, rows, cols = location
        return getattr(self.graph_module, f"mix{mix}")[rows, cols]

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Initialise for unit-scale activations through depth (ReLU networks).

        Each output entry sums inputs over all its basis terms and channels. Every mixing
        weight is drawn from ``U(-a, a)`` with ``a = sqrt(3 / F)``, where ``F`` is the
        output's effective fan-in (:meth:`fan_in` with ``effective=True``: the inputs weighted
        by their second moment after a ReLU), so that the pre-activations keep unit variance;
        a linear-basis weight shared by several outputs takes the largest of their fan-ins, and
        the weights into its invariant channel keep the channel at unit variance. Biases are
        drawn from ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` and position embeddings from
        ``N(0, 1)``.
        """
        fan = self.fan_in()
        eff = self.fan_in(effective=True)
        plan, gm = self.plan, self.graph_module

        def uniform(t: torch.Tensor, bound: float) -> None:
            t.copy_(torch.rand(t.shape, generator=generator) * 2 * bound - bound)

        if plan.basis == "complete":
            for mi, mix in enumerate(plan.mixes):
                w = getattr(gm, f"mix{mi}")
                for gi in mix.groups:
                    g = plan.groups[gi]
                    uniform(w[g.rows[0] : g.rows[1]], math.sqrt(3.0 / eff[g.tile.name]))
            for gi, g in enumerate(plan.groups):
                if g.bias:
                    uniform(getattr(gm, f"bias{gi}"), 1.0 / math.sqrt(max(fan[g.tile.name], 1)))
        else:
            bound: dict = {}

            def use(r: int, b: float) -> None:
                bound[r] = min(bound.get(r, b), b)

            for m in plan.mixes:
                tiles = [plan.groups[gi].tile.name for gi in m.groups]
                for loc in m.local:
                    for i, rels in zip(loc.groups, loc.row_relations):
                        b = math.sqrt(3.0 / eff[tiles[i]])
                        for r in rels:  # first-use order: the draws' order
                            use(r, b)
                sh = m.shared
                if sh is None:
                    continue
                rep = [sh.row_kinds.index(k) for k in range(max(sh.row_kinds) + 1)]
                if not sh.channel:
                    for k, line in enumerate(sh.weights):
                        for r in line:
                            use(r, math.sqrt(3.0 / eff[tiles[rep[k]]]))
                    continue
                into, out = sh.weights
                f_in = sum(
                    plan.reductions[m.inputs[ks[0]][0]].channels * MEAN_MOMENT
                    for ks in sh.col_kinds
                )
                for r in into:
                    use(r, math.sqrt(3.0 / f_in))
                for k, r in enumerate(out):
                    use(r, math.sqrt(3.0 / eff[tiles[rep[k]]]))
                for k, r in enumerate(sh.biases):
                    use(r, 1.0 / math.sqrt(max(fan[tiles[rep[k]]], 1)))
            for r, b in bound.items():
                uniform(getattr(gm, f"w{r}"), b)
        for ei, (_, _, rel) in enumerate(plan.embeds):
            p = getattr(gm, f"embed{ei}" if rel is None else f"w{rel}")
            p.copy_(torch.randn(p.shape, generator=generator))

    # ---- forward ------------------------------------------------------------------------

    def forward(self, features: Mapping[str, torch.Tensor]) -> WeightSpaceFeatures:
        """Map ``(B, C_in, *shape)`` features to ``(B, C_out, *shape)`` features."""
        check_features(self.spec, features, self.in_channels, "NFLinear")
        reorders = self.reorders
        if reorders is None:
            outs = self.graph_module(*[features[n] for n in self._names])
            return WeightSpaceFeatures(dict(zip(self._names, outs)))
        # parameters whose stored positions are reordered (after a channel shuffle): the
        # generated code reads and writes them in the order their labels describe
        outs = self.graph_module(*[reorders.to_labels(n, features[n]) for n in self._names])
        return WeightSpaceFeatures({n: reorders.to_stored(n, y) for n, y in zip(self._names, outs)})

    def extra_repr(self) -> str:
        extra = ", io_embed=True" if self.io_embed else ""
        extra += "" if self.bias else ", bias=False"
        extra += f", width={self.width}" if self.basis == "linear" else ""
        if self.basis == "linear" and self.max_fold != MAX_FOLD:
            extra += f", max_fold={self.max_fold}"
        return (
            f"in_channels={self.in_channels}, out_channels={self.out_channels}, "
            f"mode={self.mode!r}, basis={self.basis!r}{extra}, terms={self.num_terms}, "
            f"params={self.num_params}"
        )

    def __repr__(self) -> str:
        return f"NFLinear({self.extra_repr()})"


@contextmanager
def _gc_paused() -> Iterator[None]:
    """The cyclic garbage collector paused while a layer is built: the plan and the fx graph
    are ~10^6 small objects without garbage cycles, and the full collections their allocation
    triggers took a fifth of DenseNet-121's build."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
