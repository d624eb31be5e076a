"""Tests of nfncompile.declarative.validate: the dataclass-driven validator and to_dict."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nfncompile.declarative.validate import parse, to_dict, type_tag
from nfncompile.errors import ConfigError, FieldError, NfnCompileError

# --------------------------------------------------------------------------------------------
# a small config tree, shaped like an NFN spec
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Linear:
    """A linear layer."""

    type: ClassVar[str] = "nf_linear"
    channels: int = field(metadata={"min": 1, "help": "output channels"})
    io_embed: bool = False


@dataclass(frozen=True)
class Act:
    type: ClassVar[str] = "activation"
    fn: str = field(default="relu", metadata={"choices": lambda: ("relu", "tanh", "gelu")})


@dataclass(frozen=True)
class Drop:
    type: ClassVar[str] = "dropout"
    p: float = field(default=0.5, metadata={"min": 0, "max": 1})


@dataclass(frozen=True)
class Head:
    type: Literal["mlp"] = "mlp"
    hidden: tuple[int, ...] = field(default=(), metadata={"min": 1})
    out_features: int = 1


@dataclass(frozen=True)
class Source:
    _exactly_one: ClassVar = (("model", "spec"),)
    model: str | None = None
    spec: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)
    input_shape: tuple[int, ...] | None = field(default=None, metadata={"min": 1, "min_items": 1})


@dataclass(frozen=True)
class Net:
    layers: tuple[Linear | Act | Drop | Head, ...] = field(metadata={"min_items": 1})
    source: Source | None = None
    mode: Literal["np", "hnp"] = "np"
    in_channels: int = field(default=1, metadata={"min": 1})
    lr: float = 1e-3
    tags: list[str] = field(default_factory=list)
    shape: tuple[int, int] = (1, 1)
    size: int | tuple[int, ...] = 3
    extra: Any = None

    def __post_init__(self) -> None:
        if self.mode == "np" and any(isinstance(x, Drop) and x.p > 0.9 for x in self.layers):
            raise FieldError("layers", "dropout above 0.9 needs mode: hnp")
        if self.in_channels == 13:
            raise ConfigError("13 channels are unlucky")


@dataclass(frozen=True)
class File:
    nfn: Net


def fail(cls: type, data: Any, **kw: Any) -> str:
    with pytest.raises(ConfigError) as info:
        parse(cls, data, **kw)
    return str(info.value)


LAYERS = [{"type": "nf_linear", "channels": 4}]

# --------------------------------------------------------------------------------------------
# parse: the happy path
# --------------------------------------------------------------------------------------------


def test_parse_builds_nested_frozen_dataclasses_with_defaults():
    net = parse(
        Net,
        {
            "layers": [
                {"type": "nf_linear", "channels": 16},
                {"type": "activation"},
                {"type": "dropout", "p": 0},
                {"type": "mlp", "hidden": [64, 64]},
            ],
            "source": {"model": "small_cnn", "kwargs": {"channels": [1, 2]}},
            "shape": [2, 3],
            "tags": ["a"],
        },
    )
    assert net.layers == (Linear(16), Act("relu"), Drop(0.0), Head("mlp", (64, 64), 1))
    assert isinstance(net.layers[2].p, float)
    assert net.source == Source("small_cnn", None, {"channels": [1, 2]}, None)
    assert (net.mode, net.in_channels, net.shape, net.tags, net.size) == ("np", 1, (2, 3), ["a"], 3)
    with pytest.raises(dataclasses.FrozenInstanceError):
        net.mode = "hnp"


def test_parse_accepts_int_for_float_and_already_built_objects():
    net = parse(Net, {"layers": [Linear(2)], "lr": 1})
    assert net.lr == 1.0 and isinstance(net.lr, float)
    assert net.layers == (Linear(2),)
    assert parse(Net, net) is net


def test_untagged_union_tries_each_alternative():
    assert parse(Net, {"layers": LAYERS, "size": [1, 2]}).size == (1, 2)
    assert parse(Net, {"layers": LAYERS, "size": 5}).size == 5
    msg = fail(Net, {"layers": LAYERS, "size": "big"})
    assert msg == "<dict>: size: expected an int or a list of ints, got 'big'"
    # the data is a list, so the list alternative's own error is the one reported
    msg = fail(Net, {"layers": LAYERS, "size": [1, "x"]})
    assert msg == "<dict>: size[1]: expected an int, got 'x'"


# --------------------------------------------------------------------------------------------
# parse: errors, exact formats
# --------------------------------------------------------------------------------------------


def test_error_is_path_qualified_with_source():
    data = {
        "nfn": {"layers": [*LAYERS, {"type": "activation"}, {"type": "nf_linear", "channels": -3}]}
    }
    msg = fail(File, data, source="specs/x.yaml")
    assert msg == "specs/x.yaml: nfn.layers[2].channels: expected a positive int, got -3"


def test_unknown_key_suggests_the_nearest_and_lists_valid_keys():
    data = {"nfn": {"layers": [{"type": "nf_linear", "chanels": 3}]}}
    msg = fail(File, data, source="specs/x.yaml")
    assert msg == (
        "specs/x.yaml: nfn.layers[0].chanels: unknown key (did you mean 'channels'?); "
        "valid keys: channels, io_embed"
    )
    msg = fail(File, {"nfn": {"layers": LAYERS, "zzz": 1}})
    assert msg.startswith("<dict>: nfn.zzz: unknown key; valid keys: layers, source, mode,")


def test_missing_required_key_is_named_with_its_help():
    msg = fail(File, {"nfn": {"layers": [{"type": "nf_linear"}]}})
    assert msg == "<dict>: nfn.layers[0].channels: missing required key (output channels)"
    assert fail(File, {}) == "<dict>: nfn: missing required key"


def test_source_and_path_prefix_every_message():
    msg = fail(Linear, {"channels": 0}, source="a.yaml", path="model.layers[1]")
    assert msg == "a.yaml: model.layers[1].channels: expected a positive int, got 0"
    assert fail(Linear, [], source="a.yaml") == (
        "a.yaml: expected a mapping with keys channels, io_embed, got an empty list"
    )


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"in_channels": True}, "in_channels: expected a positive int, got True"),
        ({"in_channels": 2.0}, "in_channels: expected a positive int, got 2.0"),
        ({"in_channels": "2"}, "in_channels: expected a positive int, got '2'"),
        ({"in_channels": None}, "in_channels: expected a positive int, got null"),
        ({"lr": "fast"}, "lr: expected a number, got 'fast'"),
        ({"lr": False}, "lr: expected a number, got False"),
        ({"tags": "a"}, "tags: expected a list of strings, got 'a'"),
        ({"tags": [1]}, "tags[0]: expected a string, got 1"),
        ({"shape": [1, 2, 3]}, "shape: expected a list of 2 items, got 3"),
        ({"shape": {"a": 1}}, "shape: expected a list of 2 items, got a mapping"),
        (
            {"source": {"model": "m", "kwargs": [1]}},
            "source.kwargs: expected a mapping, got a list",
        ),
        (
            {"source": {"model": "m", "kwargs": {1: 2}}},
            "source.kwargs: keys must be strings, got 1",
        ),
        (
            {"source": {"model": "m", "input_shape": []}},
            "source.input_shape: expected a non-empty list, got an empty list",
        ),
        (
            {"source": {"model": "m", "input_shape": [2, 0]}},
            "source.input_shape[1]: expected a positive int, got 0",
        ),
        ({"layers": []}, "layers: expected a non-empty list, got an empty list"),
        (
            {"layers": [{"type": "dropout", "p": 1.5}]},
            "layers[0].p: expected a number in [0, 1], got 1.5",
        ),
        (
            {"layers": [{"type": "dropout", "p": -1}]},
            "layers[0].p: expected a number in [0, 1], got -1",
        ),
        (
            {"layers": [{"type": "mlp", "hidden": [8, 0]}]},
            "layers[0].hidden[1]: expected a positive int, got 0",
        ),
        (
            {"layers": [{"type": "mlp", "hidden": "8"}]},
            "layers[0].hidden: expected a list of positive ints, got '8'",
        ),
    ],
)
def test_wrong_types_and_ranges(data, message):
    data = {"layers": LAYERS, **data}
    assert fail(Net, data) == f"<dict>: {message}"


def test_literal_lists_every_valid_value_and_the_nearest():
    assert fail(Net, {"layers": LAYERS, "mode": "nnp"}) == (
        "<dict>: mode: expected one of np, hnp, got 'nnp' (did you mean 'np'?)"
    )
    assert (
        fail(Net, {"layers": LAYERS, "mode": 1}) == "<dict>: mode: expected one of np, hnp, got 1"
    )


def test_choices_list_every_valid_value_and_the_nearest():
    assert fail(Act, {"fn": "rleu"}) == (
        "<dict>: fn: expected one of relu, tanh, gelu, got 'rleu' (did you mean 'relu'?)"
    )


def test_tagged_union_errors():
    def layer_error(layer: Any) -> str:
        return fail(Net, {"layers": [*LAYERS, layer]}, source="s.yaml")

    valid = "valid types: nf_linear, activation, dropout, mlp"
    assert layer_error({"type": "nf_lin", "channels": 2}) == (
        f"s.yaml: layers[1].type: unknown type 'nf_lin' (did you mean 'nf_linear'?); {valid}"
    )
    assert layer_error({"channels": 2}) == f"s.yaml: layers[1].type: missing required key; {valid}"
    assert layer_error("relu") == (
        "s.yaml: layers[1]: expected a mapping with 'type' one of nf_linear, activation, "
        "dropout, mlp, got 'relu'"
    )
    # Literal-tagged classes list the tag among their keys and still parse through the union
    assert parse(Net, {"layers": [{"type": "mlp", "out_features": 3}]}).layers == (
        Head("mlp", (), 3),
    )


def test_classvar_tag_is_checked_when_the_class_is_parsed_alone():
    assert parse(Linear, {"type": "nf_linear", "channels": 2}) == Linear(2)
    assert fail(Linear, {"type": "activation", "channels": 2}) == (
        "<dict>: type: expected 'nf_linear', got 'activation'"
    )
    assert type_tag(Linear) == "nf_linear" and type_tag(Head) == "mlp"
    assert type_tag(Source) is None


def test_exactly_one_of():
    base = {"layers": LAYERS}
    assert fail(Net, {**base, "source": {}}) == (
        "<dict>: source: expected exactly one of model, spec; got neither"
    )
    assert fail(Net, {**base, "source": {"model": "a", "spec": "b"}}) == (
        "<dict>: source: expected exactly one of model, spec; got both model and spec"
    )
    # an explicit null counts as absent
    assert parse(Net, {**base, "source": {"model": "a", "spec": None}}).source.model == "a"


def test_post_init_errors_get_the_path():
    data = {"nfn": {"layers": [{"type": "dropout", "p": 0.95}]}}
    assert fail(File, data, source="f.yaml") == (
        "f.yaml: nfn.layers: dropout above 0.9 needs mode: hnp"
    )
    assert parse(File, {"nfn": {**data["nfn"], "mode": "hnp"}}).nfn.mode == "hnp"
    assert fail(File, {"nfn": {"layers": LAYERS, "in_channels": 13}}) == (
        "<dict>: nfn: 13 channels are unlucky"
    )
    assert issubclass(ConfigError, NfnCompileError) and issubclass(FieldError, ConfigError)


def test_unsupported_annotation_is_a_programming_error():
    @dataclass(frozen=True)
    class Bad:
        x: complex = 1j

    with pytest.raises(TypeError, match="cannot parse values of type"):
        parse(Bad, {"x": 1})


# --------------------------------------------------------------------------------------------
# to_dict
# --------------------------------------------------------------------------------------------


def test_to_dict_round_trips_and_puts_tags_first():
    net = parse(
        Net,
        {
            "layers": [{"type": "nf_linear", "channels": 2}, {"type": "mlp", "hidden": [3]}],
            "source": {"spec": "ws.yaml"},
            "size": [4, 5],
        },
    )
    d = to_dict(net)
    assert d["layers"][0] == {"type": "nf_linear", "channels": 2, "io_embed": False}
    assert list(d["layers"][1]) == ["type", "hidden", "out_features"]
    assert d["source"] == {"spec": "ws.yaml", "kwargs": {}}  # None-by-default fields left out
    assert d["size"] == [4, 5] and d["shape"] == [1, 1]
    assert parse(Net, d) == net
    small = to_dict(net, omit_defaults=True)
    assert small == {
        "layers": [{"type": "nf_linear", "channels": 2}, {"type": "mlp", "hidden": [3]}],
        "source": {"spec": "ws.yaml"},
        "size": [4, 5],
    }
    assert parse(Net, small) == net


_layer = st.one_of(
    st.builds(Linear, st.integers(1, 64), st.booleans()),
    st.builds(Act, st.sampled_from(["relu", "tanh", "gelu"])),
    st.builds(Drop, st.floats(0, 1)),
    st.builds(Head, st.just("mlp"), st.lists(st.integers(1, 9), max_size=3).map(tuple)),
)


@settings(max_examples=60, deadline=None)
@given(
    layers=st.lists(_layer, min_size=1, max_size=5).map(tuple),
    mode=st.sampled_from(["np", "hnp"]),
    in_channels=st.integers(1, 12),
    lr=st.floats(1e-6, 1.0),
    size=st.one_of(st.integers(), st.lists(st.integers(), max_size=3).map(tuple)),
    kwargs=st.dictionaries(st.text(max_size=5), st.integers() | st.text(max_size=3), max_size=3),
)
def test_round_trip_property(layers, mode, in_channels, lr, size, kwargs):
    if mode == "np" and any(isinstance(x, Drop) and x.p > 0.9 for x in layers):
        mode = "hnp"
    net = Net(layers, Source(model="m", kwargs=kwargs), mode, in_channels, lr, size=size)
    for omit in (False, True):
        assert parse(Net, to_dict(net, omit_defaults=omit)) == net
