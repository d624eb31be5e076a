"""Group elements: a :class:`Permutation` per draw, applied to state_dicts and features."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch

from ..errors import SpecError
from .labels import AxisLabel, Inner, Span, _is_int

if TYPE_CHECKING:
    from .weight_space import WeightSpaceSpec

__all__ = ["Permutation"]


class Permutation:
    """One element of a spec's permutation group: an index tensor per space.

    Applying it gathers every labelled axis: ``T'[..., i, ...] = T[..., perm[i], ...]``. Applied
    to every parameter of a network consistently, it leaves the network's function unchanged.

    A block space's permutation must keep its blocks whole (new block ``j`` is one old block,
    the same for every space sharing the block permutation); an :class:`Inner` axis is then
    gathered by the permutation inside the block its reference axis lands in.

    Parameters
    ----------
    spec : WeightSpaceSpec
    perms : mapping str -> LongTensor
        A permutation of ``range(size)`` per space (missing spaces are the identity).

    Raises
    ------
    SpecError
        When a tensor is not a permutation, or moves a block space's neurons across blocks
        (or two spaces sharing a block permutation move their blocks differently).
    """

    def __init__(self, spec: WeightSpaceSpec, perms: Mapping[str, torch.Tensor]) -> None:
        self.spec = spec
        unknown = set(perms) - set(spec.spaces)
        if unknown:
            raise SpecError(f"permutation of unknown spaces {sorted(unknown)}")
        self.perms = {}
        self.inner: dict = {}  # block space -> (count, k) permutation inside each new block
        outer: dict = {}  # block permutation -> (count,) old block of each new block
        for s in spec.spaces.values():
            p = torch.as_tensor(perms.get(s.name, torch.arange(s.size)), dtype=torch.long)
            if p.shape != (s.size,) or not torch.equal(p.sort().values, torch.arange(s.size)):
                raise SpecError(f"perms[{s.name!r}] is not a permutation of range({s.size})")
            self.perms[s.name] = p
            shape = spec.block_shape(s.name)
            if shape is None:
                continue
            count, k = shape
            grid = p.reshape(count, k)
            blocks = grid[:, 0] // k
            if not torch.equal(grid // k, blocks[:, None].expand(count, k)):
                raise SpecError(
                    f"perms[{s.name!r}] moves neurons across the {count} blocks of {s.blocks!r}"
                )
            if s.blocks in outer and not torch.equal(outer[s.blocks], blocks):
                raise SpecError(
                    f"perms[{s.name!r}] moves the blocks of {s.blocks!r} differently from "
                    "another space that shares them"
                )
            outer[s.blocks] = blocks
            self.inner[s.name] = grid % k

    def __getitem__(self, space: str) -> torch.Tensor:
        return self.perms[space]

    def __repr__(self) -> str:
        moved = [k for k, v in self.perms.items() if not torch.equal(v, torch.arange(len(v)))]
        return f"Permutation(moves={moved})"

    def inverse(self) -> Permutation:
        """The inverse element."""
        return Permutation(self.spec, {k: torch.argsort(v) for k, v in self.perms.items()})

    def compose(self, other: Permutation) -> Permutation:
        """``self.compose(other).apply(x) == self.apply(other.apply(x))``."""
        return Permutation(self.spec, {k: other.perms[k][v] for k, v in self.perms.items()})

    def axis_index(self, label: AxisLabel, length: int) -> torch.Tensor | None:
        """The gather index for one axis (``None`` when the axis does not move).

        An axis with :class:`Inner` positions (alone or as composite pieces) depends on the
        block of another axis: its index is ``(count, length)``, one row per block.
        """
        if label is None:
            return None
        if isinstance(label, str):
            return self.perms[label]
        if isinstance(label, Inner):
            return self.inner[label.space]
        if isinstance(label, Span):
            label = (label,)
        rows = self._block_rows(label)
        parts, start = [], 0
        for piece in label:
            if _is_int(piece):
                part, n = torch.arange(start, start + piece), piece
            elif isinstance(piece, Inner):
                part = self.inner[piece.space] + start
                n = part.shape[1]
            elif isinstance(piece, Span):  # each neuron's run of positions moves with it (a
                # copy of another space's neurons, permuted as that space is)
                perm = self.perms[piece.space]
                run = (
                    self.perms[piece.span]
                    if isinstance(piece.span, str)
                    else torch.arange(piece.span)
                )
                part = (perm[:, None] * len(run) + run).reshape(-1) + start
                n = len(part)
            else:
                part, n = self.perms[piece] + start, len(self.perms[piece])
            if rows and part.dim() == 1:
                part = part.expand(rows, n)
            parts.append(part)
            start += n
        return torch.cat(parts, dim=-1)

    def _block_rows(self, label: tuple) -> int:
        """The block count of a composite's :class:`Inner` pieces (0 when it has none)."""
        return max((len(self.inner[p.space]) for p in label if isinstance(p, Inner)), default=0)

    def apply_tensor(self, name: str, tensor: torch.Tensor, leading: int = 0) -> torch.Tensor:
        """Permute one parameter tensor (with ``leading`` batch/channel dims in front)."""
        p = self.spec[name]
        x = p.to_labelled(tensor, leading)
        inner = []  # (axis, the axis whose block it reads)
        for i, (label, n) in enumerate(zip(p.axes, p.labelled_shape)):
            ref = _block_of(label)
            if ref is not None:
                inner.append((i, ref))
                continue
            idx = self.axis_index(label, n)
            if idx is not None:
                x = x.index_select(leading + i, idx.to(x.device))
        for i, ref in inner:
            idx = self.axis_index(p.axes[i], p.labelled_shape[i])
            x = _gather_per_block(x, leading + i, leading + ref, idx.to(x.device))
        return p.from_labelled(x, leading)

    def apply_state_dict(self, state_dict: Mapping[str, torch.Tensor]) -> dict:
        """Permute a state_dict of the spec's network (keys must match the spec; integer
        counters the spec does not list pass through unchanged)."""
        self.spec.check_state_dict(state_dict)
        return {
            k: v if k not in self.spec else self.apply_tensor(k, v) for k, v in state_dict.items()
        }

    def apply(self, features: Any) -> Any:
        """Permute batched features ``name -> (B, C, *shape)``; returns the same type."""
        self.spec.check_state_dict(features, leading=2)
        data = {k: self.apply_tensor(k, v, leading=2) for k, v in features.items()}
        return type(features)(data) if not isinstance(features, dict) else data


def _block_of(label: AxisLabel) -> int | None:
    """The axis whose block an axis label's :class:`Inner` positions read (``None``: none)."""
    pieces = label if isinstance(label, tuple) else (label,)
    refs = {p.block_of for p in pieces if isinstance(p, Inner)}
    return refs.pop() if refs else None


def _gather_per_block(x: torch.Tensor, dim: int, ref: int, index: torch.Tensor) -> torch.Tensor:
    """Gather axis ``dim`` by ``index`` ``(count, length)``: row ``b`` for the positions of axis
    ``ref`` (already permuted) in block ``b``."""
    per_ref = index.repeat_interleave(x.shape[ref] // index.shape[0], dim=0)  # (n_ref, length)
    shape = [1] * x.dim()
    shape[ref], shape[dim] = x.shape[ref], x.shape[dim]
    if ref > dim:
        per_ref = per_ref.t()
    return x.gather(dim, per_ref.reshape(shape).expand(x.shape))
