"""``torch.vmap`` traced as the loop it computes.

A model that runs an ensemble or a team of agents with ``torch.vmap`` over stacked weights
(``torch.func.stack_module_state`` and ``functional_call``, torchrl's ``MultiAgentMLP``)
refused torch.fx: vmap wraps each input in a batched tensor, which a proxy is not. While a
model is traced, :func:`vmap_as_loop` stands in for ``torch.vmap``: the function is called on
each slice of the mapped dims in turn and the results are stacked, which is what vmap
computes. The mapped dim's size must be known, as the shape-fixing trace knows it; a plain
trace then fails and the model is traced again with its shapes fixed.

Each call reads its own slice of the stacked weights (``w[i]``). Where mapped inputs are
weights of the model (``stack_module_state``'s parameters) and the results are stacked, the
weights' slices and the stack are marked (``node.meta["nfn_member"]``,
``node.meta["nfn_members"]``), and the analysis reads each member's slice as that member's
own neurons and the stacked dim as the members (:mod:`~nfncompile.frontend.stacked`): each
member's hidden units permute on their own. Where every mapped input is a weight the members
differ only by their weights and move as blocks; where one is data
(``node.meta["nfn_own_data"]``: PyTorch's recipe with a minibatch per model) each member
reads its own, and the members are blocks that stay in place. Otherwise (results not
stacked) the members' hidden neurons are one space across the members and the members are
fixed: a smaller group, and an exact one.

Examples
--------
>>> import torch
>>> w = torch.randn(3, 4, 2)
>>> loop = vmap_as_loop(lambda w, x: x @ w, in_dims=(0, None))(w, torch.ones(5, 4))
>>> torch.equal(loop, torch.vmap(lambda w, x: x @ w, in_dims=(0, None))(w, torch.ones(5, 4)))
True
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable
from typing import Any

import torch
import torch.fx
import torch.utils._pytree as pytree

#: torch's own vmap, which a call without traced values runs
_VMAP = torch.vmap
#: numbers for the loops traced (the marks of one loop's slices and stack)
_LOOPS = itertools.count()


def vmap_as_loop(
    func: Callable[..., Any],
    in_dims: Any = 0,
    out_dims: Any = 0,
    randomness: str = "error",
    *,
    chunk_size: int | None = None,
) -> Callable[..., Any]:
    """``torch.vmap(func, in_dims, out_dims)`` as a loop over the mapped dims where a traced
    value is among the inputs, else ``torch.vmap`` itself.

    Parameters
    ----------
    func, in_dims, out_dims, randomness, chunk_size
        As :func:`torch.vmap`. In the loop, each call draws its own random values (vmap's
        ``randomness="different"``) and ``chunk_size`` changes nothing.

    Returns
    -------
    Callable
        The mapped function.
    """

    @functools.wraps(func)
    def mapped(*args: Any, **kwargs: Any) -> Any:
        leaves, spec = pytree.tree_flatten(args)
        if not any(isinstance(v, torch.fx.Proxy) for v in leaves):
            vmapped = _VMAP(func, in_dims, out_dims, randomness, chunk_size=chunk_size)
            return vmapped(*args, **kwargs)
        dims = in_dims if isinstance(in_dims, tuple) else (in_dims,) * len(args)
        flat_dims = pytree._broadcast_to_and_flatten(dims, spec)
        if flat_dims is None:
            raise ValueError(
                f"vmap: in_dims {in_dims!r} does not match the structure of the inputs"
            )
        sizes = {v.shape[d] for v, d in zip(leaves, flat_dims) if d is not None}
        if not all(isinstance(k, int) for k in sizes):
            raise TypeError("torch.vmap over a dim whose size is not known (a plain trace)")
        if len(sizes) != 1:
            raise ValueError(f"vmap: the mapped dims have sizes {sorted(sizes)}, not one size")
        (n,) = sizes
        # the mapped inputs that are weights of the model; where others are data, each member
        # reads its own (the members stay in place)
        mapped = [v for v, d in zip(leaves, flat_dims) if d is not None]
        weights = [isinstance(v, torch.fx.Proxy) and v.node.op == "get_attr" for v in mapped]
        loop = next(_LOOPS)
        outs = []
        for i in range(n):
            sliced, is_weight = [], iter(weights)
            for v, d in zip(leaves, flat_dims):
                sliced.append(v if d is None else v.select(d, i))
                if d is not None and next(is_weight):
                    sliced[-1].node.meta["nfn_member"] = loop
                    sliced[-1].node.meta["nfn_own_data"] = not all(weights)
            outs.append(func(*pytree.tree_unflatten(sliced, spec), **kwargs))
        result = _stacked(outs, out_dims)
        if any(weights):
            _mark_stacks(result, out_dims, loop)
        return result

    return mapped


def _mark_stacks(result: Any, out_dims: Any, loop: int) -> None:
    """Mark the traced leaves of ``result`` that stack loop ``loop``'s results
    (``node.meta["nfn_members"] = loop``). A leaf with ``out_dims`` ``None`` depends on
    no member (``torch.vmap`` refuses a mapped result there), so it needs no mark."""
    flat, spec = pytree.tree_flatten(result)
    dims = pytree._broadcast_to_and_flatten(out_dims, spec) or [None] * len(flat)
    for leaf, d in zip(flat, dims):
        if d is not None and isinstance(leaf, torch.fx.Proxy):
            leaf.node.meta["nfn_members"] = loop


def _stacked(outs: list, out_dims: Any) -> Any:
    """The per-slice results ``outs`` stacked leaf by leaf along ``out_dims`` (an int, or a
    tree of ints matching a result)."""
    flat, specs = zip(*(pytree.tree_flatten(o) for o in outs))
    spec = specs[0]
    dims = pytree._broadcast_to_and_flatten(out_dims, spec)
    if dims is None:
        raise ValueError(f"vmap: out_dims {out_dims!r} does not match the structure of the outputs")
    stacked = [
        torch.stack(list(column), d) if d is not None else column[0]
        for column, d in zip(zip(*flat), dims)
    ]
    return pytree.tree_unflatten(stacked, spec)
