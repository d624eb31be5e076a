"""The ``nfncompile`` command line.

Subcommands
-----------
``trace MODEL [--input-shape 1,3,32,32] [--mode np|hnp] [-o spec.yaml] [--draw graph.png]``
    Trace a model, print the symmetry report and write (or print) its weight-space spec YAML.
``verify MODEL --spec spec.yaml [--input-shape ...] [--trials N]``
    Check numerically that a spec's permutations leave a model's function unchanged
    (exit code 1 when they do not).
``layer SPEC.yaml [--in-channels 1] [--out-channels 8] [--mode hnp]``
    Print the generated code of the :class:`~nfncompile.NFLinear` for a spec.

``MODEL`` is a catalogue name (``small_cnn``, ``resnet20``: see
:mod:`nfncompile.architectures`; their ``--input-shape`` defaults to the catalogue's), a
factory of that module (``resnet_cifar``), or ``MODULE:FACTORY`` where ``MODULE`` is an
importable module or a ``.py`` file and ``FACTORY`` a callable returning an ``nn.Module``
(or a module instance). Keyword arguments go to the factory with repeated
``--kwarg key=value``; values are read as YAML (``--kwarg hidden=[64,64]``).

Every subcommand takes ``--progress/--no-progress``: steps that take more than a few seconds
show a tqdm bar on a terminal and a plain line every 30 s when stderr is a log file (the
default), or nothing.

Library errors (:class:`~nfncompile.errors.NfnCompileError`) print as
``nfncompile: error: <message>`` with exit code 2 and no traceback; an exception raised in the
user's own module, factory or ``forward`` is shown with the user's frame (file, line, source
line). Output paths and ``--draw`` formats are checked before any work, missing output folders
are created, and ``trace`` writes the spec before it draws.

Adding a subcommand: write ``add_arguments(parser)`` and ``handler(args) -> int`` and call
:func:`register_subcommand` (as the built-in ones below do); :func:`build_parser` picks up
every registered :class:`Subcommand` in order.

Examples
--------
>>> main(["trace", "small_cnn", "-o", "spec.yaml"])  # doctest: +SKIP
0
"""

from __future__ import annotations

import argparse
import gc
import os
import shlex
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .errors import (
    ConfigError,
    Interrupted,
    NfnCompileError,
    StateDictMismatchError,
    UserCodeError,
)
from .files import atomic_write

__all__ = [
    "Subcommand",
    "register_subcommand",
    "build_parser",
    "main",
    "load_model",
    "parse_shape",
    "parse_kwarg",
    "parse_shard",
    "check_output_path",
    "write_output",
]

PROG = "nfncompile"


# --------------------------------------------------------------------------------------------
# subcommand registry
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Subcommand:
    """One ``nfncompile`` subcommand.

    Attributes
    ----------
    name : str
        What the user types (``trace``).
    help : str
        One line for ``nfncompile --help``.
    add_arguments : callable
        ``add_arguments(parser)`` declares its options on an ``argparse`` subparser.
    handler : callable
        ``handler(args) -> int`` runs it and returns the exit code; it may raise
        :class:`~nfncompile.errors.NfnCompileError` for user errors.
    description : str
        Longer text for ``nfncompile NAME --help`` (defaults to ``help``).
    """

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    handler: Callable[[argparse.Namespace], int]
    description: str = ""


_SUBCOMMANDS: dict[str, Subcommand] = {}


