"""nfncompile.frontend.rules.shape: concat, split, chunk, indexing and reshapes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st
from torch import nn

import nfncompile as nfc
from nfncompile.frontend.rules.shape import _runs_as_slices
from nfncompile.frontend.tracing import trace_with_report
from nfncompile.testing import assert_equivariant
from tests.frontend.helpers import CatSplit, TwoLinear, head_size, model_, per_head, x_


def test_cat_split_chunk_give_composite_axes():
    spec, report = trace_with_report(model_(CatSplit), x_(3, 4))
    # c's 7 outputs: [0:3] feed d, [3:5] are added to d's output, [5:7] are summed
    assert spec["c.weight"].axes == (("c/0", "out", "c/1"), ("a", "b"))
    assert [spec.spaces[n].size for n in ("a", "b", "c/0", "c/1", "out")] == [6, 5, 3, 2, 2]
    assert spec["d.weight"].axes == ("out", "c/0")
    assert report.verification.ok


class FirstChannelSpecial(TwoLinear):
    """Uses h[:, 0] specially: that neuron is fixed, the other 5 still permute."""

    def forward(self, x):
        h = torch.relu(self.a(x))
        return self.b(h) + h[:, 0].unsqueeze(1)


class BroadcastFirst(FirstChannelSpecial):
    def forward(self, x):
        h = torch.relu(self.a(x))
        return self.b(h + h[:, :1] * 2)


class FirstChannelAtAList(FirstChannelSpecial):
    """``h[:, 0]`` read through an advanced index on another dim: torch selects at the
    integer first, so it reads neuron 0 as ``h[:, 0]`` does."""

    def forward(self, x):
        h = torch.relu(self.a(x))
        steps = h[:, :, None] * torch.arange(1.0, 5.0)  # (B, 6, 4)
        return self.b(h) + steps[:, 0, [1, 3]].sum(-1, keepdim=True)


class FirstChannelSelected(FirstChannelSpecial):
    """``h.select(1, 0)``: ``h[:, 0]`` (a traced ``torch.vmap``'s loop reads so; before, no
    rule knew it and a probe fixed all 6)."""

    def forward(self, x):
        h = torch.relu(self.a(x))
        return self.b(h) + torch.select(h, -1, 0).unsqueeze(1)


@pytest.mark.parametrize(
    "cls", [FirstChannelSpecial, BroadcastFirst, FirstChannelAtAList, FirstChannelSelected]
)
def test_position_dependent_indexing_fixes_one_neuron(cls):
    # before (FirstChannelAtAList): an integer among list indices fixed all 6 neurons
    spec, report = trace_with_report(model_(cls), x_(5, 4))
    # neuron 0 of a's output is fixed (an int piece), the other 5 form a space
    assert spec["a.weight"].axes == ((1, "a"), "in")
    assert spec.spaces["a"].size == 5
    assert [b.neurons for b in report.broken] == [["a[0:1]"]]
    assert report.verification.ok
    # the hand-written spec that ignores the special neuron is caught by verify
    wrong = nfc.WeightSpaceSpec.from_dict(_relabel(spec.to_dict(), (1, "a"), "a6", 6))
    bad = nfc.verify(model_(cls), wrong, x_(5, 4))
    assert not bad.ok and "a6" in bad.failed


def _relabel(d: dict, old, new: str, size: int) -> dict:
    d["spaces"] = {k: v for k, v in d["spaces"].items() if k != "a"}
    d["spaces"][new] = {"size": size, "role": "hidden"}
    old = list(old) if isinstance(old, tuple) else old
    for p in d["params"].values():
        p["axes"] = [new if a == old else a for a in p["axes"]]
    return d


class HalvesView(nn.Module):
    """A 2C vector viewed as (2, C), as selective-kernel attention does: the halves of ``a``
    become one space; multiplying by a C-space ties it to that space."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.c, self.d = nn.Linear(3, 8), nn.Linear(3, 4), nn.Linear(4, 2)

    def forward(self, x):
        g = torch.softmax(self.a(x).view(x.shape[0], 2, 4), dim=1)
        return self.d((g * self.c(x).unsqueeze(1)).sum(1))


class ConcatView(HalvesView):
    """The same view of a concat of two spaces: aligned with its pieces, it ties them."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(3, 4), nn.Linear(3, 4)

    def forward(self, x):
        h = torch.cat([self.a(x), self.b(x)], 1).view(x.shape[0], 2, 4)
        return self.d((h * self.c(x).unsqueeze(1)).sum(1))


def test_a_view_that_splits_channels_into_chunks_ties_the_chunks():
    spec, report = trace_with_report(model_(HalvesView), x_(3, 3))
    assert spec["a.weight"].axes == (("a", "a"), "in") and spec["c.weight"].axes == ("a", "in")
    assert spec.spaces["a"].size == 4 and report.verification.ok and not report.broken
    spec, report = trace_with_report(model_(ConcatView), x_(3, 3))
    assert spec["a.weight"].axes == spec["b.weight"].axes == spec["c.weight"].axes == ("a", "in")
    assert report.verification.ok and not report.broken


class PairsView(TwoLinear):
    """a's 6 outputs viewed as (3, 2), reduced over the 3: each pair's two neurons move as
    two spaces of pairs (even, odd), tied across the pairs."""

    def forward(self, x):
        h = torch.relu(self.a(x)).view(x.shape[0], 3, 2).sum(1)
        return self.b(torch.cat([h, h, h], 1))


def test_splitting_inside_neurons_ties_chunks_and_a_flattened_product_is_read_per_factor():
    spec, report = trace_with_report(model_(PairsView), x_(5, 4))
    assert report.verification.ok
    assert spec["a.weight"].axes[0] == ("a",) * 3 and spec.spaces["a"].size == 2
    # the outer product h h^T flattened: the Linear's weight viewed (out, 6, 6), both axes a's
    # (before: "reads a flattened product of neuron axes", a fixed)
    spec, report = trace_with_report(model_(OuterProduct), x_(5, 4))
    assert report.verification.ok and not report.broken
    assert spec["a.weight"].axes == ("a", "in")
    assert spec["b.weight"].view == (3, 6, 6) and spec["b.weight"].axes == ("out", "a", "a")


class OuterProduct(TwoLinear):
    """Bilinear features: the flattened outer product of a's outputs with themselves."""

    def __init__(self) -> None:
        super().__init__()
        self.b = nn.Linear(36, 3)

    def forward(self, x):
        h = torch.relu(self.a(x))
        return self.b((h.unsqueeze(2) * h.unsqueeze(1)).flatten(1))


