"""Named exceptions of nfncompile.

Every user error is raised as one of these (never a bare ``assert``); each message names the
offending node, key, path or value and what would be valid.
"""

from __future__ import annotations

import sys
import sysconfig
import traceback
from pathlib import Path

__all__ = [
    "NfnCompileError",
    "SpecError",
    "StateDictMismatchError",
    "FeatureMismatchError",
    "TraceError",
    "SymmetryError",
    "ConfigError",
    "FieldError",
    "ModelArgumentError",
    "UserCodeError",
    "ZooError",
    "Interrupted",
    "user_frame",
    "is_user_file",
]


class NfnCompileError(Exception):
    """Base class of every error nfncompile raises on purpose."""


class SpecError(NfnCompileError, ValueError):
    """A weight-space spec (or its YAML) is malformed: the message names the key path."""


class StateDictMismatchError(NfnCompileError, KeyError):
    """A state_dict does not match a spec: lists missing, unexpected and mis-shaped keys at once."""

    def __str__(self) -> str:  # KeyError would otherwise repr() the message
        return str(self.args[0]) if self.args else ""


class FeatureMismatchError(NfnCompileError, ValueError):
    """Weight-space features do not match a layer: wrong keys, shapes or channel count."""


class TraceError(NfnCompileError, RuntimeError):
    """torch.fx could not trace a model, or an op could not be analysed."""


class SymmetryError(NfnCompileError, RuntimeError):
    """A derived symmetry does not hold numerically: names the space and the op."""


class ConfigError(NfnCompileError, ValueError):
    """An NFN or experiment YAML is malformed: path-qualified, with the nearest valid key."""


class FieldError(ConfigError):
    """A cross-field check failed on one field; raise it from a config's ``__post_init__``.

    :func:`parse` reports it at the field's path (``nfn.layers[2].channels: ...``).

    Parameters
    ----------
    field : str
        The field name (or a dotted sub-path relative to the dataclass).
    message : str
        What is wrong and what would be valid.

    Examples
    --------
    >>> str(FieldError("out_features", "required when output is 'invariant'"))
    "out_features: required when output is 'invariant'"
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class ModelArgumentError(ConfigError):
    """A model factory rejected its keyword arguments (kept apart so callers can point at the
    ``kwargs`` field rather than the model name)."""


class UserCodeError(ConfigError):
    """The user's own code (a model module, factory or ``forward``) raised an exception.

    The message says what was being done, the exception, and the user's frame where it was
    raised (file, line and the source line, as Python prints them), without nfncompile's
    traceback. Build it with :meth:`from_exception`.
    """

    @classmethod
    def from_exception(cls, what: str, exc: BaseException) -> UserCodeError:
        """``what`` (e.g. ``"mymod.py:make() raised"``), the exception and its user frame.

        The frame shown is :func:`user_frame`'s; a ``SyntaxError`` shows its file, line and
        caret.

        Examples
        --------
        >>> def factory():
        ...     return 1 / 0
        >>> try:
        ...     factory()
        ... except ZeroDivisionError as e:
        ...     err = UserCodeError.from_exception("factory() raised", e)
        >>> print(err)  # doctest: +ELLIPSIS
        factory() raised ZeroDivisionError: division by zero
          File "<doctest ...>", line 2, in factory
            return 1 / 0...
        """
        if isinstance(exc, SyntaxError):
            lines = traceback.format_exception_only(type(exc), exc)
            frame = "".join(lines[:-1]).rstrip("\n")
            head = lines[-1].strip()
        else:
            head = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            frame = user_frame(exc)
        err = cls(f"{what} {head}" + (f"\n{frame}" if frame else ""))
        err.__cause__ = None
        err.__suppress_context__ = True
        return err


class Interrupted(KeyboardInterrupt):
    """Ctrl-C stopped a long step after it saved what it had finished (zoo shards, training
    epochs); the message says what was kept. Running the same command again resumes.

    A :class:`KeyboardInterrupt`, so code that lets Ctrl-C through still does.

    Examples
    --------
    >>> str(Interrupted("zoo digits_cnn: 5 of 12 shards made and recorded"))
    'zoo digits_cnn: 5 of 12 shards made and recorded'
    """


def _library_dirs() -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    dirs = {str(Path(__file__).resolve().parent)}
    dirs.update(
        str(Path(paths[k]).resolve()) for k in ("stdlib", "platstdlib", "purelib", "platlib")
    )
    for name in ("torch",):  # also when installed outside site-packages
        module = sys.modules.get(name)
        if module is not None and getattr(module, "__file__", None):
            dirs.add(str(Path(module.__file__).resolve().parent))
    return tuple(dirs)


def is_user_file(filename: str) -> bool:
    """Whether ``filename`` is the user's code: not in nfncompile, the standard library or an
    installed package (torch, ...), nor ``<frozen ...>``.

    >>> is_user_file(__file__), is_user_file("/home/me/my_models.py")
    (False, True)
    """
    if filename.startswith("<frozen"):
        return False
    try:
        resolved = str(Path(filename).resolve())
    except (OSError, RuntimeError):
        return True
    return not any(resolved == d or resolved.startswith(d + "/") for d in _library_dirs())


def user_frame(exc: BaseException) -> str:
    """The innermost traceback frame of ``exc`` in the user's code, formatted as Python does.

    Frames in nfncompile, the standard library and installed packages (torch, ...) are not the
    user's (:func:`is_user_file`); ``""`` when no frame is left.
    """
    frames = traceback.extract_tb(exc.__traceback__)
    users = [f for f in frames if is_user_file(f.filename)]
    return "".join(traceback.format_list(users[-1:])).rstrip("\n")


class ZooError(NfnCompileError):
    """A zoo directory is incomplete, corrupted, or made with a different config."""