def register_subcommand(command: Subcommand) -> Subcommand:
    """Add ``command`` to the ``nfncompile`` command line (replacing one of the same name).

    Examples
    --------
    >>> def add(p): p.add_argument("--n", type=int, default=1)
    >>> def run(args): print(" ".join(["hello"] * args.n)); return 0
    >>> _ = register_subcommand(Subcommand("hello", "say hello", add, run))
    >>> main(["hello", "--n", "2"])
    hello hello
    0
    >>> del _SUBCOMMANDS["hello"]
    """
    if not isinstance(command, Subcommand):
        raise TypeError(f"expected a Subcommand, got {type(command).__name__}")
    _SUBCOMMANDS[command.name] = command
    return command


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with one subparser per registered :class:`Subcommand`."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Compile permutation-equivariant neural functionals for MLPs and CNNs.",
    )
    from . import __version__

    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for cmd in _SUBCOMMANDS.values():
        p = sub.add_parser(
            cmd.name,
            help=cmd.help,
            description=cmd.description or cmd.help,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        cmd.add_arguments(p)
        p.add_argument(
            "--progress",
            action=argparse.BooleanOptionalAction,
            default=None,
            help="progress of long steps: a bar on a terminal, a line every 30 s in a log "
            "(default: on)",
        )
        p.set_defaults(_handler=cmd.handler)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with ``argv`` (default ``sys.argv[1:]``); return the exit code.

    Usage errors exit with 2 (argparse's convention), library errors print
    ``nfncompile: error: <message>`` to stderr and return 2; Ctrl-C prints
    ``nfncompile: interrupted`` (a subcommand may say what it kept and the command that
    resumes) and returns 130, the shell's code for SIGINT. None of them prints a
    traceback.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version, usage errors: return instead of exiting
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    from .progress import progress_setting, set_progress

    previous = progress_setting()
    set_progress(args.progress)
    try:
        return int(args._handler(args))
    except NfnCompileError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    except Interrupted as e:  # a step saved its work: say what, and how to go on
        again = shlex.join([PROG, *(sys.argv[1:] if argv is None else argv)])
        print(
            f"{PROG}: interrupted: {e}; to resume, run the same command: {again}", file=sys.stderr
        )
        return _interrupted(argv)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return _interrupted(argv)
    finally:
        set_progress(previous)


def _interrupted(argv: Sequence[str] | None) -> int:
    """Exit code 130 for Ctrl-C. Run as the ``nfncompile`` program (``argv`` None), also
    freeze the garbage collector: the interpreter then exits about 3x sooner (tearing down
    torch took seconds on a busy machine, which a user who pressed Ctrl-C should not wait
    for), still running every exit handler."""
    if argv is None:
        gc.freeze()
    return 130


# --------------------------------------------------------------------------------------------
# shared argument parsing
# --------------------------------------------------------------------------------------------


def parse_shape(text: str) -> tuple[int, ...]:
    """Parse ``"1,3,32,32"`` (or ``1x3x32x32``) into a tuple of positive ints.

    Examples
    --------
    >>> parse_shape("2, 1, 8, 8")
    (2, 1, 8, 8)
    """
    parts = [p.strip() for p in text.replace("x", ",").split(",") if p.strip()]
    try:
        shape = tuple(int(p) for p in parts)
    except ValueError:
        shape = ()
    if not shape or any(d < 1 for d in shape):
        raise argparse.ArgumentTypeError(
            f"expected comma-separated positive ints such as 1,3,32,32, got {text!r}"
        )
    return shape


def parse_kwarg(text: str) -> tuple[str, Any]:
    """Parse ``key=value`` with the value read as YAML.

    Examples
    --------
    >>> parse_kwarg("hidden=[64, 64]")
    ('hidden', [64, 64])
    >>> parse_kwarg("activation=tanh")
    ('activation', 'tanh')
    """
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key.isidentifier():
        raise argparse.ArgumentTypeError(f"expected key=value, got {text!r}")
    try:
        return key, yaml.safe_load(value)
    except yaml.YAMLError as e:
        raise argparse.ArgumentTypeError(f"{key}: value {value!r} is not valid YAML: {e}") from None


def _add_model_arguments(p: argparse.ArgumentParser, *, shape_help: str = "") -> None:
    p.add_argument(
        "model",
        metavar="MODEL",
        help="catalogue name (e.g. small_cnn), architectures factory (e.g. resnet_cifar), "
        "or MODULE:FACTORY (MODULE importable or a .py file)",
    )
    p.add_argument(
        "--kwarg",
        action="append",
        type=parse_kwarg,
        default=[],
        metavar="KEY=VALUE",
        help="keyword argument for the factory, value read as YAML (repeatable)",
    )
    p.add_argument(
        "--input-shape",
        type=parse_shape,
        metavar="SHAPE",
        help="example input shape with batch dim, e.g. 1,3,32,32"
        + (shape_help or " (default: the catalogue's, for catalogue names)"),
    )
    p.add_argument(
        "--seed", type=int, default=0, help="seed for the model init and inputs (default 0)"
    )


# --------------------------------------------------------------------------------------------
# model loading
# --------------------------------------------------------------------------------------------


def load_model(
    target: str, kwargs: dict[str, Any] | None = None, input_shape: tuple | None = None
) -> tuple[Any, tuple]:
    """Build the model ``target`` names and resolve its example input shape.

    Parameters
    ----------
    target : str
        A catalogue name, an :mod:`~nfncompile.architectures` factory name, or
        ``MODULE:FACTORY``.
    kwargs : dict, optional
        Keyword arguments for the factory.
    input_shape : tuple of int, optional
        Required unless ``target`` is a catalogue name (whose shape is the default).

    Returns
    -------
    model : torch.nn.Module
    input_shape : tuple of int

    Raises
    ------
    ConfigError
        When the module cannot be imported, the factory does not exist, rejects the keyword
        arguments or returns something else than an ``nn.Module``, or no shape is known.

    Examples
    --------
    >>> model, shape = load_model("small_cnn", {"channels": 4})
    >>> shape, model.conv1.out_channels
    ((2, 1, 8, 8), 4)
    """
    from .architectures import load

    model, default_shape = load(target, kwargs)
    shape = input_shape or default_shape
    if shape is None:
        raise ConfigError(f"{target}: --input-shape is required (e.g. --input-shape 1,3,32,32)")
    return model, tuple(shape)


def _model_and_input(args: argparse.Namespace) -> tuple[Any, Any]:
    """Seeded model and example input for ``args``; checks the model runs on the input."""
    import torch

    torch.manual_seed(args.seed)
    model, shape = load_model(args.model, dict(args.kwarg), args.input_shape)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(args.seed))
    try:
        with torch.no_grad():
            model(x)
    except Exception as e:
        raise UserCodeError.from_exception(
            f"{args.model} fails on an input of shape {list(shape)} (check --input-shape):", e
        ) from None
    return model, x


def _load_spec(path: str) -> Any:
    from .spec import WeightSpaceSpec

    if not Path(path).exists():
        raise ConfigError(f"{path}: no such spec file")
    if Path(path).is_dir():
        raise ConfigError(f"{path}: is a folder, not a spec file")
    return WeightSpaceSpec.from_yaml(Path(path))


def check_output_path(path: str, flag: str) -> Path:
    """Check, before any work, that ``path`` can be written; missing folders are fine.

    The path must not be a folder, and its nearest existing ancestor must be a folder we may
    write in (missing folders below it are created by :func:`write_output`).

    Raises
    ------
    ConfigError
        Naming ``flag``, the path and the folder that is in the way.

    Examples
    --------
    >>> import tempfile
    >>> d = tempfile.mkdtemp()
    >>> check_output_path(f"{d}/new/spec.yaml", "-o").name
    'spec.yaml'
    >>> check_output_path(d, "-o")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    nfncompile.errors.ConfigError: -o ...: is a folder; give a file path such as .../spec.yaml
    """
    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"{flag} {path}: is a folder; give a file path such as {p / 'spec.yaml'}")
    parent = p.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise ConfigError(f"{flag} {path}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"{flag} {path}: no permission to write in {parent}")
    return p


def write_output(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` whole (atomically), creating missing folders.

    Raises
    ------
    ConfigError
        When the folder cannot be created or the file written (naming the path and why).
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, text.encode())
    except OSError as e:
        raise ConfigError(f"cannot write {path}: {e.strerror or e}") from None


def _check_draw_path(path: str) -> Path:
    """The ``--draw`` path: matplotlib installed, a format it writes, a writable place."""
    try:
        from matplotlib.backend_bases import FigureCanvasBase
    except ImportError as e:
        raise ConfigError(
            f"--draw needs matplotlib (pip install 'nfncompile[draw]'): {e}"
        ) from None
    formats = sorted(FigureCanvasBase.get_supported_filetypes())
    suffix = Path(path).suffix.lstrip(".").lower()
    if suffix not in formats:
        what = f"format {suffix!r}" if suffix else "no file extension"
        raise ConfigError(
            f"--draw {path}: {what}; matplotlib writes {', '.join(formats)} (e.g. --draw graph.png)"
        )
    return check_output_path(path, "--draw")


# --------------------------------------------------------------------------------------------
# trace
# --------------------------------------------------------------------------------------------


def _trace_arguments(p: argparse.ArgumentParser) -> None:
    _add_model_arguments(p)
    p.add_argument("--mode", choices=("np", "hnp"), default="np", help="symmetry mode (np)")
    p.add_argument("-o", "--output", metavar="SPEC.yaml", help="write the spec YAML here")
    p.add_argument("--draw", metavar="GRAPH.png", help="draw the symmetry graph (matplotlib)")
    p.add_argument(
        "--no-verify",
        dest="verify",
        action="store_false",
        help="skip the numerical check of the derived symmetry",
    )


def _trace(args: argparse.Namespace) -> int:
    output = check_output_path(args.output, "-o") if args.output else None
    draw = _check_draw_path(args.draw) if args.draw else None
    model, x = _model_and_input(args)
    from .frontend.tracing import trace_with_report

    spec, report = trace_with_report(model, x, verify=args.verify, mode=args.mode, seed=args.seed)
    text = str(report).rstrip("\n")
    if output is not None:  # the spec first: a failed drawing must not cost it
        write_output(output, spec.to_yaml())
        print(text)
        print(f"wrote {args.output}")
    else:  # stdout stays valid YAML: the report as comments, then the spec
        print("\n".join(f"# {line}".rstrip() for line in text.splitlines()))
        print(spec.to_yaml(), end="")
    if draw is not None:
        from .frontend.drawing import draw_symmetry_graph

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
            "  nfncompile trace mymodels.py:make_net --input-shape 1,16"
        ),
    )
)


# --------------------------------------------------------------------------------------------
# verify
# --------------------------------------------------------------------------------------------


def _verify_arguments(p: argparse.ArgumentParser) -> None:
    _add_model_arguments(p)
    p.add_argument("--spec", required=True, metavar="SPEC.yaml", help="the spec to check")
    p.add_argument("--trials", type=int, default=8, help="random group elements (default 8)")
    p.add_argument("--mode", choices=("np", "hnp"), default=None, help="override the spec's mode")


def _verify(args: argparse.Namespace) -> int:
    if args.trials < 1:
        raise ConfigError(f"--trials must be a positive int, got {args.trials}")
    spec = _load_spec(args.spec)
    if args.mode:
        spec = spec.with_mode(args.mode)
    model, x = _model_and_input(args)
    try:
        spec.check_state_dict(model.state_dict())  # every mismatched key at once
    except StateDictMismatchError as e:
        raise StateDictMismatchError(f"{args.spec} does not describe {args.model}: {e}") from None
    from .frontend.verification import verify

    report = verify(model, spec, x, trials=args.trials, seed=args.seed)
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


# --------------------------------------------------------------------------------------------
# layer
# --------------------------------------------------------------------------------------------


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
    spec = _load_spec(args.spec)
    from .nn import NFLinear

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


# The zoo and run subcommands import their stage on first call, so that ``nfncompile --help``
# stays fast and each subcommand loads only the dependencies it needs.


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
    from .zoo import default_workers, generate_zoo, load_zoo_config

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


def _run(args: argparse.Namespace) -> int:
    if args.threads is not None and args.threads < 1:
        raise ConfigError(f"--threads must be a positive int, got {args.threads}")
    from .experiments.runner import run_experiment
    from .experiments.train import resolve_device

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
    )
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
  nfncompile run specs/experiments/winning_tickets.yaml --out runs/wt --device cuda""",
    )
)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
