"""``nfncompile layer``: print the generated code of an NF-Layer for a spec."""

from __future__ import annotations

import argparse

from ..errors import ConfigError
from .app import Subcommand, register_subcommand
from .arguments import load_spec

#: ``NFLinear``'s ``basis`` values (``nfncompile.nn.linear.BASIS_CHOICES``, written out so that
#: ``--help`` does not import torch; a test keeps the two equal)
BASIS_CHOICES = ("auto", "complete", "linear")


def _layer_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", metavar="SPEC.yaml", help="a weight-space spec")
    p.add_argument("--in-channels", type=int, default=1, help="input channels (default 1)")
    p.add_argument("--out-channels", type=int, default=8, help="output channels (default 8)")
    p.add_argument(
        "--mode", choices=("np", "hnp"), default=None, help="symmetry mode (default: the spec's)"
    )
    p.add_argument(
        "--basis",
        choices=BASIS_CHOICES,
        default="auto",
        help="complete, linear (size linear in depth), or auto: complete for small weight "
        "spaces (default auto)",
    )
    p.add_argument(
        "--width",
        type=int,
        default=None,
        help="linear basis: width of its channels (default 4 x the larger channels)",
    )
    p.add_argument(
        "--max-fold",
        type=int,
        default=None,
        help="linear basis: fixed entries a tile folds into its channels at most, its larger "
        "fixed dims exchanged (default: NFLinear's)",
    )


def _layer(args: argparse.Namespace) -> int:
    for flag in ("in_channels", "out_channels", "width", "max_fold"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise ConfigError(f"--{flag.replace('_', '-')} must be a positive int, got {value}")
    linear_only = {k: v for k, v in (("width", args.width), ("max_fold", args.max_fold)) if v}
    if args.basis == "complete" and linear_only:
        raise ConfigError("--width and --max-fold apply to --basis linear (or auto) only")
    spec = load_spec(args.spec)
    from ..nn import NFLinear

    layer = NFLinear(
        spec,
        args.in_channels,
        args.out_channels,
        mode=args.mode or spec.mode,
        basis=args.basis,
        **linear_only,
    )
    print(f"# {args.spec}: {layer!r}")
    print(layer.code.strip("\n"))
    return 0


register_subcommand(
    Subcommand(
        "layer",
        "print the generated code of an NFLinear layer for a spec",
        _layer_arguments,
        _layer,
        description=(
            "Compile an NFLinear layer for SPEC and print its generated torch.fx code.\n\n"
            "The first line is the layer's repr: the basis it uses (auto: complete for a small\n"
            "weight space, else linear), its terms and parameters.\n\n"
            "examples:\n"
            "  nfncompile layer small_cnn.yaml --in-channels 1 --out-channels 8 --mode hnp\n"
            "  nfncompile layer resnet18.yaml --basis linear --width 64"
        ),
    )
)
