"""Torch modules users compose into NFNs: weight-space features in, features (or invariant
vectors) out.

- :mod:`.linear`: :class:`NFLinear`, the compiled equivariant layer
- :mod:`.pool`: :class:`NFPool`, invariant pooling
- :mod:`.activation`, :mod:`.norm`, :mod:`.dropout`, :mod:`.encoding`: the pointwise modules
  :class:`NFActivation`, :class:`NFNorm`, :class:`NFDropout`, :class:`IOEncoding`
- :mod:`.activations`: the one activation table
- :mod:`.fourier`: :class:`FourierFeatures`, :class:`ThresholdFeatures`, encodings of weight
  values as extra channels
- :mod:`.stats`: :class:`StatFeatures`, the StatNN baseline's invariant statistics
- :mod:`.checks`: the feature checks every module runs on its input
- :mod:`.reorder`: :class:`~nfncompile.nn.reorder.Reorders`, reordered axes (a channel
  shuffle's, :attr:`~nfncompile.spec.ParamSpec.order`) put in label order for NFLinear

Every pointwise module maps :class:`~nfncompile.features.WeightSpaceFeatures` to features with
the same parameter names, so they chain with :class:`NFLinear` in a :class:`torch.nn.Sequential`:

================= ============================== =============================================
module            acts on                        equivariant under
================= ============================== =============================================
NFActivation      every entry separately         ``np`` and ``hnp``
NFNorm            the channel dim of each entry  ``np`` and ``hnp``
NFDropout         every entry separately         ``np`` and ``hnp`` (in distribution; eval: id)
IOEncoding        adds channels that encode the  ``hnp`` only (it breaks the symmetry of the
                  positions of input / output    input and output spaces on purpose)
                  neurons
FourierFeatures   adds sin / cos of every entry  ``np`` and ``hnp``
ThresholdFeatures adds soft indicators of every  ``np`` and ``hnp``
                  entry above thresholds
================= ============================== =============================================

May import: the contract, backend.
"""

from .activation import NFActivation
from .dropout import NFDropout
from .encoding import IOEncoding
from .fourier import FourierFeatures, ThresholdFeatures
from .linear import NFLinear
from .norm import NFNorm
from .pool import NFPool
from .stats import StatFeatures

__all__ = [
    "NFLinear",
    "NFPool",
    "NFActivation",
    "NFNorm",
    "NFDropout",
    "IOEncoding",
    "FourierFeatures",
    "ThresholdFeatures",
    "StatFeatures",
]
