"""Tests of :mod:`nfncompile.zoo.store`: a damaged shard is caught by its recorded sha256."""

from __future__ import annotations

from pathlib import Path

import pytest

from nfncompile.errors import ZooError
from nfncompile.zoo import generate_zoo, load_zoo, shard_name
from tests.zoo.helpers import CNN_SPEC, copy_zoo, shard_bytes


def flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])


@pytest.mark.parametrize("damage", [flip_byte, truncate])
def test_corrupted_shard_is_detected_with_a_clear_error(tmp_path, cnn_dir, cnn_config, damage):
    out = copy_zoo(cnn_dir, tmp_path / "cnn")
    damage(out / shard_name(1))
    with pytest.raises(ZooError) as info:
        load_zoo(out)
    message = str(info.value)
    assert str(out / shard_name(1)) in message
    assert "corrupted or truncated" in message and "sha256" in message
    assert f"Delete {shard_name(1)}" in message and "nfncompile zoo" in message
    assert "--quick" in message and str(CNN_SPEC) in message
    # without the up-front check, the shard is checked when first read
    zoo = load_zoo(out, verify=False)
    zoo.state_dicts([0])  # shard 0 is fine
    with pytest.raises(ZooError, match=shard_name(1)):
        zoo.state_dicts([8])
    # rerunning the generator replaces exactly the damaged shard
    report = generate_zoo(cnn_config, out, progress=False)
    assert report.made == (1,)
    assert shard_bytes(out) == shard_bytes(cnn_dir)
