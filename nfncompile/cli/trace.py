"""``nfncompile trace``: trace a model, print its symmetry report, write its spec."""

from __future__ import annotations

import argparse

from ..errors import ConfigError
from .app import Subcommand, register_subcommand
from .arguments import (
    add_model_arguments,
    check_draw_path,
    check_output_path,
    model_and_input,
    write_output,
)


def _trace_arguments(p: argparse.ArgumentParser) -> None:
    add_model_arguments(p)
    p.add_argument("--mode", choices=("np", "hnp"), default="np", help="symmetry mode (np)")
    p.add_argument("-o", "--output", metavar="SPEC.yaml", help="write the spec YAML here")
    p.add_argument("--draw", metavar="GRAPH.png", help="draw the symmetry graph (matplotlib)")
    p.add_argument(
        "--no-verify",
        dest="verify",
        action="store_false",
        help="skip the numerical check of the derived symmetry",
    )
    p.add_argument(
        "--no-fix-values",
        dest="fix_values",
        action="store_false",
        help="keep a submodule that branches on its data (a mixture of experts' loop over the "
        "experts its router chose) as one call, instead of tracing it at the example's values",
    )


def _trace(args: argparse.Namespace) -> int:
    output = check_output_path(args.output, "-o") if args.output else None
    draw = check_draw_path(args.draw) if args.draw else None
    model, x = model_and_input(args)
    from ..frontend.tracing import trace_with_report

    spec, report = trace_with_report(
        model,
        x,
        verify=args.verify,
        mode=args.mode,
        seed=args.seed,
        channel_dim=args.channel_dim,
        fix_values=args.fix_values,
    )
    text = str(report).rstrip("\n")
    if output is not None:  # the spec first: a failed drawing must not cost it
        write_output(output, spec.to_yaml())
        print(text)
        print(f"wrote {args.output}")
    else:  # stdout stays valid YAML: the report as comments, then the spec
        print("\n".join(f"# {line}".rstrip() for line in text.splitlines()))
        print(spec.to_yaml(), end="")
    if draw is not None:
        from ..frontend.drawing import draw_symmetry_graph

        try:
            draw.parent.mkdir(parents=True, exist_ok=True)
            draw_symmetry_graph(report, str(draw))
        except OSError as e:
            raise ConfigError(f"cannot write {draw}: {e.strerror or e}") from None
        print(f"{'' if output is not None else '# '}wrote {args.draw}")
    return 0


register_subcommand(
    Subcommand(
        "trace",
        "trace a model into a weight-space spec (YAML) with a symmetry report",
        _trace_arguments,
        _trace,
        description=(
            "Trace MODEL with torch.fx, derive its neuron spaces and print the symmetry report.\n"
            "The spec YAML goes to -o, or to stdout after the report (as YAML comments).\n\n"
            "examples:\n"
            "  nfncompile trace small_cnn -o small_cnn.yaml\n"
            "  nfncompile trace resnet_cifar --kwarg depth=8 --input-shape 1,3,8,8 --mode hnp\n"
            "  nfncompile trace mymodels.py:make_net --input-shape 1,16\n"
            "  nfncompile trace mymodels.py:make_lm --input-shape 1,12,64 --channel-dim -1"
        ),
    )
)