def test_space_to_depth_and_back():
    class RoundTrip(TwoLinear):
        def forward(self, x):
            h = torch.relu(self.a(x)).view(x.shape[0], 6, 1, 1).expand(-1, -1, 2, 2)
            h = h.permute(0, 2, 3, 1).reshape(x.shape[0], 24)  # (2, 2) offsets, then channels
            return h.view(x.shape[0], 4, 6).mean(1) @ self.b.weight.t()

    spec, report = trace_with_report(model_(RoundTrip), x_(5, 4))
    assert spec["a.weight"].axes == ("a", "in") and spec["b.weight"].axes == ("out", "a")
    assert report.verification.ok and not report.broken


class _Indexed(TwoLinear):
    """``a``'s 6 outputs, read through tensor and list indices on the other dims."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.table = nn.Parameter(torch.randn(5, 6))  # a relative-position table's shape

    def forward(self, x):
        h = torch.relu(self.a(x))  # (B, 6)
        steps = h.unsqueeze(1) * torch.arange(1.0, 4.0)[:, None]  # (B, 3, 6)
        if self.how == "last step":  # nanoGPT's `x[:, [-1], :]`
            h = steps[:, [-1], :].squeeze(1)
        elif self.how == "table at a grid":  # SAM's `rel_pos[relative_coords]`
            h = h * self.table[torch.tensor([[0, 1], [3, 4]])].sum((0, 1))
        elif self.how == "mask":
            h = steps[torch.tensor([True, False, True]).expand(x.shape[0], 3)]
        elif self.how == "integer apart":  # torch selects the integer first: (6, B, 2)
            grid = torch.ones(3)[:, None, None, None] * (h.t()[:, :, None] * torch.ones(4))
            h = grid[0, :, :, [1, 2]].sum(-1).t()
        elif self.how == "indices apart":  # the index dims go first: (2, 6, 2)
            grid = h.t()[:, :, None, None] * torch.ones(3, 2, 4)
            h = grid[:, [0, 1], :, [0, 3]].sum(-1)
        else:  # indices together stay in place: (6, 2, 4)
            grid = h.t()[:, :, None, None] * torch.ones(3, 2, 4)
            h = grid[:, [0, 1], [1, 0], :].sum(-1).t()
        return self.b(h)


@pytest.mark.parametrize(
    "how",
    ["last step", "table at a grid", "mask", "integer apart", "indices apart", "indices together"],
)
def test_tensor_indices_on_other_dims_keep_the_neurons(how):
    # advanced indexing fixed every dim of the indexed tensor: nanoGPT's `x[:, [-1], :]`
    # fixed its residual stream, SAM's relative-position tables their head dims
    spec, report = trace_with_report(model_(lambda: _Indexed(how)), x_(3, 4))
    assert spec["a.weight"].axes == ("a", "in") and spec.spaces["a"].size == 6
    assert spec["b.weight"].axes == ("out", "a") and report.verification.ok
    if how == "table at a grid":
        assert spec["table"].axes == (None, "a")
    assert not [n for b in report.broken for n in b.neurons if n.split("[")[0] == "a"]


class _IndexesNeurons(TwoLinear):
    def forward(self, x):
        return self.b(torch.relu(self.a(x))[:, [0, 2, 1, 3, 4, 5]])


def test_tensor_indices_on_neurons_fix_them():
    spec, report = trace_with_report(model_(_IndexesNeurons), x_(3, 4))
    assert spec["a.weight"].axes == (None, "in") and report.verification.ok
    assert "positions a tensor gives" in report.broken[0].reason


class _ReadsRuns(TwoLinear):
    """``a``'s 6 neurons read in two runs by lists of consecutive positions, halves swapped."""

    def forward(self, x):
        h = torch.relu(self.a(x))
        return self.b(torch.cat([h[:, [3, 4, 5]], h[..., [-6, -5, -4]]], 1))


def test_a_list_of_consecutive_positions_reads_as_a_slice():
    """``h[:, [3, 4, 5]]`` reads what ``h[:, 3:6]`` reads; ``b`` reads ``a``'s 6 neurons
    once each, halves swapped: one space, which ``b``'s columns hold in another order (before,
    two spaces of 3; a list in any other order fixes them, as above)."""
    spec, report = trace_with_report(model_(_ReadsRuns), x_(3, 4))
    assert spec["a.weight"].axes[0] == spec["b.weight"].axes[1] == "a"
    assert spec["b.weight"].order == ((1, (3, 4, 5, 0, 1, 2)),)
    assert report.verification.ok and not report.broken


