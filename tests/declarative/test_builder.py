"""Tests of nfncompile.declarative.builder: model spec files, their schema, and the modules they build."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import nfncompile as nfc
from nfncompile.declarative.builder import build, load
from nfncompile.declarative.config import ModelConfig, NFLinearLayer
from nfncompile.declarative.models import NFN, FlatMLP, StatNN
from nfncompile.declarative.schema_export import schema, write_schema
from nfncompile.declarative.validate import parse, to_dict
from nfncompile.declarative.weight_space import resolve_weight_space
from nfncompile.errors import ConfigError, FeatureMismatchError
from nfncompile.features import WeightSpaceFeatures
from nfncompile.files import load_yaml
from nfncompile.spec import WeightSpaceSpec
from nfncompile.testing import assert_equivariant, assert_invariant, mlp_spec, random_features

ROOT = Path(__file__).resolve().parents[2]
SPECS = ROOT / "specs"
EXAMPLES = sorted((SPECS / "nfn").glob("*.yaml"))

MLP_SPEC = mlp_spec([2, 3, 3, 2])


def feats(spec: WeightSpaceSpec, channels: int = 1, batch: int = 3) -> WeightSpaceFeatures:
    g = torch.Generator().manual_seed(0)
    return random_features(spec, channels, batch, generator=g, dtype=torch.float32)


def nfn(*layers: dict, mode: str = "hnp", **extra: object) -> dict:
    return {"nfn": {"mode": mode, "layers": list(layers), **extra}}


def error(data: object, **kw: object) -> str:
    with pytest.raises(ConfigError) as info:
        build(data, **kw)
    return str(info.value)


LIN = {"type": "nf_linear", "channels": 4}
POOL = {"type": "nf_pool"}
HEAD = {"type": "mlp", "hidden": [8], "out_features": 3}

# --------------------------------------------------------------------------------------------
# the committed schema and the example files
# --------------------------------------------------------------------------------------------


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


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_validates_and_round_trips(path):
    cfg = load(path)
    data, _ = load_yaml(path)
    assert parse(ModelConfig, to_dict(cfg)) == cfg
    assert parse(ModelConfig, to_dict(cfg, omit_defaults=True)) == cfg
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.Draft202012Validator(schema()).validate(data)


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


# --------------------------------------------------------------------------------------------
# validation of the stack and the top level
# --------------------------------------------------------------------------------------------


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
        "valid keys: channels, io_embed, bias"
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


def test_weight_space_section_errors(tmp_path):
    ws = {"layers": [LIN]}
    assert error({"nfn": {**ws, "weight_space": {}}}) == (
        "<dict>: nfn.weight_space: expected exactly one of model, spec; got neither"
    )
    assert error({"nfn": {**ws, "weight_space": {"spec": "a.yaml", "kwargs": {"x": 1}}}}) == (
        "<dict>: nfn.weight_space.kwargs: only used with model, not with spec"
    )
    assert error({"nfn": ws}) == (
        "<dict>: nfn.weight_space: missing required key (or pass spec= to build)"
    )
    path = tmp_path / "m.yaml"
    path.write_text("nfn:\n  weight_space: {spec: missing.yaml}\n  layers: [{type: nf_pool}]\n")
    assert error(path) == (
        f"{path}: nfn.weight_space.spec: no such file {str(tmp_path / 'missing.yaml')!r} "
        f"(relative paths start at {tmp_path})"
    )
    (tmp_path / "bad_ws.yaml").write_text("spaces: {}\nparams: {}\nextra: 1\n")
    path.write_text("nfn:\n  weight_space: {spec: bad_ws.yaml}\n  layers: [{type: nf_pool}]\n")
    assert error(path).startswith(
        f"{path}: nfn.weight_space.spec: {tmp_path / 'bad_ws.yaml'}: extra: unknown key"
    )


def test_unknown_model_and_bad_kwargs():
    def ws(**w: object) -> dict:
        return {"stat_nn": {"weight_space": w, "head": {"out_features": 1}}}

    assert error(ws(model="small_cn")).startswith(
        "<dict>: stat_nn.weight_space.model: unknown model 'small_cn' (did you mean 'small_cnn'?)"
    )
    assert error(ws(model="small_cnn", kwargs={"chanels": 4})).startswith(
        "<dict>: stat_nn.weight_space.kwargs: small_cnn rejected keyword arguments"
    )
    assert error(ws(model="small_cnn", kwargs={"channels": -1})) == (
        "<dict>: stat_nn.weight_space.kwargs: channels must be a positive int, got -1"
    )
    assert error(ws(model="nfncompile.architectures:mlp")) == (
        "<dict>: stat_nn.weight_space.input_shape: missing required key (only catalogue "
        "models have a default example input)"
    )
    assert error(ws(model="nfncompile.no_such_module:f")).startswith(
        "<dict>: stat_nn.weight_space.model: cannot import module 'nfncompile.no_such_module'"
    )
    assert error(ws(model="nfncompile.architectures:nope", input_shape=[1])) == (
        "<dict>: stat_nn.weight_space.model: 'nfncompile.architectures' has no attribute 'nope'"
    )


# --------------------------------------------------------------------------------------------
# building, with a given weight space
# --------------------------------------------------------------------------------------------


def test_build_nfn_invariant_hnp_with_io_encoding():
    torch.manual_seed(0)
    net = build(
        nfn(
            {**LIN, "io_embed": True},
            {"type": "activation", "fn": "gelu"},
            {"type": "norm"},
            {"type": "io_encoding", "num_freqs": 2},
            {"type": "dropout", "p": 0.1},
            {"type": "nf_linear", "channels": 5},
            POOL,
            HEAD,
        ),
        spec=MLP_SPEC,
    )
    assert isinstance(net, NFN)
    assert (net.mode, net.output, net.out_features, net.out_channels) == (
        "hnp",
        "invariant",
        3,
        None,
    )
    assert net.spec == MLP_SPEC.with_mode("hnp") and net.config.nfn.layers[0].io_embed
    assert net(feats(MLP_SPEC)).shape == (3, 3)
    assert_invariant(net, MLP_SPEC, mode="hnp")


def test_build_nfn_weight_space_output_np():
    torch.manual_seed(0)
    net = build(
        nfn(LIN, {"type": "activation"}, {"type": "nf_linear", "channels": 2}, mode="np"),
        spec=MLP_SPEC,
    )
    assert (net.output, net.out_channels, net.out_features) == ("weight_space", 2, None)
    y = net(feats(MLP_SPEC))
    assert isinstance(y, WeightSpaceFeatures) and y.channels == 2
    assert {k: tuple(v.shape[2:]) for k, v in y.items()} == {
        p.name: p.shape for p in MLP_SPEC.params
    }
    assert_equivariant(net, MLP_SPEC, mode="np")


def test_nfn_in_channels_are_checked_at_forward():
    net = build(nfn(LIN, POOL, HEAD, in_channels=2), spec=MLP_SPEC)
    assert net(feats(MLP_SPEC, channels=2)).shape == (3, 3)
    with pytest.raises(FeatureMismatchError, match=r"NFN\(in_channels=2\) got features with 1"):
        net(feats(MLP_SPEC, channels=1))


def test_build_stat_nn():
    net = build(
        {"stat_nn": {"quantiles": [0.5], "head": {"hidden": [4], "out_features": 2}}},
        spec=MLP_SPEC,
    )
    assert isinstance(net, StatNN) and net.mode is None and net.output == "invariant"
    assert net.stats.num_features == len(MLP_SPEC.params) * 3
    assert net(feats(MLP_SPEC)).shape == (3, 2)


def test_build_flat_mlp_both_outputs():
    net = build({"mlp": {"hidden": [8], "out_features": 4, "dropout": 0.5}}, spec=MLP_SPEC)
    assert isinstance(net, FlatMLP) and net(feats(MLP_SPEC)).shape == (3, 4)
    total = sum(p.numel for p in MLP_SPEC.params)
    assert net.net[0].in_features == total and isinstance(net.net[2], torch.nn.Dropout)

    net = build(
        {"mlp": {"hidden": [8], "output": "weight_space", "out_channels": 2, "in_channels": 3}},
        spec=MLP_SPEC,
    )
    assert net.net[0].in_features == 3 * total and net.net[-1].out_features == 2 * total
    y = net(feats(MLP_SPEC, channels=3))
    assert y.channels == 2 and list(y) == list(MLP_SPEC.names)
    assert all(y[p.name].shape == (3, 2, *p.shape) for p in MLP_SPEC.params)
    with pytest.raises(FeatureMismatchError, match="FlatMLP"):
        net(WeightSpaceFeatures({"l1.weight": torch.zeros(3, 3, 3, 2)}))


def test_spec_file_is_read_relative_to_the_yaml(tmp_path):
    (tmp_path / "ws").mkdir()
    MLP_SPEC.to_yaml(tmp_path / "ws" / "mlp.yaml")
    path = tmp_path / "model.yaml"
    path.write_text("stat_nn:\n  weight_space: {spec: ws/mlp.yaml}\n  head: {out_features: 1}\n")
    net = build(path)
    assert net.spec == MLP_SPEC
    assert resolve_weight_space(load(path).stat_nn.weight_space, tmp_path) == MLP_SPEC
    # a mapping resolves relative paths from base_dir
    data = {"mlp": {"weight_space": {"spec": "ws/mlp.yaml"}, "out_features": 1}}
    assert build(data, base_dir=tmp_path).spec == MLP_SPEC


def test_build_accepts_a_model_config_and_is_exported():
    cfg = load(nfn(LIN, POOL, HEAD))
    assert isinstance(cfg.nfn.layers[0], NFLinearLayer)
    net = nfc.build(cfg, spec=MLP_SPEC)
    assert net.config is cfg
    with pytest.raises(ConfigError, match="expect a YAML path, a mapping or a ModelConfig"):
        build(3)


# --------------------------------------------------------------------------------------------
# building from traced models: every example file
# --------------------------------------------------------------------------------------------


def _zoo(cfg: ModelConfig, n: int) -> list[dict]:
    from nfncompile.architectures.catalogue import CATALOGUE

    ws = cfg.body.weight_space
    models = []
    for seed in range(n):
        torch.manual_seed(seed)
        models.append(CATALOGUE[ws.model].factory(**ws.kwargs).state_dict())
    return models


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_build_every_example_and_run_forward(path):
    cfg = load(path)
    torch.manual_seed(0)
    net = build(path)
    assert net.config == cfg
    x = WeightSpaceFeatures.from_state_dicts(net.spec, _zoo(cfg, 3))
    with torch.no_grad():
        y = net.eval()(x)
    if net.output == "invariant":
        assert y.shape == (3, net.out_features)
    else:
        assert isinstance(y, WeightSpaceFeatures) and y.channels == net.out_channels
        assert {k: v.shape[2:] for k, v in y.items()} == {k: v.shape[2:] for k, v in x.items()}
    assert torch.isfinite(y if isinstance(y, torch.Tensor) else y.flatten()).all()


def test_tracing_is_seeded_cached_and_leaves_the_global_rng_alone():
    from nfncompile.declarative.config import WeightSpaceConfig

    cfg = WeightSpaceConfig(model="mlp", kwargs={"hidden": [5]}, input_shape=(2, 16))
    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    spec = resolve_weight_space(cfg)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert [p.shape for p in spec.params] == [(5, 16), (5,), (10, 5), (10,)]
    assert resolve_weight_space(cfg) is spec
    net = build({"mlp": {"weight_space": to_dict(cfg), "out_features": 1}})
    assert net.spec == spec
