"""nfncompile.frontend.rules.inplace and the analysis's reading of writes: a tensor written in
place (``x[i] = v``, ``copy_``, ``add_``) is read with the labels it has after the write, and
the trace records a buffer the forward made and then wrote traced values into."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import nfncompile as nfc
from nfncompile.frontend.fx import trace_module
from nfncompile.frontend.tracing import trace_with_report
from nfncompile.testing import assert_equivariant
from tests.frontend.helpers import TwoLinear, model_, x_

WRITES = {
    # name: (forward body on h = a(x) of 6 neurons, returning what b (6 inputs) reads,
    #        b.weight's input axis)
    "whole": (lambda x, h: _zeros(x, 6).__setitem__((slice(None),) * 2, h), "a"),
    "copy_": (lambda x, h: _zeros(x, 6).copy_(h), "a"),
    "add_": (lambda x, h: _zeros(x, 6).add_(h), "a"),
    "offset": (lambda x, h: _set(_zeros(x, 8), (slice(None), slice(2, None)), h)[:, 2:], "a"),
    "prefix": (lambda x, h: _set(_zeros(x, 9), (Ellipsis, slice(0, 6)), h)[:, 3:], ("a/1", "c")),
    "one_column": (lambda x, h: _set(_zeros(x, 6), (slice(None), 0), h[:, 1]), (1, "c")),
    "strided": (lambda x, h: _set(_zeros(x, 12), (slice(None), slice(None, None, 2)), h)[:, 3:9], None),
    "tensor_index": (lambda x, h: _set(_zeros(x, 6), (slice(None), torch.arange(6)), h), None),
}  # fmt: skip


def _zeros(x: torch.Tensor, n: int) -> torch.Tensor:
    return torch.zeros(x.shape[0], n)


def _set(buf: torch.Tensor, index: tuple, value: torch.Tensor) -> torch.Tensor:
    buf[index] = value
    return buf


class Written(TwoLinear):
    def forward(self, x):
        h = torch.relu(self.a(x))
        buf = WRITES[self.how][0](x, h)
        return self.b(torch.tanh(buf if buf is not None else h))


def _whole(spec, axis):
    """``axis`` with the spec's space names, ``c`` standing for a constant run's space."""
    if not isinstance(axis, tuple):
        return axis
    names = spec["b.weight"].axes[1]
    return tuple(n if a == "c" and isinstance(n, str) else a for a, n in zip(axis, names))


@pytest.mark.parametrize("how", list(WRITES))
def test_a_written_buffer_is_read_with_the_labels_it_has_after_the_write(how):
    model = model_(lambda: Written(how))
    # the verification checks the derived group against the model's own function
    spec, report = trace_with_report(model, x_(3, 4))
    assert report.verification.ok
    assert spec["b.weight"].axes[1] == _whole(spec, WRITES[how][1])
    layer = nfc.NFLinear(spec, 1, 1, basis="linear").double()
    assert_equivariant(layer, spec, in_channels=1, trials=2)


def test_a_buffer_written_with_traced_values_is_a_node_of_the_graph():
    # torch.zeros of the example's batch size was a constant of the graph, the write into it
    # a call on that constant, and its later read another constant: the graph computed b(0)
    model = model_(lambda: Written("offset"))
    gm = trace_module(model, x_(3, 4))
    assert not [n for n in gm.graph.nodes if n.op == "get_attr"]
    x = x_(3, 4, seed=1)
    torch.testing.assert_close(gm(x), model(x))


class ViewWritten(TwoLinear):
    """``how="slice"``: a write into a slice of the buffer, pieced into the buffer's labels;
    the buffer's two shifted windows then read a's neurons at two places. ``how="transpose"``:
    through a transpose, a view the rules do not piece a write through."""

    def forward(self, x):
        buf = torch.zeros(x.shape[0], 7)
        if self.how == "slice":
            view = buf[:, 1:]  # made before the write: its labels are those of zeros
        else:
            view = buf.t()[1:].t()
        view.copy_(self.a(x))
        return self.b(buf[:, :6]) + self.b(view)


@pytest.mark.parametrize("how", ["slice", "transpose"])
def test_a_write_through_a_view_made_before_it_fixes_what_shares_its_memory(how):
    spec, report = trace_with_report(model_(lambda: ViewWritten(how)), x_(3, 4))
    assert report.verification.ok
    assert spec["a.weight"].axes[0] is None and spec["b.weight"].axes[1] is None
    reasons = [b.reason for b in report.broken]
    assert any("through a view" in r for r in reasons) == (how == "transpose")


class ZeroChannels(nn.Module):
    """A PyramidNet's shortcut: the stream widened by concatenating zero channels."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Linear(4, 6), nn.Linear(6, 9), nn.Linear(9, 2)

    def forward(self, x):
        h = torch.relu(self.a(x))
        short = torch.cat([h, x.new_zeros(x.shape[0], 3)], 1)
        return self.c(torch.relu(self.b(h)) + short)