class _ReadsConstantIds(TwoLinear):
    """pykan's ``x[:, self.input_id.long()]``: ``a``'s neurons read at an index tensor the
    forward computes from a constant, the identity (``how="same"``), a run of them
    (``"run"``: the last 3, from ``ids + 3``), or not in order (``"swapped"``); or at the
    positions of the largest features (``"data"``: the same positions on the example)."""

    def __init__(self, how: str) -> None:
        super().__init__(how)
        self.ids = torch.tensor([1, 0, 2, 3, 4, 5]) if how == "swapped" else torch.arange(6)
        if how in ("run", "data"):
            self.b = nn.Linear(3, 3)

    def forward(self, x):
        h = torch.relu(self.a(x))
        if self.how == "run":
            return self.b(h[:, self.ids[:3].long() + 3])
        if self.how == "data":  # the positions of the 3 largest of the first row, sorted
            return self.b(h[:, h[0, 3:].detach().argsort().sort().values + 3])
        return self.b(h[..., self.ids.long()])


@pytest.mark.parametrize("how", ["same", "run", "swapped", "data"])
def test_a_constant_index_of_consecutive_positions_reads_as_a_slice(how):
    # before: each fixed a's neurons ("reads neurons at positions a tensor gives")
    spec, report = trace_with_report(model_(lambda: _ReadsConstantIds(how)), x_(3, 4))
    assert report.verification.ok
    rows, cols = spec["a.weight"].axes[0], spec["b.weight"].axes[1]
    if how == "same":
        assert rows == cols == "a" and not report.broken
    elif how == "run":  # the 3 read permute among themselves, the 3 others are unread
        assert cols is not None and cols in rows and not report.broken
    else:  # out of order, or made from the data: fixed
        assert rows is None and cols is None and "positions a tensor gives" in str(report.broken)


@st.composite
def _list_indices(draw):
    """A tensor shape and an index of slices, ``None`` s, integers and lists of positions."""
    shape = tuple(draw(st.lists(st.integers(1, 4), min_size=1, max_size=4)))
    idx = []
    for n in shape:
        kind = draw(st.sampled_from(["all", "slice", "list", "run", "int"]))
        while draw(st.booleans()) and len(idx) < 6:
            idx.append(None)
        if kind == "all":
            idx.append(slice(None))
        elif kind == "slice":
            idx.append(slice(draw(st.integers(0, n - 1)), draw(st.integers(1, n))))
        elif kind == "int":
            idx.append(draw(st.integers(-n, n - 1)))
        elif kind == "run":
            start = draw(st.integers(-n, n - 1))
            length = draw(st.integers(1, n - start % n))
            idx.append([start + i for i in range(length)])
        else:
            idx.append(draw(st.lists(st.integers(-n, n - 1), min_size=1, max_size=4)))
    return shape, tuple(idx)


@settings(max_examples=300, deadline=None)
@given(case=_list_indices())
def test_runs_read_as_slices_read_what_torch_reads(case):
    """Wherever a list index is rewritten as a slice, torch reads the same entries in the same
    order and shape."""
    shape, idx = case
    x = torch.arange(float(torch.Size(shape).numel())).reshape(shape)
    try:
        want = x[idx]
    except IndexError:  # lists that do not broadcast together
        assume(False)
    out = _runs_as_slices(idx, shape)
    torch.testing.assert_close(x[out], want, rtol=0, atol=0)
    if out != idx:
        assert not any(isinstance(i, list) for i in out)


class _IndexedGrid(TwoLinear):
    """``a``'s 6 outputs broadcast over a (3, 4, 5) grid, the grid read with ``idx`` (whole
    slices on the batch and neuron dims), the two moved back to the front and the rest
    summed."""

    def __init__(self, idx: tuple) -> None:
        super().__init__()
        self.idx = (slice(None), slice(None), *idx)
        shape = torch.zeros(7, 6, 3, 4, 5)[self.idx].shape  # sizes 7 and 6 are unique
        self.at = (shape.index(7), shape.index(6))

    def forward(self, x):
        h = torch.relu(self.a(x))
        grid = h[:, :, None, None, None] * torch.ones(3, 4, 5)
        y = grid[self.idx].movedim(self.at, (0, 1))
        return self.b(y.reshape(7, 6, -1).sum(-1))


_GRID_INDEX = st.one_of(
    st.just(slice(None)),
    st.just(None),
    st.integers(0, 2),
    st.lists(st.integers(0, 2), min_size=2, max_size=2),
)


@settings(max_examples=60, deadline=None)
@given(idx=st.tuples(_GRID_INDEX, _GRID_INDEX, _GRID_INDEX))
@example(idx=(0, slice(None), [0, 1]))  # NumPy would put the list's dim first
@example(idx=([0, 1], slice(None), [1, 2]))  # lists apart: their dim goes first
def test_index_dims_are_placed_where_torch_places_them(idx):
    """Integers, lists (of one length: they broadcast together), ``None`` and slices on the
    other dims of a tensor, in any mix: the neurons keep their label on the dim torch leaves
    them (a label on the wrong dim fails the verification or the trace)."""
    spec, report = trace_with_report(model_(lambda: _IndexedGrid(idx)), x_(7, 4))
    assert spec["a.weight"].axes == ("a", "in") and spec["b.weight"].axes == ("out", "a")
    assert report.verification.ok


