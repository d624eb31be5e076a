"""The zoo directory format: shards, their headers, the manifests and ``metadata.csv``.

A zoo directory::

    shard-00000.safetensors   stacked weights: key -> (models in shard, *param shape)
    ...                       (header metadata: the shard's CSV rows, as JSON)
    metadata.csv              one row per model: id, shard, hyperparameters, targets
    manifest.json             config, seed, versions, sha256 per shard, column types, summary

State_dict keys are exactly those of the architecture (``conv1.weight``, ..., ``fc.bias`` /
``hidden.0.weight``, ..., ``out.bias``). While a zoo is incomplete, each run records the shards
it made (with their sha256) in ``manifest.json``, or in ``manifest.part-i-of-n.json`` for a
``--shard i/n`` part; :func:`finalize` writes ``metadata.csv`` and the complete manifest.
:mod:`.reader` opens a finished zoo.

Examples
--------
>>> shard_name(42)
'shard-00042.safetensors'
>>> manifest_name((1, 4))
'manifest.part-1-of-4.json'
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import statistics
from pathlib import Path
from typing import Any

import torch

from ..declarative import to_dict
from ..errors import ZooError
from ..files import atomic_write
from .config import ZooConfig

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "MANIFEST",
    "METADATA",
    "SHARD_METADATA_KEY",
    "shard_header",
    "COLUMNS",
    "TARGET",
    "shard_seed",
    "shard_name",
    "encode_shard",
    "sha256_file",
    "manifest_name",
    "base_manifest",
    "read_manifest",
    "verified_shards",
    "write_manifest",
    "finalize",
    "corrupt_shard",
]

#: The ``format`` field of every manifest and shard header.
FORMAT = "nfncompile-zoo"
#: Bumped when the layout of a zoo directory changes.
FORMAT_VERSION = 1

MANIFEST = "manifest.json"
METADATA = "metadata.csv"
#: The one key of a shard's safetensors header metadata (a JSON object with its rows).
SHARD_METADATA_KEY = "nfncompile"


#: The columns of ``metadata.csv`` and their types, per zoo kind.
COLUMNS: dict[str, dict[str, str]] = {
    "cnn": {
        "id": "int", "shard": "int", "activation": "str", "optimizer": "str",
        "learning_rate": "float", "weight_decay": "float", "init_scale": "float",
        "dropout": "float", "train_fraction": "float", "train_size": "int", "steps": "int",
        "batch_size": "int", "diverged": "int", "train_loss": "float",
        "train_accuracy": "float", "test_loss": "float", "test_accuracy": "float",
    },
    "inr": {
        "id": "int", "shard": "int", "image_index": "int", "label": "int", "view": "int",
        "steps": "int", "learning_rate": "float", "mse": "float", "psnr": "float",
    },
}  # fmt: skip
#: The target column each kind's manifest summarises.
TARGET = {"cnn": "test_accuracy", "inr": "psnr"}


def shard_seed(seed: int, kind: str, index: int) -> int:
    """The seed of shard ``index`` of a ``kind`` zoo: any shard can be recomputed alone."""
    digest = hashlib.sha256(f"{FORMAT}/{kind}/{seed}/{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def shard_name(index: int) -> str:
    """``shard-00042.safetensors``."""
    return f"shard-{index:05d}.safetensors"


def config_digest(config: ZooConfig) -> str:
    """sha256 of the config's sorted JSON (recorded in every shard header)."""
    text = json.dumps(to_dict(config), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def encode_shard(config: ZooConfig, index: int, tensors: dict, rows: list[dict]) -> bytes:
    """The safetensors bytes of shard ``index``: its stacked weights and a header.

    The header metadata (one key, :data:`SHARD_METADATA_KEY`) holds the rows (JSON) and the
    config digest.
    """
    from safetensors.torch import save

    header = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "kind": config.type,
        "shard": index,
        "models": len(rows),
        "config_sha256": config_digest(config),
        "rows": rows,
    }
    # one metadata key holding sorted JSON: safetensors writes several keys in hash order,
    # which would change the bytes from one process to the next
    meta = {SHARD_METADATA_KEY: json.dumps(header, sort_keys=True)}
    return save(tensors, metadata=meta)


def shard_header(path: Path) -> dict:
    """The header :func:`encode_shard` wrote into a shard file (rows, config digest, ...).

    Raises
    ------
    Exception
        Whatever safetensors or JSON raise for an unreadable file (callers decide).
    """
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return json.loads(f.metadata()[SHARD_METADATA_KEY])


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def manifest_name(part: tuple[int, int] | None) -> str:
    """``manifest.json`` for a whole zoo, ``manifest.part-i-of-n.json`` for a part ``i/n``."""
    if part is None or part[1] == 1:
        return MANIFEST
    return f"manifest.part-{part[0]}-of-{part[1]}.json"