def test_concatenated_zero_channels_are_free_neurons():
    spec, report = trace_with_report(model_(ZeroChannels), x_(3, 4))
    assert report.verification.ok and not report.broken
    rows = spec["b.weight"].axes[0]
    assert rows[0] == "a" and spec.spaces[rows[1]].size == 3
    assert spec["c.weight"].axes[1] == rows


class SliceResidual(nn.Module):
    """A residual added into the first channels only: ``h[:, :4] += b(relu(h[:, :4]))``."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Conv2d(3, 8, 1), nn.Conv2d(4, 4, 1), nn.Conv2d(8, 2, 1)

    def forward(self, x):
        h = self.a(x)
        h[:, :4] += self.b(torch.relu(h[:, :4]))
        return self.c(h)


class PartialConv(nn.Module):
    """FasterNet's partial convolution in its slicing form: a copy of the stream whose first
    channels a conv replaces, read through views made before the write and not after it."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.pc = nn.Conv2d(3, 8, 1), nn.Conv2d(2, 2, 3, padding=1, bias=False)
        self.m1, self.m2, self.head = nn.Conv2d(8, 16, 1), nn.Conv2d(16, 8, 1), nn.Conv2d(8, 2, 1)

    def forward(self, x):
        x = self.stem(x)
        y = x.clone()
        y[:, :2] = self.pc(y[:, :2])
        return self.head(x + self.m2(torch.relu(self.m1(y))))


def test_a_residual_written_into_some_channels_keeps_both_layers():
    # before: the write put back the first four neurons spelled as two pieces of a's eight,
    # which compared unequal, so a view made before it fixed a, b and c's inputs
    spec, report = trace_with_report(model_(SliceResidual), x_(2, 3, 5, 5))
    assert report.verification.ok and not report.broken
    first, rest = spec["a.weight"].axes[0]
    assert spec["b.weight"].axes[:2] == (first, first) and spec.spaces[rest].size == 4
    assert spec["c.weight"].axes[1] == (first, rest)
    assert_equivariant(nfc.NFLinear(spec, 2, 3), spec, in_channels=2, trials=2)


def test_views_read_only_before_a_write_do_not_fix_it():
    spec, report = trace_with_report(model_(PartialConv), x_(2, 3, 5, 5))
    assert report.verification.ok and not report.broken
    first, rest = spec["stem.weight"].axes[0]
    assert spec["pc.weight"].axes[1] == first and spec.spaces[first].size == 2
    assert spec["m1.weight"].axes[1] == (spec["pc.weight"].axes[0], rest)
    assert spec["m2.weight"].axes[0] == (first, rest)


