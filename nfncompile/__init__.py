"""nfncompile: compile permutation-equivariant neural functionals for any MLP or CNN.

A network's weights are read by torch.fx, their neuron symmetries derived into a
:class:`WeightSpaceSpec`, and equivariant NF-Layers generated for it::

    import nfncompile as nfc
    spec = nfc.trace(model, example_input)          # verified weight-space spec
    layer = nfc.NFLinear(spec, 1, 16, mode="hnp")   # generated, fused NF-Layer
    feats = nfc.WeightSpaceFeatures.from_state_dicts(spec, [model.state_dict()])
    out = layer(feats)

Public names are loaded lazily so that ``import nfncompile`` stays fast.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    # spec stage
    "Space": "spec",
    "ParamSpec": "spec",
    "WeightSpaceSpec": "spec",
    "Permutation": "spec",
    "WeightSpaceFeatures": "features",
    # front end
    "trace": "frontend",
    "trace_with_report": "frontend",
    "TraceReport": "frontend",
    "verify": "verification",
    "VerifyReport": "verification",
    # back end
    "NFLinear": "layers",
    "NFPool": "layers",
    "NFActivation": "pointwise",
    "NFNorm": "pointwise",
    "NFDropout": "pointwise",
    "IOEncoding": "pointwise",
    "StatFeatures": "stats",
    # declarative
    "build": "builder",
    # errors
    "NfnCompileError": "errors",
    "SpecError": "errors",
    "StateDictMismatchError": "errors",
    "FeatureMismatchError": "errors",
    "TraceError": "errors",
    "SymmetryError": "errors",
    "ConfigError": "errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        module = importlib.import_module(f".{_EXPORTS[name]}", __name__)
        value = getattr(module, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'nfncompile' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
