"""Front end: ``nn.Module`` -> verified :class:`~nfncompile.spec.WeightSpaceSpec`.

Takes a model and an example input; returns the weight-space spec of its neuron symmetries
(and, with :func:`trace_with_report`, a report of what tied and what broke them). The passes,
one module each: torch.fx tracing with shape propagation (:mod:`.fx`), the label-propagation
analysis and its op rules (:mod:`.graph`), the spaces read off the symmetry graph
(:mod:`.spaces`), numerical verification (:mod:`.verification`), drawing (:mod:`.drawing`) and
:func:`trace` itself (:mod:`.tracing`).

May import: the contract (errors, files, spec, features, testing).
"""

from .tracing import TraceReport, trace, trace_with_report
from .verification import VerifyReport, verify

__all__ = ["trace", "trace_with_report", "TraceReport", "verify", "VerifyReport"]
