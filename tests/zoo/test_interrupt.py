"""Ctrl-C while a zoo is generated: it stops at once, records every shard that finished, says
how to resume, and the resumed zoo has the same bytes as one made in one go."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nfncompile.errors import Interrupted
from nfncompile.files import atomic_write, loads_yaml
from nfncompile.zoo import config_from_dict, generate_zoo, make_shard
from nfncompile.zoo.store import shard_name
from tests.sigint import interrupt

# 16 shards of 2 small CNNs (about 0.25 s a shard on one busy core): long enough to interrupt
SPEC = """\
type: cnn
name: interrupted
out: zoo
seed: 3
num_models: 32
models_per_shard: 2
channels: 4
activations: [relu, tanh]
optimizers: [adam, sgd]
learning_rate: [1.0e-3, 0.3]
weight_decay: [1.0e-6, 0.03]
init_scale: [1.0, 6.0]
dropout: [0.0, 0.5]
train_fraction: [0.05, 1.0]
steps: [40, 80]
batch_size: 32
momentum: 0.9
max_grad_norm: 5.0
test_fraction: 0.3
split_seed: 0
"""


@pytest.fixture(scope="module")
def config():
    return config_from_dict(loads_yaml(SPEC))


def zoo_files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}


def recorded(directory: Path) -> set[str]:
    """The shards the zoo's manifest records."""
    manifest = directory / "manifest.json"
    return set(json.loads(manifest.read_text())["shards"]) if manifest.exists() else set()


@pytest.mark.slow
def test_ctrl_c_with_workers_stops_at_once_and_resumes_to_the_same_bytes(
    tmp_path, config, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "zoo.yaml").write_text(SPEC)
    argv = ["zoo", "zoo.yaml", "--workers", "2", "--out", "interrupted"]
    out = tmp_path / "interrupted"
    last = interrupt(argv, lambda: recorded(out))
    assert last.startswith("nfncompile: interrupted: zoo interrupted: ")
    assert "shards made and recorded in interrupted" in last
    on_disk = {p.name for p in out.glob("shard-*.safetensors")}
    assert 0 < len(on_disk) < config.num_shards
    assert on_disk == recorded(out)  # every finished shard is recorded, no other
    assert not list(out.glob(".*tmp*"))  # a killed worker's temp file is not left behind...

    report = generate_zoo(config, out, progress=False, spec="zoo.yaml")  # ... resume
    assert report.complete and set(report.skipped) == {int(n[6:11]) for n in on_disk}
    reference = generate_zoo(config, tmp_path / "reference", progress=False, spec="zoo.yaml")
    assert reference.complete
    assert zoo_files(out) == zoo_files(tmp_path / "reference")


def test_shards_finished_while_stopping_are_recorded(tmp_path, config):
    """A worker may rename its shard into place after Ctrl-C reached the parent: it is
    complete, so it is recorded rather than made again."""
    out = tmp_path / "zoo"

    def interrupt(index: int) -> None:
        if index == 1:  # shard 2 finishes "in a worker" as Ctrl-C arrives
            atomic_write(out / shard_name(2), make_shard(config, 2))
            raise KeyboardInterrupt

    with pytest.raises(Interrupted, match=r"zoo interrupted: 3 of 16 shards made and recorded"):
        generate_zoo(config, out, progress=False, on_shard_done=interrupt)
    assert recorded(out) == {shard_name(i) for i in (0, 1, 2)}
    report = generate_zoo(config, out, progress=False)
    assert report.skipped == (0, 1, 2) and len(report.made) == 13


def test_a_stale_or_foreign_file_is_not_recorded(tmp_path, config):
    out = tmp_path / "zoo"
    out.mkdir()
    (out / shard_name(5)).write_bytes(b"not a shard")  # there before the run: never trusted
    other = config_from_dict({**loads_yaml(SPEC), "seed": 99})
    stale = make_shard(other, 6)

    def interrupt(index: int) -> None:
        atomic_write(out / shard_name(6), stale)  # written now, but by another zoo
        raise KeyboardInterrupt

    with pytest.raises(Interrupted, match="1 of 16 shards"):
        generate_zoo(config, out, progress=False, on_shard_done=interrupt)
    assert recorded(out) == {shard_name(0)}


def test_rerunning_a_finished_zoo_writes_nothing(tmp_path, config):
    out = tmp_path / "zoo"
    generate_zoo(config, out, progress=False)
    times = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    report = generate_zoo(config, out, progress=False)
    assert report.made == () and report.complete
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == times
