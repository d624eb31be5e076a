"""The ``nfncompile`` program: the subcommand registry, the parser and :func:`main` (how
errors and Ctrl-C end a run)."""

from __future__ import annotations

import argparse
import gc
import shlex
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ..errors import Interrupted, NfnCompileError

__all__ = ["PROG", "Subcommand", "register_subcommand", "build_parser", "main"]

PROG = "nfncompile"


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
    from .. import __version__

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
    from ..progress import progress_setting, set_progress

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
