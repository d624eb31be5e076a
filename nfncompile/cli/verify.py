"""``nfncompile verify``: check that a spec's permutations leave a model unchanged."""

from __future__ import annotations

import argparse

from ..errors import ConfigError, StateDictMismatchError
from .app import Subcommand, register_subcommand
from .arguments import add_model_arguments, load_spec, model_and_input


def _verify_arguments(p: argparse.ArgumentParser) -> None:
    add_model_arguments(p)
    p.add_argument("--spec", required=True, metavar="SPEC.yaml", help="the spec to check")
    p.add_argument("--trials", type=int, default=8, help="random group elements (default 8)")
    p.add_argument("--mode", choices=("np", "hnp"), default=None, help="override the spec's mode")


def _verify(args: argparse.Namespace) -> int:
    if args.trials < 1:
        raise ConfigError(f"--trials must be a positive int, got {args.trials}")
    spec = load_spec(args.spec)
    if args.mode:
        spec = spec.with_mode(args.mode)
    model, x = model_and_input(args)
    try:
        spec.check_state_dict(model.state_dict())  # every mismatched key at once
    except StateDictMismatchError as e:
        raise StateDictMismatchError(f"{args.spec} does not describe {args.model}: {e}") from None
    from ..frontend.verification import verify

    report = verify(
        model, spec, x, trials=args.trials, seed=args.seed, channel_dim=args.channel_dim
    )
    print(str(report).rstrip("\n"))
    return 0 if report.ok else 1


register_subcommand(
    Subcommand(
        "verify",
        "check numerically that a spec's permutations leave a model unchanged",
        _verify_arguments,
        _verify,
        description=(
            "Apply random permutations of SPEC's group to MODEL's parameters and compare\n"
            "outputs. Exit code 0 when the symmetry holds, 1 when it does not.\n\n"
            "example:\n"
            "  nfncompile verify small_cnn --spec small_cnn.yaml --trials 16"
        ),
    )
)
