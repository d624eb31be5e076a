"""The source networks: the catalogue of architectures whose weights NFNs read, by family, and
the resolver of model names (catalogue name, factory name or ``MODULE:FACTORY``).

Takes a name (and keyword arguments); returns an ``nn.Module`` and its example input shape.
It sits below :mod:`nfncompile.declarative` (a YAML spec may name a model to trace) and above
:mod:`nfncompile.nn` (whose activation table its factories use).

May import: the contract, nn.
"""

from .catalogue import *  # noqa: F403
from .catalogue import __all__  # noqa: F401
