"""Declarative NFNs: YAML (or dict) specs -> validated configs -> built torch models.

Takes an NFN YAML path or mapping; returns the model it describes (:func:`build`): an NFN of
NF-Layers, the StatNN baseline or a flat MLP.

* :mod:`.validate`: plain data -> frozen dataclasses, path-qualified errors (:func:`parse`,
  :func:`to_dict`);
* :mod:`.schema_export`: JSON Schema from the same dataclasses (:func:`schema`, :func:`write_schema`);
* :mod:`.config`: the dataclasses of model spec files (:class:`ModelConfig` and its parts);
* :mod:`.weight_space`: the spec a ``weight_space`` section names, with the one trace cache
  (:func:`resolve_weight_space`);
* :mod:`.models`: the modules built (:class:`NFN`, :class:`StatNN`, :class:`FlatMLP`);
* :mod:`.builder`: :func:`load`, :func:`build`, :func:`build_model`.

May import: the contract, frontend, nn, architectures.
"""

from .builder import build, build_model, load
from .config import ModelConfig, WeightSpaceConfig
from .models import NFN, FlatMLP, StatNN
from .schema_export import schema, write_schema
from .validate import parse, to_dict
from .weight_space import resolve_weight_space

__all__ = [
    "build",
    "build_model",
    "load",
    "ModelConfig",
    "WeightSpaceConfig",
    "NFN",
    "StatNN",
    "FlatMLP",
    "resolve_weight_space",
    "parse",
    "to_dict",
    "schema",
    "write_schema",
]
