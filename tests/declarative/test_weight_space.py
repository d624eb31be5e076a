"""Tests of nfncompile.declarative.weight_space: the weight_space section, tracing and its cache."""

from __future__ import annotations

import torch

from nfncompile.declarative.builder import build, load
from nfncompile.declarative.validate import to_dict
from nfncompile.declarative.weight_space import resolve_weight_space
from tests.declarative.helpers import LIN, MLP_SPEC, error
from tests.frontend.helpers import TOKENS_MODULE


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


def test_channel_dim_names_the_sequence_models_features(tmp_path):
    (tmp_path / "tokens.py").write_text(TOKENS_MODULE)
    model = f"{tmp_path / 'tokens.py'}:make"

    def ws(**extra: object) -> dict:
        section = {"model": model, "input_shape": [2, 5, 4], **extra}
        return {"stat_nn": {"weight_space": section, "head": {"out_features": 1}}}

    spec = build(ws(channel_dim=-1)).spec
    assert spec.spaces["in"].size == 4 and spec["pos"].axes == (None, "in")
    assert build(ws()).spec.spaces["in"].size == 5  # dim 1: the sequence
    assert error(ws(channel_dim=3)) == (
        "<dict>: stat_nn.weight_space.channel_dim: channel_dim=3 does not fit input 1 of shape "
        "(2, 5, 4): give a dim in -3..2 (its neurons' dim), or None for an input without neurons"
    )
    assert error(ws(channel_dim="last")).startswith("<dict>: stat_nn.weight_space.channel_dim:")
    with_spec = {"spec": "x.yaml", "channel_dim": -1}
    assert error({"mlp": {"weight_space": with_spec, "out_features": 1}}) == (
        "<dict>: mlp.weight_space.channel_dim: only used with model, not with spec"
    )
