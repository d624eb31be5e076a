"""JSON Schema (draft 2020-12) generated from the config dataclasses :func:`~.validate.parse` reads.

The schema says what :func:`~.validate.parse` accepts, for editors (completion and checking as
one types) and for other tools: descriptions come from each class's first docstring line and
the fields' ``"help"`` metadata, defaults and constraints from the fields. :func:`schema` is
the schema of model spec files, committed as ``specs/schema.json`` (:func:`write_schema`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from .config import ModelConfig
from .validate import (
    _NONE,
    _choices,
    _default,
    _fields,
    _hints,
    _is_dataclass_type,
    _is_union,
    _tag_is_classvar,
    _tagged_alternatives,
    to_dict,
    type_tag,
)

__all__ = ["json_schema", "schema", "write_schema"]

JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"


def json_schema(cls: type, *, title: str | None = None, schema_id: str | None = None) -> dict:
    """A JSON Schema (draft 2020-12) for YAML files that :func:`parse` accepts as ``cls``.

    Generated from the same dataclasses: descriptions come from the first docstring line and
    field metadata ``"help"``, defaults and constraints from the fields. Point an editor at it
    (e.g. ``# yaml-language-server: $schema=../schema.json``) for completion and checking.

    Examples
    --------
    >>> from dataclasses import dataclass, field
    >>> @dataclass(frozen=True)
    ... class Cfg:
    ...     channels: int = field(default=16, metadata={"min": 1, "help": "width"})
    >>> json_schema(Cfg)["properties"]
    {'channels': {'type': 'integer', 'minimum': 1, 'description': 'width', 'default': 16}}
    """
    ctx = _SchemaContext()
    defs, refs = ctx.defs, ctx.refs
    root = _schema(cls, {}, ctx)
    out: dict = {"$schema": JSON_SCHEMA_DIALECT}
    if schema_id:
        out["$id"] = schema_id
    if title:
        out["title"] = title
    if "$ref" in root and _is_dataclass_type(cls):
        name = root["$ref"].rsplit("/", 1)[1]
        body = defs[name]
        if refs.get(name, 0) <= 1:  # referenced only from the root: inline it
            del defs[name]
        out.update(body)
    else:
        out.update(root)
    if defs:
        out["$defs"] = dict(sorted(defs.items()))
    return out


def _schema(tp: Any, meta: Mapping, ctx: _SchemaContext) -> dict:
    if tp is Any or tp is object:
        return {}
    if tp is _NONE:
        return {"type": "null"}
    if tp is bool:
        return {"type": "boolean"}
    if tp is int or tp is float:
        out: dict = {"type": "integer" if tp is int else "number"}
        if meta.get("min") is not None:
            out["minimum"] = meta["min"]
        if meta.get("max") is not None:
            out["maximum"] = meta["max"]
        return out
    if tp is str:
        choices = _choices(meta)
        return {"type": "string", "enum": list(choices)} if choices else {"type": "string"}
    if _is_dataclass_type(tp):
        name = ctx.name(tp)
        ctx.refs[name] = ctx.refs.get(name, 0) + 1
        if name not in ctx.defs:
            ctx.defs[name] = {}  # placeholder against recursion
            ctx.defs[name] = _dataclass_schema(tp, ctx)
        return {"$ref": f"#/$defs/{name}"}
    origin = get_origin(tp)
    if origin is Literal:
        values = list(get_args(tp))
        return {"const": values[0]} if len(values) == 1 else {"enum": values}
    if _is_union(tp):
        args = get_args(tp)
        tags = _tagged_alternatives(tp)
        if tags:
            body: dict = {
                "type": "object",
                "required": ["type"],
                "properties": {"type": {"enum": list(tags)}},
                "oneOf": [_schema(c, {}, ctx) for c in tags.values()],
            }
            if _NONE in args:
                return {"anyOf": [body, {"type": "null"}]}
            return body
        return {"anyOf": [_schema(a, meta, ctx) for a in args]}
    if origin in (tuple, list) or tp in (tuple, list):
        inner = {k: v for k, v in meta.items() if k not in ("min_items", "max_items")}
        args = get_args(tp)
        out = {"type": "array"}
        if origin is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
            out["prefixItems"] = [_schema(a, inner, ctx) for a in args]
            out["items"] = False
            out["minItems"] = out["maxItems"] = len(args)
        elif args:
            out["items"] = _schema(args[0], inner, ctx)
        if meta.get("min_items") is not None:
            out["minItems"] = meta["min_items"]
        if meta.get("max_items") is not None:
            out["maxItems"] = meta["max_items"]
        return out
    if origin in (dict, Mapping) or tp in (dict, Mapping):
        args = get_args(tp)
        out = {"type": "object"}
        if args and args[1] is not Any:
            out["additionalProperties"] = _schema(args[1], meta, ctx)
        return out
    raise TypeError(f"nfncompile.declarative.schema_export cannot describe values of type {tp!r}")


class _SchemaContext:
    """``$defs`` under construction, how often each is referenced, and who owns each name."""

    def __init__(self) -> None:
        self.defs: dict = {}
        self.refs: dict = {}
        self.owners: dict = {}

    def name(self, cls: type) -> str:
        owner = self.owners.setdefault(cls.__name__, cls)
        return cls.__name__ if owner is cls else f"{cls.__module__}.{cls.__qualname__}"


def _dataclass_schema(cls: type, ctx: _SchemaContext) -> dict:
    hints = _hints(cls)
    out: dict = {"type": "object"}
    doc = (cls.__doc__ or "").strip().split("\n\n")[0].replace("\n", " ").strip()
    if doc and not doc.startswith(f"{cls.__name__}("):  # skip dataclass' generated signature
        out["description"] = _plain_text(doc)
    props: dict = {}
    required: list = []
    tag = type_tag(cls)
    if tag is not None and _tag_is_classvar(cls):
        props["type"] = {"const": tag}
    for f in _fields(cls):
        prop = dict(_schema(hints[f.name], f.metadata, ctx))
        if f.metadata.get("help"):
            prop["description"] = f.metadata["help"]
        default = _default(f)
        if default is dataclasses.MISSING:
            required.append(f.name)
        elif default is not None:
            plain = to_dict(default)
            if _jsonable(plain):
                prop["default"] = plain
        props[f.name] = prop
    out["properties"] = props
    if required:
        out["required"] = required
    out["additionalProperties"] = False
    groups = getattr(cls, "_exactly_one", ())
    if groups:
        clauses = [{"oneOf": [{"required": [k]} for k in g]} for g in groups]
        if len(clauses) == 1:
            out.update(clauses[0])
        else:
            out["allOf"] = clauses
    return out


def _plain_text(doc: str) -> str:
    """reST to the Markdown editors show: roles and double backticks become `code`."""
    doc = re.sub(r":\w+:`~?(?:[\w.]+\.)?([^`]+)`", r"`\1`", doc)
    return " ".join(doc.replace("``", "`").split())


def _jsonable(v: Any) -> bool:
    if v is None or isinstance(v, (bool, int, float, str)):
        return True
    if isinstance(v, list):
        return all(_jsonable(x) for x in v)
    if isinstance(v, dict):
        return all(isinstance(k, str) and _jsonable(x) for k, x in v.items())
    return False


# --------------------------------------------------------------------------------------------
# the schema of model spec files
# --------------------------------------------------------------------------------------------


def schema() -> dict:
    """The JSON Schema (draft 2020-12) of model spec files, generated from the dataclasses.

    Examples
    --------
    >>> sorted(schema()["properties"])
    ['mlp', 'nfn', 'stat_nn']
    """
    return json_schema(ModelConfig, title="nfncompile model spec (nfn / stat_nn / mlp)")


def write_schema(path: str | os.PathLike | None = None) -> str:
    """The schema as JSON text (2-space indent, trailing newline), written to ``path`` if given.

    ``specs/schema.json`` is this text; a test checks that it is up to date. Regenerate with
    ``python -c "from nfncompile.declarative.schema_export import write_schema; write_schema('specs/schema.json')"``.
    """
    text = json.dumps(schema(), indent=2) + "\n"
    if path is not None:
        Path(path).write_text(text)
    return text
