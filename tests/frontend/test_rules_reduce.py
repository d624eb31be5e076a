"""nfncompile.frontend.rules.reduce: symmetric reductions consume labels, positional ops fix."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import nfncompile as nfc
from nfncompile.frontend.tracing import trace_with_report
from nfncompile.testing import assert_equivariant
from tests.frontend.helpers import TwoLinear, model_, x_


class SumOfSlice(TwoLinear):
    """Sums a's first 4 outputs: they may permute among themselves, not with the other 2."""

    def forward(self, x):
        h = torch.relu(self.a(x))
        return self.b(h) * h[:, :4].sum(1, keepdim=True)


def test_a_reduction_over_a_slice_cuts_the_run():
    spec, report = trace_with_report(model_(SumOfSlice), x_(5, 4))
    assert spec["a.weight"].axes == (("a/0", "a/1"), "in")
    assert [spec.spaces[n].size for n in ("a/0", "a/1")] == [4, 2]
    assert not report.broken and report.verification.ok


class ArgmaxGate(TwoLinear):
    def forward(self, x):
        h = torch.relu(self.a(x))
        return self.b(h) + h.argmax(1, keepdim=True).to(h.dtype)


def test_argmax_returns_positions_and_fixes_the_neurons():
    spec, report = trace_with_report(model_(ArgmaxGate), x_(5, 4))
    assert spec["a.weight"].axes == (None, "in")
    # its positions are added to the output as numbers
    assert "reads neuron positions as values" in report.broken[0].reason
    assert report.verification.ok


class NumpyNames(TwoLinear):
    """A mean over the features and one over the batch, by torch's (``dim``, ``keepdim``) or
    numpy's (``axis``, ``keepdims``) keywords, as I-BERT writes them."""

    def __init__(self, numpy: bool) -> None:
        super().__init__()
        self.dim, self.keep = ("axis", "keepdims") if numpy else ("dim", "keepdim")
        self.w = torch.nn.Parameter(torch.randn(6, 3))

    def forward(self, x):
        h = torch.relu(self.a(x))
        h = h - h.mean(**{self.dim: -1, self.keep: True})
        return self.b(h) + h.mean(**{self.dim: 0}) @ self.w  # the batch mean meets w's rows


@pytest.mark.parametrize("numpy", [False, True])
def test_numpy_keyword_names_read_as_torchs(numpy):
    # before: axis= was not read as the dim: a crash in a broadcast, or (the batch mean) a
    # group that failed verification
    spec, report = trace_with_report(model_(lambda: NumpyNames(numpy)), x_(5, 4))
    assert report.verification.ok
    assert spec["a.weight"].axes[0] == spec["w"].axes[0] == spec["b.weight"].axes[1] == "a"


