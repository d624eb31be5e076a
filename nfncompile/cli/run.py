"""``nfncompile run``: run an experiment spec end to end."""

from __future__ import annotations

import argparse

from ..errors import ConfigError
from .app import Subcommand, register_subcommand


def _run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("spec", help="experiment spec YAML (specs/experiments/*.yaml)")
    parser.add_argument("--out", required=True, help="output directory (results.json, plots)")
    parser.add_argument(
        "--quick", action="store_true", help="apply the spec's quick overrides (small, fast run)"
    )
    parser.add_argument(
        "--device", default=None, help="auto, cpu, cuda or cuda:N (replaces train.device)"
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (replaces the spec's)"
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="replace one value of the spec (repeatable): KEY a dotted path, list items by "
        "index, VALUE read as YAML; e.g. --set train.epochs=30 --set eval.augment=[]",
    )


def _run(args: argparse.Namespace) -> int:
    if args.threads is not None and args.threads < 1:
        raise ConfigError(f"--threads must be a positive int, got {args.threads}")
    from ..experiments.runner import run_experiment
    from ..experiments.train import resolve_device

    if args.device is not None:  # before any work: the zoo stage can take minutes
        try:
            resolve_device(args.device)
        except ConfigError as e:
            raise ConfigError(f"--device {args.device}: {e}") from None

    run_experiment(
        args.spec,
        args.out,
        quick=args.quick,
        device=args.device,
        progress=args.progress,
        threads=args.threads,
        overrides=args.overrides,
    )
    return 0


register_subcommand(
    Subcommand(
        "run",
        "run an experiment spec end to end (zoo, training, evaluation, report)",
        _run_arguments,
        _run,
        description="""Run an experiment spec end to end: generate the zoo if missing, train every
model the spec lists, evaluate, print a markdown table and write DIR/results.json and plots.

examples:
  nfncompile run specs/experiments/generalization.yaml --out runs/generalization
  nfncompile run specs/experiments/inr_editing.yaml --out runs/edit --quick
  nfncompile run specs/experiments/winning_tickets.yaml --out runs/wt --device cuda
  nfncompile run specs/experiments/generalization.yaml --out runs/g30 --set train.epochs=30""",
    )
)
