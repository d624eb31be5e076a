"""Neuron spaces and block permutations, and the immutable mapping that holds them."""

from __future__ import annotations

import numbers
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import SpecError
from .labels import ROLES, _is_int

__all__ = ["Space", "Blocks", "SpaceMap"]


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
        object.__setattr__(self, "size", _integer(self.size))
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
        they are not ``fixed`` and every space that shares them is permutable in the spec's
        mode.
    fixed : bool
        Blocks that stay in place in every mode while the neurons inside each block still
        permute on their own, block by block (the direct product of one symmetric group per
        block): an ensemble's members that each read their own data, experts routed by their
        index. Declared by the tracer or by hand (``{count: 3, fixed: true}``).

    Examples
    --------
    >>> Blocks("g", 4)
    Blocks('g', 4)
    >>> Blocks("members", 3, fixed=True)
    Blocks('members', 3, fixed=True)
    """

    name: str
    count: int
    permutable: bool = True
    fixed: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise SpecError(f"block permutation name must be a non-empty string, got {self.name!r}")
        object.__setattr__(self, "count", _integer(self.count))
        if not _is_int(self.count) or self.count < 1:
            raise SpecError(
                f"blocks {self.name!r}: count must be a positive int, got {self.count!r}"
            )
        if not isinstance(self.fixed, bool):
            raise SpecError(
                f"blocks {self.name!r}: fixed must be true or false, got {self.fixed!r}"
            )

    def __repr__(self) -> str:
        if self.fixed:
            return f"Blocks({self.name!r}, {self.count}, fixed=True)"
        extra = "" if self.permutable else ", permutable=False"
        return f"Blocks({self.name!r}, {self.count}{extra})"


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


def _integer(x: Any) -> Any:
    """``x`` as a Python int where it is an integer of another type (a NumPy integer, which
    torch takes for a layer's width: MONAI's ``nn.Linear(z, np.prod(shape) * c)``); else
    as it is, for the checks to refuse.

    >>> import numpy as np
    >>> _integer(np.int64(3)), _integer(True), _integer(2.0)
    (3, True, 2.0)
    """
    if isinstance(x, numbers.Integral) and not isinstance(x, bool):
        return int(x)
    return x
