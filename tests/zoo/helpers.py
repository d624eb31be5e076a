"""Paths and helpers shared by the zoo tests."""

from __future__ import annotations

import shutil
from pathlib import Path

SPECS = Path(__file__).resolve().parents[2] / "specs" / "zoos"
CNN_SPEC = SPECS / "digits_cnn.yaml"
INR_SPEC = SPECS / "digits_inr.yaml"


def shard_bytes(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.glob("shard-*.safetensors"))}


def copy_zoo(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst
