"""The plain-data and YAML forms of a weight-space spec (what ``from_dict``/``to_yaml`` use)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import yaml

from ..errors import SpecError
from .labels import ROLES, _axis_data, _is_int
from .params import ParamSpec
from .spaces import Blocks, Space

__all__ = ["spec_to_dict", "spec_fields", "spec_to_yaml"]


def spec_to_dict(spec: Any) -> dict:
    """The plain-data form of a :class:`WeightSpaceSpec` (what its YAML holds)."""
    out: dict = {}
    if spec.mode != "np":
        out["mode"] = spec.mode
    if spec.blocks:
        out["blocks"] = {
            b.name: {"count": b.count, **({"fixed": True} if b.fixed else {})}
            for b in spec.blocks.values()
        }
    out["spaces"] = {
        s.name: {"size": s.size, "role": s.role, **({"blocks": s.blocks} if s.blocks else {})}
        for s in spec.spaces.values()
    }
    params = {}
    for p in spec.params:
        entry: dict = {"shape": list(p.shape)}
        if p.view is not None:
            entry["view"] = list(p.view)
        entry["axes"] = [_axis_data(a) for a in p.axes]
        if p.order:
            entry["order"] = {axis: list(positions) for axis, positions in p.order}
        params[p.name] = entry
    out["params"] = params
    return out


def _entries(
    items: Any,
    section: str,
    shape: str,
    keys: tuple[str, ...],
    required: tuple[str, ...],
    entry_shape: str | None = None,
) -> Iterator[tuple[str, str, Mapping]]:
    """``(name, key path, entry)`` of each entry of ``items``, the spec's ``section`` (a
    mapping name -> mapping), the section and each entry checked to be mappings and each
    entry's keys checked against ``keys`` / ``required``."""
    if not isinstance(items, Mapping):
        raise SpecError(f"{section}: expected a mapping name -> {shape}, got {items!r}")
    for name, entry in items.items():
        path = f"{section}.{name}"
        if not isinstance(entry, Mapping):
            raise SpecError(f"{path}: expected a mapping {entry_shape or shape}, got {entry!r}")
        _check_keys(entry, keys, path, required=required)
        yield name, path, entry


def spec_fields(data: Any) -> dict:
    """The constructor arguments of a :class:`WeightSpaceSpec` read from plain data; raises
    :class:`SpecError` naming the key path."""
    if not isinstance(data, Mapping):
        raise SpecError(f"expected a mapping with keys spaces, params, got {type(data).__name__}")
    _check_keys(data, ("mode", "blocks", "spaces", "params"), "", required=("spaces", "params"))
    blocks = []
    for name, path, entry in _entries(
        data.get("blocks") or {}, "blocks", "{count[, fixed]}", ("count", "fixed"), ("count",)
    ):
        if not _is_int(entry["count"]) or entry["count"] < 1:
            raise SpecError(f"{path}.count: expected a positive int, got {entry['count']!r}")
        fixed = entry.get("fixed", False)
        if not isinstance(fixed, bool):
            raise SpecError(f"{path}.fixed: expected true or false, got {fixed!r}")
        blocks.append(Blocks(str(name), entry["count"], fixed=fixed))
    spaces = []
    keys = ("size", "role", "blocks")
    for name, path, entry in _entries(data["spaces"], "spaces", "{size, role}", keys, keys[:2]):
        size = entry["size"]
        if not _is_int(size) or size < 1:
            raise SpecError(f"{path}.size: expected a positive int, got {size!r}")
        if entry["role"] not in ROLES:
            raise SpecError(
                f"{path}.role: expected one of {', '.join(ROLES)}, got {entry['role']!r}"
            )
        if "blocks" in entry and not isinstance(entry["blocks"], str):
            raise SpecError(
                f"{path}.blocks: expected the name of a block permutation, got {entry['blocks']!r}"
            )
        spaces.append(Space(str(name), size, entry["role"], blocks=entry.get("blocks")))
    params = []
    keys = ("shape", "view", "axes", "order")
    for name, path, entry in _entries(
        data["params"],
        "params",
        "{shape, axes}",
        keys,
        ("shape", "axes"),
        entry_shape="{shape, axes[, view][, order]}",
    ):
        for key in ("shape", "view"):
            v = entry.get(key)
            if key == "view" and v is None:
                continue
            if not isinstance(v, list) or not all(_is_int(d) and d >= 1 for d in v):
                raise SpecError(f"{path}.{key}: expected a list of positive ints, got {v!r}")
        axes = entry["axes"]
        if not isinstance(axes, list):
            raise SpecError(f"{path}.axes: expected a list of labels, got {axes!r}")
        for i, a in enumerate(axes):
            ok = (
                a is None
                or isinstance(a, str)
                or _is_inner(a)
                or _is_span(a)
                or (
                    isinstance(a, list)
                    and a
                    and all(
                        isinstance(p, str) or (_is_int(p) and p >= 1) or _is_inner(p) or _is_span(p)
                        for p in a
                    )
                )
            )
            if not ok:
                raise SpecError(
                    f"{path}.axes[{i}]: expected a space name, null, a list of space "
                    "names / positive ints / positions inside a block / spans (composite), "
                    f"{{space: NAME, block_of: AXIS}} (a position inside a block) or "
                    f"{{space: NAME, span: N}} (its neurons, N positions each, or each a copy of "
                    f"space N's neurons), got {a!r}"
                )
        order = entry.get("order") or {}
        if not isinstance(order, Mapping) or not all(
            _is_int(k) and isinstance(v, list) for k, v in order.items()
        ):
            raise SpecError(
                f"{path}.order: expected a mapping axis index -> list of positions (the "
                f"labelled position of each stored one), got {order!r}"
            )
        try:
            params.append(
                ParamSpec(str(name), tuple(entry["shape"]), tuple(axes), entry.get("view"), order)
            )
        except SpecError as e:
            raise SpecError(f"{path}: {e}") from None
    return {"spaces": spaces, "params": params, "mode": data.get("mode", "np"), "blocks": blocks}