class _PackedNorm(nn.Module):
    """Karras's magnitude-preserving conv: the weight normalised over its fan-in through
    einops' ``pack``/``unpack`` (a cat of one piece, a whole slice of a flattened dim)."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 5, 3, padding=1), nn.Conv2d(5, 2, 1)

    def forward(self, x):
        flat = torch.cat([self.a.weight.reshape(5, -1)], 0)
        w = (flat / flat.norm(dim=1, keepdim=True))[:, 0:27].reshape(5, 3, 3, 3)
        return self.b(torch.relu(F.conv2d(x, w, self.a.bias, padding=1)))


def test_a_weight_packed_and_unpacked_keeps_its_axes():
    spec, report = trace_with_report(model_(_PackedNorm), x_(2, 3, 6, 6))
    assert spec["a.weight"].axes == ("a", "in", None, None) and report.verification.ok
    assert not report.broken


class _Upsampler(nn.Module):
    """A super-resolution net's upsampler (ESPCN, EDSR): a conv to ``4 C`` channels, then
    ``pixel_shuffle(2)``; or ``pixel_unshuffle`` first (Real-ESRGAN)."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.d = nn.Conv2d(12, 3, 1)
        self.a, self.b = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 16, 3, padding=1)
        self.c = nn.Conv2d(4, 2, 3, padding=1)

    def forward(self, x):
        if self.how == "unshuffle":
            x = self.d(F.pixel_unshuffle(x, 2))
        h = torch.relu(self.a(x))
        shuffle = nn.PixelShuffle(2) if self.how == "module" else lambda t: F.pixel_shuffle(t, 2)
        return self.c(torch.relu(shuffle(self.b(h))))


@pytest.mark.parametrize("how", ["module", "function", "unshuffle"])
@pytest.mark.parametrize("mode", ["np", "hnp"])
def test_pixel_shuffle_moves_blocks_of_channels(how, mode):
    # no rule: probed and fixed, so every channel of the conv before it was fixed
    spec, report = trace_with_report(model_(lambda: _Upsampler(how)), x_(1, 3, 8, 8), mode=mode)
    assert report.verification.ok and not report.broken and not report.probes
    # b's 16 channels: 4 neurons of 4 channels each (one output channel's 2 x 2 pixels)
    assert spec["b.weight"].axes == ("b", None, "a", None, None)
    assert spec["b.weight"].view == (4, 4, 4, 3, 3) and spec["c.weight"].axes[1] == "b"
    if how == "unshuffle":  # d reads each input channel's 4 pixels as 4 channels
        assert spec["d.weight"].axes[1:3] == ("in", None)
    layer = nfc.NFLinear(spec, 1, 1, mode=mode, basis="linear").double()
    assert_equivariant(layer, spec, in_channels=1, trials=2)


class _Rotary(TwoLinear):
    """Llama's rotary embedding through complex views: pairs of features rotated by a
    position-dependent phase; or each feature made a complex number with its square, turned
    by one phase."""

    def __init__(self, pairs: bool) -> None:
        super().__init__()
        self.pairs = pairs

    def forward(self, x):
        h = torch.relu(self.a(x))
        if self.pairs:
            phase = torch.polar(torch.ones(3), torch.arange(3.0))
            z = torch.view_as_complex(h.view(x.shape[0], 3, 2)) * phase
            return self.b(torch.view_as_real(z).flatten(1))
        z = torch.view_as_complex(torch.stack([h, h * h], -1)) * torch.polar(
            torch.ones(()), torch.tensor(0.5)
        )
        return self.b(torch.view_as_real(z).sum(-1))


@pytest.mark.parametrize("pairs", [True, False])
def test_complex_views_keep_the_dims_they_do_not_pair(pairs):
    spec, report = trace_with_report(model_(lambda: _Rotary(pairs)), x_(5, 4))
    assert report.verification.ok and not report.probes
    # each pair rotates at its own phase; one phase for all leaves the features free
    assert spec["a.weight"].axes == ((None, "in") if pairs else ("a", "in"))


class _Projected(nn.Module):
    """DCGAN's generator and a VAE's decoder input: a Linear's ``C * H * W`` outputs viewed
    as ``C`` feature maps of ``H x W``, then a norm and a conv over them."""

    def __init__(self, transposed: bool) -> None:
        super().__init__()
        self.l1, self.bn = nn.Linear(5, 6 * 3 * 3), nn.BatchNorm2d(6)
        self.conv = nn.ConvTranspose2d(6, 2, 2, 2) if transposed else nn.Conv2d(6, 2, 3)

    def forward(self, z):
        return self.conv(torch.relu(self.bn(self.l1(z).view(-1, 6, 3, 3))))


@pytest.mark.parametrize("transposed", [False, True])
def test_a_linear_viewed_as_feature_maps_moves_blocks_of_its_outputs(transposed):
    # the view read the 6 as equal chunks, the 3 x 3 positions carried the Linear's label,
    # the conv fixed them, and through the chunks' ties every output and channel was fixed
    spec, report = trace_with_report(model_(lambda: _Projected(transposed)), x_(2, 5))
    assert spec["l1.weight"].axes == ("l1", None, "in") and spec["l1.weight"].view == (6, 9, 5)
    assert spec["bn.weight"].axes == ("l1",) and spec["conv.weight"].axes[:2] in (
        ("out", "l1"),
        ("l1", "out"),
    )
    assert report.verification.ok and not report.broken


def test_chunks_made_in_blocks_for_nothing_are_left_as_they_were():
    # a split whose chunks stay fixed in blocks too is analysed as before (no blocked axis)
    spec, _ = trace_with_report(model_(lambda: _Rotary(True)), x_(5, 4))
    assert spec["a.weight"].axes == (None, "in") and spec["a.weight"].view is None


