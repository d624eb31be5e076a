"""``nfncompile layer``: print the generated code of an NF-Layer for a spec."""

from __future__ import annotations

import argparse

from ..errors import ConfigError
from .app import Subcommand, register_subcommand
from .arguments import load_spec


def _layer_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", metavar="SPEC.yaml", help="a weight-space spec")
    p.add_argument("--in-channels", type=int, default=1, help="input channels (default 1)")
    p.add_argument("--out-channels", type=int, default=8, help="output channels (default 8)")
    p.add_argument(
        "--mode", choices=("np", "hnp"), default=None, help="symmetry mode (default: the spec's)"
    )


def _layer(args: argparse.Namespace) -> int:
    for flag in ("in_channels", "out_channels"):
        if getattr(args, flag) < 1:
            raise ConfigError(f"--{flag.replace('_', '-')} must be a positive int")
    spec = load_spec(args.spec)
    from ..nn import NFLinear

    mode = args.mode or spec.mode
    layer = NFLinear(spec, args.in_channels, args.out_channels, mode=mode)
    n_params = sum(p.numel() for p in layer.parameters())
    print(
        f"# NFLinear({args.spec}, in_channels={args.in_channels}, "
        f"out_channels={args.out_channels}, mode={mode!r}): {n_params} parameters"
    )
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
            "example:\n"
            "  nfncompile layer small_cnn.yaml --in-channels 1 --out-channels 8 --mode hnp"
        ),
    )
)
