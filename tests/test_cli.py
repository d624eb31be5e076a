"""Tests of the ``nfncompile`` command line, run in-process through ``cli.main``."""

from __future__ import annotations

import argparse
import textwrap

import pytest
import torch
import yaml

from nfncompile import cli
from nfncompile.errors import ConfigError
from tests.frontend.helpers import TOKENS_MODULE

# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def assert_user_error(code: int, err: str, *fragments: str) -> None:
    assert code == 2
    assert err.startswith("nfncompile: error: "), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in err, err


# A spec for mlp(4, (5, 5), 3) that claims fc2 does not read the first hidden space: permuting
# h1 then changes the function, so verification must fail.
BROKEN_MLP_SPEC = textwrap.dedent(
    """\
    spaces:
      in:  {size: 4, role: input}
      h1:  {size: 5, role: hidden}
      h2:  {size: 5, role: hidden}
      out: {size: 3, role: output}
    params:
      fc1.weight: {shape: [5, 4], axes: [h1, in]}
      fc1.bias:   {shape: [5], axes: [h1]}
      fc2.weight: {shape: [5, 5], axes: [h2, null]}
      fc2.bias:   {shape: [5], axes: [h2]}
      fc3.weight: {shape: [3, 5], axes: [out, h2]}
      fc3.bias:   {shape: [3], axes: [out]}
    """
)

MLP_ARGS = ("mlp", "--kwarg", "in_features=4", "--kwarg", "hidden=[5, 5]", "--kwarg",
            "out_features=3", "--input-shape", "2,4")  # fmt: skip


# --------------------------------------------------------------------------------------------
# parser and registry
# --------------------------------------------------------------------------------------------


def test_help_lists_subcommands(capsys):
    code, out, _ = run(capsys, "--help")
    assert code == 0
    for name in ("trace", "verify", "layer"):
        assert name in out


def test_subcommand_help(capsys):
    code, out, _ = run(capsys, "trace", "--help")
    assert code == 0
    assert "--input-shape" in out and "--no-verify" in out and "MODULE:FACTORY" in out


def test_missing_command_is_usage_error(capsys):
    code, _, err = run(capsys)
    assert code == 2 and "usage: nfncompile" in err


def test_version(capsys):
    import nfncompile

    code, out, _ = run(capsys, "--version")
    assert code == 0 and nfncompile.__version__ in out


def test_register_subcommand(capsys, monkeypatch):
    # register into a copy of the registry, so that the real "zoo" command stays for other tests
    monkeypatch.setattr(cli.app, "_SUBCOMMANDS", dict(cli.app._SUBCOMMANDS))
    seen = {}

    def add(p: argparse.ArgumentParser) -> None:
        p.add_argument("--n", type=int, default=1)

    def handler(args: argparse.Namespace) -> int:
        seen["n"] = args.n
        if args.n < 0:
            raise ConfigError("n must be >= 0")
        return 7

    cli.register_subcommand(cli.Subcommand("zoo", "make a zoo", add, handler))
    code, out, _ = run(capsys, "--help")
    assert "zoo" in out and "make a zoo" in out
    assert run(capsys, "zoo", "--n", "3")[0] == 7 and seen == {"n": 3}
    code, _, err = run(capsys, "zoo", "--n", "-1")
    assert_user_error(code, err, "n must be >= 0")
    with pytest.raises(TypeError):
        cli.register_subcommand(("zoo", add, handler))


# --------------------------------------------------------------------------------------------
# argument parsing
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "shape"), [("1,3,32,32", (1, 3, 32, 32)), ("2, 4", (2, 4)), ("1x1x8x8", (1, 1, 8, 8))]
)
def test_parse_shape(text, shape):
    assert cli.parse_shape(text) == shape


@pytest.mark.parametrize("text", ["", "a,b", "1,0,3", "1,-2", "1.5,2"])
def test_parse_shape_rejects(text):
    with pytest.raises(argparse.ArgumentTypeError, match="positive ints"):
        cli.parse_shape(text)