class _KeepTokens(nn.Module):
    """MAE's random masking: the kept tokens gathered with an index repeated over the
    features (``torch.gather``, or ``take_along_dim``), then a residual MLP."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.emb, self.fc, self.head = nn.Linear(4, 8), nn.Linear(8, 8), nn.Linear(8, 3)

    def forward(self, x, ids):
        h = self.emb(x)
        index = ids.unsqueeze(-1).repeat(1, 1, h.shape[2])
        if self.how == "gather":
            h = torch.gather(h, dim=1, index=index)
        elif self.how == "method":
            h = h.gather(1, index)
        else:
            h = torch.take_along_dim(h, index, dim=1)
        return self.head(h + self.fc(torch.relu(h)))


@pytest.mark.parametrize("how", ["gather", "method", "take_along_dim"])
def test_gathered_tokens_keep_their_features(how):
    # no rule: probed with float draws for the index, gather fixed the features (MAE's
    # decoder stream)
    ids = torch.argsort(torch.rand(2, 6, generator=torch.Generator().manual_seed(0)), 1)[:, :3]
    spec, report = trace_with_report(model_(lambda: _KeepTokens(how)), (x_(2, 6, 4), ids))
    # the token positions (the input's dim 1) are read at the ids; the features stay free
    assert spec["emb.weight"].axes == ("emb", None) and spec["fc.weight"].axes == ("emb", "emb")
    assert report.verification.ok and not report.probes


class _FusedQKV(nn.Module):
    """Attention with one ``qkv`` projection viewed as ``(3, heads, head_dim)``, its chunks
    taken ``how``; ``"mixed"`` also reads all three at once."""

    def __init__(self, how: str, dim: int = 8, heads: int = 2) -> None:
        super().__init__()
        self.how, self.heads = how, heads
        self.inp, self.qkv = nn.Linear(4, dim), nn.Linear(dim, 3 * dim)
        self.proj, self.out = nn.Linear(dim, dim), nn.Linear(dim, 3)

    def forward(self, x):
        x = self.inp(x)
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads)
        if self.how == "unbind":  # timm's ViT
            q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        elif self.how == "index":  # Swin
            qkv = qkv.permute(2, 0, 3, 1, 4)
            q, k, v = qkv[0], qkv[1], qkv[2]
        elif self.how == "index_inner":
            q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))
        elif self.how == "merged":  # SAM: (3, B * heads, N, head_dim), then unbind
            qkv = qkv.permute(2, 0, 3, 1, 4).reshape(3, b * self.heads, n, -1)
            q, k, v = (t.reshape(b, self.heads, n, -1) for t in qkv.unbind(0))
        elif self.how == "merged_inner":  # head features merged with positions, then apart
            qkv = qkv.permute(2, 0, 3, 4, 1).reshape(3, b, self.heads, -1)
            q, k, v = (t.reshape(b, self.heads, -1, n).transpose(-1, -2) for t in qkv.unbind(0))
        elif self.how == "split_after":  # the heads split off after the chunks: tied
            qkv = self.qkv(x).reshape(b, n, 3, c).permute(2, 0, 1, 3)
            qkv = qkv.reshape(3, b, n, self.heads, c // self.heads).transpose(2, 3)
            q, k, v = qkv.unbind(0)
        else:
            q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
            v = v + qkv.permute(2, 0, 3, 1, 4).mean(0)
        attn = (q @ k.transpose(-2, -1)).softmax(-1)
        return self.out(x + self.proj((attn @ v).transpose(1, 2).reshape(b, n, c)))


@pytest.mark.parametrize(
    "how", ["unbind", "index", "index_inner", "merged", "merged_inner", "split_after", "mixed"]
)
def test_chunks_selected_one_at_a_time_keep_their_own_neurons(how):
    # before: the view as (3, heads, head_dim) tied v's features to q's and k's
    spec, report = trace_with_report(model_(lambda: _FusedQKV(how)), x_(2, 5, 4), channel_dim=-1)
    assert report.verification.ok and not report.broken
    rows = spec["qkv.weight"].axes[0]  # 3 chunks x 2 heads, each a 4-space
    if how in ("unbind", "index", "index_inner", "merged", "merged_inner"):
        # each head's queries and keys one space, its values another (HeadSplit; merged with
        # the batch, the heads are tiled over it; each head's features merged with the
        # positions span several positions each, read per head as any others: before, that
        # tied every head's); the heads move together
        rows = per_head(spec, rows)
        q0, q1, v0, v1 = rows[0], rows[1], rows[4], rows[5]
        assert rows == (q0, q1, q0, q1, v0, v1)
        assert per_head(spec, spec["proj.weight"].axes[1]) == (v0, v1)
        assert len({q0, q1, v0, v1}) == 4 and {head_size(spec, s) for s in rows} == {4}
        assert [b.count for b in spec.blocks.values()] == [2]
        assert_equivariant(nfc.NFLinear(spec, 1, 2).double(), spec, trials=2)
        return
    qk, v = rows[0], rows[4]
    assert rows == (qk,) * 4 + (v,) * 2 and spec["proj.weight"].axes[1] == (v, v)
    # read together, or split apart on the first one's labels alone: one permutation
    assert qk == v


class _Patches(nn.Module):
    """TimeXer's and PatchTST's patching: a series cut into windows with ``Tensor.unfold``."""

    def __init__(self, channels: int, along: int = -1) -> None:
        super().__init__()
        self.along = along
        self.i, self.e, self.o = nn.Linear(3, channels), nn.Linear(4, 8), nn.Linear(8, 2)

    def forward(self, x):  # (batch, 16 steps, 3)
        h = torch.relu(self.i(x)).permute(0, 2, 1)  # (batch, channels, 16)
        if self.along == 1:  # windows of channels: their order matters
            return self.o(torch.relu(self.e(h.permute(0, 2, 1).unfold(-1, 4, 4)))).sum((1, 2))
        h = h.unfold(dimension=-1, size=4, step=4)  # (batch, channels, 4 windows, 4)
        return self.o(torch.relu(self.e(h))).sum(1)


@pytest.mark.parametrize("channels", [5, 4, 2])
def test_windows_of_a_series_keep_the_channels(channels):
    # before: probed, and where the channels matched another axis's size (the batch, the
    # windows, the window length) the probe fixed them
    spec, report = trace_with_report(
        model_(lambda: _Patches(channels)), x_(2, 16, 3), channel_dim=-1
    )
    assert report.verification.ok and not report.broken and not report.probes
    assert spec["i.weight"].axes[0] == "i" and spec.spaces["i"].size == channels


def test_windows_across_neurons_fix_them():
    spec, report = trace_with_report(
        model_(lambda: _Patches(8, along=1)), x_(2, 16, 3), channel_dim=-1
    )
    assert report.verification.ok and spec["i.weight"].axes[0] is None


class _TopFrequencies(nn.Module):
    """ETSformer's Fourier layer: the top-k positions of each channel, gathered per channel."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.i, self.o = nn.Linear(3, 8), nn.Linear(8, 2)

    def forward(self, x):  # (batch, time, 3)
        h = torch.tanh(self.i(x))  # (batch, time, 8)
        top = h.abs().topk(2, dim=1)
        if self.how == "values":
            return self.o(top.values)
        return self.o(torch.gather(h, 1, top.indices))  # (batch, 2, 8)