class Quantiser(nn.Module):
    """A VQ-VAE bottleneck: each code the nearest row of a codebook (``argmin`` over the
    distances), read back ``how``; the last two read the positions otherwise."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.enc, self.book, self.dec = nn.Linear(6, 4), nn.Embedding(10, 4), nn.Linear(4, 3)

    def forward(self, x):
        z = self.enc(x)
        d = torch.cdist(z, self.book.weight)
        if self.how == "embedding":
            q = self.book(d.argmin(dim=1))
        elif self.how == "functional":
            q = F.embedding(d.argmin(1).view(-1), self.book.weight)
        elif self.how == "one_hot":
            q = F.one_hot(d.argmin(-1), 10).to(z.dtype) @ self.book.weight
        elif self.how == "min":
            q = self.book(d.min(dim=1).indices)
        elif self.how == "index":
            q = self.book.weight[d.argmin(1)]
        elif self.how == "index after an integer":  # torch selects at the integer first
            q = self.book.weight[None].expand(2, 10, 4)[1, d.argmin(1)]
        elif self.how == "scatter":  # one-hot codes written into zeros (AntixK's VQ-VAE)
            codes = torch.zeros(x.shape[0], 10).scatter_(1, d.argmin(1, keepdim=True), 1.0)
            q = codes @ self.book.weight
        elif self.how == "as_number":  # the code's position scales the features
            q = z * d.argmin(1, keepdim=True).to(z.dtype)
        else:  # returned: the positions are an output
            return self.dec(self.book(d.argmin(1))), d.argmin(1)
        return self.dec(z + (q - z).detach())


@pytest.mark.parametrize(
    "how",
    [
        "embedding", "functional", "one_hot", "min", "index", "index after an integer",
        "scatter", "as_number", "returned",
    ],
)  # fmt: skip
def test_nearest_codebook_rows_permute_with_the_codebook(how):
    # before: argmin fixed the codebook's 10 rows; read back as rows of the same codebook they
    # are the same vectors whichever way the rows are permuted (and, until an integer was no
    # longer counted as a second index, also read after selecting at an integer)
    spec, report = trace_with_report(model_(lambda: Quantiser(how)), x_(5, 6))
    assert report.verification.ok
    rows, cols = spec["book.weight"].axes
    assert cols == spec["enc.weight"].axes[0] == "enc"
    assert (rows is None) is (how in ("as_number", "returned"))
    if rows is not None:
        assert spec.spaces[rows].size == 10
        assert_equivariant(nfc.NFLinear(spec, 1, 2).double(), spec, trials=2)


class Sorted(TwoLinear):
    """a's 6 outputs sorted (their order statistics: sort, topk, or gathered by argsort) and
    read as 6 numbers; ``positions`` adds argsort's indices as numbers (reads positions)."""

    def forward(self, x):
        h = torch.relu(self.a(x))
        if self.how == "sort":
            s = h.sort(1, descending=True).values
        elif self.how == "topk":
            s = torch.cat([h.topk(3, dim=1).values, torch.topk(-h, 3, 1).values], 1)
        elif self.how == "argsort":
            s = h.gather(1, h.argsort(1))
        else:
            s = h.sort(1).values + h.argsort(1).to(h.dtype)
        return self.b(s) + h.sum(1, keepdim=True)


@pytest.mark.parametrize("how", ["sort", "topk", "argsort", "positions"])
def test_sorted_values_do_not_depend_on_the_order_of_the_neurons(how):
    # before: sort and topk were read as positional and fixed a's neurons
    spec, report = trace_with_report(model_(lambda: Sorted(how)), x_(5, 4))
    assert report.verification.ok
    assert spec["b.weight"].axes == ("out", None)  # sorted positions: no neurons
    assert spec["a.weight"].axes[0] == (None if how == "positions" else "a")


class OrderStatistic(TwoLinear):
    """a's outputs centred by one order statistic of them (median, k-th smallest, mode)."""

    def forward(self, x):
        h = torch.relu(self.a(x))
        if self.how == "kthvalue":
            centre = h.kthvalue(2, dim=1, keepdim=True).values
        elif self.how == "mode":
            centre = torch.mode(h, 1, keepdim=True).values
        else:
            centre = getattr(h, self.how)(dim=1, keepdim=True).values
        return self.b(h - centre)


@pytest.mark.parametrize("how", ["median", "nanmedian", "kthvalue", "mode"])
def test_an_order_statistic_over_neurons_is_a_symmetric_reduction(how):
    # before: no rule, probed (not equivariant: it does not move the neurons) and a fixed
    spec, report = trace_with_report(model_(lambda: OrderStatistic(how)), x_(5, 4))
    assert report.verification.ok and not report.probes and not report.broken
    assert spec["a.weight"].axes == ("a", "in")


