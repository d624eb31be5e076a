"""The abstract values of the symmetry analysis: which neurons index which dims of a tensor.

A *run* is a set of consecutive neurons created by one op (the outputs of a layer, the model
input's channels, one axis of a parameter used directly); a 2048-channel conv output is one
run, not 2048 nodes. A :data:`Label` says which neurons index one dim of a tensor: a tuple of
:class:`Seg` s, each a slice of a run, in order. A :class:`TensorLabels` is the abstract value
of a whole tensor: its shape and a label (or ``None``) per dim.

The constraints the op rules record are plain records too: :class:`Tie` (two slices of runs
move together), :class:`Broken` (an op that fixed neurons), :class:`ParamLabel` (the labels of
one state_dict entry).

Examples
--------
>>> lab = (Seg(0, 0, 4), Seg(1, 2, 3))
>>> label_width(lab)
7
>>> TensorLabels.plain((2, 7)).with_label(1, lab).labelled
True
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .fx import leaves

__all__ = [
    "Seg",
    "Label",
    "label_width",
    "TensorLabels",
    "Run",
    "Tie",
    "Broken",
    "ParamLabel",
    "tensors",
]


@dataclass(frozen=True)
class Seg:
    """``length`` consecutive neurons of run ``run`` from ``offset``, each spanning ``inner``
    consecutive positions of the labelled dim (``inner > 1`` after flattening C x P).

    >>> Seg(0, 2, 3).width, Seg(0, 0, 4, inner=9).width
    (3, 36)
    """

    run: int
    offset: int
    length: int
    inner: int = 1

    @property
    def width(self) -> int:
        """Positions covered in the labelled dim."""
        return self.length * self.inner


#: The neurons along one dim: a tuple of segments, in order.
Label = tuple


def label_width(label: Label) -> int:
    """Number of positions a label covers."""
    return sum(s.width for s in label)


@dataclass(frozen=True)
class TensorLabels:
    """The abstract value of one tensor: its shape and a label (or ``None``) per dim.

    ``None`` means the group does not act along that dim (batch, spatial, fixed neurons).
    """

    shape: tuple
    labels: tuple

    @staticmethod
    def plain(shape: Any) -> TensorLabels:
        """A tensor the group does not act on."""
        shape = tuple(shape)
        return TensorLabels(shape, (None,) * len(shape))

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def with_label(self, dim: int, label: Label | None) -> TensorLabels:
        labels = list(self.labels)
        labels[dim] = label
        return TensorLabels(self.shape, tuple(labels))

    @property
    def labelled(self) -> bool:
        return any(lab is not None for lab in self.labels)


@dataclass
class Run:
    """A run of neurons: created by one op (or the model input, or a parameter axis)."""

    id: int
    size: int
    kind: str  # "input" | "neuron" | "param" | "fixed"
    origin: str  # readable creator: module target, "in", param key + axis
    node: str  # fx node name
    op: str


@dataclass
class Tie:
    """Neurons ``a[a_off : a_off + length]`` and ``b[b_off : b_off + length]`` move together."""

    a: int
    a_off: int
    b: int
    b_off: int
    length: int
    op: str
    node: str


@dataclass
class Broken:
    """One op that broke symmetry."""

    op: str
    node: str
    reason: str
    neurons: list = field(default_factory=list)  # (run, offset, length)


@dataclass
class ParamLabel:
    """The labels of one state_dict entry: its (view) shape and a label per view axis."""

    shape: tuple
    view: tuple | None
    axes: list
    ops: list = field(default_factory=list)


def tensors(value: Any) -> list:
    """Every :class:`TensorLabels` in a nested value (args, kwargs, tuples of outputs)."""
    return [v for v in leaves(value) if isinstance(v, TensorLabels)]
