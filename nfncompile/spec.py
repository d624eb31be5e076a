"""Weight-space specs: the contract between the tracer and the layer generator.

A :class:`WeightSpaceSpec` names the *neuron spaces* of a network (sets of neurons that may be
permuted freely) and labels every axis of every parameter tensor with the space that indexes it.
It is frozen, hashable, validated at construction and round-trips exactly through YAML.

Axis labels
-----------
``"c1"``
    a space name: the axis is indexed by the neurons of space ``c1``.
``None`` (YAML ``null``)
    a *fixed* axis: conv kernel dims, flattened spatial positions, broken symmetry.
``("c1", "c2")`` (YAML ``[c1, c2]``)
    a *composite* axis: the pieces concatenated in order, e.g. the input axis of a linear layer
    after ``torch.cat``. A piece is a space name or an ``int`` n: a run of n fixed positions.
``Inner("c1", 0)`` (YAML ``{space: c1, block_of: 0}``)
    the position *inside one block* of the block space ``c1``, the block being the one axis 0
    of the same tensor sits in (a grouped convolution's input-channel axis).

Block spaces
------------
A grouped convolution with ``g`` groups permutes whole groups together and the channels inside
every group independently: the wreath product ``S_k wr S_g``. A :class:`Blocks` record names one
such *block permutation* of ``g`` blocks; every space that declares ``blocks: name`` is cut into
``g`` blocks of ``size / g`` neurons, and all of them move their blocks by that one permutation
(each with its own permutations inside the blocks). A space of ``g`` neurons with ``g`` blocks
is an ordinary space whose permutation is the block permutation (a depthwise conv's channels).

A parameter may also declare a ``view``: the shape its axes refer to, when the stored tensor is
a reshape of it (a linear layer after flattening C channels x P spatial positions has shape
``[out, C*P]`` and view ``[out, C, P]`` with axes ``[out, c, null]``).

Examples
--------
>>> spec = WeightSpaceSpec.from_dict({
...     "spaces": {"in": {"size": 2, "role": "input"}, "h": {"size": 3, "role": "hidden"},
...                "out": {"size": 1, "role": "output"}},
...     "params": {"l1.weight": {"shape": [3, 2], "axes": ["h", "in"]},
...                "l1.bias": {"shape": [3], "axes": ["h"]},
...                "l2.weight": {"shape": [1, 3], "axes": ["out", "h"]}}})
>>> spec
WeightSpaceSpec(mode='np', spaces=[in:2/input, h:3/hidden, out:1/output], params=[l1.weight(3, 2)[h, in], l1.bias(3,)[h], l2.weight(1, 3)[out, h]])
>>> WeightSpaceSpec.from_yaml(spec.to_yaml()) == spec
True
>>> spec.with_mode("hnp").spaces["in"].permutable
False

A ResNeXt-style grouped conv, 2 groups of 2 channels, between two block spaces:

>>> grouped = WeightSpaceSpec.from_yaml('''
... blocks:
...   g: {count: 2}
... spaces:
...   in: {size: 3, role: input}
...   c1: {size: 4, role: hidden, blocks: g}
...   c2: {size: 4, role: hidden, blocks: g}
...   out: {size: 1, role: output}
... params:
...   conv1.weight: {shape: [4, 3], axes: [c1, in]}
...   conv2.weight: {shape: [4, 2, 3, 3], axes: [c2, {space: c1, block_of: 0}, null, null]}
...   fc.weight: {shape: [1, 4], axes: [out, c2]}
... ''')
>>> grouped.block_shape("c2")
(2, 2)
>>> grouped["conv2.weight"].axes[1]
Inner('c1', 0)
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from .errors import SpecError, StateDictMismatchError
from .files import loads_yaml

__all__ = [
    "ROLES",
    "MODES",
    "AxisLabel",
    "Space",
    "Blocks",
    "Inner",
    "ParamSpec",
    "Tile",
    "WeightSpaceSpec",
    "Permutation",
    "check_mode",
    "is_counter",
    "axis_pieces",
]

ROLES = ("input", "hidden", "output")
MODES = ("np", "hnp")

#: A piece of a composite axis: a space name or a number of fixed positions.
Piece = str | int
#: An axis label: a space name, ``None`` (fixed), a tuple of pieces (composite) or an
#: :class:`Inner` position inside a block.
AxisLabel = str | None | tuple | Any


def check_mode(mode: str) -> str:
    """Return ``mode`` if it is ``"np"`` or ``"hnp"``, else raise :class:`SpecError`."""
    if mode not in MODES:
        raise SpecError(f"unknown mode {mode!r}; valid modes: {', '.join(MODES)}")
    return mode


# --------------------------------------------------------------------------------------------
# Space
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Space:
    """A set of ``size`` interchangeable neurons.

    Parameters
    ----------
    name : str
        The label parameter axes use for it.
    size : int
        Number of neurons.
    role : {"input", "hidden", "output"}
        Where it sits in the network; in ``hnp`` mode only hidden spaces are permutable.
    permutable : bool
        Whether the group permutes it. Set by the owning spec from its mode; a hand-built
        ``Space`` defaults to ``True``.
    blocks : str, optional
        The :class:`Blocks` (block permutation) that moves whole blocks of this space; the
        space is then cut into ``count`` equal blocks, permuted inside each block on its own.

    Examples
    --------
    >>> Space("c1", 16, "hidden")
    Space('c1', 16, 'hidden')
    >>> Space("c2", 16, "hidden", blocks="g")
    Space('c2', 16, 'hidden', blocks='g')
    """

    name: str
    size: int
    role: str
    permutable: bool = True
    blocks: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise SpecError(f"space name must be a non-empty string, got {self.name!r}")
        if not _is_int(self.size) or self.size < 1:
            raise SpecError(f"space {self.name!r}: size must be a positive int, got {self.size!r}")
        if self.role not in ROLES:
            raise SpecError(
                f"space {self.name!r}: unknown role {self.role!r}; valid roles: {', '.join(ROLES)}"
            )
        if self.blocks is not None and (not isinstance(self.blocks, str) or not self.blocks):
            raise SpecError(
                f"space {self.name!r}: blocks must name a block permutation, got {self.blocks!r}"
            )

    def __repr__(self) -> str:
        extra = "" if self.permutable else ", permutable=False"
        extra += "" if self.blocks is None else f", blocks={self.blocks!r}"
        return f"Space({self.name!r}, {self.size}, {self.role!r}{extra})"


@dataclass(frozen=True)
class Blocks:
    """A block permutation: ``count`` blocks moved together in every space that names it.

    Parameters
    ----------
    name : str
        What spaces write in their ``blocks`` field.
    count : int
        Number of blocks (a grouped convolution's ``groups``).
    permutable : bool
        Whether the group moves the blocks. Set by the owning spec: the blocks move only when
        every space that shares them is permutable in the spec's mode.

    Examples
    --------
    >>> Blocks("g", 4)
    Blocks('g', 4)
    """

    name: str
    count: int
    permutable: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise SpecError(f"block permutation name must be a non-empty string, got {self.name!r}")
        if not _is_int(self.count) or self.count < 1:
            raise SpecError(
                f"blocks {self.name!r}: count must be a positive int, got {self.count!r}"
            )

    def __repr__(self) -> str:
        extra = "" if self.permutable else ", permutable=False"
        return f"Blocks({self.name!r}, {self.count}{extra})"


@dataclass(frozen=True)
class Inner:
    """Axis label: the position inside one block of block space ``space``; the block is the one
    that axis ``block_of`` of the same tensor sits in.

    A grouped convolution's weight ``(C_out, C_in / g, kh, kw)`` has axes
    ``[c_out, Inner("c_in", 0), None, None]``: row ``j * k_out + r`` reads only the inputs of
    block ``j``, and its column ``i`` is input neuron ``j * k_in + i``.

    >>> Inner("c1", 0)
    Inner('c1', 0)
    """

    space: str
    block_of: int

    def __post_init__(self) -> None:
        if not isinstance(self.space, str) or not self.space:
            raise SpecError(f"Inner: space must be a space name, got {self.space!r}")
        if not _is_int(self.block_of) or self.block_of < 0:
            raise SpecError(
                f"Inner({self.space!r}): block_of must be an axis index, got {self.block_of!r}"
            )

    def __repr__(self) -> str:
        return f"Inner({self.space!r}, {self.block_of})"


# --------------------------------------------------------------------------------------------
# ParamSpec
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tile:
    """A rectangular piece of a parameter whose axes are all simple (a space, an
    :class:`Inner` position or fixed).

    Composite axes split a parameter into tiles, one per combination of pieces.

    Attributes
    ----------
    param : str
        The parameter the tile belongs to.
    index : tuple of slice
        Where the tile sits in the parameter's ``view`` shape.
    axes : tuple of (str or Inner or None)
        One simple label per view axis.
    shape : tuple of int
        The tile's shape.
    param_shape : tuple of int
        The labelled shape of the whole parameter.
    """

    param: str
    index: tuple
    axes: tuple
    shape: tuple

    param_shape: tuple

    @property
    def name(self) -> str:
        """``param`` alone for an unsplit parameter, else ``param[a:b, ...]``."""
        whole = [s == slice(0, n) for s, n in zip(self.index, self.param_shape)]
        if all(whole):
            return self.param
        parts = [":" if w else f"{s.start}:{s.stop}" for s, w in zip(self.index, whole)]
        return f"{self.param}[{', '.join(parts)}]"


@dataclass(frozen=True)
class ParamSpec:
    """One parameter tensor with a label per axis.

    Parameters
    ----------
    name : str
        The state_dict key.
    shape : tuple of int
        The stored tensor's shape.
    axes : tuple of AxisLabel
        One label per axis of ``view`` (or of ``shape`` when there is no view).
    view : tuple of int, optional
        The shape the axes refer to, when it differs from ``shape`` (same number of elements).

    Examples
    --------
    >>> ParamSpec("fc.weight", (10, 64), ("out", "c2", None), view=(10, 16, 4))
    ParamSpec('fc.weight', (10, 64), ('out', 'c2', None), view=(10, 16, 4))
    """

    name: str
    shape: tuple
    axes: tuple
    view: tuple | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(self.shape))
        object.__setattr__(self, "axes", tuple(_freeze_axis(a) for a in self.axes))
        if self.view is not None:
            object.__setattr__(self, "view", tuple(self.view))
        where = f"param {self.name!r}"
        if not isinstance(self.name, str) or not self.name:
            raise SpecError(f"param name must be a non-empty string, got {self.name!r}")
        for dims, what in ((self.shape, "shape"), (self.view, "view")):
            if dims is not None and not all(_is_int(d) and d >= 1 for d in dims):
                raise SpecError(
                    f"{where}: {what} must be a list of positive ints, got {list(dims)}"
                )
        if self.view is not None and math.prod(self.view) != math.prod(self.shape):
            raise SpecError(
                f"{where}: view {list(self.view)} has {math.prod(self.view)} elements but shape "
                f"{list(self.shape)} has {math.prod(self.shape)}"
            )
        if len(self.axes) != len(self.labelled_shape):
            raise SpecError(
                f"{where}: {len(self.axes)} axis labels for "
                f"{'view' if self.view else 'shape'} {list(self.labelled_shape)} "
                f"({len(self.labelled_shape)} axes)"
            )

    @property
    def labelled_shape(self) -> tuple:
        """The shape the axis labels refer to: ``view`` if given, else ``shape``."""
        return self.view if self.view is not None else self.shape

    @property
    def numel(self) -> int:
        """Number of elements."""
        return math.prod(self.shape)

    def spaces_used(self) -> set:
        """Names of every space that labels some axis (or composite piece, or block inside)."""
        out = set()
        for a in self.axes:
            for p in axis_pieces(a):
                if isinstance(p, str):
                    out.add(p)
        return out

    def tiles(self, spaces: Mapping[str, Space]) -> list[Tile]:
        """Split composite axes into :class:`Tile` s with simple labels (row-major order)."""
        per_axis = []
        for label, n in zip(self.axes, self.labelled_shape):
            if isinstance(label, tuple):
                opts, start = [], 0
                for p in label:
                    size = p if _is_int(p) else spaces[p].size
                    opts.append((slice(start, start + size), p if isinstance(p, str) else None))
                    start += size
                per_axis.append(opts)
            else:
                per_axis.append([(slice(0, n), label)])
        tiles = []
        for combo in _product(per_axis):
            index = tuple(c[0] for c in combo)
            tiles.append(
                Tile(
                    self.name,
                    index,
                    tuple(c[1] for c in combo),
                    tuple(s.stop - s.start for s in index),
                    self.labelled_shape,
                )
            )
        return tiles

    def __repr__(self) -> str:
        view = "" if self.view is None else f", view={self.view}"
        return f"ParamSpec({self.name!r}, {self.shape}, {self.axes}{view})"

    def _short(self) -> str:
        labels = ", ".join(_axis_str(a) for a in self.axes)
        view = "" if self.view is None else f"->{self.view}"
        return f"{self.name}{self.shape}{view}[{labels}]"


# --------------------------------------------------------------------------------------------
# WeightSpaceSpec
# --------------------------------------------------------------------------------------------


class SpaceMap(Mapping):
    """An immutable, hashable, ordered mapping ``name -> Space`` (or ``name -> Blocks``)."""

    __slots__ = ("_index", "_items", "_kind")

    def __init__(self, spaces: Any = (), kind: str = "space") -> None:
        items = tuple(spaces.values()) if isinstance(spaces, Mapping) else tuple(spaces)
        self._items = items
        self._index = {s.name: s for s in items}
        self._kind = kind

    def __getitem__(self, name: str) -> Any:
        try:
            return self._index[name]
        except KeyError:
            raise KeyError(
                f"no {self._kind} {name!r}; {self._kind}s: {', '.join(self._index) or '(none)'}"
            ) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._index)

    def __len__(self) -> int:
        return len(self._items)

    def __hash__(self) -> int:
        return hash(self._items)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, SpaceMap):
            return self._items == other._items
        return NotImplemented

    def __repr__(self) -> str:
        return "{" + ", ".join(f"{k!r}: {v!r}" for k, v in self._index.items()) + "}"


@dataclass(frozen=True)
class WeightSpaceSpec:
    """The neuron spaces of a network and the labelled axes of each of its parameters.

    Parameters
    ----------
    spaces : mapping or iterable of Space
        The neuron spaces (stored as an immutable ordered mapping).
    params : iterable of ParamSpec
        In state_dict order.
    mode : {"np", "hnp"}
        ``np``: every space permutes; ``hnp``: input and output spaces are fixed. It sets each
        space's ``permutable`` flag.
    blocks : mapping or iterable of Blocks, optional
        The block permutations that block spaces name (stored as an immutable ordered
        mapping). A block permutation moves its blocks only when every space sharing it is
        permutable in ``mode``.

    Raises
    ------
    SpecError
        When a label names no space, sizes do not match shapes, names repeat, a block space's
        size is not a multiple of its block count, or an :class:`Inner` label points at an axis
        that is not a space of the same block permutation.
    """

    spaces: SpaceMap
    params: tuple
    mode: str = "np"
    blocks: SpaceMap = ()
    _by_name: dict = field(default=None, init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        check_mode(self.mode)
        spaces = self.spaces.values() if isinstance(self.spaces, Mapping) else self.spaces
        blocks = self.blocks.values() if isinstance(self.blocks, Mapping) else self.blocks
        counts = {}
        for b in blocks:
            if not isinstance(b, Blocks):
                raise SpecError(f"blocks must be Blocks objects, got {b!r}")
            if b.name in counts:
                raise SpecError(f"duplicate block permutation name {b.name!r}")
            counts[b.name] = b.count
        fixed = []
        for s in spaces:
            if not isinstance(s, Space):
                raise SpecError(f"spaces must be Space objects, got {s!r}")
            permutable = self.mode == "np" or s.role == "hidden"
            if s.blocks is not None:
                if s.blocks not in counts:
                    raise SpecError(
                        f"spaces.{s.name}.blocks: unknown block permutation {s.blocks!r}; "
                        f"declared: {', '.join(counts) or '(none)'}"
                    )
                if s.size % counts[s.blocks]:
                    raise SpecError(
                        f"spaces.{s.name}: size {s.size} is not a multiple of the "
                        f"{counts[s.blocks]} blocks of {s.blocks!r}"
                    )
            fixed.append(Space(s.name, s.size, s.role, permutable, s.blocks))
        names = [s.name for s in fixed]
        if len(set(names)) != len(names):
            raise SpecError(
                f"duplicate space names: {sorted({n for n in names if names.count(n) > 1})}"
            )
        members: dict = {name: [] for name in counts}
        for sp in fixed:
            if sp.blocks is not None:
                members[sp.blocks].append(sp)
        unused = [name for name, m in members.items() if not m]
        if unused:
            raise SpecError(f"blocks {unused} are named by no space")
        object.__setattr__(
            self,
            "blocks",
            SpaceMap(
                [Blocks(n, c, all(sp.permutable for sp in members[n])) for n, c in counts.items()],
                kind="block permutation",
            ),
        )
        object.__setattr__(self, "spaces", SpaceMap(fixed))
        params = tuple(self.params)
        pnames = [p.name for p in params]
        if len(set(pnames)) != len(pnames):
            raise SpecError(
                f"duplicate param names: {sorted({n for n in pnames if pnames.count(n) > 1})}"
            )
        object.__setattr__(self, "params", params)
        object.__setattr__(self, "_by_name", {p.name: p for p in params})
        for p in params:
            self._check_param(p)

    def _check_param(self, p: ParamSpec) -> None:
        valid = ", ".join(self.spaces) or "(none)"
        for i, (label, n) in enumerate(zip(p.axes, p.labelled_shape)):
            where = f"params.{p.name}.axes[{i}]"
            if label is None:
                continue
            if isinstance(label, Inner):
                self._check_inner(p, i, label, n)
                continue
            if isinstance(label, str):
                if label not in self.spaces:
                    raise SpecError(f"{where}: unknown space {label!r}; valid: {valid} or null")
                if self.spaces[label].size != n:
                    raise SpecError(
                        f"{where}: space {label!r} has size {self.spaces[label].size} but the axis "
                        f"has length {n}"
                    )
                continue
            total = 0
            for piece in label:
                if _is_int(piece):
                    total += piece
                elif piece in self.spaces:
                    total += self.spaces[piece].size
                else:
                    raise SpecError(
                        f"{where}: unknown composite piece {piece!r}; valid: {valid} "
                        "or a positive int (fixed positions)"
                    )
            if total != n:
                raise SpecError(
                    f"{where}: composite {list(label)} adds up to {total} but the axis has length {n}"
                )

    def _check_inner(self, p: ParamSpec, i: int, label: Inner, n: int) -> None:
        where = f"params.{p.name}.axes[{i}]"
        if label.space not in self.spaces:
            raise SpecError(
                f"{where}: unknown space {label.space!r}; valid: {', '.join(self.spaces)}"
            )
        shape = self.block_shape(label.space)
        if shape is None:
            raise SpecError(
                f"{where}: {label!r} needs a block space, but {label.space!r} has no blocks"
            )
        if shape[1] != n:
            raise SpecError(
                f"{where}: the blocks of {label.space!r} hold {shape[1]} neurons but the axis "
                f"has length {n}"
            )
        j = label.block_of
        other = p.axes[j] if j < len(p.axes) and j != i else None
        if not isinstance(other, str) or other not in self.spaces:
            raise SpecError(
                f"{where}: block_of={j} must point at another axis of {p.name!r} labelled with "
                f"a space of block permutation {self.spaces[label.space].blocks!r}"
            )
        if self.spaces[other].blocks != self.spaces[label.space].blocks:
            raise SpecError(
                f"{where}: axis {j} is labelled {other!r}, whose blocks are "
                f"{self.spaces[other].blocks!r}, not {self.spaces[label.space].blocks!r}"
            )

    # ---- access ---------------------------------------------------------------------------

    def __contains__(self, name: object) -> bool:
        """Whether a parameter called ``name`` is in the spec."""
        return name in self._by_name

    def __getitem__(self, name: str) -> ParamSpec:
        """The :class:`ParamSpec` called ``name``."""
        try:
            return self._by_name[name]
        except KeyError:
            raise KeyError(f"no param {name!r}; params: {', '.join(self._by_name)}") from None

    @property
    def names(self) -> tuple:
        """Parameter names in state_dict order."""
        return tuple(p.name for p in self.params)

    def with_mode(self, mode: str) -> WeightSpaceSpec:
        """The same spec with ``mode`` (``"np"`` or ``"hnp"``) setting which spaces permute."""
        return WeightSpaceSpec(self.spaces, self.params, check_mode(mode), self.blocks)

    def block_shape(self, space: str) -> tuple[int, int] | None:
        """``(count, size per block)`` of a block space, ``None`` for an ordinary space."""
        sp = self.spaces[space]
        if sp.blocks is None:
            return None
        count = self.blocks[sp.blocks].count
        return count, sp.size // count

    def permutable_spaces(self, mode: str | None = None) -> list[str]:
        """Names of the spaces the group permutes under ``mode`` (default: the spec's)."""
        mode = check_mode(mode or self.mode)
        return [s.name for s in self.spaces.values() if mode == "np" or s.role == "hidden"]

    # ---- group ----------------------------------------------------------------------------

    def sample_permutation(
        self,
        generator: torch.Generator | None = None,
        mode: str | None = None,
        *,
        move: Any = None,
    ) -> Permutation:
        """Draw one uniformly random element of the permutation group.

        Parameters
        ----------
        generator : torch.Generator, optional
            Seeded generator for reproducible draws.
        mode : {"np", "hnp"}, optional
            Defaults to the spec's mode.
        move : collection of str, optional
            Restrict the draw to the subgroup that moves only these factors: space names (a
            block space then moves only inside its blocks) and block permutation names (the
            blocks of every space sharing it move together). Default: every factor.

        Examples
        --------
        >>> g = torch.Generator().manual_seed(0)
        >>> perm = spec.sample_permutation(g)  # doctest: +SKIP
        """
        spec = self if mode is None or mode == self.mode else self.with_mode(mode)
        if move is not None:
            move = set(move)
            unknown = move - set(spec.spaces) - set(spec.blocks)
            if unknown:
                raise SpecError(
                    f"move: unknown spaces or block permutations {sorted(unknown)}; valid: "
                    f"{', '.join([*spec.spaces, *spec.blocks])}"
                )
        outer = {
            b.name: torch.randperm(b.count, generator=generator)
            if b.permutable and (move is None or b.name in move)
            else torch.arange(b.count)
            for b in spec.blocks.values()
        }
        perms = {}
        for s in spec.spaces.values():
            moves = s.permutable and (move is None or s.name in move)
            shape = spec.block_shape(s.name)
            if shape is None:
                perms[s.name] = (
                    torch.randperm(s.size, generator=generator) if moves else torch.arange(s.size)
                )
                continue
            count, k = shape
            if moves:
                inner = torch.stack([torch.randperm(k, generator=generator) for _ in range(count)])
            else:
                inner = torch.arange(k).expand(count, k)
            # gather form: new block j is old block outer[j], inside it old position inner[j]
            perms[s.name] = (outer[s.blocks][:, None] * k + inner).reshape(-1)
        return Permutation(self, perms)

    def identity(self) -> Permutation:
        """The identity element of the group."""
        return Permutation(self, {s.name: torch.arange(s.size) for s in self.spaces.values()})

    # ---- state dicts ----------------------------------------------------------------------

    def check_state_dict(self, state_dict: Mapping[str, Any], *, leading: int = 0) -> None:
        """Raise :class:`StateDictMismatchError` listing every missing, unexpected and
        mis-shaped key at once. ``leading`` dims (batch, channel) are ignored in shape checks.

        Integer-valued entries that the spec does not list (counters such as BatchNorm's
        ``num_batches_tracked``) are bookkeeping, not weights: they are not reported.
        """
        missing = [n for n in self.names if n not in state_dict]
        unexpected = [
            k for k, v in state_dict.items() if k not in self and not is_counter(v)
        ]
        misshaped = [
            f"{k}: expected {list(self[k].shape)}, got {list(v.shape[leading:])}"
            for k, v in state_dict.items()
            if k in self and tuple(v.shape[leading:]) != self[k].shape
        ]
        if missing or unexpected or misshaped:
            lines = ["state_dict does not match the weight-space spec:"]
            if missing:
                lines.append(f"  missing keys: {', '.join(missing)}")
            if unexpected:
                lines.append(f"  unexpected keys: {', '.join(unexpected)}")
            if misshaped:
                lines.append("  mis-shaped keys: " + "; ".join(misshaped))
            raise StateDictMismatchError("\n".join(lines))

    # ---- YAML / dict ----------------------------------------------------------------------

    def to_dict(self) -> dict:
        """Plain-data form (what :meth:`to_yaml` writes)."""
        out: dict = {}
        if self.mode != "np":
            out["mode"] = self.mode
        if self.blocks:
            out["blocks"] = {b.name: {"count": b.count} for b in self.blocks.values()}
        out["spaces"] = {
            s.name: {"size": s.size, "role": s.role, **({"blocks": s.blocks} if s.blocks else {})}
            for s in self.spaces.values()
        }
        params = {}
        for p in self.params:
            entry: dict = {"shape": list(p.shape)}
            if p.view is not None:
                entry["view"] = list(p.view)
            entry["axes"] = [_axis_data(a) for a in p.axes]
            params[p.name] = entry
        out["params"] = params
        return out

    @classmethod
    def from_dict(cls, data: Any, *, source: str = "<dict>") -> WeightSpaceSpec:
        """Build from plain data, with errors that name ``source`` and the key path."""
        try:
            return cls._from_dict(data)
        except SpecError as e:
            raise SpecError(f"{source}: {e}") from None

    @classmethod
    def _from_dict(cls, data: Any) -> WeightSpaceSpec:
        if not isinstance(data, Mapping):
            raise SpecError(
                f"expected a mapping with keys spaces, params, got {type(data).__name__}"
            )
        _check_keys(
            data, ("mode", "blocks", "spaces", "params"), "", required=("spaces", "params")
        )
        blocks = []
        blocks_d = data.get("blocks") or {}
        if not isinstance(blocks_d, Mapping):
            raise SpecError(f"blocks: expected a mapping name -> {{count}}, got {blocks_d!r}")
        for name, entry in blocks_d.items():
            path = f"blocks.{name}"
            if not isinstance(entry, Mapping):
                raise SpecError(f"{path}: expected a mapping {{count}}, got {entry!r}")
            _check_keys(entry, ("count",), path, required=("count",))
            if not _is_int(entry["count"]) or entry["count"] < 1:
                raise SpecError(f"{path}.count: expected a positive int, got {entry['count']!r}")
            blocks.append(Blocks(str(name), entry["count"]))
        spaces_d = data["spaces"]
        if not isinstance(spaces_d, Mapping):
            raise SpecError(f"spaces: expected a mapping name -> {{size, role}}, got {spaces_d!r}")
        spaces = []
        for name, entry in spaces_d.items():
            path = f"spaces.{name}"
            if not isinstance(entry, Mapping):
                raise SpecError(f"{path}: expected a mapping {{size, role}}, got {entry!r}")
            _check_keys(entry, ("size", "role", "blocks"), path, required=("size", "role"))
            size = entry["size"]
            if not _is_int(size) or size < 1:
                raise SpecError(f"{path}.size: expected a positive int, got {size!r}")
            if entry["role"] not in ROLES:
                raise SpecError(
                    f"{path}.role: expected one of {', '.join(ROLES)}, got {entry['role']!r}"
                )
            if "blocks" in entry and not isinstance(entry["blocks"], str):
                raise SpecError(
                    f"{path}.blocks: expected the name of a block permutation, "
                    f"got {entry['blocks']!r}"
                )
            spaces.append(Space(str(name), size, entry["role"], blocks=entry.get("blocks")))
        params_d = data["params"]
        if not isinstance(params_d, Mapping):
            raise SpecError(f"params: expected a mapping name -> {{shape, axes}}, got {params_d!r}")
        params = []
        for name, entry in params_d.items():
            path = f"params.{name}"
            if not isinstance(entry, Mapping):
                raise SpecError(
                    f"{path}: expected a mapping {{shape, axes[, view]}}, got {entry!r}"
                )
            _check_keys(entry, ("shape", "view", "axes"), path, required=("shape", "axes"))
            for key in ("shape", "view"):
                v = entry.get(key)
                if key == "view" and v is None:
                    continue
                if not isinstance(v, list) or not all(_is_int(d) and d >= 1 for d in v):
                    raise SpecError(f"{path}.{key}: expected a list of positive ints, got {v!r}")
            axes = entry["axes"]
            if not isinstance(axes, list):
                raise SpecError(f"{path}.axes: expected a list of labels, got {axes!r}")
            for i, a in enumerate(axes):
                ok = (
                    a is None
                    or isinstance(a, str)
                    or (
                        isinstance(a, list)
                        and a
                        and all(isinstance(p, str) or (_is_int(p) and p >= 1) for p in a)
                    )
                    or (
                        isinstance(a, Mapping)
                        and set(a) == {"space", "block_of"}
                        and isinstance(a["space"], str)
                        and _is_int(a["block_of"])
                    )
                )
                if not ok:
                    raise SpecError(
                        f"{path}.axes[{i}]: expected a space name, null, a list of space "
                        "names / positive ints (composite), or {space: NAME, block_of: AXIS} "
                        f"(a position inside a block), got {a!r}"
                    )
            try:
                params.append(
                    ParamSpec(str(name), tuple(entry["shape"]), tuple(axes), entry.get("view"))
                )
            except SpecError as e:
                raise SpecError(f"{path}: {e}") from None
        return cls(spaces, params, data.get("mode", "np"), blocks)

    def to_yaml(self, path: str | os.PathLike | None = None) -> str:
        """Write the canonical YAML text (to ``path`` if given) and return it."""
        d = self.to_dict()
        lines = []
        if "mode" in d:
            lines.append(f"mode: {d['mode']}")
        if "blocks" in d:
            lines.append("blocks:")
            width = max(len(_flow(k)) for k in d["blocks"]) + 1
            for k, v in d["blocks"].items():
                lines.append(f"  {(_flow(k) + ':').ljust(width)} {_flow(v)}")
        lines.append("spaces:")
        width = max((len(_flow(k)) for k in d["spaces"]), default=0) + 1
        for k, v in d["spaces"].items():
            lines.append(f"  {(_flow(k) + ':').ljust(width)} {_flow(v)}")
        lines.append("params:")
        width = max((len(_flow(k)) for k in d["params"]), default=0) + 1
        for k, v in d["params"].items():
            lines.append(f"  {(_flow(k) + ':').ljust(width)} {_flow(v)}")
        text = "\n".join(lines) + "\n"
        if path is not None:
            Path(path).write_text(text)
        return text

    @classmethod
    def from_yaml(cls, path_or_text: str | os.PathLike) -> WeightSpaceSpec:
        """Read a spec from a YAML file path or YAML text (safe loader only)."""
        source = "<yaml>"
        text = str(path_or_text)
        if isinstance(path_or_text, os.PathLike) or ("\n" not in text and Path(text).exists()):
            source = str(path_or_text)
            text = Path(path_or_text).read_text()
        elif "\n" not in text and text.endswith((".yaml", ".yml")):
            raise SpecError(f"{text}: no such spec file")
        return cls.from_dict(loads_yaml(text, source=source, error=SpecError), source=source)

    def __repr__(self) -> str:
        spaces = ", ".join(
            f"{s.name}:{s.size}/{s.role}" + (f"/{s.blocks}" if s.blocks else "")
            for s in self.spaces.values()
        )
        params = ", ".join(p._short() for p in self.params)
        return f"WeightSpaceSpec(mode={self.mode!r}, spaces=[{spaces}], params=[{params}])"

    def __str__(self) -> str:
        return self.to_yaml()


# --------------------------------------------------------------------------------------------
# Permutation
# --------------------------------------------------------------------------------------------


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
        """The gather index for one axis (``None`` when the axis does not move)."""
        if label is None:
            return None
        if isinstance(label, str):
            return self.perms[label]
        parts, start = [], 0
        for piece in label:
            if _is_int(piece):
                parts.append(torch.arange(start, start + piece))
                start += piece
            else:
                parts.append(self.perms[piece] + start)
                start += len(self.perms[piece])
        return torch.cat(parts)

    def apply_tensor(self, name: str, tensor: torch.Tensor, leading: int = 0) -> torch.Tensor:
        """Permute one parameter tensor (with ``leading`` batch/channel dims in front)."""
        p = self.spec[name]
        lead = tuple(tensor.shape[:leading])
        x = tensor.reshape(lead + p.labelled_shape)
        for i, (label, n) in enumerate(zip(p.axes, p.labelled_shape)):
            if isinstance(label, Inner):
                continue
            idx = self.axis_index(label, n)
            if idx is not None:
                x = x.index_select(leading + i, idx.to(x.device))
        for i, label in enumerate(p.axes):
            if isinstance(label, Inner):
                x = self._gather_inner(x, leading + i, leading + label.block_of, label.space)
        return x.reshape(tensor.shape)

    def _gather_inner(self, x: torch.Tensor, dim: int, ref: int, space: str) -> torch.Tensor:
        """Gather axis ``dim`` (positions inside a block of ``space``) by the permutation inside
        the block that each position of axis ``ref`` (already permuted) sits in."""
        inner = self.inner[space].to(x.device)  # (count, k)
        per_ref = inner.repeat_interleave(x.shape[ref] // inner.shape[0], dim=0)  # (n_ref, k)
        shape = [1] * x.dim()
        shape[ref], shape[dim] = x.shape[ref], x.shape[dim]
        if ref > dim:
            per_ref = per_ref.t()
        return x.gather(dim, per_ref.reshape(shape).expand(x.shape))

    def apply_state_dict(self, state_dict: Mapping[str, torch.Tensor]) -> dict:
        """Permute a state_dict of the spec's network (keys must match the spec; integer
        counters the spec does not list pass through unchanged)."""
        self.spec.check_state_dict(state_dict)
        return {
            k: v if k not in self.spec else self.apply_tensor(k, v)
            for k, v in state_dict.items()
        }

    def apply(self, features: Any) -> Any:
        """Permute batched features ``name -> (B, C, *shape)``; returns the same type."""
        self.spec.check_state_dict(features, leading=2)
        data = {k: self.apply_tensor(k, v, leading=2) for k, v in features.items()}
        return type(features)(data) if not isinstance(features, dict) else data


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def is_counter(value: Any) -> bool:
    """Whether a state_dict entry is an integer counter (e.g. ``num_batches_tracked``)."""
    return isinstance(value, torch.Tensor) and not (value.is_floating_point() or value.is_complex())


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _freeze_axis(a: Any) -> AxisLabel:
    if isinstance(a, (list, tuple)):
        return tuple(a)
    if isinstance(a, Mapping):  # {space: c1, block_of: 0}
        return Inner(a.get("space"), a.get("block_of"))
    return a


def axis_pieces(a: AxisLabel) -> tuple:
    """The pieces of an axis label: ``()`` for fixed, ``(name,)`` for a space or a position
    inside one of its blocks, the tuple of a composite.

    >>> axis_pieces(None), axis_pieces("c1"), axis_pieces(("c1", 3)), axis_pieces(Inner("c", 0))
    ((), ('c1',), ('c1', 3), ('c',))
    """
    if a is None:
        return ()
    if isinstance(a, Inner):
        return (a.space,)
    return a if isinstance(a, tuple) else (a,)


def _axis_str(a: AxisLabel) -> str:
    if a is None:
        return "-"
    if isinstance(a, tuple):
        return "(" + "|".join(str(p) for p in a) + ")"
    if isinstance(a, Inner):
        return f"{a.space}@{a.block_of}"
    return a


def _axis_data(a: AxisLabel) -> Any:
    """The plain-data (YAML) form of an axis label."""
    if isinstance(a, tuple):
        return list(a)
    if isinstance(a, Inner):
        return {"space": a.space, "block_of": a.block_of}
    return a


def _product(lists: list) -> list:
    out = [()]
    for opts in lists:
        out = [prev + (o,) for prev in out for o in opts]
    return out


def _flow(value: Any) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, sort_keys=False, width=10**9)
    text = text.strip()
    if text.endswith("\n..."):
        text = text[: -len("\n...")]
    elif text.endswith("..."):
        text = text[: -len("...")].strip()
    return text


def _check_keys(entry: Mapping, allowed: tuple, path: str, required: tuple = ()) -> None:
    import difflib

    prefix = f"{path}." if path else ""
    for key in entry:
        if key not in allowed:
            near = difflib.get_close_matches(str(key), allowed, n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            raise SpecError(f"{prefix}{key}: unknown key{hint}; valid keys: {', '.join(allowed)}")
    for key in required:
        if key not in entry:
            raise SpecError(f"{prefix}{key}: missing required key")
