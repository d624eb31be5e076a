"""Back end: :class:`~nfncompile.spec.WeightSpaceSpec` -> generated ``torch.fx.GraphModule``.

Takes a weight-space spec, a mode, a basis kind and channel counts; returns the tiles the group
acts on (:mod:`.tiles`), the orbit basis of the equivariant linear maps (:mod:`.basis`), the
relation vocabulary of the linear-size basis (:mod:`.relations`), the fused execution plan
(:mod:`.plan`) and the generated module that runs it (:mod:`.codegen`), with the tensor
operations it calls (:mod:`.fused`). The torch modules users compose are in
:mod:`nfncompile.nn`.

May import: the contract (errors, files, spec, features, testing).
"""

from .basis import Coupling, Side, Term, couplings, enumerate_basis, num_basis_dims
from .tiles import Dim, Factor, TileRef, tile_refs

__all__ = [
    "Coupling",
    "Side",
    "Term",
    "couplings",
    "enumerate_basis",
    "num_basis_dims",
    "Dim",
    "Factor",
    "TileRef",
    "tile_refs",
]
