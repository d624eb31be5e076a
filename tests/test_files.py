"""Tests of nfncompile.files: the strict YAML loader every config and spec file goes through."""

from __future__ import annotations

import re

import pytest

from nfncompile.errors import ConfigError
from nfncompile.files import load_yaml, loads_yaml


def test_load_yaml_reports_file_line_and_the_yaml_error(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("nfn:\n  mode: np\n  layers: [1, 2\n")
    with pytest.raises(ConfigError) as info:
        load_yaml(path)
    msg = str(info.value)
    assert msg.startswith(f"{path}: line 4, column 1: malformed YAML: ")
    assert "expected ',' or ']'" in msg

    path.write_text("nfn:\n  mode: np\n   bad: 1\n")
    with pytest.raises(ConfigError, match=re.escape(f"{path}: line 3, column 7: malformed YAML")):
        load_yaml(path)


def test_load_yaml_rejects_duplicate_keys_and_python_tags(tmp_path):
    with pytest.raises(
        ConfigError,
        match=r"line 3, column 1: malformed YAML: found duplicate key 'a' \(first at line 1\)",
    ):
        loads_yaml("a: 1\nb: 2\na: 3\n")
    with pytest.raises(ConfigError, match="could not determine a constructor"):
        loads_yaml("a: !!python/object/apply:os.system ['true']\n")
    with pytest.raises(ConfigError, match=re.escape(f"{tmp_path / 'nope.yaml'}: no such file")):
        load_yaml(tmp_path / "nope.yaml")


def test_load_yaml_reads_exponent_floats_and_returns_the_source(tmp_path):
    path = tmp_path / "ok.yaml"
    path.write_text("lr: 1e-3\nwd: 5E+2\nn: 10\nv: 1.5e-2\ns: '1e-3'\n")
    data, source = load_yaml(path)
    assert data == {"lr": 0.001, "wd": 500.0, "n": 10, "v": 0.015, "s": "1e-3"}
    assert source == str(path)
    assert loads_yaml("") is None
