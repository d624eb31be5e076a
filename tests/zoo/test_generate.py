"""Tests of :mod:`nfncompile.zoo.generate`: determinism, workers, resume and splits."""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest

from nfncompile.errors import ZooError
from nfncompile.zoo import generate_zoo, load_zoo, make_shard, shard_name
from tests.zoo.helpers import copy_zoo, shard_bytes


def test_same_seed_gives_byte_identical_shards(cnn_dir, cnn_config):
    assert make_shard(cnn_config, 2) == (cnn_dir / shard_name(2)).read_bytes()
    other = dataclasses.replace(cnn_config, seed=cnn_config.seed + 1)
    assert make_shard(other, 2) != make_shard(cnn_config, 2)


def test_workers_give_the_same_bytes(tmp_path, inr_dir, inr_config):
    report = generate_zoo(inr_config, tmp_path / "inr", workers=2, progress=False)
    assert report.complete and report.made == (0, 1, 2, 3)
    assert shard_bytes(tmp_path / "inr") == shard_bytes(inr_dir)
    assert (tmp_path / "inr" / "metadata.csv").read_bytes() == (
        inr_dir / "metadata.csv"
    ).read_bytes()


class Interrupt(Exception):
    pass


def test_resume_after_interruption_is_byte_identical(tmp_path, cnn_dir, cnn_config):
    out = tmp_path / "cnn"

    def stop_after_two(index: int) -> None:
        if index == 1:
            raise Interrupt

    with pytest.raises(Interrupt):
        generate_zoo(cnn_config, out, progress=False, on_shard_done=stop_after_two)
    manifest = json.loads((out / "manifest.json").read_text())
    assert not manifest["complete"] and sorted(manifest["shards"]) == [
        shard_name(0),
        shard_name(1),
    ]
    with pytest.raises(ZooError, match=r"incomplete zoo \(2 of 4 shards\)"):
        load_zoo(out)
    # what a kill mid-write could leave: a temp file, and an unrecorded damaged shard
    (out / f".{shard_name(2)}.tmp-12345").write_bytes(b"half")
    (out / shard_name(3)).write_bytes(b"garbage")
    report = generate_zoo(cnn_config, out, progress=False)
    assert report.skipped == (0, 1) and report.made == (2, 3) and report.complete
    assert not list(out.glob(".*tmp*"))
    assert shard_bytes(out) == shard_bytes(cnn_dir)
    assert (out / "metadata.csv").read_bytes() == (cnn_dir / "metadata.csv").read_bytes()
    assert len(load_zoo(out)) == 32


def test_resume_after_losing_the_last_shard(tmp_path, cnn_dir, cnn_config):
    out = copy_zoo(cnn_dir, tmp_path / "cnn")
    manifest = json.loads((out / "manifest.json").read_text())
    del manifest["shards"][shard_name(3)]
    manifest["complete"] = False
    (out / "manifest.json").write_text(json.dumps(manifest))
    (out / shard_name(3)).unlink()
    report = generate_zoo(cnn_config, out, progress=False)
    assert report.made == (3,) and report.skipped == (0, 1, 2)
    assert shard_bytes(out) == shard_bytes(cnn_dir)
    # a complete zoo is left alone: nothing made, its bookkeeping files not rewritten
    stamps = {f: (out / f).stat().st_mtime_ns for f in ("manifest.json", "metadata.csv")}
    assert generate_zoo(cnn_config, out, progress=False).made == ()
    assert {f: (out / f).stat().st_mtime_ns for f in stamps} == stamps


def test_shard_splits_cover_the_zoo_exactly_once(tmp_path, inr_dir, inr_config):
    made = []
    for i in range(3):
        report = generate_zoo(inr_config, tmp_path / f"part{i}", shard=(i, 3), progress=False)
        assert not report.complete
        assert (tmp_path / f"part{i}" / f"manifest.part-{i}-of-3.json").exists()
        made.extend(report.made)
    assert sorted(made) == [0, 1, 2, 3]  # every shard, each once
    assert made == [0, 3, 1, 2]  # part i makes the shards s with s % 3 == i
    with pytest.raises(ZooError, match="incomplete zoo"):
        load_zoo(tmp_path / "part0")
    # gather the parts in one directory: a run without --shard finishes without recomputing
    merged = tmp_path / "merged"
    merged.mkdir()
    for i in range(3):
        for path in (tmp_path / f"part{i}").iterdir():
            shutil.copy(path, merged / path.name)
    report = generate_zoo(inr_config, merged, progress=False)
    assert report.made == () and report.complete
    assert shard_bytes(merged) == shard_bytes(inr_dir)
    assert not list(merged.glob("manifest.part-*"))
    assert len(load_zoo(merged)) == 40


def test_parts_in_one_directory_complete_the_zoo(tmp_path, inr_config):
    first = generate_zoo(inr_config, tmp_path, shard=(1, 2), progress=False)
    assert first.made == (1, 3) and not first.complete
    second = generate_zoo(inr_config, tmp_path, shard=(0, 2), progress=False)
    assert second.made == (0, 2) and second.complete
    assert len(load_zoo(tmp_path)) == 40


def test_a_different_config_is_refused(tmp_path, inr_dir, inr_config):
    out = copy_zoo(inr_dir, tmp_path / "inr")
    changed = dataclasses.replace(inr_config, steps=inr_config.steps + 1)
    with pytest.raises(ZooError, match=r"different config .*steps"):
        generate_zoo(changed, out, progress=False)
