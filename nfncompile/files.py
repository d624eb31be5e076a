"""Reading and writing the project's files: durable writes (zoo shards, checkpoints, specs),
kept whole through Ctrl-C (:func:`sigint_replaced`), and strict, safe YAML (every spec and
config nfncompile reads).

>>> import tempfile, pathlib
>>> p = pathlib.Path(tempfile.mkdtemp()) / "x.json"
>>> atomic_write(p, b"{}")
>>> p.read_bytes()
b'{}'
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError, NfnCompileError

__all__ = ["atomic_write", "load_yaml", "loads_yaml", "sigint_replaced"]


@contextlib.contextmanager
def sigint_replaced(handler: Callable | int) -> Iterator[Callable | int | None]:
    """Ctrl-C (SIGINT) handled by ``handler`` for the duration, so that writes that belong
    together are not cut apart; yields the handler it replaced. Only the main thread may set
    signal handlers: elsewhere nothing changes and it yields ``None``.

    >>> with sigint_replaced(signal.SIG_IGN) as previous:
    ...     signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    True
    >>> signal.getsignal(signal.SIGINT) is previous
    True
    """
    if threading.current_thread() is not threading.main_thread():
        yield None
        return
    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield previous
    finally:
        signal.signal(signal.SIGINT, previous)


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a reader sees the old file or the new, never half.

    The bytes go to a temp file in the same directory, are fsynced and renamed over ``path``;
    the directory is fsynced too so the rename survives a crash (where the platform allows).
    On any error the temp file is removed and the error re-raised.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    with contextlib.suppress(OSError):  # make the rename durable (not on every platform)
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class _StrictSafeLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that rejects duplicate keys and reads ``1e-3`` as a float.

    (YAML 1.1, which PyYAML implements, needs a dot in a float, so ``lr: 1e-3`` would
    otherwise load as the *string* ``'1e-3'``.) Constructs only plain data, like SafeLoader.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                hash(key)
            except TypeError:
                continue  # SafeLoader reports unhashable keys itself
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping",
                    node.start_mark,
                    f"found duplicate key {key!r} (first at line {seen[key].line + 1})",
                    key_node.start_mark,
                )
            seen[key] = key_node.start_mark
        return super().construct_mapping(node, deep=deep)


_StrictSafeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def load_yaml(
    path: str | os.PathLike, *, error: type[NfnCompileError] = ConfigError
) -> tuple[Any, str]:
    """Read a YAML file as plain data (safe loader: no Python objects are ever built).

    Duplicate keys are rejected and ``1e-3`` reads as a float.

    Parameters
    ----------
    path : str or PathLike
    error : exception class
        What to raise (:class:`ConfigError` for configs, :class:`SpecError` for weight-space
        specs).

    Returns
    -------
    data : Any
        The loaded data (``None`` for an empty file).
    source : str
        ``str(path)``, to pass to :func:`parse` as ``source``.

    Raises
    ------
    ConfigError (or ``error``)
        When the file is missing or is not valid YAML; the message names the file, the line
        and column, and the YAML error, e.g. ``x.yaml: line 3, column 9: malformed YAML:
        mapping values are not allowed here``.
    """
    source = str(path)
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise error(f"{source}: no such file") from None
    except (IsADirectoryError, PermissionError, UnicodeDecodeError) as e:
        raise error(f"{source}: cannot read: {e}") from None
    return loads_yaml(text, source=source), source


def loads_yaml(
    text: str, *, source: str = "<yaml>", error: type[NfnCompileError] = ConfigError
) -> Any:
    """Like :func:`load_yaml`, from a string.

    Examples
    --------
    >>> loads_yaml("a: [1, 2]\\nlr: 1e-3")
    {'a': [1, 2], 'lr': 0.001}
    >>> loads_yaml("a: 1\\nb: [1, 2\\n", source="x.yaml")
    Traceback (most recent call last):
    ...
    nfncompile.errors.ConfigError: x.yaml: line 3, column 1: malformed YAML: expected ',' or ']', but got '<stream end>' (while parsing a flow sequence at line 2, column 4)
    """
    try:
        return yaml.load(text, Loader=_StrictSafeLoader)  # a SafeLoader subclass
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f" line {mark.line + 1}, column {mark.column + 1}:" if mark is not None else ""
        problem = e.problem or "invalid YAML"
        context = ""
        if e.context:
            cm = e.context_mark
            at = f" at line {cm.line + 1}, column {cm.column + 1}" if cm is not None else ""
            context = f" ({e.context}{at})"
        raise error(f"{source}:{where} malformed YAML: {problem}{context}") from None
    except yaml.YAMLError as e:
        raise error(f"{source}: malformed YAML: {e}") from None
