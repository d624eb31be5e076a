"""Front end: ``nn.Module`` -> verified :class:`~nfncompile.spec.WeightSpaceSpec`.

Takes a model and an example input; returns the weight-space spec of its neuron symmetries
(and, with :func:`trace_with_report`, a report of what tied and what broke them). The passes,
one module each: torch.fx tracing with shape propagation (:mod:`.fx`, einops' calls read
through :mod:`.einops_backend`, ``torch.vmap`` as its loop through :mod:`.vmap`, a check that
raises taken as passing by :mod:`.checks`); the label-propagation analysis (:mod:`.analysis`, over the
abstract values of :mod:`.labels`) and its op rules (:mod:`.rules`, by op family, with the
registry to add one); the symmetry graph it exports
(:mod:`.graph`); the spaces and block permutations read off it (:mod:`.spaces`) into one
derivation record (:mod:`.derivation`); numerical verification (:mod:`.verification`); the
report over the record (:mod:`.report`); drawing (:mod:`.drawing`) and :func:`trace` itself
(:mod:`.tracing`).

May import: the contract (errors, files, spec, features, testing).
"""

from .graph import build_symmetry_graph
from .rules import (
    FUNCTION_RULES,
    METHOD_RULES,
    MODULE_RULES,
    register_function,
    register_method,
    register_module,
)
from .tracing import TraceReport, trace, trace_with_report
from .verification import VerifyReport, verify

__all__ = [
    "trace",
    "trace_with_report",
    "TraceReport",
    "verify",
    "VerifyReport",
    "build_symmetry_graph",
    "FUNCTION_RULES",
    "METHOD_RULES",
    "MODULE_RULES",
    "register_function",
    "register_method",
    "register_module",
]