def test_parse_kwarg():
    assert cli.parse_kwarg("hidden=[64, 64]") == ("hidden", [64, 64])
    assert cli.parse_kwarg("w0=30.0") == ("w0", 30.0)
    assert cli.parse_kwarg("activation=tanh") == ("activation", "tanh")
    assert cli.parse_kwarg("cfg=[8, M]") == ("cfg", [8, "M"])
    for bad in ("novalue", "=3", "a b=1", "x=[1,"):
        with pytest.raises(argparse.ArgumentTypeError):
            cli.parse_kwarg(bad)


def test_bad_kwarg_is_usage_error(capsys):
    code, _, err = run(capsys, "trace", "small_cnn", "--kwarg", "channels")
    assert code == 2 and "expected key=value" in err


# --------------------------------------------------------------------------------------------
# model loading
# --------------------------------------------------------------------------------------------


def test_load_catalogue_model():
    model, shape = cli.load_model("small_cnn", {"channels": 4})
    assert shape == (2, 1, 8, 8) and model.conv1.out_channels == 4
    model, shape = cli.load_model("resnet8", {"width": 2}, (1, 3, 16, 16))
    assert shape == (1, 3, 16, 16) and model.conv1.out_channels == 2


def test_load_architecture_factory_needs_shape():
    with pytest.raises(ConfigError, match="--input-shape is required"):
        cli.load_model("resnet_cifar", {"depth": 8})
    model, _ = cli.load_model("resnet_cifar", {"depth": 8}, (1, 3, 8, 8))
    assert model(torch.zeros(1, 3, 8, 8)).shape == (1, 10)


def test_load_module_factory():
    model, shape = cli.load_model("torch.nn:Linear", {"in_features": 3, "out_features": 2}, (4, 3))
    assert isinstance(model, torch.nn.Linear) and shape == (4, 3)
    model, _ = cli.load_model("nfncompile.architectures:small_cnn", {}, (1, 1, 8, 8))
    assert model.fc.out_features == 10


def test_load_from_file_and_cwd(tmp_path, monkeypatch):
    (tmp_path / "mymodels.py").write_text(
        textwrap.dedent(
            """\
            import torch
            def make(width=3):
                return torch.nn.Sequential(torch.nn.Linear(2, width), torch.nn.Tanh())
            instance = torch.nn.Linear(2, 2)
            not_a_model = 5
            def returns_int():
                return 1
            """
        )
    )
    model, _ = cli.load_model(f"{tmp_path / 'mymodels.py'}:make", {"width": 6}, (1, 2))
    assert model[0].out_features == 6
    monkeypatch.chdir(tmp_path)
    monkeypatch.delitem(__import__("sys").modules, "mymodels", raising=False)
    model, _ = cli.load_model("mymodels:instance", {}, (1, 2))
    assert isinstance(model, torch.nn.Linear)
    with pytest.raises(ConfigError, match="takes no keyword arguments"):
        cli.load_model("mymodels:instance", {"x": 1}, (1, 2))
    with pytest.raises(ConfigError, match="not a factory"):
        cli.load_model("mymodels:not_a_model", {}, (1, 2))
    with pytest.raises(ConfigError, match="returned a int"):
        cli.load_model("mymodels:returns_int", {}, (1, 2))
    with pytest.raises(ConfigError, match="did you mean 'make'"):
        cli.load_model("mymodels:mak", {}, (1, 2))
    with pytest.raises(ConfigError, match="no such file"):
        cli.load_model("missing.py:make", {}, (1, 2))


def test_exit_code_and_message_in_a_real_process():
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "nfncompile.cli", "trace", "no_such_model"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("nfncompile: error: unknown model 'no_such_model'")
    assert "Traceback" not in proc.stderr and proc.stdout == ""


