"""The weight-space spec: spaces, block permutations and labelled parameters, validated."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import SpecError, StateDictMismatchError
from ..files import loads_yaml
from .labels import Inner, Span, _is_int, check_mode
from .params import ParamSpec, piece_size
from .permutation import Permutation
from .serialize import spec_fields, spec_to_dict, spec_to_yaml
from .spaces import Blocks, Space, SpaceMap

__all__ = ["WeightSpaceSpec", "holds_no_weight", "is_counter", "mismatch_lines"]


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
        mapping). A block permutation moves its blocks only when it is not ``fixed`` and
        every space sharing it is permutable in ``mode``.

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
        counts, still = {}, set()
        for b in blocks:
            if not isinstance(b, Blocks):
                raise SpecError(f"blocks must be Blocks objects, got {b!r}")
            if b.name in counts:
                raise SpecError(f"duplicate block permutation name {b.name!r}")
            counts[b.name] = b.count
            if b.fixed:
                still.add(b.name)
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
                [
                    Blocks(
                        n, c, n not in still and all(sp.permutable for sp in members[n]), n in still
                    )
                    for n, c in counts.items()
                ],
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
            if isinstance(label, Span):
                label = (label,)  # checked as a composite of one piece
            if isinstance(label, str):
                if label not in self.spaces:
                    raise SpecError(f"{where}: unknown space {label!r}; valid: {valid} or null")
                if self.spaces[label].size != n:
                    raise SpecError(
                        f"{where}: space {label!r} has size {self.spaces[label].size} but the axis "
                        f"has length {n}"
                    )
                continue
            for k, piece in enumerate(label):
                if isinstance(piece, Inner):
                    self._check_inner(p, i, piece, None, f"{where}[{k}]")
                elif isinstance(piece, Span) and piece.space not in self.spaces:
                    raise SpecError(
                        f"{where}[{k}]: unknown space {piece.space!r} in {piece!r}; valid: {valid}"
                    )
                elif (
                    isinstance(piece, Span)
                    and isinstance(piece.span, str)
                    and (piece.span not in self.spaces)
                ):
                    raise SpecError(
                        f"{where}[{k}]: unknown space {piece.span!r} spanned in {piece!r}; "
                        f"valid: {valid} or a positive int"
                    )
                elif not (_is_int(piece) or isinstance(piece, Span) or piece in self.spaces):
                    raise SpecError(
                        f"{where}: unknown composite piece {piece!r}; valid: {valid}, a positive "
                        "int (fixed positions), {space: NAME, block_of: AXIS} (a block's "
                        "positions) or {space: NAME, span: N} (its neurons, N positions each, "
                        "or each a copy of space N's neurons)"
                    )
            total = sum(piece_size(piece, self.spaces, self.blocks) for piece in label)
            if total != n:
                raise SpecError(
                    f"{where}: composite {list(label)} adds up to {total} but the axis has length {n}"
                )
            refs = {piece.block_of for piece in label if isinstance(piece, Inner)}
            if len(refs) > 1:
                raise SpecError(
                    f"{where}: the positions inside blocks of composite {list(label)} read the "
                    f"blocks of axes {sorted(refs)}; they must all read one axis's"
                )

    def _check_inner(
        self, p: ParamSpec, i: int, label: Inner, n: int | None, where: str | None = None
    ) -> None:
        """Check an :class:`Inner` label (or composite piece, ``n=None``: its length is then
        checked with the composite's) of axis ``i``."""
        where = where or f"params.{p.name}.axes[{i}]"
        if label.space not in self.spaces:
            raise SpecError(
                f"{where}: unknown space {label.space!r}; valid: {', '.join(self.spaces)}"
            )
        shape = self.block_shape(label.space)
        if shape is None:
            raise SpecError(
                f"{where}: {label!r} needs a block space, but {label.space!r} has no blocks"
            )
        if n is not None and shape[1] != n:
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

    @property
    def ordered(self) -> bool:
        """Whether some parameter stores an axis in another order than its labels describe
        (:attr:`ParamSpec.order`)."""
        return any(p.order for p in self.params)

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
        ``num_batches_tracked``) are bookkeeping, not weights: they are not reported, and
        neither are empty ones (vit-pytorch's ``cls_token`` of shape ``(0, dim)`` when it pools
        by the mean), which hold no weight to read.
        """
        missing = [n for n in self.names if n not in state_dict]
        unexpected = [k for k, v in state_dict.items() if k not in self and not holds_no_weight(v)]
        misshaped = [
            f"{k}: expected {list(self[k].shape)}, got {list(v.shape[leading:])}"
            for k, v in state_dict.items()
            if k in self and tuple(v.shape[leading:]) != self[k].shape
        ]
        lines = mismatch_lines(missing, unexpected, misshaped)
        if lines:
            if missing and (hint := renaming_hint(self.names, state_dict)):
                lines.append(hint)
            raise StateDictMismatchError(
                "state_dict does not match the weight-space spec:\n  " + "\n  ".join(lines)
            )

    # ---- YAML / dict ----------------------------------------------------------------------

    def to_dict(self) -> dict:
        """Plain-data form (what :meth:`to_yaml` writes)."""
        return spec_to_dict(self)

    @classmethod
    def from_dict(cls, data: Any, *, source: str = "<dict>") -> WeightSpaceSpec:
        """Build from plain data, with errors that name ``source`` and the key path."""
        try:
            return cls(**spec_fields(data))
        except SpecError as e:
            raise SpecError(f"{source}: {e}") from None

    def to_yaml(self, path: str | os.PathLike | None = None) -> str:
        """Write the canonical YAML text (to ``path`` if given) and return it."""
        text = spec_to_yaml(self)
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


def mismatch_lines(missing: list, unexpected: list, misshaped: list) -> list[str]:
    """The lines of a mismatch report (state_dicts, features): the missing, unexpected and
    mis-shaped keys, each kind on one line, none for a kind that is empty.

    >>> mismatch_lines(["a.bias"], [], ["a.weight: expected [2], got [3]"])
    ['missing keys: a.bias', 'mis-shaped keys: a.weight: expected [2], got [3]']
    """
    lines = []
    if missing:
        lines.append(f"missing keys: {', '.join(missing)}")
    if unexpected:
        lines.append(f"unexpected keys: {', '.join(map(str, unexpected))}")
    if misshaped:
        lines.append("mis-shaped keys: " + "; ".join(misshaped))
    return lines


def renaming_hint(names: Sequence[str], state_dict: Mapping[str, Any]) -> str:
    """What would make ``state_dict`` hold the spec's ``names``, where one change does: the
    weights nested one level down (a checkpoint's ``{"state_dict": ..., "epoch": 3}``), every
    key carrying a prefix (``module.`` from DataParallel or DistributedDataParallel,
    ``_orig_mod.`` from torch.compile), or every name carrying one the keys lack (a spec traced
    from a wrapper of the model). ``""`` otherwise.

    >>> renaming_hint(["fc.weight"], {"module.fc.weight": 0})
    "every key carries the prefix 'module.' (as DataParallel, DistributedDataParallel and torch.compile save them): strip it, {k.removeprefix('module.'): v for k, v in state_dict.items()}"
    >>> renaming_hint(["fc.weight"], {"model": {"fc.weight": 0}, "epoch": 3})
    "the weights are nested under 'model': pass state_dict['model']"
    """
    names = list(names)
    if not names:
        return ""
    for k, v in state_dict.items():
        if isinstance(v, Mapping) and all(n in v for n in names):
            return f"the weights are nested under {k!r}: pass state_dict[{k!r}]"
    keys = [k for k in state_dict if isinstance(k, str)]
    for key in keys:
        if key.endswith(names[0]) and key != names[0]:
            prefix = key[: len(key) - len(names[0])]
            if all(prefix + n in state_dict for n in names):
                return (
                    f"every key carries the prefix {prefix!r} (as DataParallel, "
                    "DistributedDataParallel and torch.compile save them): strip it, "
                    f"{{k.removeprefix({prefix!r}): v for k, v in state_dict.items()}}"
                )
    for key in keys:
        if names[0].endswith(key) and key != names[0]:
            prefix = names[0][: len(names[0]) - len(key)]
            if all(n.startswith(prefix) and n[len(prefix) :] in state_dict for n in names):
                return (
                    f"every name of the spec carries the prefix {prefix!r}, which the keys "
                    "lack (a spec traced from a wrapper of the model): add it, "
                    f"{{{prefix!r} + k: v for k, v in state_dict.items()}}"
                )
    return ""


def holds_no_weight(value: Any) -> bool:
    """Whether a state_dict entry is no weight of a spec: an integer counter (e.g.
    ``num_batches_tracked``), an empty tensor (a parameter of shape ``(0, dim)``), or no
    tensor at all (a module's ``get_extra_state()``, neuraloperator's metadata dict)."""
    if not isinstance(value, torch.Tensor):
        return True
    return is_counter(value) or value.numel() == 0


def is_counter(value: Any) -> bool:
    """Whether a state_dict entry is an integer counter (e.g. ``num_batches_tracked``)."""
    return isinstance(value, torch.Tensor) and not (value.is_floating_point() or value.is_complex())
