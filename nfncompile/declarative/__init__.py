"""Declarative NFNs: YAML (or dict) specs -> validated configs -> built torch models.

Takes an NFN YAML path or mapping; returns the model it describes (:func:`build`): an NFN of
NF-Layers, the StatNN baseline or a flat MLP. Validation is dataclass-driven with path-qualified
errors (:mod:`.validate`), and a JSON Schema for editors is exported from the same dataclasses.

May import: the contract, frontend, nn, architectures.
"""

from .builder import build, build_model, load, resolve_weight_space, schema, write_schema

__all__ = ["build", "build_model", "load", "resolve_weight_space", "schema", "write_schema"]
