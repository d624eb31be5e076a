"""Torch modules users compose into NFNs: weight-space features in, features (or invariant
vectors) out.

:class:`NFLinear` (the compiled equivariant layer) and :class:`NFPool` (invariant pooling),
pointwise modules (:class:`NFActivation`, :class:`NFNorm`, :class:`NFDropout`,
:class:`IOEncoding`; the one activation table), and :class:`StatFeatures` (the StatNN baseline's
invariant statistics).

May import: the contract, backend.
"""

from .layers import NFLinear, NFPool
from .pointwise import IOEncoding, NFActivation, NFDropout, NFNorm
from .stats import StatFeatures

__all__ = ["NFLinear", "NFPool", "NFActivation", "NFNorm", "NFDropout", "IOEncoding", "StatFeatures"]