class _WriteRows(nn.Module):
    """Informer's ProbAttention: rows chosen by index tensors overwritten, features whole."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.v, self.o = nn.Linear(4, 8), nn.Linear(8, 3)

    def forward(self, x):
        b, n, _ = x.shape
        v = torch.relu(self.v(x))
        ctx = v.mean(1, keepdim=True).expand(b, n, 8).clone()
        if self.how == "rows":  # batch and position indices, the feature dim a full slice
            ctx[torch.arange(b)[:, None], torch.arange(2).expand(b, 2), :] = 2 * v[:, :2]
        elif self.how == "features":  # feature positions the data gives
            ctx[:, :, torch.tensor([1, 0, 2])] = v[:, :, :3]
        else:  # a boolean mask
            ctx[v.sum(-1) > 0] = 0.5 * v[v.sum(-1) > 0]
        return self.o(ctx)


@pytest.mark.parametrize("how", ["rows", "features", "mask"])
def test_a_write_at_index_tensors_fixes_only_the_indexed_dims(how):
    # before: every write through a tensor index fixed both sides: v's 8 features
    spec, report = trace_with_report(model_(lambda: _WriteRows(how)), x_(2, 6, 4), channel_dim=-1)
    assert report.verification.ok
    hidden = [s.name for s in spec.spaces.values() if s.role == "hidden"]
    if how in ("rows", "mask"):  # rows placed by the data (a mask's: before, fixed), features whole
        assert hidden == ["v"] and not report.broken
        assert spec["o.weight"].axes == ("out", "v")
    else:  # the features themselves written at data positions: fixed
        assert hidden == [] and report.broken


class _MaskWrites(nn.Module):
    """Writes through a boolean mask: the rows each expert's tokens chose (Switch
    Transformers' ``out[mask] = expert(h[mask])``), a constant filled where the features say
    (``h[h < 0] = c``, a ``masked_fill``), or at feature positions a constant mask picks."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.a, self.router, self.b = nn.Linear(3, 6), nn.Linear(6, 2), nn.Linear(6, 2)
        self.experts = nn.ModuleList(
            nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 6)) for _ in range(2)
        )

    def forward(self, x):
        h = self.a(x)
        if self.how == "experts":
            choice = self.router(h).argmax(-1)
            out = h.clone()
            for i, expert in enumerate(self.experts):
                chosen = choice == i
                out[chosen] = expert(h[chosen])
            return self.b(out + h)
        if self.how == "fill":
            h[h < 0] = 0.1
        else:  # a constant mask of feature positions
            h[:, :, torch.tensor([True, False, True, False, False, False])] = 0.0
        return self.b(h)


@pytest.mark.parametrize("how", ["experts", "fill", "constant"])
def test_a_write_through_a_mask_keeps_what_the_mask_does_not_place(how):
    spec, report = trace_with_report(model_(lambda: _MaskWrites(how)), x_(2, 7, 3))
    # the verification draws elements of the derived group and checks the model's function
    assert report.verification.ok
    hidden = {s.name for s in spec.spaces.values() if s.role == "hidden"}
    if how == "experts":  # before: every write through a mask fixed the stream
        assert hidden == {"a", "experts.0.0", "experts.1.0"}
    elif how == "fill":  # before: fixed, as any masked write
        assert hidden == {"a"}
    else:  # neurons 0 and 2 zeroed by their positions: the run up to them fixed, the rest free
        assert spec["b.weight"].axes[1] == (3, "a") and spec.spaces["a"].size == 3


class _DiagonalConv(nn.Module):
    """A conv whose weight is built in the forward, zero but ``w[i, i] = taps``: the same
    filter on each channel alone (diffusers' ``Downsample1d``), or a variant that is not."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.a, self.b = nn.Conv1d(2, 8, 3, padding=1), nn.Conv1d(8, 2, 3, padding=1)
        self.register_buffer("kernel", torch.tensor([0.125, 0.375, 0.375, 0.125]))
        self.per_channel = nn.Parameter(torch.randn(8, 4))
        self.register_buffer("order", torch.tensor([3, 1, 0, 2, 7, 5, 6, 4]))

    def forward(self, x):
        h = torch.relu(self.a(x))
        n = h.shape[1]
        w = h.new_zeros([n, n, 4])
        i = torch.arange(n)
        if self.how == "diagonal":
            w[i, i] = self.kernel.to(w)[None, :].expand(n, -1)
        elif self.how == "buffer":  # the diagonal in another order, from a buffer
            w[self.order, self.order] = self.kernel.to(w)[None, :].expand(n, -1)
        elif self.how == "shapes_fixed":  # fx folds arange(8) to a constant when shapes are
            if x.shape[-1] != 16:  # known: this branch traces only with them fixed
                h = h[..., :16]
            w[i, i] = self.kernel.to(w)[None, :].expand(n, -1)
        elif self.how == "per_channel":  # a filter of each channel's own
            w[i, i] = self.per_channel
        elif self.how == "flipped":  # the anti-diagonal: channel i feeds channel n - 1 - i
            w[i, i.flip(0)] = self.kernel.to(w)[None, :].expand(n, -1)
        else:  # a diagonal of n - 1 entries: the last channel is dropped
            j = torch.arange(n - 1)
            w[j, j] = self.kernel.to(w)[None, :].expand(n - 1, -1)
        return self.b(F.conv1d(F.pad(h, (1, 1), "reflect"), w, stride=2))


@pytest.mark.parametrize(
    "how", ["diagonal", "buffer", "shapes_fixed", "per_channel", "flipped", "short"]
)
def test_a_diagonal_weight_written_in_the_forward_keeps_the_channels_free(how):
    # before: the conv met an unlabelled weight and fixed a's 8 channels (diffusers' UNet1D)
    model = model_(lambda: _DiagonalConv(how))
    spec, report = trace_with_report(model, x_(1, 2, 16))
    assert report.verification.ok and bool(report.specialised) == (how == "shapes_fixed")
    hidden = {n: s.size for n, s in spec.spaces.items() if s.role == "hidden"}
    if how in ("diagonal", "buffer", "shapes_fixed"):
        assert hidden == {"a": 8} and spec["b.weight"].axes[:2] == ("out", "a")
    else:  # a filter per channel (a symmetry, kept fixed: the rule reads only one value
        # on the diagonal), the anti-diagonal, or a diagonal short of the channels
        assert hidden == {}


class _WrittenInPart(nn.Module):
    """A layer's output written over in part, in place: a slice scaled (``*=``), a slice
    squashed, or a slice replaced by another layer's output."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.b, self.c, self.o = nn.Linear(3, 8), nn.Linear(3, 3), nn.Linear(8, 2)

    def forward(self, x):
        h = self.b(x).clone()
        if self.how == "scaled":
            h[:, :4] *= 2
        elif self.how == "squashed":
            h[:, 2:5] = torch.tanh(h[:, 2:5])
        else:
            h[:, 5:] = self.c(x)
        return self.o(h)


