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

from . import layer, run, trace, verify, zoo  # noqa: F401  (each registers its subcommand)
from .app import PROG, Subcommand, build_parser, main, register_subcommand
from .arguments import check_output_path, load_model, parse_kwarg, parse_shape, write_output
from .zoo import parse_shard

__all__ = [
    "PROG",
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
