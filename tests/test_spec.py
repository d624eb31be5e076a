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


# --------------------------------------------------------------------------------------------
# block spaces (grouped convolutions): S_k wr S_g
# --------------------------------------------------------------------------------------------

import torch  # noqa: E402
from torch import nn  # noqa: E402

import nfncompile as nfc  # noqa: E402
from nfncompile.spec import Blocks, Inner, Permutation, Space  # noqa: E402

GROUPED_YAML = """\
blocks:
  g: {count: 2}
spaces:
  in:  {size: 3, role: input}
  c1:  {size: 4, role: hidden, blocks: g}
  c2:  {size: 6, role: hidden, blocks: g}
  out: {size: 2, role: output}
params:
  conv1.weight: {shape: [4, 3, 1, 1], axes: [c1, in, null, null]}
  conv1.bias:   {shape: [4], axes: [c1]}
  conv2.weight: {shape: [6, 2, 3, 3], axes: [c2, {space: c1, block_of: 0}, null, null]}
  conv2.bias:   {shape: [6], axes: [c2]}
  fc.weight:    {shape: [2, 6], axes: [out, c2]}
  fc.bias:      {shape: [2], axes: [out]}
"""


class Grouped(nn.Module):
    """1x1 conv to 4 channels, a 3x3 conv in 2 groups (2 -> 3 channels each), pool, linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 1)
        self.conv2 = nn.Conv2d(4, 6, 3, padding=1, groups=2)
        self.fc = nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.conv2(torch.relu(self.conv1(x))))
        return self.fc(h.mean((2, 3)))


def grouped_spec(mode: str = "np") -> nfc.WeightSpaceSpec:
    return nfc.WeightSpaceSpec.from_yaml(GROUPED_YAML).with_mode(mode)


def test_block_spec_round_trips_through_yaml_exactly():
    spec = grouped_spec()
    assert spec.to_yaml() == GROUPED_YAML
    assert nfc.WeightSpaceSpec.from_yaml(spec.to_yaml()) == spec
    assert hash(nfc.WeightSpaceSpec.from_yaml(GROUPED_YAML)) == hash(spec)
    assert spec.blocks["g"] == Blocks("g", 2)
    assert spec.spaces["c2"] == Space("c2", 6, "hidden", blocks="g")
    assert spec["conv2.weight"].axes[1] == Inner("c1", 0)
    assert spec.block_shape("c1") == (2, 2) and spec.block_shape("in") is None
    assert "c2:6/hidden/g" in repr(spec) and "c1@0" in repr(spec)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            ("c2:  {size: 6,", "c2:  {size: 5,"),
            r"spaces.c2: size 5 is not a multiple of the 2 blocks",
        ),
        (
            ("blocks: g}\n  c2", "blocks: h}\n  c2"),
            r"spaces.c1.blocks: unknown block permutation 'h'",
        ),
        (
            ("g: {count: 2}", "g: {count: 2}\n  unused: {count: 3}"),
            r"blocks \['unused'\] are named by no space",
        ),
        (("block_of: 0}", "block_of: 1}"), r"axes\[1\]: block_of=1 must point at another axis"),
        (("block_of: 0}", "block_of: 2}"), r"axes\[1\]: block_of=2 must point at another axis"),
        (
            ("{space: c1, block_of: 0}", "{space: in, block_of: 0}"),
            r"needs a block space, but 'in'",
        ),
        (("{space: c1, block_of: 0}", "{space: c1, at: 0}"), r"axes\[1\]: expected a space name"),
        (("g: {count: 2}", "g: {count: 0}"), r"blocks.g.count: expected a positive int, got 0"),
        (("g: {count: 2}", "g: {count: 2, fixed: 1}"), r"blocks.g.fixed: expected true or false"),
        (
            ("g: {count: 2}", "g: {count: 2, still: true}"),
            r"blocks.g.still: unknown key; valid keys: count, fixed",
        ),
    ],
)
def test_malformed_block_specs_name_the_key(edit, message):
    text = GROUPED_YAML.replace(*edit)
    assert text != GROUPED_YAML
    with pytest.raises(SpecError, match=message):
        nfc.WeightSpaceSpec.from_yaml(text)


def test_inner_axis_must_match_the_block_size():
    text = GROUPED_YAML.replace(
        "conv2.weight: {shape: [6, 2, 3, 3]", "conv2.weight: {shape: [6, 4, 3, 3]"
    )
    with pytest.raises(SpecError, match=r"blocks of 'c1' hold 2 neurons but the axis has length 4"):
        nfc.WeightSpaceSpec.from_yaml(text)


def _in_wreath_product(spec: nfc.WeightSpaceSpec, perm: Permutation) -> bool:
    """Blocks stay whole, and every space sharing a block permutation moves its blocks alike."""
    outer: dict = {}
    for name, p in perm.perms.items():
        shape = spec.block_shape(name)
        if shape is None:
            continue
        count, k = shape
        grid = p.reshape(count, k) // k
        if not bool((grid == grid[:, :1]).all()):
            return False
        b = spec.spaces[name].blocks
        if outer.setdefault(b, grid[:, 0].tolist()) != grid[:, 0].tolist():
            return False
    return True


def test_sample_permutation_draws_the_whole_wreath_product_uniformly():
    """Two spaces of 2 blocks of 2 sharing one block permutation: |G| = 2! * (2!^2)^2 = 32."""
    spec = nfc.WeightSpaceSpec.from_yaml(
        "blocks: {g: {count: 2}}\n"
        "spaces: {a: {size: 4, role: hidden, blocks: g}, b: {size: 4, role: hidden, blocks: g}}\n"
        "params: {w: {shape: [4, 4], axes: [a, b]}}\n"
    )
    gen = torch.Generator().manual_seed(0)
    counts: dict = {}
    for _ in range(3200):
        perm = spec.sample_permutation(gen)
        assert _in_wreath_product(spec, perm)
        key = (tuple(perm["a"].tolist()), tuple(perm["b"].tolist()))
        counts[key] = counts.get(key, 0) + 1
    assert len(counts) == 32
    assert min(counts.values()) > 50  # 100 expected per element


def test_fixed_blocks_stay_in_place_in_every_mode():
    # an ensemble's members that each read their own data: whole members never move, each
    # member's units still permute on their own (S_3 x S_3 here, 36 elements)
    text = GROUPED_YAML.replace("g: {count: 2}", "g: {count: 2, fixed: true}")
    spec = nfc.WeightSpaceSpec.from_yaml(text)
    assert spec.to_yaml() == text and nfc.WeightSpaceSpec.from_yaml(spec.to_yaml()) == spec
    assert spec != grouped_spec() and spec.blocks["g"] == Blocks("g", 2, False, True)
    assert repr(spec.blocks["g"]) == "Blocks('g', 2, fixed=True)"
    gen = torch.Generator().manual_seed(2)
    for mode in ("np", "hnp"):
        assert not spec.with_mode(mode).blocks["g"].permutable
        seen = set()
        for _ in range(400):
            perm = spec.sample_permutation(gen, mode=mode)
            assert torch.equal(perm["c2"].reshape(2, 3) // 3, torch.tensor([[0] * 3, [1] * 3]))
            seen.add(tuple(perm["c2"].tolist()))
        assert len(seen) == 36


def test_hnp_fixes_blocks_shared_with_an_input_space():
    spec = nfc.WeightSpaceSpec.from_yaml(
        "blocks: {g: {count: 2}}\n"
        "spaces: {in: {size: 4, role: input, blocks: g}, h: {size: 6, role: hidden, blocks: g}}\n"
        "params: {w: {shape: [6, 2], axes: [h, {space: in, block_of: 0}]}}\n"
    )
    assert spec.blocks["g"].permutable and not spec.with_mode("hnp").blocks["g"].permutable
    gen = torch.Generator().manual_seed(1)
    moved_inside = False
    for _ in range(20):
        perm = spec.sample_permutation(gen, mode="hnp")
        assert torch.equal(perm["in"], torch.arange(4))
        assert torch.equal(perm["h"].reshape(2, 3) // 3, torch.tensor([[0] * 3, [1] * 3]))
        moved_inside |= not torch.equal(perm["h"], torch.arange(6))
    assert moved_inside


def test_permutation_rejects_elements_outside_the_group():
    spec = grouped_spec()
    with pytest.raises(SpecError, match=r"perms\['c1'\] moves neurons across the 2 blocks of 'g'"):
        Permutation(spec, {"c1": torch.tensor([0, 2, 1, 3])})
    with pytest.raises(SpecError, match=r"moves the blocks of 'g' differently"):
        Permutation(spec, {"c1": torch.tensor([2, 3, 0, 1])})


@pytest.mark.parametrize("mode", ["np", "hnp"])
def test_group_elements_leave_a_grouped_network_unchanged(mode):
    """The wreath-product action (whole groups, and channels inside each group, with the grouped
    weight's input axis gathered per output block) is a symmetry of the real network."""
    torch.manual_seed(0)
    net = Grouped().double()
    spec = grouped_spec(mode)
    x = torch.randn(5, 3, 6, 6, dtype=torch.float64)
    gen = torch.Generator().manual_seed(0)
    for _ in range(5):
        perm = spec.sample_permutation(gen)
        assert _in_wreath_product(spec, perm)
        moved = Grouped().double()
        moved.load_state_dict(perm.apply_state_dict(net.state_dict()))
        # np also moves the input and output neurons: permute the input, expect permuted output
        torch.testing.assert_close(moved(x[:, perm["in"]]), net(x)[:, perm["out"]])
    assert nfc.verify(net, spec, x).ok


def test_reading_the_grouped_input_axis_as_a_whole_space_is_caught():
    """Without the Inner label (c1 permuted as one space of 4), the claim is false."""
    torch.manual_seed(0)
    net = Grouped().double()
    wrong = nfc.WeightSpaceSpec.from_yaml(
        GROUPED_YAML.replace("{space: c1, block_of: 0}", "null")
        .replace("blocks: g}\n  c2", "}\n  c2")
        .replace("  c1:  {size: 4, role: hidden, }", "  c1:  {size: 4, role: hidden}")
    )
    assert wrong.spaces["c1"].blocks is None
    report = nfc.verify(net, wrong, torch.randn(5, 3, 6, 6, dtype=torch.float64))
    assert not report.ok and "c1" in report.failed


def test_compose_and_inverse_stay_in_the_group():
    spec = grouped_spec()
    gen = torch.Generator().manual_seed(2)
    a, b = spec.sample_permutation(gen), spec.sample_permutation(gen)
    ab = a.compose(b)
    assert _in_wreath_product(spec, ab) and _in_wreath_product(spec, a.inverse())
    torch.manual_seed(0)
    sd = Grouped().double().state_dict()
    for k, v in ab.apply_state_dict(sd).items():
        torch.testing.assert_close(v, a.apply_state_dict(b.apply_state_dict(sd))[k])
    for k, v in a.inverse().apply_state_dict(a.apply_state_dict(sd)).items():
        torch.testing.assert_close(v, sd[k])


def test_permuting_batched_features_matches_permuting_each_state_dict():
    spec = grouped_spec()
    torch.manual_seed(0)
    sds = [Grouped().double().state_dict() for _ in range(3)]
    feats = nfc.WeightSpaceFeatures.from_state_dicts(spec, sds)
    perm = spec.sample_permutation(torch.Generator().manual_seed(3))
    moved = perm.apply(feats)
    for b, sd in enumerate(sds):
        for k, v in perm.apply_state_dict(sd).items():
            torch.testing.assert_close(moved[k][b, 0], v.to(moved[k].dtype))