def test_import_error_is_clear(capsys):
    code, _, err = run(capsys, "trace", "no_such_module_xyz:make", "--input-shape", "1,2")
    assert_user_error(code, err, "cannot import module 'no_such_module_xyz'")


def test_unknown_model_suggests(capsys):
    code, _, err = run(capsys, "trace", "small_cn")
    assert_user_error(code, err, "unknown model 'small_cn'", "did you mean 'small_cnn'", "resnet20")


def test_rejected_kwargs(capsys):
    code, _, err = run(capsys, "trace", "small_cnn", "--kwarg", "depth=3")
    assert_user_error(code, err, "rejected keyword arguments", "depth")


def test_wrong_input_shape(capsys):
    code, _, err = run(capsys, "trace", "small_cnn", "--input-shape", "1,3,8,8")
    assert_user_error(code, err, "fails on an input of shape [1, 3, 8, 8]", "--input-shape")


def test_factory_config_error_is_reported(capsys):
    code, _, err = run(capsys, "trace", "resnet_cifar", "--kwarg", "depth=21", "--input-shape",
                       "1,3,8,8")  # fmt: skip
    assert_user_error(code, err, "depth must be 6n + 2")


# --------------------------------------------------------------------------------------------
# spec loading (shared by verify and layer)
# --------------------------------------------------------------------------------------------


def test_layer_missing_spec(capsys, tmp_path):
    code, _, err = run(capsys, "layer", str(tmp_path / "nope.yaml"))
    assert_user_error(code, err, "nope.yaml: no such spec file")