@pytest.mark.parametrize(
    ("how", "pieces"), [("scaled", [4, 4]), ("squashed", [2, 3, 3]), ("replaced", [5, 3])]
)
def test_a_write_over_part_of_a_layers_output_cuts_its_neurons_there(how, pieces):
    # before: `h[:, :4] *= 2` gave the scaled neurons back in their places, so b stayed one
    # space and the derived group failed verification (SymmetryError)
    spec, report = trace_with_report(model_(lambda: _WrittenInPart(how)), x_(5, 3))
    assert report.verification.ok
    rows = spec["b.weight"].axes[0]
    rows = (rows,) if isinstance(rows, str) else rows
    assert [spec.spaces[r].size for r in dict.fromkeys(rows)] == pieces
    if how == "replaced":  # b's last rows are written over (unused), c's neurons read instead
        assert spec["o.weight"].axes[1][-1] == spec["c.weight"].axes[0]


class ViewWrites(nn.Module):
    """Two layers' outputs copied into slices of an empty tensor (DeepSeek's keys:
    ``key_states[..., :nope].copy_(k_nope)``); ``read_view`` reads the first slice's view
    again after the second write, which sees the first write."""

    def __init__(self, read_view: bool) -> None:
        super().__init__()
        self.read_view = read_view
        self.a, self.b, self.out = nn.Linear(5, 4), nn.Linear(5, 3), nn.Linear(7, 2)

    def forward(self, x):
        h = x.new_empty(x.shape[0], 7)
        first = h[:, :4]
        first.copy_(self.a(x))
        h[:, 4:].copy_(self.b(x))
        y = self.out(torch.relu(h))
        return y + first.sum(-1, keepdim=True) if self.read_view else y


@pytest.mark.parametrize("read_view", [False, True])
def test_a_copy_into_a_slice_is_a_write_into_its_tensor(read_view):
    # before: the write through the view fixed the tensor's neurons and both layers'
    spec, report = trace_with_report(model_(lambda: ViewWrites(read_view)), x_(3, 5))
    assert report.verification.ok and not report.broken
    assert spec["out.weight"].axes == ("out", ("a", "b"))
    assert spec["a.weight"].axes[0] == "a" and spec["b.weight"].axes[0] == "b"
    # the free run the empty tensor left at 4: after the first write indexes no weight
    assert list(spec.spaces) == ["in", "a", "b", "out"]
    assert_equivariant(nfc.NFLinear(spec, 1, 2).double(), spec, trials=2)


