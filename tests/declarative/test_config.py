"""Tests of nfncompile.declarative.config: model spec files, the stack and top-level checks."""

from __future__ import annotations

import pytest

from nfncompile.declarative.builder import load
from nfncompile.declarative.config import ModelConfig
from nfncompile.declarative.schema_export import schema
from nfncompile.declarative.validate import parse, to_dict
from nfncompile.files import load_yaml
from tests.declarative.helpers import EXAMPLES, HEAD, LIN, POOL, error, nfn


def test_examples_exist():
    names = {p.name for p in EXAMPLES}
    assert names >= {
        "small_cnn_hnp.yaml",
        "small_cnn_np.yaml",
        "siren_np.yaml",
        "siren_edit_hnp.yaml",
        "statnn.yaml",
        "mlp_baseline.yaml",
    }


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_validates_and_round_trips(path):
    cfg = load(path)
    data, _ = load_yaml(path)
    assert parse(ModelConfig, to_dict(cfg)) == cfg
    assert parse(ModelConfig, to_dict(cfg, omit_defaults=True)) == cfg
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.Draft202012Validator(schema()).validate(data)


def test_exactly_one_model_kind():
    assert error({}) == "<dict>: expected exactly one of nfn, stat_nn, mlp; got none"
    assert error({"nfn": {"layers": [LIN]}, "mlp": {"out_features": 1}}) == (
        "<dict>: expected exactly one of nfn, stat_nn, mlp; got nfn, mlp"
    )
    assert error({"nfm": {}}).startswith(
        "<dict>: nfm: unknown key (did you mean 'nfn'?); valid keys: nfn, stat_nn, mlp"
    )


def test_layer_errors_are_path_qualified(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text(
        "nfn:\n  layers:\n    - {type: nf_linear, channels: 8}\n    - {type: activation}\n"
        "    - {type: nf_linear, channels: -3}\n"
    )
    assert error(path) == f"{path}: nfn.layers[2].channels: expected a positive int, got -3"
    path.write_text("nfn:\n  layers:\n    - {type: nf_linear, chanels: 8}\n")
    assert error(path) == (
        f"{path}: nfn.layers[0].chanels: unknown key (did you mean 'channels'?); "
        "valid keys: channels, io_embed, bias, basis, width, max_fold"
    )
    path.write_text("nfn:\n  layers:\n    - {type: nf_linear, channels: 8\n")
    assert error(path).startswith(f"{path}: line 4, column 1: malformed YAML: ")


def test_stack_order_is_checked():
    assert error(nfn(LIN, POOL, LIN, {"type": "io_encoding"})) == (
        "<dict>: nfn.layers[2]: nf_linear after nf_pool: nf_pool (layers[1]) turned the "
        "weight-space features into invariant (B, F) features; only mlp layers may follow it"
    )
    assert error(nfn(LIN, POOL, {"type": "io_encoding"})).startswith(
        "<dict>: nfn.layers[2]: io_encoding after nf_pool: "
    )
    assert error(nfn(LIN, POOL, POOL)).startswith("<dict>: nfn.layers[2]: nf_pool after nf_pool")
    assert error(nfn(LIN, HEAD)) == (
        "<dict>: nfn.layers[1]: mlp before nf_pool: an mlp reads invariant (B, F) features; "
        "add {type: nf_pool} before it"
    )
    assert error(nfn(mode="hnp")) == (
        "<dict>: nfn.layers: expected a non-empty list, got an empty list"
    )


def test_symmetry_breaking_layers_need_hnp():
    assert error(nfn(LIN, {"type": "io_encoding"}, mode="np")) == (
        "<dict>: nfn.layers[1]: io_encoding with mode np: encoding the positions of input and "
        "output neurons breaks their permutation symmetry; use mode: hnp"
    )
    assert error(nfn({**LIN, "io_embed": True}, mode="np")).startswith(
        "<dict>: nfn.layers[0]: nf_linear with io_embed under mode np: "
    )


def test_mlp_baseline_output_fields():
    assert error({"mlp": {}}) == (
        "<dict>: mlp.out_features: missing required key (output is 'invariant')"
    )
    assert error({"mlp": {"output": "weight_space", "out_features": 2}}).startswith(
        "<dict>: mlp.out_features: only for output: invariant"
    )
    assert error({"mlp": {"out_features": 2, "out_channels": 2}}).startswith(
        "<dict>: mlp.out_channels: only for output: weight_space"
    )
    assert load({"mlp": {"output": "weight_space"}}).mlp.out_channels == 1