class Normalised(TwoLinear):
    """a's outputs divided by a norm over them, or the output scaled by a matrix norm of a's
    weight (spectral or weight normalisation)."""

    def forward(self, x):
        h = torch.relu(self.a(x))
        if self.how == "linalg.norm":
            h = h / torch.linalg.norm(h, dim=1, keepdim=True)
        elif self.how == "vector_norm positional":  # ord, then dim, then keepdim
            h = h / torch.linalg.vector_norm(h, 3, 1, True)
        elif self.how == "linalg.norm of all":
            h = h / torch.linalg.norm(h)
        else:  # a matrix norm of the weight: Frobenius, spectral, nuclear, max column sum
            ord_ = {"matrix_norm": "fro", "spectral": 2, "nuclear": "nuc", "columns": 1}
            h = h / torch.linalg.matrix_norm(self.a.weight, ord=ord_[self.how])
        return self.b(h)


@pytest.mark.parametrize(
    "how",
    ["linalg.norm", "vector_norm positional", "linalg.norm of all", "matrix_norm", "spectral",
     "nuclear", "columns"],
)  # fmt: skip
def test_a_norm_over_neurons_is_a_symmetric_reduction(how):
    # torch.linalg.norm and matrix_norm had no rule (probed; DoRA's weight norm over an
    # adapter's features failed its probe and fixed them); vector_norm's dim was read from
    # its ord's place
    spec, report = trace_with_report(model_(lambda: Normalised(how)), x_(5, 4))
    assert report.verification.ok and not report.probes and not report.broken
    assert spec["a.weight"].axes == ("a", "in")
    layer = nfc.NFLinear(spec, 1, 1, basis="linear").double()
    assert_equivariant(layer, spec, in_channels=1, trials=2)


class Standardised(TwoLinear):
    """a's outputs standardised by their std and mean (kornia's HardNet normalises its input
    patches this way), taken over the neurons or, with the ``unbiased`` overload, over all."""

    def forward(self, x):
        h = torch.relu(self.a(x))
        if self.how == "std_mean":
            std, mean = torch.std_mean(h, dim=1, keepdim=True)
        elif self.how == "var_mean":
            var, mean = torch.var_mean(h, 1, keepdim=True, correction=0)
            std = var.sqrt()
        else:  # (input, unbiased): over every dim
            std, mean = torch.std_mean(torch.as_tensor(h), False)
        return self.b((h - mean) / (std + 1.0))


@pytest.mark.parametrize("how", ["std_mean", "var_mean", "unbiased"])
def test_a_std_and_mean_over_neurons_is_a_symmetric_reduction(how):
    # torch.std_mean, torch.var_mean and torch.as_tensor had no rule: probed
    spec, report = trace_with_report(model_(lambda: Standardised(how)), x_(5, 4))
    assert report.verification.ok and not report.probes and not report.broken
    assert spec["a.weight"].axes == ("a", "in") and spec["b.weight"].axes == ("out", "a")
    layer = nfc.NFLinear(spec, 1, 1, basis="linear").double()
    assert_equivariant(layer, spec, in_channels=1, trials=2)


class CommitmentLoss(TwoLinear):
    """A VQ layer's losses beside its output (DAC's, vector-quantize's): the features against
    a second layer's, averaged, summed, or kept per entry."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how, self.c = how, nn.Linear(4, 6)

    def forward(self, x):
        h, g = torch.relu(self.a(x)), self.c(x)
        if self.how == "none":
            return self.b(h + F.l1_loss(h, g, reduction="none"))
        loss = (
            F.mse_loss(h, g.detach())
            if self.how == "mse"
            else F.smooth_l1_loss(h, g, None, None, "sum")
        )
        return self.b(h), loss


@pytest.mark.parametrize("how", ["mse", "smooth_l1 positional", "none"])
def test_a_loss_against_a_target_is_elementwise_then_reduced(how):
    # F.mse_loss and its kin had no rule: probed
    spec, report = trace_with_report(model_(lambda: CommitmentLoss(how)), x_(5, 4))
    assert report.verification.ok and not report.probes and not report.broken
    assert spec["a.weight"].axes[0] == spec["c.weight"].axes[0] == spec["b.weight"].axes[1] == "a"
    layer = nfc.NFLinear(spec, 1, 1, basis="linear").double()
    assert_equivariant(layer, spec, in_channels=1, trials=2)