def spec_to_yaml(spec: Any) -> str:
    """The canonical YAML text of a :class:`WeightSpaceSpec`: one flow mapping per line."""
    d = spec_to_dict(spec)
    lines = []
    if "mode" in d:
        lines.append(f"mode: {d['mode']}")
    if "blocks" in d:
        lines.append("blocks:")
        width = max(len(_flow(k)) for k in d["blocks"]) + 1
        for k, v in d["blocks"].items():
            lines.append(f"  {(_flow(k) + ':').ljust(width)} {_flow(v)}")
    lines.append("spaces:")
    width = max((len(_flow(k)) for k in d["spaces"]), default=0) + 1
    for k, v in d["spaces"].items():
        lines.append(f"  {(_flow(k) + ':').ljust(width)} {_flow(v)}")
    lines.append("params:")
    width = max((len(_flow(k)) for k in d["params"]), default=0) + 1
    for k, v in d["params"].items():
        lines.append(f"  {(_flow(k) + ':').ljust(width)} {_flow(v)}")
    return "\n".join(lines) + "\n"


def _flow(value: Any) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, sort_keys=False, width=10**9)
    text = text.strip()
    if text.endswith("\n..."):
        text = text[: -len("\n...")]
    elif text.endswith("..."):
        text = text[: -len("...")].strip()
    return text


def _check_keys(entry: Mapping, allowed: tuple, path: str, required: tuple = ()) -> None:
    import difflib

    prefix = f"{path}." if path else ""
    for key in entry:
        if key not in allowed:
            near = difflib.get_close_matches(str(key), allowed, n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            raise SpecError(f"{prefix}{key}: unknown key{hint}; valid keys: {', '.join(allowed)}")
    for key in required:
        if key not in entry:
            raise SpecError(f"{prefix}{key}: missing required key")


def _is_piece_map(a: Any, key: str) -> bool:
    """Whether ``a`` is ``{space: NAME, <key>: INT}``: the YAML form of an :class:`Inner`
    (``key="block_of"``) or a :class:`Span` (``key="span"``, whose value may also name a
    space)."""
    return (
        isinstance(a, Mapping)
        and set(a) == {"space", key}
        and isinstance(a["space"], str)
        and (_is_int(a[key]) or (key == "span" and isinstance(a[key], str)))
    )


def _is_inner(a: Any) -> bool:
    return _is_piece_map(a, "block_of")


def _is_span(a: Any) -> bool:
    return _is_piece_map(a, "span")
