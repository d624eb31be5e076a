"""nfncompile.spec: spaces, labelled parameters, YAML round trips and the permutation group."""

from __future__ import annotations

import pytest

from nfncompile.errors import SpecError
from nfncompile.spec import WeightSpaceSpec


def test_yaml_with_a_duplicate_key_is_rejected(tmp_path):
    text = (
        "spaces:\n"
        "  in: {size: 2, role: input}\n"
        "  out: {size: 1, role: output}\n"
        "params:\n"
        "  w: {shape: [1, 2], axes: [out, in]}\n"
        "  w: {shape: [1, 2], axes: [out, null]}\n"
    )
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    with pytest.raises(SpecError, match=r"spec.yaml: line 6, column 3: .*duplicate key 'w'"):
        WeightSpaceSpec.from_yaml(path)