@pytest.mark.parametrize("how", ["indices", "values"])
def test_topk_per_channel_keeps_the_channels(how):
    # before: topk's outputs lost every label (another shape than its input) and `.indices`
    # was probed: the 8 channels were fixed
    spec, report = trace_with_report(
        model_(lambda: _TopFrequencies(how)), x_(2, 6, 3), channel_dim=-1
    )
    assert report.verification.ok and not report.broken and not report.probes
    assert spec["i.weight"].axes[0] == "i" and spec["o.weight"].axes[1] == "i"


class Interleaved(TwoLinear):
    """``a``'s 6 outputs each read twice in a row (``repeat_interleave``) by a 12-input layer;
    with ``flat``, the whole tensor is flattened and repeated (no ``dim``)."""

    def __init__(self, flat: bool = False) -> None:
        super().__init__()
        self.flat, self.b = flat, nn.Linear(12, 3)

    def forward(self, x):
        h = torch.relu(self.a(x))
        if self.flat:  # a batch of 1: its flattened entries are a's outputs
            return self.b(h.repeat_interleave(2).unsqueeze(0))
        return self.b(torch.repeat_interleave(h, 2, dim=-1))


@pytest.mark.parametrize("flat", [False, True])
def test_repeat_interleave_repeats_each_neuron_in_a_row(flat):
    model = model_(lambda: Interleaved(flat))
    spec, report = trace_with_report(model, x_(1 if flat else 3, 4))
    assert report.verification.ok and not report.probes
    assert spec["a.weight"].axes[0] == "a"
    # b's 12 inputs viewed (neuron, copy): the copies are not permuted
    assert spec["b.weight"].axes == ("out", "a", None)
    assert spec["b.weight"].view == (3, 6, 2)


