"""What several subcommands share: shapes and keyword arguments on the command line, the
model a name refers to, and output paths checked before any work."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError, UserCodeError
from ..files import atomic_write

__all__ = [
    "parse_shape",
    "parse_kwarg",
    "add_model_arguments",
    "load_model",
    "model_and_input",
    "load_spec",
    "check_output_path",
    "write_output",
    "check_draw_path",
]


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


def add_model_arguments(p: argparse.ArgumentParser, *, shape_help: str = "") -> None:
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
        "--channel-dim",
        type=int,
        default=1,
        metavar="DIM",
        help="the input's dim that holds its neurons (default 1: (batch, channels, ...); "
        "-1 for (batch, sequence, features))",
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
    from ..architectures import load

    model, default_shape = load(target, kwargs)
    shape = input_shape or default_shape
    if shape is None:
        raise ConfigError(f"{target}: --input-shape is required (e.g. --input-shape 1,3,32,32)")
    return model, tuple(shape)


def model_and_input(args: argparse.Namespace) -> tuple[Any, Any]:
    """Seeded model and example input for ``args``; checks the model runs on the input."""
    import torch

    torch.manual_seed(args.seed)
    model, shape = load_model(args.model, dict(args.kwarg), args.input_shape)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(args.seed))
    # in eval mode, as the front end runs it: a training-mode batch norm refuses a batch of
    # one, and would update its running statistics
    training = model.training
    try:
        with torch.no_grad():
            model.eval()  # not chained: OpenMMLab's train(mode) returns None
            model(x)
    except Exception as e:
        raise UserCodeError.from_exception(
            f"{args.model} fails on an input of shape {list(shape)} (check --input-shape):", e
        ) from None
    finally:
        model.train(training)
    return model, x


def load_spec(path: str) -> Any:
    from ..spec import WeightSpaceSpec

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


def check_draw_path(path: str) -> Path:
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
