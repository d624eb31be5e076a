"""Declarative configs: frozen dataclasses parsed from plain YAML data, with exact errors.

One small validator serves every YAML file of nfncompile (NFN specs, experiment specs, model
zoos). A config is a tree of frozen dataclasses; their type hints *are* the schema:

* ``int`` (``bool`` rejected), ``float`` (``int`` accepted), ``str``, ``bool``, ``Any``;
* ``Literal[...]``, ``X | None`` / ``Optional[X]``, other unions (first alternative that fits);
* ``tuple[X, ...]``, ``tuple[X, Y]``, ``list[X]``, ``dict[str, X]`` (YAML lists become tuples
  or lists, mappings dicts);
* nested dataclasses, and *tagged unions* of dataclasses: ``A | B | C`` where each class has a
  ``type`` tag, either ``type: ClassVar[str] = "a"`` or a field ``type: Literal["a"] = "a"``;
  the ``type`` key of the data picks the class.

Defaults come from the dataclass. Field metadata adds constraints and documentation:
``field(metadata={"min": 1, "max": 8, "min_items": 1, "choices": (...), "help": "..."})``
(``min``/``max``/``choices`` apply to the scalars inside containers; ``choices`` may be a
zero-argument callable returning the valid values). A class attribute
``_exactly_one: ClassVar[tuple[tuple[str, ...], ...]]`` lists groups of keys of which exactly
one must be given (non-null). ``__post_init__`` may raise :class:`FieldError` (or any
:class:`~nfncompile.errors.ConfigError`) for cross-field checks; :func:`parse` adds the path.

Every error is a :class:`~nfncompile.errors.ConfigError` that names the source, the key path
and what would be valid, e.g. ``specs/x.yaml: nfn.layers[2].channels: expected a positive int,
got -3``. The same dataclasses convert back to plain data (:func:`to_dict`) and generate a
JSON Schema for editors (:func:`nfncompile.declarative.schema_export.json_schema`).

Examples
--------
>>> from dataclasses import dataclass, field
>>> @dataclass(frozen=True)
... class Layer:
...     channels: int = field(metadata={"min": 1, "help": "output channels"})
...     io_embed: bool = False
>>> parse(Layer, {"channels": 16})
Layer(channels=16, io_embed=False)
>>> parse(Layer, {"channels": -3}, source="x.yaml", path="nfn.layers[2]")
Traceback (most recent call last):
...
nfncompile.errors.ConfigError: x.yaml: nfn.layers[2].channels: expected a positive int, got -3
>>> parse(Layer, {"chanels": 3})
Traceback (most recent call last):
...
nfncompile.errors.ConfigError: <dict>: chanels: unknown key (did you mean 'channels'?); valid keys: channels, io_embed
>>> to_dict(parse(Layer, {"channels": 4}))
{'channels': 4, 'io_embed': False}
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import types
import typing
from collections.abc import Mapping
from typing import Any, ClassVar, Literal, TypeVar, Union, get_args, get_origin  # noqa: F401

from ..errors import ConfigError, FieldError, NfnCompileError

__all__ = [
    "parse",
    "to_dict",
    "type_tag",
]

T = TypeVar("T")


# --------------------------------------------------------------------------------------------
# type introspection
# --------------------------------------------------------------------------------------------

_NONE = type(None)


@functools.cache
def _hints(cls: type) -> dict:
    try:
        return typing.get_type_hints(cls)
    except Exception as e:  # a programming error in the config class, not a user error
        raise TypeError(f"cannot resolve the type hints of {cls.__qualname__}: {e}") from e


def _fields(cls: type) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls) if f.init]


def _is_union(tp: Any) -> bool:
    return get_origin(tp) in (Union, types.UnionType)


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def type_tag(cls: type) -> str | None:
    """The ``type`` tag of a config dataclass, or ``None`` when it has none.

    A tag is a ``type: ClassVar[str] = "..."`` class attribute or a field
    ``type: Literal["..."]``.

    Examples
    --------
    >>> from dataclasses import dataclass
    >>> @dataclass(frozen=True)
    ... class Norm:
    ...     type: ClassVar[str] = "norm"
    >>> type_tag(Norm)
    'norm'
    """
    if not _is_dataclass_type(cls):
        return None
    for f in dataclasses.fields(cls):
        if f.name == "type":
            hint = _hints(cls).get("type")
            if get_origin(hint) is Literal and len(get_args(hint)) == 1:
                return get_args(hint)[0]
            return None
    value = cls.__dict__.get("type", None)
    for base in cls.__mro__:
        if "type" in base.__dict__:
            value = base.__dict__["type"]
            break
    return value if isinstance(value, str) else None


def _tag_is_classvar(cls: type) -> bool:
    return type_tag(cls) is not None and "type" not in {f.name for f in dataclasses.fields(cls)}


def _tagged_alternatives(tp: Any) -> dict | None:
    """``{tag: class}`` when ``tp`` is a union of tagged dataclasses, else ``None``."""
    args = [a for a in get_args(tp) if a is not _NONE]
    if len(args) < 2 or not all(_is_dataclass_type(a) and type_tag(a) for a in args):
        return None
    tags = {}
    for a in args:
        tag = type_tag(a)
        if tag in tags:
            raise TypeError(f"{a.__qualname__} and {tags[tag].__qualname__} share type tag {tag!r}")
        tags[tag] = a
    return tags


def _choices(meta: Mapping) -> tuple | None:
    choices = meta.get("choices")
    if choices is None:
        return None
    if callable(choices):
        choices = choices()
    return tuple(choices)


# --------------------------------------------------------------------------------------------
# messages
# --------------------------------------------------------------------------------------------


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _fail(source: str, path: str, message: str) -> typing.NoReturn:
    raise ConfigError(f"{source}: {path}: {message}" if path else f"{source}: {message}")


def _show(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, Mapping):
        return "a mapping" if value else "an empty mapping"
    if isinstance(value, (list, tuple)):
        return "a list" if value else "an empty list"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _fmt(v: Any) -> str:
    return "null" if v is None else str(v).lower() if isinstance(v, bool) else str(v)


def _nearest(word: Any, options: typing.Iterable) -> str:
    near = difflib.get_close_matches(str(word), [str(o) for o in options], n=1)
    return f" (did you mean {near[0]!r}?)" if near else ""


def _num(x: Any) -> str:
    return str(int(x)) if isinstance(x, float) and x.is_integer() else str(x)


def _describe(tp: Any, meta: Mapping | None = None) -> str:
    """A phrase for what a value of ``tp`` must be: 'a positive int', 'one of np, hnp'."""
    meta = meta or {}
    if tp is Any or tp is object:
        return "any value"
    if tp is _NONE:
        return "null"
    if tp is bool:
        return "a bool (true or false)"
    if tp in (int, float):
        lo, hi = meta.get("min"), meta.get("max")
        noun = "int" if tp is int else "number"
        art = "an" if tp is int else "a"
        if lo is not None and hi is not None:
            return f"{art} {noun} in [{_num(lo)}, {_num(hi)}]"
        if lo is not None:
            if lo == 1 and tp is int:
                return "a positive int"
            if lo == 0:
                return f"a non-negative {noun}"
            return f"{art} {noun} >= {_num(lo)}"
        if hi is not None:
            return f"{art} {noun} <= {_num(hi)}"
        return f"{art} {noun}"
    if tp is str:
        choices = _choices(meta)
        return f"one of {', '.join(map(str, choices))}" if choices else "a string"
    origin = get_origin(tp)
    if origin is Literal:
        return f"one of {', '.join(_fmt(a) for a in get_args(tp))}"
    if _is_union(tp):
        tags = _tagged_alternatives(tp)
        if tags:
            return f"a mapping with 'type' one of {', '.join(tags)}"
        parts = [_describe(a, meta) for a in get_args(tp)]
        return " or ".join(parts)
    if _is_dataclass_type(tp):
        return f"a mapping with keys {', '.join(f.name for f in _fields(tp))}"
    if origin in (tuple, list) or tp in (tuple, list):
        args = get_args(tp)
        if origin is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
            return f"a list of {len(args)} items"
        return "a list" + (f" of {_plural(args[0], meta)}" if args else "")
    if origin is dict or tp is dict or origin is Mapping:
        return "a mapping"
    return getattr(tp, "__name__", str(tp))


def _plural(tp: Any, meta: Mapping) -> str:
    phrase = _describe(tp, meta)
    for art in ("an ", "a "):
        if phrase.startswith(art):
            phrase = phrase[len(art) :]
            head, sep, rest = phrase.partition(" in [")
            head, sep2, rest2 = head.partition(" >= ")
            if not sep2:
                head, sep2, rest2 = head.partition(" <= ")
            words = head.split(" ")
            if words[-1] in ("int", "number", "string", "mapping", "list", "bool"):
                words[-1] += "s"
            head = " ".join(words) + sep2 + rest2
            return head + sep + rest
    return f"values that are {phrase}"


# --------------------------------------------------------------------------------------------
# parse
# --------------------------------------------------------------------------------------------


def parse(cls: type[T], data: Any, *, source: str = "<dict>", path: str = "") -> T:
    """Build the config ``cls`` (a frozen dataclass, or any supported type) from plain data.

    Parameters
    ----------
    cls : type
        Usually a dataclass; any type :mod:`nfncompile.declarative.validate` supports works.
    data : Any
        Plain data, as :func:`load_yaml` returns it.
    source : str
        The file (or ``"<dict>"``) errors name first.
    path : str
        Key path of ``data`` inside ``source`` (``"nfn"``), prefixed to every error path.

    Returns
    -------
    An instance of ``cls``.

    Raises
    ------
    ConfigError
        Path-qualified: unknown keys (with the nearest valid key), missing required keys,
        wrong types, values out of range, ``Literal`` values (all valid ones listed).

    Examples
    --------
    >>> from dataclasses import dataclass
    >>> @dataclass(frozen=True)
    ... class Cfg:
    ...     mode: Literal["np", "hnp"] = "np"
    ...     hidden: tuple[int, ...] = ()
    >>> parse(Cfg, {"mode": "hnp", "hidden": [64, 64]})
    Cfg(mode='hnp', hidden=(64, 64))
    >>> parse(Cfg, {"mode": "nnp"}, source="x.yaml", path="nfn")
    Traceback (most recent call last):
    ...
    nfncompile.errors.ConfigError: x.yaml: nfn.mode: expected one of np, hnp, got 'nnp' (did you mean 'np'?)
    """
    return _parse(cls, data, source, path, {})


def _parse(tp: Any, data: Any, source: str, path: str, meta: Mapping) -> Any:
    if tp is Any or tp is object:
        return data
    if tp is _NONE:
        if data is not None:
            _fail(source, path, f"expected null, got {_show(data)}")
        return None
    if _is_dataclass_type(tp):
        return _parse_dataclass(tp, data, source, path)
    origin = get_origin(tp)
    if origin is Literal:
        return _parse_literal(tp, data, source, path)
    if _is_union(tp):
        return _parse_union(tp, data, source, path, meta)
    if tp is bool:
        if not isinstance(data, bool):
            _fail(source, path, f"expected {_describe(tp)}, got {_show(data)}")
        return data
    if tp is int or tp is float:
        ok = isinstance(data, int) if tp is int else isinstance(data, (int, float))
        if isinstance(data, bool) or not ok:
            _fail(source, path, f"expected {_describe(tp, meta)}, got {_show(data)}")
        value = data if tp is int else float(data)
        lo, hi = meta.get("min"), meta.get("max")
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            _fail(source, path, f"expected {_describe(tp, meta)}, got {_show(data)}")
        return value
    if tp is str:
        if not isinstance(data, str):
            _fail(source, path, f"expected {_describe(tp, meta)}, got {_show(data)}")
        choices = _choices(meta)
        if choices is not None and data not in choices:
            _fail(
                source,
                path,
                f"expected {_describe(tp, meta)}, got {data!r}{_nearest(data, choices)}",
            )
        return data
    if origin in (tuple, list) or tp in (tuple, list):
        return _parse_sequence(tp, data, source, path, meta)
    if origin in (dict, Mapping) or tp in (dict, Mapping):
        return _parse_mapping(tp, data, source, path, meta)
    raise TypeError(
        f"nfncompile.declarative.validate cannot parse values of type {tp!r} (at {path or 'root'})"
    )


def _parse_literal(tp: Any, data: Any, source: str, path: str) -> Any:
    values = get_args(tp)
    for v in values:
        if data == v and type(data) is type(v):
            return v
    hint = (
        _nearest(data, [v for v in values if isinstance(v, str)]) if isinstance(data, str) else ""
    )
    _fail(source, path, f"expected {_describe(tp)}, got {_show(data)}{hint}")


def _parse_union(tp: Any, data: Any, source: str, path: str, meta: Mapping) -> Any:
    args = get_args(tp)
    if data is None and _NONE in args:
        return None
    tags = _tagged_alternatives(tp)
    if tags is not None:
        return _parse_tagged(tags, data, source, path)
    others = [a for a in args if a is not _NONE]
    if len(others) == 1:
        return _parse(others[0], data, source, path, meta)
    errors = []
    for alt in others:
        try:
            return _parse(alt, data, source, path, meta)
        except ConfigError as e:
            errors.append((alt, e))
    # report the deep error of the one alternative of the data's kind, if there is one
    same_kind = [e for alt, e in errors if _kind(alt) == _kind_of(data)]
    if len(same_kind) == 1 and _kind_of(data) in ("mapping", "list"):
        raise same_kind[0]
    _fail(source, path, f"expected {_describe(tp, meta)}, got {_show(data)}")


def _kind(tp: Any) -> str:
    origin = get_origin(tp)
    if _is_dataclass_type(tp) or origin in (dict, Mapping) or tp in (dict, Mapping):
        return "mapping"
    if origin in (tuple, list) or tp in (tuple, list):
        return "list"
    return "scalar"


def _kind_of(data: Any) -> str:
    if isinstance(data, Mapping):
        return "mapping"
    if isinstance(data, (list, tuple)):
        return "list"
    return "scalar"


def _parse_tagged(tags: dict, data: Any, source: str, path: str) -> Any:
    valid = ", ".join(tags)
    for cls in tags.values():
        if isinstance(data, cls):
            return data
    if not isinstance(data, Mapping):
        _fail(source, path, f"expected a mapping with 'type' one of {valid}, got {_show(data)}")
    if "type" not in data:
        _fail(source, _join(path, "type"), f"missing required key; valid types: {valid}")
    tag = data["type"]
    if tag not in tags:
        _fail(
            source,
            _join(path, "type"),
            f"unknown type {_show(tag)}{_nearest(tag, tags)}; valid types: {valid}",
        )
    return _parse_dataclass(tags[tag], data, source, path)


def _parse_sequence(tp: Any, data: Any, source: str, path: str, meta: Mapping) -> Any:
    if not isinstance(data, (list, tuple)):
        _fail(source, path, f"expected {_describe(tp, meta)}, got {_show(data)}")
    args = get_args(tp)
    inner = {k: v for k, v in meta.items() if k not in ("min_items", "max_items")}
    lo, hi = meta.get("min_items"), meta.get("max_items")
    if (lo is not None and len(data) < lo) or (hi is not None and len(data) > hi):
        if lo is not None and hi is not None:
            need = f"{lo} to {hi} items" if lo != hi else f"exactly {lo} items"
        elif lo is not None:
            need = "a non-empty list" if lo == 1 else f"at least {lo} items"
        else:
            need = f"at most {hi} items"
        got = "an empty list" if not data else f"{len(data)} item{'s' if len(data) > 1 else ''}"
        _fail(source, path, f"expected {need}, got {got}")
    if get_origin(tp) is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
        if len(data) != len(args):
            _fail(source, path, f"expected a list of {len(args)} items, got {len(data)}")
        items = [
            _parse(a, v, source, f"{path}[{i}]", inner) for i, (a, v) in enumerate(zip(args, data))
        ]
    else:
        item = args[0] if args else Any
        items = [_parse(item, v, source, f"{path}[{i}]", inner) for i, v in enumerate(data)]
    is_tuple = get_origin(tp) is tuple or tp is tuple
    return tuple(items) if is_tuple else items


def _parse_mapping(tp: Any, data: Any, source: str, path: str, meta: Mapping) -> dict:
    if not isinstance(data, Mapping):
        _fail(source, path, f"expected a mapping, got {_show(data)}")
    args = get_args(tp)
    key_tp, val_tp = args if args else (Any, Any)
    out = {}
    for k, v in data.items():
        if key_tp is str and not isinstance(k, str):
            _fail(source, path, f"keys must be strings, got {_show(k)}")
        out[k] = _parse(val_tp, v, source, _join(path, str(k)), meta)
    return out


def _parse_dataclass(cls: type, data: Any, source: str, path: str) -> Any:
    if isinstance(data, cls):
        return data
    fields = _fields(cls)
    names = [f.name for f in fields]
    if not isinstance(data, Mapping):
        _fail(source, path, f"expected {_describe(cls)}, got {_show(data)}")
    tag = type_tag(cls)
    classvar_tag = _tag_is_classvar(cls)
    for key in data:
        if not isinstance(key, str):
            _fail(source, path, f"keys must be strings, got {_show(key)}")
        if classvar_tag and key == "type":
            if data[key] != tag:
                _fail(source, _join(path, "type"), f"expected {tag!r}, got {_show(data[key])}")
            continue
        if key not in names:
            valid = ", ".join(names) if names else "(none)"
            _fail(
                source,
                _join(path, key),
                f"unknown key{_nearest(key, names)}; valid keys: {valid}",
            )
    for group in getattr(cls, "_exactly_one", ()):
        given = [k for k in group if data.get(k) is not None]
        if len(given) != 1:
            got = "neither" if not given else "both " + " and ".join(given)
            if len(group) > 2:
                got = "none" if not given else ", ".join(given)
            _fail(source, path, f"expected exactly one of {', '.join(group)}; got {got}")
    hints = _hints(cls)
    kwargs = {}
    for f in fields:
        fpath = _join(path, f.name)
        if f.name in data:
            kwargs[f.name] = _parse(hints[f.name], data[f.name], source, fpath, f.metadata)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            help_ = f.metadata.get("help")
            _fail(source, fpath, "missing required key" + (f" ({help_})" if help_ else ""))
    try:
        return cls(**kwargs)
    except FieldError as e:
        _fail(source, _join(path, e.field), e.message)
    except NfnCompileError as e:
        _fail(source, path, str(e))


# --------------------------------------------------------------------------------------------
# to_dict
# --------------------------------------------------------------------------------------------


def to_dict(obj: Any, *, omit_defaults: bool = False) -> Any:
    """Plain data (dicts, lists, scalars) for a config: ``parse(cls, to_dict(x)) == x``.

    Tagged dataclasses get their ``type`` key first. Optional fields that are ``None`` by
    default are left out when ``None``.

    Parameters
    ----------
    obj : dataclass instance (or plain data)
    omit_defaults : bool
        Leave out every field equal to its default (a minimal file).

    Examples
    --------
    >>> from dataclasses import dataclass
    >>> @dataclass(frozen=True)
    ... class Drop:
    ...     type: ClassVar[str] = "dropout"
    ...     p: float = 0.5
    >>> to_dict(Drop(0.1)), to_dict(Drop(), omit_defaults=True)
    ({'type': 'dropout', 'p': 0.1}, {'type': 'dropout'})
    """
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out: dict = {}
        cls = type(obj)
        if _tag_is_classvar(cls):
            out["type"] = type_tag(cls)
        for f in _fields(cls):
            value = getattr(obj, f.name)
            default = _default(f)
            if value is None and default is None:
                continue
            is_tag = f.name == "type" and type_tag(cls) is not None
            if omit_defaults and not is_tag and value == default:
                continue
            out[f.name] = to_dict(value, omit_defaults=omit_defaults)
        return out
    if isinstance(obj, Mapping):
        return {k: to_dict(v, omit_defaults=omit_defaults) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v, omit_defaults=omit_defaults) for v in obj]
    return obj


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING
