"""Back end: :class:`~nfncompile.spec.WeightSpaceSpec` -> generated ``torch.fx.GraphModule``.

Takes a weight-space spec, a mode and channel counts; returns the orbit basis of the
equivariant linear maps (:mod:`.basis`), its fused execution plan (:mod:`.plan`) and the
generated module that runs it (:mod:`.codegen`). The torch modules users compose are in
:mod:`nfncompile.nn`.

May import: the contract (errors, files, spec, features, testing).
"""

from .basis import BlockRef, Term, block_refs, enumerate_basis, num_basis_dims
from .codegen import generate
from .plan import Plan, build_plan

__all__ = [
    "BlockRef",
    "Term",
    "block_refs",
    "enumerate_basis",
    "num_basis_dims",
    "Plan",
    "build_plan",
    "generate",
]
