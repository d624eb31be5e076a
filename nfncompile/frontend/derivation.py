"""The derivation record: everything the front end found about a model, produced once.

:func:`~nfncompile.frontend.spaces.derive_spaces` returns one :class:`Derivation`; everything
after it reads that record: :func:`~nfncompile.frontend.tracing.trace` returns its ``spec``,
:func:`~nfncompile.frontend.verification.verify` takes its ``io``, the
:class:`~nfncompile.frontend.report.TraceReport` is a view over it and
:func:`~nfncompile.frontend.drawing.draw_symmetry_graph` colours runs by its ``run_space``.

Examples
--------
>>> TensorAxes((5, 3), None, (None, "in"))
TensorAxes(shape=(5, 3), view=None, axes=(None, 'in'))
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..spec import WeightSpaceSpec

__all__ = ["TensorAxes", "IOAxes", "SpaceInfo", "BlockInfo", "BrokenInfo", "OpInfo", "Derivation"]


@dataclass(frozen=True)
class TensorAxes:
    """How the group acts on one model input or output tensor: its ``shape``, the ``view`` the
    labels refer to (``None``: the shape itself) and one axis label per (view) axis, as for a
    parameter (a space name, ``None`` for fixed, or a composite tuple of pieces)."""

    shape: tuple
    view: tuple | None
    axes: tuple


@dataclass(frozen=True)
class IOAxes:
    """How the group acts on a model's inputs and outputs: a :class:`TensorAxes` (or ``None``
    for a non-tensor) per model input and per output leaf, in order."""

    inputs: tuple
    outputs: tuple


@dataclass
class SpaceInfo:
    """Where one derived neuron space comes from.

    Attributes
    ----------
    name, size, role
        As in the spec.
    blocks : str or None
        The block permutation that moves whole blocks of it (a :class:`BlockInfo` name).
    atoms : list of (run, start, stop)
        The intervals of runs whose neurons it permutes (every one ``size`` long).
    origins : list of str
        The creators of those runs (module targets, ``in``, parameter axes).
    ops : list of str
        The ops that tied its atoms together or label parameter axes with it.
    params : list of str
        ``"key[axis]"`` for every parameter axis it indexes (whole or as a composite piece).
    touched : list of str
        Every op that creates or reads a run holding its neurons.
    """

    name: str
    size: int
    role: str
    blocks: str | None = None
    atoms: list = field(default_factory=list)
    origins: list = field(default_factory=list)
    ops: list = field(default_factory=list)
    params: list = field(default_factory=list)
    touched: list = field(default_factory=list)


@dataclass
class BlockInfo:
    """One derived block permutation: ``count`` blocks moved together in every one of
    ``spaces`` (each permuted inside its blocks on its own); ``ops`` link them (grouped
    convolutions, GroupNorms; the attention calls whose heads they are, with ``heads``).
    With ``fixed`` the blocks stay in place (a stacked parameter's members that each meet
    their own data), the neurons inside each still permuting on their own."""

    name: str
    count: int
    spaces: list = field(default_factory=list)
    ops: list = field(default_factory=list)
    heads: bool = False
    fixed: bool = False
    #: the ids of the head splits whose family the blocks are (``heads`` only): what the
    #: verification's second reading holds in place (``families_held``)
    splits: tuple = ()


@dataclass
class BrokenInfo:
    """An op that broke symmetry: which node, why, and which neurons became fixed
    (readable ``origin[a:b]`` strings, ``count`` of them in all)."""

    op: str
    node: str
    reason: str
    neurons: list
    count: int


@dataclass
class OpInfo:
    """What the front end did with one call of the traced graph.

    Attributes
    ----------
    op, node : str
        The op (``"Conv2d layer1.conv2"``, ``"F.relu (relu_1)"``) and its fx node.
    fell_back : str
        Why its exact rule (a block permutation) could not hold and the conservative one was
        used instead; ``""`` when it did not fall back.
    broke : list of str
        Why it fixed neurons (empty when it did not).
    """

    op: str
    node: str
    fell_back: str = ""
    broke: list = field(default_factory=list)

    @property
    def status(self) -> str:
        """``"known"``, ``"fell back"`` or ``"broke symmetry"``."""
        if self.broke:
            return "broke symmetry"
        return "fell back" if self.fell_back else "known"


@dataclass
class Derivation:
    """What the front end derived for one model.

    Attributes
    ----------
    spec : WeightSpaceSpec
        The spaces and the labelled parameters (``np`` mode; :meth:`WeightSpaceSpec.with_mode`
        gives the other).
    spaces : dict
        Space name -> :class:`SpaceInfo` (provenance), in spec order.
    blocks : dict
        Block permutation name -> :class:`BlockInfo`.
    io : IOAxes
        How the spaces act on the model's inputs and outputs (what :func:`verify` needs).
    broken : list of BrokenInfo
        Every op that broke symmetry.
    ops : list of OpInfo
        Every call of the traced graph, in order, with what happened to it.
    run_space : dict
        Run id -> name of the space of its first neurons, or ``"fixed"``.
    graph : networkx.MultiGraph
        The symmetry graph it was read from.
    """

    spec: WeightSpaceSpec
    spaces: dict
    blocks: dict
    io: IOAxes
    broken: list
    ops: list
    run_space: dict
    graph: Any = None

    def space(self, name: str) -> SpaceInfo:
        """The :class:`SpaceInfo` called ``name``."""
        try:
            return self.spaces[name]
        except KeyError:
            raise KeyError(f"no space {name!r}; spaces: {', '.join(self.spaces)}") from None