def test_layer_malformed_spec(capsys, tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("spaces: {h: {size: 3, role: hiden}}\nparams: {}\n")
    code, _, err = run(capsys, "layer", str(path))
    assert_user_error(code, err, "bad.yaml", "role")


def test_verify_missing_spec(capsys, tmp_path):
    code, _, err = run(capsys, "verify", "small_cnn", "--spec", str(tmp_path / "x.yaml"))
    assert_user_error(code, err, "no such spec file")


def test_verify_bad_trials(capsys, tmp_path):
    code, _, err = run(capsys, "verify", "small_cnn", "--spec", "x.yaml", "--trials", "0")
    assert_user_error(code, err, "--trials must be a positive int")


# --------------------------------------------------------------------------------------------
# end to end (needs the tracer, verifier and layers)
# --------------------------------------------------------------------------------------------


def test_trace_writes_spec(capsys, tmp_path):
    from nfncompile.spec import WeightSpaceSpec

    path = tmp_path / "spec.yaml"
    code, out, _ = run(capsys, "trace", "small_cnn", "-o", str(path))
    assert code == 0
    assert f"wrote {path}" in out
    spec = WeightSpaceSpec.from_yaml(path)
    assert spec.names == ("conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias",
                          "conv3.weight", "conv3.bias", "fc.weight", "fc.bias")  # fmt: skip
    assert spec["conv2.weight"].axes[2:] == (None, None)
    assert spec["conv2.weight"].axes[1] == spec["conv1.weight"].axes[0]
    assert spec["fc.weight"].axes[1] == spec["conv3.weight"].axes[0]


def test_trace_stdout_is_yaml_and_matches_file(capsys, tmp_path):
    from nfncompile.spec import WeightSpaceSpec

    code, out, _ = run(capsys, "trace", *MLP_ARGS, "--mode", "hnp")
    assert code == 0
    assert out.startswith("#")  # the report, as YAML comments
    spec = WeightSpaceSpec.from_dict(yaml.safe_load(out))
    assert spec.mode == "hnp"
    assert [s.role for s in spec.spaces.values()] == ["input", "hidden", "hidden", "output"]
    path = tmp_path / "mlp.yaml"
    assert run(capsys, "trace", *MLP_ARGS, "--mode", "hnp", "-o", str(path))[0] == 0
    assert WeightSpaceSpec.from_yaml(path) == spec


def test_trace_a_batch_norm_model_on_a_batch_of_one(capsys, tmp_path):
    # before: the CLI ran the model once in training mode to check the input shape, and a
    # batch norm refused a batch of one ("Expected more than 1 value per channel")
    module = tmp_path / "bn_net.py"
    module.write_text(
        "import torch\n"
        "def make():\n"
        "    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8),\n"
        "                               torch.nn.ReLU(), torch.nn.Linear(8, 2))\n"
    )
    code, out, err = run(capsys, "trace", f"{module}:make", "--input-shape", "1,4")
    assert code == 0, err
    assert "1.running_mean" in out and "verification (np mode): OK" in out


def test_trace_experts_at_the_examples_values_or_kept_whole(capsys, tmp_path):
    # a mixture of experts whose loop runs the experts the router chose: traced at the
    # example's values (each expert's units a space), or with --no-fix-values one call
    module = tmp_path / "moe_net.py"
    module.write_text(
        "import torch\n"
        "class MoE(torch.nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.router = torch.nn.Linear(4, 2)\n"
        "        self.experts = torch.nn.ModuleList(\n"
        "            torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(),\n"
        "                                torch.nn.Linear(3, 4)) for _ in range(2))\n"
        "    def forward(self, x):\n"
        "        pick = self.router(x).argmax(-1)\n"
        "        out = torch.zeros_like(x)\n"
        "        for e in pick.unique().tolist():\n"
        "            rows = torch.where(pick == e)[0]\n"
        "            out[rows] = self.experts[e](x[rows])\n"
        "        return out\n"
        "def make():\n"
        "    torch.manual_seed(0)\n"
        "    return torch.nn.Sequential(torch.nn.Linear(4, 4), MoE())\n"
    )
    args = ("trace", f"{module}:make", "--input-shape", "64,4")
    code, out, err = run(capsys, *args)
    assert code == 0, err
    assert "example input's values fixed" in out
    assert "1.experts.1.0.weight: {shape: [3, 4], axes: [1.experts.1.0, out]}" in out
    code, out, err = run(capsys, *args, "--no-fix-values")
    assert code == 0, err
    assert "kept as one call" in out and "values fixed" not in out


def test_trace_no_verify(capsys):
    code, out, _ = run(capsys, "trace", "lenet", "--no-verify")
    assert code == 0 and "fc1.weight" in out


def test_trace_draw(capsys, tmp_path):
    pytest.importorskip("matplotlib")
    png = tmp_path / "graph.png"
    code, out, _ = run(capsys, "trace", "mlp", "-o", str(tmp_path / "s.yaml"), "--draw", str(png))
    assert code == 0 and f"wrote {png}" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_verify_ok_and_failing(capsys, tmp_path):
    good = tmp_path / "good.yaml"
    assert run(capsys, "trace", *MLP_ARGS, "-o", str(good))[0] == 0
    code, out, _ = run(capsys, "verify", *MLP_ARGS, "--spec", str(good), "--trials", "3")
    assert code == 0 and out.strip()
    bad = tmp_path / "bad.yaml"
    bad.write_text(BROKEN_MLP_SPEC)
    code, out, _ = run(capsys, "verify", *MLP_ARGS, "--spec", str(bad), "--trials", "3")
    assert code == 1 and out.strip()


def test_verify_state_dict_mismatch(capsys, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(BROKEN_MLP_SPEC)
    code, _, err = run(capsys, "verify", "small_cnn", "--spec", str(bad))
    assert_user_error(
        code, err, "bad.yaml does not describe small_cnn", "missing keys", "conv1.weight"
    )


def test_layer_prints_code(capsys, tmp_path):
    path = tmp_path / "mlp.yaml"
    path.write_text(BROKEN_MLP_SPEC)  # any valid spec will do for code generation
    code, out, _ = run(capsys, "layer", str(path), "--in-channels", "2", "--out-channels", "3",
                       "--mode", "hnp")  # fmt: skip
    assert code == 0
    header, _, body = out.partition("\n")
    assert header.startswith(f"# {path}: NFLinear(in_channels=2, out_channels=3, mode='hnp', ")
    assert "basis='complete'" in header  # auto: a small weight space gets the complete basis
    assert "def forward" in body
    compile(out, "<layer code>", "exec")  # the printed code is valid Python


def test_layer_takes_the_linear_basis_and_its_options(capsys, tmp_path):
    from nfncompile.nn import NFLinear
    from nfncompile.spec import WeightSpaceSpec

    path = tmp_path / "mlp.yaml"
    path.write_text(BROKEN_MLP_SPEC)
    code, out, _ = run(capsys, "layer", str(path), "--basis", "linear", "--width", "8",
                       "--max-fold", "4")  # fmt: skip
    assert code == 0
    header, _, body = out.partition("\n")
    layer = NFLinear(WeightSpaceSpec.from_yaml(path), 1, 8, basis="linear", width=8, max_fold=4)
    assert header == f"# {path}: {layer!r}"
    assert "basis='linear', width=8, max_fold=4" in header
    assert body.strip("\n") == layer.code.strip("\n")
    _, complete, _ = run(capsys, "layer", str(path), "--basis", "complete")
    assert "basis='complete'" in complete and complete.partition("\n")[2] != body


@pytest.mark.parametrize(
    "argv, message",
    [
        (("--basis", "complete", "--width", "8"), "--width and --max-fold apply to --basis linear"),
        (("--basis", "complete", "--max-fold", "4"), "apply to --basis linear (or auto) only"),
        (("--width", "0"), "--width must be a positive int, got 0"),
        (("--max-fold", "-1"), "--max-fold must be a positive int, got -1"),
    ],
)
def test_layer_rejects_options_that_do_not_apply(capsys, tmp_path, argv, message):
    path = tmp_path / "mlp.yaml"
    path.write_text(BROKEN_MLP_SPEC)
    code, _, err = run(capsys, "layer", str(path), *argv)
    assert_user_error(code, err, message)


def test_layer_basis_choices_are_nflinears():
    from nfncompile.cli.layer import BASIS_CHOICES
    from nfncompile.nn.linear import BASIS_CHOICES as LAYER_CHOICES

    assert BASIS_CHOICES == LAYER_CHOICES


def test_layer_bad_channels(capsys, tmp_path):
    path = tmp_path / "mlp.yaml"
    path.write_text(BROKEN_MLP_SPEC)
    code, _, err = run(capsys, "layer", str(path), "--out-channels", "0")
    assert_user_error(code, err, "--out-channels must be a positive int")


def test_trace_and_verify_a_sequence_model_with_channel_dim(capsys, tmp_path):
    from nfncompile.spec import WeightSpaceSpec

    module, path = tmp_path / "tokens.py", tmp_path / "tokens.yaml"
    module.write_text(TOKENS_MODULE)
    args = (f"{module}:make", "--input-shape", "2,5,4")
    code, out, err = run(capsys, "trace", *args, "--channel-dim", "-1", "-o", str(path))
    assert code == 0, err
    spec = WeightSpaceSpec.from_yaml(path)
    assert spec.spaces["in"].size == 4 and spec["a.weight"].axes == ("a", "in")
    code, out, _ = run(capsys, "verify", *args, "--channel-dim", "-1", "--spec", str(path))
    assert code == 0 and "OK" in out
    # the features are dim 2: read at the default dim 1, the check fails
    assert run(capsys, "verify", *args, "--spec", str(path))[0] == 1
    code, _, err = run(capsys, "trace", *args, "--channel-dim", "3")
    assert_user_error(code, err, "channel_dim=3 does not fit input 'x' of shape (2, 5, 4)")