class ParallelScan(nn.Module):
    """A Blelloch-style parallel prefix sum over time, written in place as mambapy's
    ``pscan`` writes it: the time axis viewed ``(T // 2, 2)`` and the odd steps updated
    (``how="pairs"``), or every 4th step taken by a strided slice (``"strided"``); with
    ``"neurons"``, a strided slice of the neuron axis is written instead."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.a, self.decay, self.b = (
            nn.Linear(3, 6),
            nn.Parameter(torch.rand(6) * 0.5),
            nn.Linear(6, 2),
        )

    def forward(self, x):  # (B, 3, T)
        h = self.a(x.transpose(1, 2)).transpose(1, 2).contiguous()  # (B, 6, T)
        g = torch.sigmoid(h * self.decay[:, None])  # a gate per step, as Mamba's decays
        b, c, t = h.shape
        if self.how == "neurons":
            h[:, ::2].mul_(2.0)
        else:
            hv, gv = h.view(b, c, t // 2, 2), g.view(b, c, t // 2, 2)
            hv[:, :, :, 1].add_(gv[:, :, :, 1].mul(hv[:, :, :, 0]))
            gv[:, :, :, 1].mul_(gv[:, :, :, 0])
            if self.how == "strided":
                hs, gs = h[:, :, 1::4], g[:, :, 1::4]
                hs[:, :, 1].add_(gs[:, :, 1].mul(hs[:, :, 0]))
        return self.b(torch.relu(h.mean(-1)))


@pytest.mark.parametrize("how", ["pairs", "strided", "neurons"])
def test_a_scan_written_in_place_along_time_keeps_its_neurons(how):
    # before: a write into one position of a (T // 2, 2) view made fresh runs of that
    # positional dim, so the view's labels no longer matched and everything sharing the
    # tensor's memory was fixed; a strided slice's write fixed the whole tensor (Mamba's
    # parallel scan in mambapy had no space left, its residual stream included)
    spec, report = trace_with_report(model_(lambda: ParallelScan(how)), x_(2, 3, 8))
    assert report.verification.ok
    free = how != "neurons"
    assert (spec["a.weight"].axes[0] == "a") is free
    assert (spec["decay"].axes == ("a",)) is free
    layer = nfc.NFLinear(spec, 1, 1, basis="linear").double()
    assert_equivariant(layer, spec, in_channels=1, trials=2)


def test_an_in_place_op_on_an_advanced_index_writes_a_copy():
    # f[:, [0, 0, 1]] copies: unsqueeze_ on it (RecBole's PNN) writes nothing f's other
    # readers see; before, it was taken as a write through a view of f, which fixed emb
    class Pairs(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(10, 4)
            self.kernel = nn.Parameter(torch.randn(4, 3, 4))
            self.out = nn.Linear(3, 1)

        def forward(self, ids):
            f = self.emb(ids)
            p, q = f[:, [0, 0, 1]], f[:, [1, 2, 2]]
            p.unsqueeze_(dim=1)
            p = torch.mul(p, self.kernel.unsqueeze(0)).sum(-1).transpose(2, 1)
            return self.out((p * q).sum(-1))

    spec, report = trace_with_report(model_(Pairs), torch.tensor([[1, 2, 3], [4, 5, 6]]))
    assert spec.spaces["emb"].size == 4 and not report.broken
    assert report.verification.ok


class StridedTable(nn.Module):
    """sbi's positional encoder: a table written into ``zeros_like(q)`` at every other
    feature (``pe[..., 0::2] += cos``), the same for every head, added to q and k."""

    def __init__(self) -> None:
        super().__init__()
        self.inp, self.qkv, self.o = nn.Linear(5, 16), nn.Linear(16, 48), nn.Linear(16, 3)

    def pos(self, x):
        t = torch.arange(x.shape[-2]).to(x).view(-1, 1) * torch.arange(1, 3).to(x)
        pe = torch.zeros_like(x)
        pe[..., 0::2] += torch.cos(t)
        pe[..., 1::2] += torch.sin(t)
        return x + pe

    def forward(self, x):
        h = self.inp(x)
        b, n, _ = h.shape
        q, k, v = (t.view(b, n, 4, 4).transpose(1, 2) for t in self.qkv(h).chunk(3, -1))
        a = torch.softmax(self.pos(q) @ self.pos(k).transpose(2, 3), dim=-1)
        return self.o((a @ v).transpose(1, 2).reshape(b, n, 16))


def test_a_write_through_a_strided_slice_fixes_that_dim_only():
    # before: every dim of the table was fixed, the heads too: no head moved as a block
    spec, report = trace_with_report(model_(StridedTable), x_(2, 6, 5))
    assert [b.count for b in spec.blocks.values()] == [4] and spec.spaces["qkv"].size == 16
    assert report.verification.ok
