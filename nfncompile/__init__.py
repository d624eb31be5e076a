"""nfncompile: compile permutation-equivariant neural functionals for any MLP or CNN.

A network's weights are read by torch.fx, their neuron symmetries derived into a
:class:`WeightSpaceSpec`, and equivariant NF-Layers generated for it::

    import nfncompile as nfc
    spec = nfc.trace(model, example_input)          # verified weight-space spec
    layer = nfc.NFLinear(spec, 1, 16, mode="hnp")   # generated, fused NF-Layer
    feats = nfc.WeightSpaceFeatures.from_state_dicts(spec, [model.state_dict()])
    out = layer(feats)

The package is the pipeline, one subpackage per stage (each may import only the contract and
the stages before it)::

    errors, files, spec, features, testing    the contract every stage shares
    frontend/       nn.Module -> verified WeightSpaceSpec
    backend/        WeightSpaceSpec -> orbit basis -> fused plan -> generated fx.GraphModule
    nn/             NFLinear, NFPool, pointwise modules, StatFeatures
    architectures/  the catalogue of source networks and the model-name resolver
    declarative/    YAML NFN specs -> validated configs -> built models (nfc.build)
    zoo/            model zoos from embedded data
    experiments/    training, distributed helpers, the paper's tasks
    cli/            the nfncompile command (one file per subcommand)

Public names are loaded lazily so that ``import nfncompile`` stays fast.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

__version__ = "0.1.0"

#: Public name -> the stage that defines it.
_EXPORTS = {
    # the contract
    "Space": "spec",
    "ParamSpec": "spec",
    "WeightSpaceSpec": "spec",
    "Permutation": "spec",
    "WeightSpaceFeatures": "features",
    # front end
    "trace": "frontend",
    "trace_with_report": "frontend",
    "TraceReport": "frontend",
    "verify": "frontend",
    "VerifyReport": "frontend",
    # modules users compose
    "NFLinear": "nn",
    "NFPool": "nn",
    "NFActivation": "nn",
    "NFNorm": "nn",
    "NFDropout": "nn",
    "IOEncoding": "nn",
    "StatFeatures": "nn",
    # declarative
    "build": "declarative",
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


def _stage(name: str) -> ModuleType:
    """Import one stage (explicit imports, so that the layering test sees them)."""
    if name == "spec":
        from . import spec as module
    elif name == "features":
        from . import features as module
    elif name == "errors":
        from . import errors as module
    elif name == "frontend":
        from . import frontend as module
    elif name == "nn":
        from . import nn as module
    else:
        from . import declarative as module
    return module


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(_stage(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'nfncompile' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
