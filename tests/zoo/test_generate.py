"""Tests of :mod:`nfncompile.zoo.generate`: generating, resuming, splitting, verifying and loading zoos.

Every zoo here is the ``--quick`` zoo of a spec in ``specs/zoos`` (32 CNNs in 4 shards, 40
SIRENs in 4 shards), generated once per module and copied where a test damages it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch

import nfncompile as nfc
from nfncompile.errors import ConfigError
from nfncompile.features import WeightSpaceFeatures
from nfncompile.zoo.data import load_digits_tensors, pixel_grid, psnr
from nfncompile.zoo.generate import (
    CNNZooConfig,
    INRZooConfig,
    ZooError,
    add_zoo_arguments,
    config_from_dict,
    generate_zoo,
    load_zoo,
    load_zoo_config,
    make_shard,
    parse_shard,
    run_zoo_command,
    shard_name,
)

SPECS = Path(__file__).resolve().parents[2] / "specs" / "zoos"
CNN_SPEC = SPECS / "digits_cnn.yaml"
INR_SPEC = SPECS / "digits_inr.yaml"


@pytest.fixture(scope="module")
def cnn_config() -> CNNZooConfig:
    return load_zoo_config(CNN_SPEC, quick=True)


@pytest.fixture(scope="module")
def inr_config() -> INRZooConfig:
    return load_zoo_config(INR_SPEC, quick=True)


@pytest.fixture(scope="module")
def cnn_dir(tmp_path_factory, cnn_config) -> Path:
    out = tmp_path_factory.mktemp("zoo") / "cnn"
    report = generate_zoo(cnn_config, out, progress=False, spec=str(CNN_SPEC), quick=True)
    assert report.complete and report.made == (0, 1, 2, 3)
    return out


@pytest.fixture(scope="module")
def inr_dir(tmp_path_factory, inr_config) -> Path:
    out = tmp_path_factory.mktemp("zoo") / "inr"
    assert generate_zoo(inr_config, out, progress=False).complete
    return out


def shard_bytes(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.glob("shard-*.safetensors"))}


def copy_zoo(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


# --------------------------------------------------------------------------------------------
# configs
# --------------------------------------------------------------------------------------------


def test_specs_parse_full_and_quick():
    full = load_zoo_config(CNN_SPEC)
    assert isinstance(full, CNNZooConfig) and full.num_models >= 1000
    assert 8 <= full.channels <= 16
    quick = load_zoo_config(CNN_SPEC, quick=True)
    assert quick.num_models == 32 and quick.num_shards == 4 and quick.out != full.out
    inr = load_zoo_config(INR_SPEC)
    assert isinstance(inr, INRZooConfig) and inr.num_models == 1797
    assert load_zoo_config(INR_SPEC, quick=True).num_models == 40


@pytest.mark.parametrize(
    "data, match",
    [
        ({"type": "cnn", "num_model": 3}, "num_model: unknown key .*did you mean 'num_models'"),
        ({"type": "cnn", "learning_rate": [0.1, 0.01]}, "learning_rate: expected .*low <= high"),
        ({"type": "cnn", "weight_decay": [0.0, 0.1]}, "weight_decay: expected positive"),
        ({"type": "cnn", "activations": ["relu", "swish"]}, r"activations\[1\]"),
        ({"type": "mlp"}, "type: unknown type 'mlp'; valid types: cnn, inr"),
        ({"type": "inr", "quick": {"steps": 0}}, "steps: .*positive.*quick"),
        ({"type": "inr", "quick": {"type": "cnn"}}, "quick.type"),
    ],
)
def test_config_errors_name_the_key(data, match):
    with pytest.raises(ConfigError, match=match):
        config_from_dict(data, source="z.yaml")


def test_parse_shard():
    assert parse_shard("0/1") == (0, 1) and parse_shard("2/3") == (2, 3)
    for bad in ("3/3", "-1/2", "1", "a/b", "0/0"):
        with pytest.raises(ConfigError, match="i/n"):
            parse_shard(bad)


# --------------------------------------------------------------------------------------------
# end to end
# --------------------------------------------------------------------------------------------


def test_cnn_zoo_end_to_end(cnn_dir, cnn_config):
    zoo = load_zoo(cnn_dir)
    assert len(zoo) == 32 and zoo.kind == "cnn" and zoo.config == cnn_config
    assert [row["id"] for row in zoo.metadata] == list(range(32))
    row = zoo.metadata[5]
    assert row["shard"] == 0 and row["activation"] in ("relu", "tanh")
    assert cnn_config.learning_rate[0] <= row["learning_rate"] <= cnn_config.learning_rate[1]
    assert cnn_config.steps[0] <= row["steps"] <= cnn_config.steps[1]
    accuracies = zoo.column("test_accuracy")
    assert len(set(accuracies)) > 5 and min(accuracies) < 0.3 < max(accuracies)
    # the traced spec reads the stored weights by key
    spec = nfc.trace(cnn_config.build(), torch.zeros(cnn_config.input_shape))
    feats = zoo.features(spec, [3, 0, 17])
    assert feats.batch_size == 3 and tuple(feats) == spec.names
    again = WeightSpaceFeatures.from_state_dicts(spec, zoo.state_dicts([3, 0, 17]))
    assert all(torch.equal(feats[k], again[k]) for k in spec.names)
    assert torch.equal(feats["fc.bias"][1, 0], zoo.state_dicts(0)[0]["fc.bias"])
    manifest = json.loads((cnn_dir / "manifest.json").read_text())
    assert manifest["complete"] and manifest["seed"] == cnn_config.seed
    assert set(manifest["shards"]) == {shard_name(i) for i in range(4)}
    assert manifest["summary"]["test_accuracy"]["max"] == max(accuracies)


def test_cnn_weights_reproduce_recorded_test_accuracy(cnn_dir, cnn_config):
    zoo = load_zoo(cnn_dir)
    images, labels = load_digits_tensors()
    _, test = cnn_config.split()
    for i, row in enumerate(zoo.metadata):
        net = zoo.model(i)
        with torch.no_grad():
            correct = int((net(images[test]).argmax(1) == labels[test]).sum())
        recorded = round(row["test_accuracy"] * len(test))
        # the zoo computed it with batched matmuls, small_cnn with conv2d: rounding may differ
        assert abs(correct - recorded) <= 1, (i, correct, recorded)


def test_inr_zoo_renders_its_images_with_the_recorded_psnr(inr_dir, inr_config):
    zoo = load_zoo(inr_dir)
    assert len(zoo) == 40 and zoo.kind == "inr"
    images, labels = load_digits_tensors()
    assert zoo.column("image_index") == list(range(40))
    assert zoo.column("label") == labels[:40].tolist()
    grid = pixel_grid(8)
    for i, row in enumerate(zoo.metadata):
        with torch.no_grad():
            rendered = zoo.model(i)(grid).reshape(1, 64)
        target = images[row["image_index"]].reshape(1, 64)
        assert float(psnr(rendered, target)) == pytest.approx(row["psnr"], abs=1e-3)
    spec = nfc.trace(inr_config.build(), torch.zeros(inr_config.input_shape))
    assert zoo.features(spec).batch_size == 40


# --------------------------------------------------------------------------------------------
# determinism, workers, resume, splits
# --------------------------------------------------------------------------------------------


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
    # a complete zoo is left alone
    assert generate_zoo(cnn_config, out, progress=False).made == ()


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


# --------------------------------------------------------------------------------------------
# corruption
# --------------------------------------------------------------------------------------------


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


def test_missing_zoo_and_missing_shard(tmp_path, inr_dir):
    with pytest.raises(ZooError, match="no zoo here"):
        load_zoo(tmp_path)
    out = copy_zoo(inr_dir, tmp_path / "inr")
    (out / shard_name(2)).unlink()
    with pytest.raises(ZooError, match=f"{shard_name(2)}.*missing"):
        load_zoo(out)


# --------------------------------------------------------------------------------------------
# loading API and command line
# --------------------------------------------------------------------------------------------


def test_indices_and_columns(inr_dir):
    zoo = load_zoo(inr_dir)
    assert len(zoo.state_dicts()) == 40
    assert zoo.column("image_index", slice(5, 8)) == [5, 6, 7]
    assert zoo.column("label", torch.tensor([12, 1])) == [2, 1]
    last = zoo.arrays(-1)["out.bias"]
    assert torch.equal(last, zoo.arrays([39])["out.bias"])
    with pytest.raises(ZooError, match="out of range"):
        zoo.arrays([40])
    with pytest.raises(ZooError, match="no column 'accuracy'"):
        zoo.column("accuracy")


def test_command_line(tmp_path, capsys, inr_dir):
    parser = argparse.ArgumentParser()
    add_zoo_arguments(parser)
    out = tmp_path / "inr"
    args = parser.parse_args(
        [str(INR_SPEC), "--quick", "--out", str(out), "--workers", "1", "--no-progress"]
    )
    assert run_zoo_command(args) == 0
    printed = capsys.readouterr().out
    assert "made 4 shard(s)" in printed and "psnr: min" in printed
    assert shard_bytes(out) == shard_bytes(inr_dir)
    assert parser.parse_args([str(INR_SPEC), "--shard", "1/2"]).shard == (1, 2)
    with pytest.raises(SystemExit):
        parser.parse_args([str(INR_SPEC), "--shard", "2/2"])
    assert "expected i/n" in capsys.readouterr().err
