"""Reading a finished zoo: :func:`load_zoo` and the :class:`Zoo` it returns.

Shards are read on demand and checked against the sha256 the manifest records; a damaged or
missing one raises a :class:`~nfncompile.errors.ZooError` that names the file and the command
that regenerates it.

Examples
--------
>>> zoo = load_zoo("zoos/digits_cnn")  # doctest: +SKIP
>>> feats = zoo.features(spec)  # doctest: +SKIP
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..declarative import parse
from ..errors import ZooError
from .config import ZooConfig
from .store import (
    FORMAT_VERSION,
    MANIFEST,
    METADATA,
    corrupt_shard,
    read_manifest,
    sha256_file,
    shard_name,
)

__all__ = ["Zoo", "load_zoo", "manifest_path"]


class Zoo:
    """A generated zoo: metadata rows and stacked weights, loaded shard by shard on demand.

    Use :func:`load_zoo`. Indices are model ids (row positions): ``None`` (all), an int, a
    slice, or a sequence / 1-D tensor of ints.

    Attributes
    ----------
    directory : Path
    config : CNNZooConfig or INRZooConfig
    kind : {"cnn", "inr"}
    manifest : dict
    metadata : list of dict
        One row per model (``id``, ``shard``, hyperparameters, ``test_accuracy`` / ``psnr``...).
    """

    def __init__(self, directory: Path, manifest: dict, config: ZooConfig, rows: list[dict]):
        self.directory = directory
        self.manifest = manifest
        self.config = config
        self.kind = config.type
        self.metadata = rows
        self._cache: dict[int, dict[str, torch.Tensor]] = {}

    def __len__(self) -> int:
        return len(self.metadata)

    def __repr__(self) -> str:
        return (
            f"Zoo({str(self.directory)!r}, kind={self.kind!r}, models={len(self)}, "
            f"shards={self.config.num_shards})"
        )

    @property
    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """State_dict key -> shape of one model."""
        return self.config.param_shapes

    def column(self, name: str, indices: Any = None) -> list:
        """The values of one metadata column for ``indices``."""
        if self.metadata and name not in self.metadata[0]:
            raise ZooError(f"no column {name!r}; columns: {', '.join(self.metadata[0])}")
        return [self.metadata[i][name] for i in self._indices(indices).tolist()]

    def _indices(self, indices: Any) -> torch.Tensor:
        n = len(self)
        if indices is None:
            return torch.arange(n)
        if isinstance(indices, slice):
            return torch.arange(n)[indices]
        idx = torch.as_tensor(indices, dtype=torch.long).reshape(-1)
        bad = idx[(idx < -n) | (idx >= n)]
        if len(bad):
            raise ZooError(f"model index {int(bad[0])} out of range for a zoo of {n} models")
        return idx % max(n, 1)

    def _shard(self, index: int) -> dict[str, torch.Tensor]:
        if index not in self._cache:
            self._cache[index] = _read_shard(self.directory, self.manifest, index)
        return self._cache[index]

    def arrays(self, indices: Any = None) -> dict[str, torch.Tensor]:
        """Stacked weights ``key -> (len(indices), *shape)``, in the order of ``indices``."""
        idx = self._indices(indices)
        per = self.config.models_per_shard
        shard_of, offset = idx // per, idx % per
        out = {}
        for key, shape in self.param_shapes.items():
            out[key] = torch.empty(len(idx), *shape)
        for s in shard_of.unique().tolist():
            where = (shard_of == s).nonzero().squeeze(1)
            tensors = self._shard(s)
            for key in out:
                out[key][where] = tensors[key][offset[where]]
        return out

    def state_dicts(self, indices: Any = None) -> list[dict[str, torch.Tensor]]:
        """One state_dict per model (keys as the architecture's ``state_dict()``)."""
        arrays = self.arrays(indices)
        n = len(next(iter(arrays.values())))
        return [{k: v[i] for k, v in arrays.items()} for i in range(n)]

    def features(self, spec: Any = None, indices: Any = None) -> Any:
        """:class:`~nfncompile.features.WeightSpaceFeatures` ``(B, 1, *shape)`` for ``indices``.

        Parameters
        ----------
        spec : WeightSpaceSpec, optional
            When given, the weights are checked against it (by key) and follow its order.
        """
        from ..features import WeightSpaceFeatures

        arrays = self.arrays(indices)
        if spec is not None:
            spec.check_state_dict(arrays, leading=1)
            arrays = {k: arrays[k] for k in spec.names}
        return WeightSpaceFeatures({k: v.unsqueeze(1) for k, v in arrays.items()})

    def model(self, index: int) -> nn.Module:
        """The architecture with model ``index``'s weights loaded, in eval mode."""
        (i,) = self._indices(index).tolist()
        if self.kind == "cnn":
            net = self.config.build(self.metadata[i]["activation"])
        else:
            net = self.config.build()
        net.load_state_dict(self.state_dicts([i])[0])
        return net.eval()


def _read_shard(directory: Path, manifest: dict, index: int) -> dict[str, torch.Tensor]:
    from safetensors.torch import load

    name = shard_name(index)
    path = directory / name
    entry = manifest["shards"].get(name)
    if entry is None:
        raise ZooError(f"{manifest_path(directory)}: records no shard {name}")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise corrupt_shard(path, directory, manifest, f"cannot read it ({e.strerror})") from None
    got = hashlib.sha256(data).hexdigest()
    if got != entry["sha256"]:
        raise corrupt_shard(
            path,
            directory,
            manifest,
            f"sha256 {got[:16]}... but the manifest records {entry['sha256'][:16]}...",
        )
    try:
        tensors = load(data)
    except Exception as e:
        raise corrupt_shard(path, directory, manifest, f"unreadable ({e})") from None
    return tensors


def manifest_path(directory: str | os.PathLike) -> Path:
    """``directory / "manifest.json"``."""
    return Path(directory) / MANIFEST


def load_zoo(directory: str | os.PathLike, *, verify: bool = True) -> Zoo:
    """Open a zoo directory made by :func:`generate_zoo` / ``nfncompile zoo``.

    Parameters
    ----------
    directory : path
    verify : bool
        Check every shard's sha256 now (shards are checked again when first read).

    Raises
    ------
    ZooError
        When the zoo is missing or incomplete, or a shard is corrupted or truncated (the
        message names the file and says to delete it and rerun ``nfncompile zoo``).
    """
    directory = Path(directory)
    path = manifest_path(directory)
    if not path.exists():
        parts = sorted(directory.glob("manifest.part-*.json"))
        if parts:
            raise ZooError(
                f"{directory}: incomplete zoo (only part manifests: "
                f"{', '.join(p.name for p in parts)}); gather every part's shards here and "
                "rerun `nfncompile zoo SPEC.yaml` without --shard to finish it"
            )
        raise ZooError(f"{directory}: no zoo here (no {MANIFEST}); make one with `nfncompile zoo`")
    manifest = read_manifest(path)
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ZooError(
            f"{path}: zoo format version {manifest.get('format_version')}, this nfncompile "
            f"reads version {FORMAT_VERSION}; regenerate the zoo"
        )
    config = parse(ZooConfig, manifest["config"], source=str(path), path="config")
    if not manifest.get("complete"):
        n = len(manifest.get("shards", {}))
        raise ZooError(
            f"{directory}: incomplete zoo ({n} of {config.num_shards} shards); rerun "
            f"`nfncompile zoo {manifest.get('spec') or 'SPEC.yaml'}"
            f"{' --quick' if manifest.get('quick') else ''} --out {directory}` to finish it"
        )
    if verify:
        for name in manifest["shards"]:
            shard = directory / name
            if not shard.exists():
                raise corrupt_shard(shard, directory, manifest, "the file is missing")
            got = sha256_file(shard)
            if got != manifest["shards"][name]["sha256"]:
                raise corrupt_shard(
                    shard,
                    directory,
                    manifest,
                    f"sha256 {got[:16]}... but the manifest records "
                    f"{manifest['shards'][name]['sha256'][:16]}...",
                )
    rerun = (
        f"nfncompile zoo {manifest.get('spec') or 'SPEC.yaml'}"
        f"{' --quick' if manifest.get('quick') else ''} --out {directory}"
    )
    rows = _read_metadata(
        directory / manifest.get("metadata", METADATA), manifest["columns"], rerun
    )
    if len(rows) != config.num_models:
        raise ZooError(
            f"{directory / METADATA}: {len(rows)} rows for a zoo of {config.num_models} models; "
            f"rerun `{rerun}` to rewrite it from the shards"
        )
    return Zoo(directory, manifest, config, rows)


def _read_metadata(path: Path, columns: dict[str, str], rerun: str) -> list[dict]:
    """The rows of ``metadata.csv``, typed; a :class:`ZooError` naming the line for a file
    that is cut short or damaged (``rerun`` is the command that rewrites it)."""
    cast = {"int": int, "float": float, "str": str}
    fix = f"; rerun `{rerun}` to rewrite it from the shards"
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise ZooError(f"{path}: cannot read the zoo metadata ({e}){fix}") from None
    if text and not text.endswith("\n"):
        raise ZooError(f"{path}: the file is cut short (its last line is incomplete){fix}")
    reader = csv.DictReader(io.StringIO(text, newline=""))
    if reader.fieldnames != list(columns):
        raise ZooError(f"{path}: columns {reader.fieldnames}, expected {list(columns)}{fix}")
    rows = []
    for row in reader:
        line = reader.line_num
        if None in row or None in row.values():
            got = sum(v is not None for v in row.values()) + len(row.get(None) or ())
            raise ZooError(f"{path}: line {line} has {got} of {len(columns)} fields{fix}")
        try:
            rows.append({k: cast[columns[k]](v) for k, v in row.items()})
        except ValueError as e:
            raise ZooError(f"{path}: line {line}: {e}{fix}") from None
    return rows
