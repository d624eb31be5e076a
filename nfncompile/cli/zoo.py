"""``nfncompile zoo``: generate a model zoo from a zoo spec."""

from __future__ import annotations

import argparse

from ..errors import ConfigError
from .app import Subcommand, register_subcommand


def parse_shard(text: str) -> tuple[int, int]:
    """Parse ``--shard i/n`` (this machine makes the shards ``s`` with ``s % n == i``).

    Examples
    --------
    >>> parse_shard("1/4")
    (1, 4)
    >>> parse_shard("4/4")
    Traceback (most recent call last):
    ...
    nfncompile.errors.ConfigError: --shard: expected i/n with 0 <= i < n, got '4/4'
    """
    try:
        i, n = (int(x) for x in str(text).split("/"))
    except ValueError:
        i, n = -1, 0
    if not (n >= 1 and 0 <= i < n):
        raise ConfigError(f"--shard: expected i/n with 0 <= i < n, got {text!r}")
    return i, n


def _shard_arg(text: str) -> tuple[int, int]:
    try:
        return parse_shard(text)
    except ConfigError as e:
        raise argparse.ArgumentTypeError(str(e).removeprefix("--shard: ")) from None


def _zoo_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("spec", help="zoo spec YAML, e.g. specs/zoos/digits_cnn.yaml")
    parser.add_argument(
        "--out", default=None, help="zoo directory (default: the spec's `out`, or its quick one)"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="processes making shards in parallel (default: the number of CPUs)",
    )
    parser.add_argument(
        "--shard",
        type=_shard_arg,
        default=None,
        metavar="i/n",
        help="make only every n-th shard starting at i (split the work across machines)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="the spec's tiny `quick:` zoo (tests, smoke runs)"
    )


def _zoo(args: argparse.Namespace) -> int:
    from ..zoo import default_workers, generate_zoo, load_zoo_config

    if args.workers is not None and args.workers < 1:
        raise ConfigError(f"--workers must be a positive int, got {args.workers}")
    config = load_zoo_config(args.spec, quick=args.quick)
    workers = default_workers() if args.workers is None else args.workers
    report = generate_zoo(
        config,
        args.out,
        workers=workers,
        shard=args.shard,
        progress=args.progress,
        spec=args.spec,
        quick=args.quick,
    )
    print(report)
    return 0


register_subcommand(
    Subcommand(
        "zoo",
        "generate a model zoo (safetensors shards + metadata CSV) from a zoo spec",
        _zoo_arguments,
        _zoo,
        description="""Generate a model zoo from embedded data (scikit-learn's digits): many small
CNNs with varied hyperparameters and their test accuracy, or one SIREN per digit image with
its PSNR. Deterministic per seed, resumable, splittable across machines with --shard i/n.

examples:
  nfncompile zoo specs/zoos/digits_cnn.yaml --workers 2
  nfncompile zoo specs/zoos/digits_inr.yaml --quick --out /tmp/inr
  nfncompile zoo specs/zoos/digits_cnn.yaml --shard 0/2   # this machine's half""",
    )
)
