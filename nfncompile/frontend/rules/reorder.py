"""Reshapes and permutes that only reorder the positions of one dim: channel shuffles.

ShuffleNet's channel shuffle views ``C`` channels as ``(groups, C / groups)``, swaps the two
dims and flattens them back: every channel stays a channel, at another position. Read op by
op, the view splits its label into chunks that the merge can only tie (each chunk a head that
then meets positions), and two runs interleaved position by position fixed most of the
channels. Read as one op, the chain moves position ``index[p]`` of one dim to position ``p``,
and the label follows (:func:`~nfncompile.frontend.labels.reordered`): the interleaved runs
keep their neurons, and a layer that reads them holds its spaces in a fixed order of
positions (:attr:`~nfncompile.spec.ParamSpec.order`).

A chain is a reshape whose only use, through permutes, transposes, ``contiguous`` and
reshapes (each the only use of the one before), comes back to its input's shape, the values
moved along one dim alone. The chain's first node records it
(:attr:`~nfncompile.frontend.analysis.SymmetryAnalysis.reorders`); the nodes inside it carry
unlabelled values that nothing else reads, and its last node gives the reordered labels.
``nn.ChannelShuffle`` and ``F.channel_shuffle`` are the same reordering as one call.

Examples
--------
>>> shuffle_index(6, 2)
[0, 3, 1, 4, 2, 5]
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from ..labels import Prod, TensorLabels, reordered
from .chunks import _name, _shape, dim_order
from .registry import arg, register_function, register_module, structured

if TYPE_CHECKING:
    from ..analysis import SymmetryAnalysis

__all__ = ["read_chain", "shuffle_index"]

_RESHAPES = frozenset({"view", "reshape", "flatten", "unflatten"})
_MOVES = frozenset({"permute", "transpose", "swapaxes", "swapdims"})
#: the longest chain read (ShuffleNet's is 3 or 4 nodes)
_MAX_CHAIN = 8


def shuffle_index(channels: int, groups: int) -> list[int]:
    """The channel each output position of a channel shuffle reads: output ``i * groups + j``
    is input ``j * (channels / groups) + i``."""
    per = channels // groups
    return [(p % groups) * per + p // groups for p in range(channels)]


def _kind(node: Any) -> str | None:
    """``view``, ``permute``, ``contiguous``, ... for a call that may be part of a chain."""
    name = _name(node) if isinstance(node, torch.fx.Node) else None
    return name if name in _RESHAPES | _MOVES or name == "contiguous" else None


def _moved(node: torch.fx.Node, x: torch.Tensor) -> torch.Tensor | None:
    """``node`` applied to ``x`` (its input's positions), ``None`` where its dims cannot be
    read."""
    kind, out = _kind(node), _shape(node)
    if kind == "contiguous":
        return x
    if kind in _RESHAPES:
        return x.reshape(out) if out is not None and math.prod(out) == x.numel() else None
    dims = dim_order(node, x.dim())
    return None if dims is None else x.permute(dims)


def _one_dim(moved: torch.Tensor, shape: tuple) -> tuple[int, list[int]] | None:
    """``(dim, index)`` when ``moved`` (source positions, row-major, laid out in ``shape``)
    takes position ``index[p]`` of ``dim`` to ``p`` and moves nothing along any other dim."""
    src = torch.unravel_index(moved.reshape(-1), shape)
    here = torch.unravel_index(torch.arange(moved.numel()), shape)
    dims = [d for d in range(len(shape)) if not torch.equal(src[d], here[d])]
    if len(dims) != 1:
        return None
    d = dims[0]
    index = torch.empty(shape[d], dtype=torch.long)
    index[here[d]] = src[d]
    if not torch.equal(index[here[d]], src[d]):
        return None
    return d, index.tolist()


def _chain(node: torch.fx.Node, start: TensorLabels) -> tuple | None:
    """``(nodes after node, last node, dim, index)`` of the chain that ``node`` (a reshape
    of a tensor labelled ``start``) begins, or ``None``."""
    nodes, permuted = [node], False
    while True:  # the chain's nodes, read off the graph before any positions are moved
        permuted |= _kind(nodes[-1]) in _MOVES
        if permuted and _kind(nodes[-1]) in _RESHAPES and _shape(nodes[-1]) == start.shape:
            break
        users = list(nodes[-1].users)
        if len(nodes) == _MAX_CHAIN or len(users) != 1 or _kind(users[0]) is None:
            return None
        if users[0].args[:1] != (nodes[-1],):
            return None
        nodes.append(users[0])
    x = torch.arange(math.prod(start.shape)).reshape(start.shape)
    for n in nodes:
        x = _moved(n, x)
        if x is None:
            return None
    found = _one_dim(x, start.shape)
    return (nodes[1:-1], nodes[-1], *found) if found else None


def read_chain(a: SymmetryAnalysis, x: TensorLabels) -> TensorLabels | None:
    """The labels of the current node (a reshape of ``x``) where it is part of a chain that
    reorders one dim's positions; ``None`` where it is not."""
    name = a.node.name
    if not a.reorder_chains:
        return None
    if name in a.reorders:
        source, d, index = a.reorders[name]
        return reorder_dim(a, source, d, index, "a reshape and permute reorder positions")
    if name in a.reorder_inside:
        return TensorLabels.plain(a.out_shape())
    if not any(lab is not None for lab in x.labels):
        return None  # nothing to keep: the reshapes' own reading is as good
    found = _chain(a.node, x)
    if found is None:
        return None
    inside, last, d, index = found  # last is never this node: a permute comes between
    a.reorder_inside.update(n.name for n in inside)
    a.reordered = True
    a.reorders[last.name] = (x, d, index)
    return TensorLabels.plain(a.out_shape())


def reorder_dim(
    a: SymmetryAnalysis, x: TensorLabels, d: int, index: list, reason: str
) -> TensorLabels:
    """``x`` with dim ``d``'s position ``p`` taken from position ``index[p]``: its label
    reordered (fixed where that splits a neuron's positions up)."""
    label = x.labels[d]
    if not isinstance(label, tuple) or isinstance(label, Prod):
        if isinstance(label, Prod):
            a.fix(label, f"{reason} inside a flattened product")
            label = None
        return x.with_label(d, label)
    moved = reordered(label, index)
    if moved is None:
        a.fix(label, f"{reason} inside a neuron's block of positions")
    return x.with_label(d, moved)


def _shuffled(a: SymmetryAnalysis, x: TensorLabels, groups: int) -> TensorLabels:
    """``channel_shuffle`` of ``x``: one reordering of dim 1, or (``reorder_chains`` off) the
    view, transpose and reshape it stands for, read one by one."""
    if a.reorder_chains:
        a.reordered = True
        return reorder_dim(a, x, 1, shuffle_index(x.shape[1], groups), "channel_shuffle")
    from .shape import reshape_labels  # shape.py reads chains through this module

    n, c, *rest = x.shape
    split = reshape_labels(a, x, (n, groups, c // groups, *rest))
    labels = list(split.labels)
    labels[1], labels[2] = labels[2], labels[1]
    moved = TensorLabels((n, c // groups, groups, *rest), tuple(labels))
    return reshape_labels(a, moved, x.shape)


@register_module(nn.ChannelShuffle)
@structured
def _module_channel_shuffle(a: SymmetryAnalysis, mod: nn.Module, target: str, args: Any, kw: Any):
    return _shuffled(a, args[0], mod.groups)


@register_function(F.channel_shuffle, torch.channel_shuffle, torch.native_channel_shuffle)
@structured
def _channel_shuffle(a: SymmetryAnalysis, args: tuple, kwargs: dict) -> Any:
    return _shuffled(a, args[0], arg(args, kwargs, 1, "groups"))