class AttributeTransposed(TwoLinear):
    """Falcon's ``x @ self.weight.T + self.bias``, by each transpose attribute."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name

    def forward(self, x):
        h = torch.relu(x @ getattr(self.a.weight, self.name) + self.a.bias)
        return h @ getattr(self.b.weight, self.name) + self.b.bias


@pytest.mark.parametrize("name", ["T", "mT", "H", "mH"])
def test_a_transpose_attribute_swaps_the_labels(name):
    # before: "the attribute 'T' of a TensorLabels" fixed every axis of both weights
    spec, report = trace_with_report(model_(lambda: AttributeTransposed(name)), x_(5, 4))
    assert report.verification.ok and not report.broken
    assert spec["a.weight"].axes == ("a", "in") and spec["b.weight"].axes == ("out", "a")


class Narrowed(TwoLinear):
    """a's 6 outputs taken apart by ``narrow`` (the last 2 by a negative start), the first 4
    scaled: they permute among themselves, the last 2 among themselves."""

    def forward(self, x):
        h = torch.relu(self.a(x))
        return self.b(torch.cat([h.narrow(1, 0, 4) * 2, torch.narrow(h, -1, -2, 2)], 1))


def test_narrow_is_read_as_the_slice_it_takes():
    # before: no rule, probed and every neuron of a fixed
    spec, report = trace_with_report(model_(Narrowed), x_(5, 4))
    assert report.verification.ok and not report.probes and not report.broken
    assert [spec.spaces[s].size for s in spec["a.weight"].axes[0]] == [4, 2]


class InterleavedGLU(nn.Module):
    """A gated MLP whose gate and up units alternate in one layer's outputs (GPT-OSS's experts:
    ``gate_up[..., ::2]``, ``gate_up[..., 1::2]``); ``step`` 3 takes one of every three.
    ``bias_apart``: the bias added after the product, as GPT-OSS adds it."""

    def __init__(self, step: int, bias_apart: bool = False) -> None:
        super().__init__()
        self.step, self.bias_apart = step, bias_apart
        self.inp, self.gate_up = nn.Linear(5, 8), nn.Linear(8, 6 * step)
        self.down, self.out = nn.Linear(6, 8), nn.Linear(8, 2)

    def forward(self, x):
        h = self.inp(x)
        if self.bias_apart:
            gu = F.linear(h, self.gate_up.weight) + self.gate_up.bias
        else:
            gu = self.gate_up(h)
        gate, up = gu[..., :: self.step], gu[..., self.step - 1 :: self.step]
        return self.out(h + self.down((up + 1) * gate * torch.sigmoid(gate)))


@pytest.mark.parametrize(("step", "bias_apart"), [(2, False), (3, False), (2, True)])
def test_every_step_th_position_is_one_position_of_each_neuron(step, bias_apart):
    # before: each of the 6 units was a space of one neuron (the strided slice took single
    # positions); now the layer's outputs are 6 neurons of `step` positions each. A bias added
    # apart is asked for in such blocks a round later
    model = model_(lambda: InterleavedGLU(step, bias_apart))
    spec, report = trace_with_report(model, x_(3, 5))
    assert report.verification.ok and not report.broken
    assert spec["gate_up.weight"].view == (6, step, 8)
    assert spec["gate_up.weight"].axes == ("gate_up", None, "inp")
    assert spec["gate_up.bias"].axes == ("gate_up", None)
    assert spec["down.weight"].axes == ("inp", "gate_up") and spec.spaces["gate_up"].size == 6
    assert_equivariant(nfc.NFLinear(spec, 1, 2).double(), spec, trials=2)


class Diagonal(TwoLinear):
    """A learned per-neuron scale applied as a diagonal matrix (``h @ diag(s)``, or
    ``diag_embed``), a diagonal read back (of an outer product), and a cast of the tensor's
    class (fastai's ``TensorBase.as_subclass``)."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.scale = nn.Parameter(torch.linspace(0.5, 1.5, 6))

    def forward(self, x):
        h = torch.relu(self.a(x)).as_subclass(torch.Tensor)
        if self.how == "diag":
            h = h @ torch.diag(self.scale)
        elif self.how == "diag_embed":
            h = (h[:, None, :] @ torch.diag_embed(self.scale[None])).squeeze(1)
        else:  # the diagonal of each sample's outer product: h * h, scaled
            h = torch.diagonal(h[:, :, None] * h[:, None, :], dim1=1, dim2=2) * self.scale
        return self.b(h)


@pytest.mark.parametrize("how", ["diag", "diag_embed", "diagonal"])
def test_a_diagonal_matrix_moves_with_its_vector(how):
    # torch.diag, diag_embed, diagonal and as_subclass had no rule: probed, and where the
    # probe failed (a diagonal matrix does not move like its vector) the scale was fixed
    spec, report = trace_with_report(model_(lambda: Diagonal(how)), x_(5, 4))
    assert report.verification.ok and not report.probes and not report.broken
    assert spec["scale"].axes == ("a",) and spec["b.weight"].axes == ("out", "a")
    layer = nfc.NFLinear(spec, 1, 1, basis="linear").double()
    assert_equivariant(layer, spec, in_channels=1, trials=2)


class _CutAtTensor(nn.Module):
    """torchaudio's ``Resample`` pattern: the output cut at a length the forward computes as
    a 0-dim integer tensor from Python numbers (``resampled[..., :target_length]``), or from
    a start of that kind."""

    def __init__(self, at_start: bool) -> None:
        super().__init__()
        self.at_start = at_start
        self.conv, self.out = nn.Conv1d(3, 4, 3, padding=2), nn.Linear(4, 2)

    def forward(self, x):
        h = self.conv(x)  # two positions longer than x
        n = torch.ceil(torch.as_tensor(x.shape[-1] * 1.0)).long()
        h = h[..., 2 - n :] if self.at_start else h[..., :n]
        return self.out(torch.relu(h).mean(-1))


@pytest.mark.parametrize("fake", [False, True])
@pytest.mark.parametrize("at_start", [False, True])
def test_a_slice_at_a_tensor_bound_keeps_the_neurons_it_cuts_along_another_dim(fake, at_start):
    # before: "slice indices must be integers" (braindecode's EEGSimpleConv, which resamples
    # its input with torchaudio first); the bound is the example's value where shape
    # propagation recorded it, else the one the output's length gives (fake tensors)
    model = model_(lambda: _CutAtTensor(at_start)).double()
    x = x_(2, 3, 9).double()
    spec, report = trace_with_report(model, x, fake=fake)
    assert report.verification.ok
    assert spec["conv.weight"].axes[0] == spec["out.weight"].axes[1] is not None
    assert_equivariant(nfc.NFLinear(spec, 1, 2).double(), spec, trials=2)


class _LaggedWindows(nn.Module):
    """gluonts' ``lagged_sequence_values``: windows of a series cut by a list of slices
    (``a[[slice(None), slice(begin, end)]]``, which torch reads as a tuple), stacked, then a
    layer over the lags and the other inputs' features."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.out = nn.Linear(5, 4), nn.Linear(4, 2)

    def forward(self, series, feats):  # (batch, 20), (batch, 6, 2)
        lags = [series[[slice(None), slice(-lag - 6, -lag or None)]] for lag in (0, 1, 5)]
        h = torch.cat((torch.stack(lags, dim=-1), feats), dim=-1)
        return self.out(torch.relu(self.a(h)))


@pytest.mark.filterwarnings("ignore:Using a non-tuple sequence")
def test_a_list_of_slices_indexes_as_a_tuple():
    # before: "internal: tying labels of widths 20 and 6" where the windows met another
    # input's labelled dim (the list read as one index of dim 0, the output given the
    # input's labels); the series' positions are cut per window
    model = model_(_LaggedWindows).double()
    x = (x_(2, 20).double(), x_(2, 6, 2).double())
    spec, report = trace_with_report(model, x)
    assert report.verification.ok
    assert spec["a.weight"].axes[0] == spec["out.weight"].axes[1] is not None
    assert_equivariant(nfc.NFLinear(spec, 1, 2).double(), spec, trials=2)


class _ChannelSqueeze(nn.Module):
    """FishNet's channel squeeze (pytorchcv): ``a``'s 8 channels viewed as 4 groups of 2 and
    reduced over each group's 2 (``x.view(b, c // g, g, h, w).sum(2)``), the 4 sums read by a
    conv."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.a, self.b = nn.Conv2d(3, 8, 1), nn.Conv2d(4, 2, 1)

    def forward(self, x):
        h = torch.relu(self.a(x))
        b, c, height, width = h.size()
        h = h.view(b, c // 2, 2, height, width)
        return self.b(h.amax(2) if self.how == "amax" else getattr(h, self.how)(dim=2))


@pytest.mark.parametrize("how", ["sum", "mean", "amax"])
def test_a_reduction_inside_groups_of_channels_moves_the_groups_as_blocks(how):
    # before: each group's 2 channels were no span of their own, so a's 8 were one free space
    # while b's columns stayed in place, which the verification refused ("permuting it
    # changes the output by 1.18"; with verify=False the spec was wrong)
    model = model_(lambda: _ChannelSqueeze(how)).double()
    spec, report = trace_with_report(model, x_(2, 3, 4, 4).double())
    assert report.verification.ok
    assert spec.spaces["a"].blocks == spec.spaces[spec["b.weight"].axes[1]].blocks is not None
    assert spec.block_shape("a") == (4, 2)
    assert_equivariant(nfc.NFLinear(spec, 1, 2).double(), spec, trials=2)
    assert_equivariant(nfc.NFLinear(spec, 1, 2, basis="linear").double(), spec, trials=2)


class _ComplexParts(nn.Module):
    """asteroid's complex convolutions: a complex tensor's parts read as attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.re, self.im, self.out = nn.Linear(4, 6), nn.Linear(4, 6), nn.Linear(12, 3)

    def forward(self, x):
        z = torch.complex(self.re(x), self.im(x))
        return self.out(torch.cat([torch.tanh(z.real), torch.tanh(z.imag)], 1))


def test_a_complex_tensors_parts_keep_their_labels():
    # before: `z.real` was refused ("the attribute 'real' of a TensorLabels") and fixed
    # every unit through it: asteroid's DCUNet read 0 spaces
    spec, report = trace_with_report(
        _ComplexParts().double(), torch.randn(5, 4, dtype=torch.float64)
    )
    assert report.verification.ok and not report.broken
    assert spec["re.weight"].axes[0] == spec["im.weight"].axes[0] is not None


class FieldPairs(nn.Module):
    """Fields' hidden units read in pairs by a tuple of positions (RecBole's FiGNN:
    ``x[:, src_nodes]`` with ``src_nodes`` from ``zip(*product(...))``), or selected whole by
    lengths with ``torch.masked_select`` and viewed back (DeepCTR's DIEN)."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.lin0, self.lin1 = nn.Linear(4, 6), nn.Linear(6, 2)

    def forward(self, x, lengths):
        h = torch.relu(self.lin0(x))  # (B, fields, 6)
        if self.how == "tuple":
            h = h[:, (0, 0, 1, 2), :]
        else:
            h = torch.masked_select(h, (lengths > 0).view(-1, 1, 1)).view(-1, 3, 6)
        return self.lin1(h).sum(1)


@pytest.mark.parametrize("how", ["tuple", "masked_select"])
@pytest.mark.parametrize("fields", [-1, 1])
def test_a_tuple_of_positions_and_a_mask_of_whole_rows_keep_the_features(how, fields):
    # before: "indexing with tuple", and masked_select probed as not equivariant: lin0 fixed;
    # with the fields an input axis (DeepCTR's ids as columns), masked_select flattens the
    # fields with lin0's units, and keeps lin0's
    model = model_(lambda: FieldPairs(how))
    x, lengths = x_(3, 3, 4), torch.tensor([2, 0, 4])
    spec, report = trace_with_report(model, (x, lengths), channel_dim=(fields, None))
    assert spec.spaces["lin0"].size == 6 and spec.spaces["lin0"].role == "hidden"
    assert report.verification.ok and (fields == 1 or not report.broken)
    assert_equivariant(nfc.NFLinear(spec, 1, 2).double(), spec, trials=2)


def test_masked_select_along_a_neuron_axis_fixes_it():
    class ByValue(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin0, self.lin1 = nn.Linear(4, 6), nn.Linear(1, 2)

        def forward(self, x):
            h = self.lin0(x)
            return self.lin1(torch.masked_select(h, h > 0).sum().view(1, 1))

    spec, report = trace_with_report(model_(ByValue), x_(3, 4))
    assert "lin0" not in spec.spaces and report.verification.ok


class CatOfProduct(nn.Module):
    """A flattened product (input fields x hidden units) concatenated with a layer's outputs,
    then read by a Linear (DeepCTR's AutoInt)."""

    def __init__(self) -> None:
        super().__init__()
        self.lin0, self.deep = nn.Linear(4, 5), nn.Linear(12, 3)
        self.out = nn.Linear(3 * 5 + 3, 1)

    def forward(self, x):  # (B, fields, 4), the fields an input axis
        h = torch.relu(self.lin0(x)).flatten(1)  # (B, fields * 5): a product
        d = torch.relu(self.deep(x.flatten(1)))
        return self.out(torch.cat((h, d), -1))


def test_a_product_concatenated_keeps_its_largest_factor():
    # before: the product was fixed whole (lin0's 5 units with the fields)
    spec, report = trace_with_report(model_(CatOfProduct), x_(2, 3, 4), channel_dim=1)
    assert spec.spaces["lin0"].size == 5 and spec.spaces["deep"].size == 3
    assert [b.neurons for b in report.broken] == [["in"]]
    assert report.verification.ok
    assert_equivariant(nfc.NFLinear(spec, 1, 2).double(), spec, trials=2)
