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
    after ``torch.cat``. A piece is a space name or an ``int`` n: a block of n fixed positions.

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
    "ParamSpec",
    "Block",
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
#: An axis label: a space name, ``None`` (fixed) or a tuple of pieces (composite).
AxisLabel = str | None | tuple


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

    Examples
    --------
    >>> Space("c1", 16, "hidden")
    Space('c1', 16, 'hidden')
    """

    name: str
    size: int
    role: str
    permutable: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise SpecError(f"space name must be a non-empty string, got {self.name!r}")
        if not _is_int(self.size) or self.size < 1:
            raise SpecError(f"space {self.name!r}: size must be a positive int, got {self.size!r}")
        if self.role not in ROLES:
            raise SpecError(
                f"space {self.name!r}: unknown role {self.role!r}; valid roles: {', '.join(ROLES)}"
            )

    def __repr__(self) -> str:
        extra = "" if self.permutable else ", permutable=False"
        return f"Space({self.name!r}, {self.size}, {self.role!r}{extra})"


# --------------------------------------------------------------------------------------------
# ParamSpec
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Block:
    """A rectangular piece of a parameter whose axes are all simple (a space or fixed).

    Composite axes split a parameter into blocks, one per combination of pieces.

    Attributes
    ----------
    param : str
        The parameter the block belongs to.
    index : tuple of slice
        Where the block sits in the parameter's ``view`` shape.
    axes : tuple of (str or None)
        One simple label per view axis.
    shape : tuple of int
        The block's shape.
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
        """Names of every space that labels some axis (or composite piece)."""
        out = set()
        for a in self.axes:
            for p in axis_pieces(a):
                if isinstance(p, str):
                    out.add(p)
        return out

    def blocks(self, spaces: Mapping[str, Space]) -> list[Block]:
        """Split composite axes into :class:`Block` s with simple labels (row-major order)."""
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
        blocks = []
        for combo in _product(per_axis):
            index = tuple(c[0] for c in combo)
            blocks.append(
                Block(
                    self.name,
                    index,
                    tuple(c[1] for c in combo),
                    tuple(s.stop - s.start for s in index),
                    self.labelled_shape,
                )
            )
        return blocks

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
    """An immutable, hashable, ordered mapping ``name -> Space``."""

    __slots__ = ("_index", "_items")

    def __init__(self, spaces: Any = ()) -> None:
        items = tuple(spaces.values()) if isinstance(spaces, Mapping) else tuple(spaces)
        self._items = items
        self._index = {s.name: s for s in items}

    def __getitem__(self, name: str) -> Space:
        try:
            return self._index[name]
        except KeyError:
            raise KeyError(f"no space {name!r}; spaces: {', '.join(self._index)}") from None

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

    Raises
    ------
    SpecError
        When a label names no space, sizes do not match shapes, names repeat or a space is unused.
    """

    spaces: SpaceMap
    params: tuple
    mode: str = "np"
    _by_name: dict = field(default=None, init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        check_mode(self.mode)
        spaces = self.spaces.values() if isinstance(self.spaces, Mapping) else self.spaces
        fixed = []
        for s in spaces:
            if not isinstance(s, Space):
                raise SpecError(f"spaces must be Space objects, got {s!r}")
            permutable = self.mode == "np" or s.role == "hidden"
            fixed.append(Space(s.name, s.size, s.role, permutable))
        names = [s.name for s in fixed]
        if len(set(names)) != len(names):
            raise SpecError(
                f"duplicate space names: {sorted({n for n in names if names.count(n) > 1})}"
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
        return WeightSpaceSpec(self.spaces, self.params, check_mode(mode))

    def permutable_spaces(self, mode: str | None = None) -> list[str]:
        """Names of the spaces the group permutes under ``mode`` (default: the spec's)."""
        mode = check_mode(mode or self.mode)
        return [s.name for s in self.spaces.values() if mode == "np" or s.role == "hidden"]

    # ---- group ----------------------------------------------------------------------------

    def sample_permutation(
        self, generator: torch.Generator | None = None, mode: str | None = None
    ) -> Permutation:
        """Draw one uniformly random element of the permutation group.

        Parameters
        ----------
        generator : torch.Generator, optional
            Seeded generator for reproducible draws.
        mode : {"np", "hnp"}, optional
            Defaults to the spec's mode.

        Examples
        --------
        >>> g = torch.Generator().manual_seed(0)
        >>> perm = spec.sample_permutation(g)  # doctest: +SKIP
        """
        permutable = set(self.permutable_spaces(mode))
        perms = {}
        for s in self.spaces.values():
            if s.name in permutable:
                perms[s.name] = torch.randperm(s.size, generator=generator)
            else:
                perms[s.name] = torch.arange(s.size)
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
        out["spaces"] = {s.name: {"size": s.size, "role": s.role} for s in self.spaces.values()}
        params = {}
        for p in self.params:
            entry: dict = {"shape": list(p.shape)}
            if p.view is not None:
                entry["view"] = list(p.view)
            entry["axes"] = [list(a) if isinstance(a, tuple) else a for a in p.axes]
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
        _check_keys(data, ("mode", "spaces", "params"), "", required=("spaces", "params"))
        spaces_d = data["spaces"]
        if not isinstance(spaces_d, Mapping):
            raise SpecError(f"spaces: expected a mapping name -> {{size, role}}, got {spaces_d!r}")
        spaces = []
        for name, entry in spaces_d.items():
            path = f"spaces.{name}"
            if not isinstance(entry, Mapping):
                raise SpecError(f"{path}: expected a mapping {{size, role}}, got {entry!r}")
            _check_keys(entry, ("size", "role"), path, required=("size", "role"))
            size = entry["size"]
            if not _is_int(size) or size < 1:
                raise SpecError(f"{path}.size: expected a positive int, got {size!r}")
            if entry["role"] not in ROLES:
                raise SpecError(
                    f"{path}.role: expected one of {', '.join(ROLES)}, got {entry['role']!r}"
                )
            spaces.append(Space(str(name), size, entry["role"]))
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
                )
                if not ok:
                    raise SpecError(
                        f"{path}.axes[{i}]: expected a space name, null, or a list of space "
                        f"names / positive ints (composite), got {a!r}"
                    )
            try:
                params.append(
                    ParamSpec(str(name), tuple(entry["shape"]), tuple(axes), entry.get("view"))
                )
            except SpecError as e:
                raise SpecError(f"{path}: {e}") from None
        return cls(spaces, params, data.get("mode", "np"))

    def to_yaml(self, path: str | os.PathLike | None = None) -> str:
        """Write the canonical YAML text (to ``path`` if given) and return it."""
        d = self.to_dict()
        lines = []
        if "mode" in d:
            lines.append(f"mode: {d['mode']}")
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
        spaces = ", ".join(f"{s.name}:{s.size}/{s.role}" for s in self.spaces.values())
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

    Parameters
    ----------
    spec : WeightSpaceSpec
    perms : mapping str -> LongTensor
        A permutation of ``range(size)`` per space (missing spaces are the identity).
    """

    def __init__(self, spec: WeightSpaceSpec, perms: Mapping[str, torch.Tensor]) -> None:
        self.spec = spec
        unknown = set(perms) - set(spec.spaces)
        if unknown:
            raise SpecError(f"permutation of unknown spaces {sorted(unknown)}")
        self.perms = {}
        for s in spec.spaces.values():
            p = torch.as_tensor(perms.get(s.name, torch.arange(s.size)), dtype=torch.long)
            if p.shape != (s.size,) or not torch.equal(p.sort().values, torch.arange(s.size)):
                raise SpecError(f"perms[{s.name!r}] is not a permutation of range({s.size})")
            self.perms[s.name] = p
        self._cache: dict = {}

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
            idx = self.axis_index(label, n)
            if idx is not None:
                x = x.index_select(leading + i, idx.to(x.device))
        return x.reshape(tensor.shape)

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
    return a


def axis_pieces(a: AxisLabel) -> tuple:
    """The pieces of an axis label: ``()`` for fixed, ``(name,)`` for a space, the tuple of a
    composite.

    >>> axis_pieces(None), axis_pieces("c1"), axis_pieces(("c1", 3))
    ((), ('c1',), ('c1', 3))
    """
    if a is None:
        return ()
    return a if isinstance(a, tuple) else (a,)


def _axis_str(a: AxisLabel) -> str:
    if a is None:
        return "-"
    if isinstance(a, tuple):
        return "(" + "|".join(str(p) for p in a) + ")"
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
