"""Resolve a model name, as the CLI and YAML specs spell it, into a built ``nn.Module``.

A name is a :data:`~nfncompile.architectures.catalogue.CATALOGUE` entry, a
:data:`~nfncompile.architectures.catalogue.FACTORIES` function, or ``MODULE:FACTORY`` where
the module is a dotted name importable from the current directory or a ``path/to/file.py``.
"""

from __future__ import annotations

import contextlib
import difflib
import importlib
import importlib.util
import inspect
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from torch import nn

from ..errors import ConfigError, ModelArgumentError, UserCodeError
from .catalogue import CATALOGUE, FACTORIES

__all__ = ["load"]


@contextlib.contextmanager
def _cwd_on_path() -> Iterator[None]:
    cwd = os.getcwd()
    added = cwd not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        yield
    finally:
        if added and cwd in sys.path:
            sys.path.remove(cwd)


def _import_module(name: str) -> Any:
    """Import a dotted module name or a ``.py`` file; errors in the user's module become
    :class:`UserCodeError` with the user's frame (a SyntaxError shows its line)."""
    if name.endswith(".py") or os.sep in name or "/" in name:
        path = Path(name)
        if not path.is_file():
            raise ConfigError(f"cannot import {name!r}: no such file")
        mod_name = f"_nfncompile_user_{path.stem}"
        spec = importlib.util.spec_from_file_location(mod_name, path)
        if spec is None or spec.loader is None:
            raise ConfigError(f"cannot import {name!r}: not a Python file")
        module = importlib.util.module_from_spec(spec)
        sys.modules[mod_name] = module
        try:
            with _cwd_on_path():
                spec.loader.exec_module(module)
        except Exception as e:
            del sys.modules[mod_name]
            raise UserCodeError.from_exception(f"cannot import {name!r}:", e) from None
        return module
    try:
        with _cwd_on_path():
            return importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name is not None and (name == e.name or name.startswith(e.name + ".")):
            raise ConfigError(f"cannot import module {name!r}: {e}") from None
        raise UserCodeError.from_exception(f"cannot import module {name!r}:", e) from None
    except Exception as e:
        raise UserCodeError.from_exception(f"cannot import module {name!r}:", e) from None


def _call_factory(target: str, factory: Any, kwargs: dict[str, Any]) -> Any:
    """``factory(**kwargs)``: keyword arguments its signature rejects are a
    :class:`ModelArgumentError`, an exception raised inside it a :class:`UserCodeError`."""
    try:
        inspect.signature(factory).bind(**kwargs)
    except TypeError as e:
        raise ModelArgumentError(f"{target} rejected keyword arguments {kwargs}: {e}") from None
    except ValueError:  # no signature (some builtins): let the call decide
        pass
    try:
        return factory(**kwargs)
    except ConfigError as e:
        raise ModelArgumentError(str(e)) from None
    except Exception as e:
        call = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
        raise UserCodeError.from_exception(f"{target}({call}) raised", e) from None


def load(target: str, kwargs: dict[str, Any] | None = None) -> tuple[nn.Module, tuple | None]:
    """Build the model a name refers to, as the CLI and YAML specs spell it.

    Parameters
    ----------
    target : str
        A :data:`CATALOGUE` name, a :data:`FACTORIES` name, or ``MODULE:FACTORY`` (the module
        may be a dotted name importable from the current directory or a ``path/to/file.py``;
        ``FACTORY`` may also name an ``nn.Module`` instance).
    kwargs : dict, optional
        Keyword arguments for the factory.

    Returns
    -------
    model : torch.nn.Module
    default_shape : tuple of int or None
        The catalogue entry's example input shape, ``None`` for other targets.

    Raises
    ------
    ConfigError
        When the module cannot be imported, the attribute does not exist, the target is not a
        factory or returns something other than an ``nn.Module``;
        :class:`ModelArgumentError` when the factory rejects ``kwargs``;
        :class:`UserCodeError` when the module or the factory raises (the message shows the
        frame in the user's file).

    Examples
    --------
    >>> model, shape = load("small_cnn", {"channels": 4})
    >>> shape, model.conv1.out_channels
    ((2, 1, 8, 8), 4)
    """
    kwargs = dict(kwargs or {})
    default_shape = None
    if ":" in target:
        module_name, _, attr = target.rpartition(":")
        if not module_name or not attr:
            raise ConfigError(f"expected MODULE:FACTORY, got {target!r}")
        obj = _import_module(module_name)
        for part in attr.split("."):
            if not hasattr(obj, part):
                avail = sorted(
                    k for k, v in vars(obj).items() if not k.startswith("_") and callable(v)
                )
                near = difflib.get_close_matches(part, avail, n=1)
                hint = f" (did you mean {near[0]!r}?)" if near else ""
                listing = f"; callables there: {', '.join(avail)}" if len(avail) <= 12 else ""
                raise ConfigError(f"{module_name!r} has no attribute {attr!r}{hint}{listing}")
            obj = getattr(obj, part)
        factory = obj
    elif target in CATALOGUE:
        factory, default_shape = CATALOGUE[target].factory, CATALOGUE[target].input_shape
    elif target in FACTORIES:
        factory = FACTORIES[target]
    else:
        near = difflib.get_close_matches(target, [*CATALOGUE, *FACTORIES], n=1)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        raise ConfigError(
            f"unknown model {target!r}{hint}; give a catalogue name "
            f"({', '.join(CATALOGUE)}), an architectures factory "
            f"({', '.join(k for k in FACTORIES if k not in CATALOGUE)}) or MODULE:FACTORY"
        )
    if isinstance(factory, nn.Module):
        if kwargs:
            raise ModelArgumentError(
                f"{target} is a module instance, not a factory: it takes no keyword arguments"
            )
        model = factory
    elif callable(factory):
        model = _call_factory(target, factory, kwargs)
    else:
        raise ConfigError(f"{target} is a {type(factory).__name__}, not a factory or nn.Module")
    if not isinstance(model, nn.Module):
        raise ConfigError(f"{target} returned a {type(model).__name__}, expected a torch.nn.Module")
    return model, default_shape
