"""Tests of ``nfncompile zoo``: the zoo subcommand of :mod:`nfncompile.cli`."""

from __future__ import annotations

import pytest

from nfncompile.cli import build_parser, main, parse_shard
from nfncompile.errors import ConfigError
from tests.zoo.helpers import INR_SPEC, shard_bytes


def test_parse_shard():
    assert parse_shard("0/1") == (0, 1) and parse_shard("2/3") == (2, 3)
    for bad in ("3/3", "-1/2", "1", "a/b", "0/0"):
        with pytest.raises(ConfigError, match="i/n"):
            parse_shard(bad)


def test_command_line(tmp_path, capsys, inr_dir):
    out = tmp_path / "inr"
    args = [str(INR_SPEC), "--quick", "--out", str(out), "--workers", "1", "--no-progress"]
    assert main(["zoo", *args]) == 0
    printed = capsys.readouterr().out
    assert "made 4 shard(s)" in printed and "psnr: min" in printed
    assert shard_bytes(out) == shard_bytes(inr_dir)
    parser = build_parser()
    assert parser.parse_args(["zoo", str(INR_SPEC), "--shard", "1/2"]).shard == (1, 2)
    with pytest.raises(SystemExit):
        parser.parse_args(["zoo", str(INR_SPEC), "--shard", "2/2"])
    assert "expected i/n" in capsys.readouterr().err
