"""Tests of nfncompile.declarative.schema_export: JSON Schema generated from the config dataclasses."""

from __future__ import annotations

import json

import pytest

from nfncompile.declarative.builder import load
from nfncompile.declarative.schema_export import json_schema, schema, write_schema
from nfncompile.declarative.validate import parse
from nfncompile.errors import ConfigError
from tests.declarative.helpers import LIN, SPECS, nfn
from tests.declarative.test_validate import LAYERS, File


def test_json_schema_structure():
    schema = json_schema(File, title="t")
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["title"] == "t" and schema["required"] == ["nfn"]
    defs = schema["$defs"]
    assert set(defs) == {"Net", "Linear", "Act", "Drop", "Head", "Source"}
    linear = defs["Linear"]
    assert linear["description"] == "A linear layer."
    assert linear["properties"]["type"] == {"const": "nf_linear"}
    assert linear["properties"]["channels"] == {
        "type": "integer",
        "minimum": 1,
        "description": "output channels",
    }
    assert linear["required"] == ["channels"] and linear["additionalProperties"] is False
    assert defs["Act"]["properties"]["fn"]["enum"] == ["relu", "tanh", "gelu"]
    layers = defs["Net"]["properties"]["layers"]
    assert layers["minItems"] == 1
    assert layers["items"]["properties"]["type"]["enum"] == [
        "nf_linear",
        "activation",
        "dropout",
        "mlp",
    ]
    assert defs["Net"]["properties"]["mode"] == {"enum": ["np", "hnp"], "default": "np"}
    assert defs["Source"]["oneOf"] == [{"required": ["model"]}, {"required": ["spec"]}]
    assert defs["Net"]["properties"]["shape"]["prefixItems"] == [{"type": "integer"}] * 2


def test_json_schema_agrees_with_parse():
    jsonschema = pytest.importorskip("jsonschema")
    validator = jsonschema.Draft202012Validator(json_schema(File))
    validator.check_schema(validator.schema)
    good = {
        "nfn": {
            "layers": [
                {"type": "nf_linear", "channels": 3},
                {"type": "activation", "fn": "tanh"},
                {"type": "mlp", "hidden": [2]},
            ],
            "source": {"model": "m", "input_shape": [2, 1]},
            "size": [1],
        }
    }
    assert not list(validator.iter_errors(good))
    parse(File, good)
    bad = [
        {"nfn": {"layers": [{"type": "nf_linear", "chanels": 3}]}},
        {"nfn": {"layers": [{"type": "nf_linear", "channels": 0}]}},
        {"nfn": {"layers": [{"type": "nf_lin", "channels": 1}]}},
        {"nfn": {"layers": [{"type": "activation", "fn": "rleu"}]}},
        {"nfn": {"layers": []}},
        {"nfn": {"layers": LAYERS, "mode": "xp"}},
        {"nfn": {"layers": LAYERS, "source": {"model": "a", "spec": "b"}}},
        {"nfn": {"layers": LAYERS, "source": {}}},
        {"nfn": {"layers": LAYERS, "shape": [1, 2, 3]}},
        {"nfn": {"layers": LAYERS, "in_channels": True}},
    ]
    for data in bad:
        assert list(validator.iter_errors(data)), data
        with pytest.raises(ConfigError):
            parse(File, data)


def test_committed_schema_is_up_to_date():
    committed = (SPECS / "schema.json").read_text()
    assert committed == write_schema(), (
        "specs/schema.json is stale; regenerate it with "
        "python -c \"from nfncompile.declarative.schema_export import write_schema; write_schema('specs/schema.json')\""
    )
    assert json.loads(committed) == schema()


def test_write_schema_writes_the_file(tmp_path):
    text = write_schema(tmp_path / "s.json")
    assert (tmp_path / "s.json").read_text() == text
    assert json.loads(text)["$schema"] == "https://json-schema.org/draft/2020-12/schema"


def test_schema_rejects_what_parse_rejects():
    jsonschema = pytest.importorskip("jsonschema")
    validator = jsonschema.Draft202012Validator(schema())
    validator.check_schema(validator.schema)
    bad = [
        {},
        {"nfn": {"layers": [LIN]}, "mlp": {"out_features": 1}},
        nfn({"type": "nf_linear", "chanels": 4}),
        nfn({"type": "nf_linear", "channels": 0}),
        nfn({"type": "activation", "fn": "rleu"}),
        nfn(LIN, mode="xnp"),
        {"mlp": {"output": "both"}},
        {"stat_nn": {"head": {"out_features": 1}, "quantiles": [2.0]}},
        {"nfn": {"layers": [LIN], "weight_space": {"model": "a", "spec": "b"}}},
    ]
    for data in bad:
        assert list(validator.iter_errors(data)), data
        with pytest.raises(ConfigError):
            load(data)