def base_manifest(config: ZooConfig, spec: str | None) -> dict:
    """The fields every manifest of this zoo shares (format, versions, config, shapes)."""
    from .. import __version__

    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "kind": config.type,
        "name": config.name,
        "seed": config.seed,
        "nfncompile_version": __version__,
        "torch_version": torch.__version__.split("+")[0],
        "spec": spec,
        "config": to_dict(config),
        "num_models": config.num_models,
        "num_shards": config.num_shards,
        "models_per_shard": config.models_per_shard,
        "params": {k: list(v) for k, v in config.param_shapes.items()},
        "input_shape": list(config.input_shape),
    }


def read_manifest(path: Path) -> dict:
    """A manifest's JSON; a :class:`ZooError` for an unreadable file or a foreign format."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ZooError(f"{path}: cannot read the zoo manifest ({e}); delete it and rerun") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ZooError(f"{path}: not an nfncompile zoo manifest")
    return data


def verified_shards(out: Path, config: ZooConfig, skip: Any = ()) -> dict[int, dict]:
    """Shards the manifests in ``out`` record whose file matches a recorded sha256.

    Every manifest (``manifest.json`` and the ``--shard`` parts) must have been made with
    ``config``; shard indices in ``skip`` are not checked.
    """
    candidates: dict[int, list[dict]] = {}
    paths = sorted(out.glob("manifest.part-*.json"))
    if (out / MANIFEST).exists():
        paths.insert(0, out / MANIFEST)
    want = to_dict(config)
    for path in paths:
        if not path.exists():  # a run that finished the zoo removed its part manifest
            continue
        data = read_manifest(path)
        if data.get("config") != want or data.get("format_version") != FORMAT_VERSION:
            got = data.get("config") or {}
            diff = sorted(k for k in set(want) | set(got) if want.get(k) != got.get(k))
            raise ZooError(
                f"{path}: {out} holds a zoo made with a different config (differs in: "
                f"{', '.join(diff) or 'format version'}); choose another --out or delete it"
            )
        for entry in data.get("shards", {}).values():
            candidates.setdefault(int(entry["index"]), []).append(entry)
    verified = {}
    for i, entries in sorted(candidates.items()):
        path = out / shard_name(i)
        if i in skip or not path.exists():
            continue
        sha = sha256_file(path)
        for entry in entries:
            if entry["sha256"] == sha:
                verified[i] = {"models": entry["models"], "sha256": sha}
                break
    return verified


def write_manifest(out: Path, name: str, base: dict, done: dict[int, dict], **extra: Any) -> None:
    """Write manifest ``name``: ``base`` and ``extra`` fields, plus the shards ``done``."""
    shards = {
        shard_name(i): {"index": i, "models": e["models"], "sha256": e["sha256"]}
        for i, e in sorted(done.items())
    }
    data = {**base, **extra, "shards": shards}
    _write_if_changed(out / name, (json.dumps(data, indent=2) + "\n").encode())


def _write_if_changed(path: Path, data: bytes) -> None:
    """:func:`atomic_write` unless ``path`` already holds exactly ``data`` (re-running a
    finished zoo leaves its files, and their times, alone)."""
    try:
        if path.read_bytes() == data:
            return
    except OSError:
        pass
    atomic_write(path, data)


def finalize(out: Path, config: ZooConfig, base: dict, done: dict[int, dict]) -> dict:
    """Write ``metadata.csv`` and the complete ``manifest.json``; return the summary."""
    columns = COLUMNS[config.type]
    rows: list[dict] = []
    for i in range(config.num_shards):
        path = out / shard_name(i)
        try:
            rows.extend(shard_header(path)["rows"])
        except Exception as e:
            raise corrupt_shard(path, out, base, f"unreadable ({e})") from None
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([repr(row[c]) if columns[c] == "float" else row[c] for c in columns])
    _write_if_changed(out / METADATA, buf.getvalue().encode())
    target = TARGET[config.type]
    values = [r[target] for r in rows if math.isfinite(r[target])]
    summary = {
        target: {
            "min": min(values),
            "median": statistics.median(values),
            "max": max(values),
            "mean": statistics.fmean(values),
        }
    }
    if config.type == "cnn":
        summary["diverged"] = sum(r["diverged"] for r in rows)
    write_manifest(
        out,
        MANIFEST,
        base,
        done,
        complete=True,
        metadata=METADATA,
        columns=columns,
        summary=summary,
    )
    for part in out.glob("manifest.part-*.json"):
        part.unlink()
    return summary


def corrupt_shard(path: Path, out: Path, manifest: dict, why: str) -> ZooError:
    """The error for a damaged shard: names the file and the command that regenerates it."""
    spec = manifest.get("spec") or "SPEC.yaml"
    quick = " --quick" if manifest.get("quick") else ""
    return ZooError(
        f"{path}: corrupted or truncated zoo shard: {why}. Delete {path.name} and rerun "
        f"`nfncompile zoo {spec}{quick} --out {out}` to regenerate it"
    )
