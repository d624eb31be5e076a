"""nfncompile.frontend.rules.linear: dense layers, shared modules."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import nfncompile as nfc
from nfncompile.frontend.tracing import trace_with_report
from nfncompile.spec import Inner
from nfncompile.testing import assert_equivariant
from tests.frontend.helpers import TwoLinear, model_, spaces_, x_


class Tied(nn.Module):
    """The same Linear applied twice: its input and output neurons are one space."""

    def __init__(self) -> None:
        super().__init__()
        self.inp, self.shared, self.out = nn.Linear(3, 5), nn.Linear(5, 5), nn.Linear(5, 2)

    def forward(self, x):
        h = torch.relu(self.inp(x))
        return self.out(self.shared(torch.tanh(self.shared(h))))


def test_module_called_twice_ties_its_spaces():
    spec = nfc.trace(model_(Tied), x_(4, 3))
    assert spec["shared.weight"].axes == ("inp", "inp")
    assert spaces_(spec) == [("in", 3, "input"), ("inp", 5, "hidden"), ("out", 2, "output")]


class Mixer(nn.Module):
    """An MLP-Mixer block: a token-mixing MLP over the 16 patch positions, then a channel MLP."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 2, stride=2)
        self.token1, self.token2 = nn.Linear(16, 12), nn.Linear(12, 16)
        self.ch1, self.ch2 = nn.Linear(8, 16), nn.Linear(16, 8)
        self.fc = nn.Linear(8, 2)

    def forward(self, x):
        x = self.stem(x).flatten(2).transpose(1, 2)  # (B, 16 positions, 8 channels)
        t = self.token2(torch.nn.functional.gelu(self.token1(x.transpose(1, 2))))
        x = x + t.transpose(1, 2)
        x = x + self.ch2(torch.nn.functional.gelu(self.ch1(x)))
        return self.fc(x.mean(1))


def test_a_token_mixing_mlp_reads_positions_which_stay_fixed():
    spec, report = nfc.trace_with_report(model_(Mixer), x_(2, 3, 8, 8))
    # the token MLP's hidden units permute; its 16 outputs are added onto positions: fixed
    assert spaces_(spec) == [("in", 3, "input"), ("stem", 8, "hidden"), ("token1", 12, "hidden"),
                             ("ch1", 16, "hidden"), ("out", 2, "output")]  # fmt: skip
    assert spec["token1.weight"].axes == ("token1", None)
    assert spec["token2.weight"].axes == (None, "token1")
    (b,) = report.broken
    assert b.reason == "combined elementwise with a tensor that depends on position"
    assert b.neurons == ["token2"] and b.count == 16
    assert report.verification.ok


class Conv1D(nn.Module):
    """Hugging Face's GPT-2 ``Conv1D``: a dense layer as ``torch.addmm(bias, x, weight)``, its
    weight stored ``(in, out)``."""

    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n_in, n_out))
        self.bias = nn.Parameter(torch.randn(n_out))

    def forward(self, x):
        return torch.addmm(self.bias, x, self.weight)


class AddmmMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc, self.proj = Conv1D(4, 6), Conv1D(5, 3)
        self.gw, self.gb = nn.Parameter(torch.randn(1, 6, 5)), nn.Parameter(torch.randn(5))

    def forward(self, x):
        h = torch.relu(self.fc(x))
        w = self.gw.expand(h.shape[0], 6, 5)
        g = torch.baddbmm(self.gb, h[:, None, :], w, beta=0.5, alpha=2.0)[:, 0, :]
        return self.proj.bias.addmm(torch.tanh(g), self.proj.weight)  # the method form


def test_addmm_and_baddbmm_are_a_matmul_added_to_their_input():
    # without a rule each was probed as one call, found not equivariant (its weight moves
    # with the neurons, which the probe does not move), and fixed every space; the output
    # neurons are the weight's axis, named after its module
    model = model_(AddmmMLP)
    spec, report = nfc.trace_with_report(model, x_(3, 4))
    assert spaces_(spec) == [
        ("in", 4, "input"), ("fc", 6, "hidden"), ("gw", 5, "hidden"), ("out", 3, "output"),
    ]  # fmt: skip
    assert spec["fc.weight"].axes == ("in", "fc") and spec["fc.bias"].axes == ("fc",)
    assert spec["gw"].axes == (None, "fc", "gw") and spec["gb"].axes == ("gw",)
    assert spec["proj.weight"].axes == ("gw", "out")
    assert not report.broken and not report.probes and report.verification.ok


class EinsumMLP(nn.Module):
    """Two dense layers written as einsums (``equation`` for the first; weights as parameters)."""

    def __init__(self, equation: str) -> None:
        super().__init__()
        self.equation = equation
        self.w1, self.w2 = nn.Parameter(torch.randn(6, 4)), nn.Parameter(torch.randn(3, 6))

    def forward(self, x):
        h = torch.relu(torch.einsum(self.equation, x, self.w1))
        return torch.einsum("b h, o h -> b o", h, self.w2)


@pytest.mark.parametrize("equation", ["bi,oi->bo", "...i,oi->...o", "bi,oi", "B i, o i -> B o"])
def test_einsum_ties_each_index_letters_dims(equation):
    spec, report = trace_with_report(model_(lambda: EinsumMLP(equation)), x_(3, 4))
    hidden = spec["w1"].axes[0]
    assert spec["w1"].axes == (hidden, "in") and spec["w2"].axes == ("out", hidden)
    assert spec.spaces[hidden].role == "hidden"
    assert not report.probes and not report.broken and report.verification.ok


class EinsumAttention(nn.Module):
    """Attention as lucidrains' vit-pytorch writes it: heads split by a reshape, scores and
    values by einsum (the letter summed over ties queries' dims with keys')."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv, self.out, self.head = nn.Linear(8, 3 * 8), nn.Linear(8, 8), nn.Linear(8, 2)

    def forward(self, x):  # (batch, features, tokens): the input's features on dim 1
        x = x.transpose(1, 2)
        b, n, _ = x.shape
        q, k, v = (t.reshape(b, n, 2, 4).transpose(1, 2) for t in self.qkv(x).chunk(3, -1))
        attn = torch.einsum("b h i d, b h j d -> b h i j", q, k).softmax(-1)
        y = torch.einsum("b h i j, b h j d -> b h i d", attn, v).transpose(1, 2).reshape(b, n, 8)
        return self.head((x + self.out(y)).mean(1))


def test_einsum_attention_ties_queries_with_keys():
    spec, report = trace_with_report(model_(EinsumAttention), x_(2, 8, 5))
    assert not report.probes and report.verification.ok
    # each head's query and key dims one space (a reshape splits the heads), its values
    # another; the heads move together: each of the two a block space of one block per head
    axes = spec["qkv.weight"].axes[0]
    assert axes == ("qkv/0", "qkv/0", "qkv/1")
    qk, v = (spec.spaces[name] for name in axes[1:])
    assert qk.blocks == v.blocks and spec.blocks[v.blocks].count == 2
    layer = nfc.NFLinear(spec, 1, 1, basis="linear").double()
    assert_equivariant(layer, spec, in_channels=1, trials=2)


def test_einsum_with_position_dependent_operand_fixes_its_partners():
    class Fixed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(4, 6), nn.Linear(6, 2)
            self.mix = torch.randn(6, 6)  # no state: a constant of the graph

        def forward(self, x):
            return self.b(torch.einsum("bi,ij->bj", self.a(x), self.mix))

    spec, report = trace_with_report(model_(Fixed), x_(3, 4))
    assert spec["a.weight"].axes[0] is None and spec["b.weight"].axes[1] is None
    assert any("einsum" in b.op for b in report.broken) and report.verification.ok


class Keywords(nn.Module):
    """Functional layers called with every argument by keyword (the official Swin-V2 calls
    ``F.linear(input=x, weight=self.qkv.weight, bias=qkv_bias)``)."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 6), nn.Linear(6, 2)

    def forward(self, x):
        h = torch.relu(torch.nn.functional.linear(input=x, weight=self.a.weight, bias=self.a.bias))
        return torch.matmul(input=h, other=self.b.weight.t()) + self.b.bias


def test_arguments_given_by_keyword_are_read_as_positional_ones():
    # the rules read the input by position: an IndexError, raised as a TraceError, before
    spec, report = trace_with_report(model_(Keywords), x_(3, 4))
    assert spec["a.weight"].axes == ("a", "in") and spec["b.weight"].axes == ("out", "a")
    assert not report.broken and report.verification.ok


class _FlatProduct(nn.Module):
    """Features ``(B, 4, 3)`` of a hidden layer's neurons and 3 fixed positions, flattened,
    against a weight ``(2, 4, 3)`` viewed ``(2, 12)`` (a KAN's spline weight)."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.a = nn.Linear(5, 4)
        self.w = nn.Parameter(torch.randn(2, 4, 3))

    def forward(self, x):
        h = torch.relu(self.a(x)).unsqueeze(-1) * torch.tensor([1.0, 2.0, 3.0])
        flat = h.flatten(1)
        if self.how == "F.linear":
            return torch.nn.functional.linear(flat, self.w.view(2, -1))
        return flat @ self.w.view(2, -1).t()


@pytest.mark.parametrize("how", ["F.linear", "matmul"])
def test_flattened_products_are_contracted_factor_by_factor(how):
    # F.linear and matmul fixed a flattened product: every hidden neuron of the KAN layer
    spec, report = trace_with_report(model_(lambda: _FlatProduct(how)), x_(3, 5))
    assert spec["a.weight"].axes == ("a", "in") and spec["w"].axes == ("out", "a", None)
    # the weight's last axis meets the 3 positions
    assert report.verification.ok and [b.neurons for b in report.broken] == [["w.d2"]]


class _Codebook(nn.Module):
    """VQ-VAE-2's quantiser (rosinality/vq-vae-2-pytorch): the nearest code's vector looked up
    with ``F.embedding`` from the codebook's transpose, passed straight through."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 4, 1), nn.Conv2d(4, 2, 1)
        self.register_buffer("embed", torch.randn(4, 6))  # (dim, codes)

    def forward(self, x):
        h = self.a(x).permute(0, 2, 3, 1)
        flat = h.reshape(-1, 4)
        dist = flat.pow(2).sum(1, keepdim=True) - 2 * flat @ self.embed + self.embed.pow(2).sum(0)
        codes = (-dist).max(1)[1].view(*h.shape[:-1])
        q = torch.nn.functional.embedding(codes, self.embed.transpose(0, 1))
        return self.b((h + (q - h).detach()).permute(0, 3, 1, 2))


def test_f_embedding_reads_rows_and_keeps_the_features():
    # no rule: probed with float ids, it raised, and the codebook's features, and with them
    # the convs' channels that meet them, were fixed
    spec, report = trace_with_report(model_(_Codebook), x_(1, 3, 4, 4))
    assert spec["a.weight"].axes[0] == "a" == spec["embed"].axes[0]
    assert report.verification.ok and not report.probes


class _Distances(nn.Module):
    """Codebook distances written with ``torch.cdist`` (lucidrains' SimVQ and VQ code)."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(3, 4), nn.Linear(5, 2)
        self.codes = nn.Parameter(torch.randn(5, 4))  # as many codes as rows: (5, 5) distances

    def forward(self, x):
        return self.b(torch.cdist(torch.relu(self.a(x)), self.codes))


def test_cdist_ties_the_features_it_compares():
    # no rule: the probe cannot tell the two output dims of one size apart, and failed
    spec, report = trace_with_report(model_(_Distances), x_(5, 3))
    assert spec["a.weight"].axes == ("a", "in") and spec["codes"].axes[1] == "a"
    assert report.verification.ok and not report.probes


class _DLRM(nn.Module):
    """DLRM's pattern: a bottom MLP's features and bags of embedding rows share their width
    (a pairwise dot interaction reads them together), the bottom features also go on."""

    def __init__(self, d: int = 4) -> None:
        super().__init__()
        self.bot = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, d), nn.ReLU())
        self.embs = nn.ModuleList([nn.EmbeddingBag(10, d, mode=m) for m in ("sum", "max")])
        self.top = nn.Sequential(nn.Linear(d + 3, 8), nn.ReLU(), nn.Linear(8, 1))

    def forward(self, dense, ids, offsets):
        x = self.bot(dense)
        bags = [e(ids[k], offsets[k]) for k, e in enumerate(self.embs)]
        t = torch.cat([x, *bags], dim=1).view(x.shape[0], -1, x.shape[1])
        z = torch.bmm(t, t.transpose(1, 2))
        rows, cols = torch.tril_indices(3, 3, offset=-1)
        return self.top(torch.cat([x, z[:, rows, cols]], dim=1))


def test_embedding_bags_share_their_features_with_what_they_meet():
    # before: F.embedding_bag had no rule and could not be probed (integer ids): its tables'
    # features were fixed, and through the interaction the bottom MLP's output too
    ids = torch.randint(0, 10, (2, 4), generator=torch.Generator().manual_seed(0))
    offsets = torch.tensor([[0, 2], [0, 1]])
    spec, report = trace_with_report(model_(_DLRM), (x_(2, 6), ids, offsets))
    assert report.verification.ok and not report.probes
    d = spec["bot.2.weight"].axes[0]
    assert spec.spaces[d].size == 4 and spec["top.0.weight"].axes[1] == (d, 3)
    assert spec["embs.0.weight"].axes == spec["embs.1.weight"].axes == (None, d)
    assert_equivariant(nfc.NFLinear(spec, 1, 2).double(), spec, trials=2)


class _Bilinear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.c = nn.Linear(3, 4), nn.Linear(3, 5)
        self.bl, self.out = nn.Bilinear(4, 5, 6), nn.Linear(6, 2)

    def forward(self, x):
        return self.out(torch.relu(self.bl(torch.relu(self.a(x)), torch.relu(self.c(x)))))


def test_bilinear_reads_each_input_on_its_own_weight_axis():
    # before: no rule, probed: its output space was named after its weight's axis
    spec, report = trace_with_report(model_(_Bilinear), x_(2, 3))
    assert report.verification.ok and not report.probes and not report.broken
    assert spec["bl.weight"].axes == ("bl", "a", "c") and spec["bl.bias"].axes == ("bl",)
    assert_equivariant(nfc.NFLinear(spec, 1, 2).double(), spec, trials=2)


class _FlattenedTokens(nn.Module):
    """iTransformer's and DLinear's classification heads: one token of ``hidden`` features per
    input variable, flattened and read by one Linear."""

    def __init__(self, time: int = 6, variables: int = 4, hidden: int = 8) -> None:
        super().__init__()
        self.emb, self.head = nn.Linear(time, hidden), nn.Linear(variables * hidden, 3)

    def forward(self, x):  # (batch, time, variables)
        h = torch.relu(self.emb(x.permute(0, 2, 1)))  # (batch, variables, hidden)
        return self.head(h.reshape(h.shape[0], -1))


def test_a_linear_over_flattened_neuron_axes_views_its_weight_per_factor():
    # before: "Linear head reads a flattened product of neuron axes", the hidden 8 fixed
    spec, report = trace_with_report(model_(_FlattenedTokens), x_(2, 6, 4), channel_dim=-1)
    assert report.verification.ok and not report.broken
    head = spec["head.weight"]
    assert head.view == (3, 4, 8) and head.axes == ("out", "in", "emb")
    for basis in ("linear", "complete"):
        layer = nfc.NFLinear(spec, 1, 2, basis=basis).double()
        assert_equivariant(layer, spec, in_channels=1, trials=2)


class VectorProducts(TwoLinear):
    """``h @ v`` (a column) and ``h.mean(0) @ w`` (a row) with 1-D operands."""

    def __init__(self) -> None:
        super().__init__()
        self.v, self.w = nn.Parameter(torch.randn(6)), nn.Parameter(torch.randn(6, 3))

    def forward(self, x):
        h = torch.relu(self.a(x))
        return self.b(h) * (h @ self.v)[:, None] + torch.matmul(h.mean(0), self.w)


def test_matmul_with_a_1d_operand_contracts_it():
    # before: "matmul with a 1-D operand" fixed a's neurons and every axis it met
    spec, report = trace_with_report(model_(VectorProducts), x_(5, 4))
    assert report.verification.ok and not report.broken
    a = spec["a.weight"].axes[0]
    assert a == spec["v"].axes[0] == spec["w"].axes[0] == spec["b.weight"].axes[1]
    assert spec["w"].axes[1] == spec["b.weight"].axes[0] == "out"


class GroupedExperts(nn.Module):
    """Top-1 experts run by ``F.grouped_mm``: tokens sorted by expert, cut at ``offs``, each
    group times its expert's ``(E, out, in)`` weight, transposed (``batched``: every expert on
    every token, a 3-D by 3-D grouped product)."""

    def __init__(self, batched: bool) -> None:
        super().__init__()
        self.batched = batched
        self.inp, self.router, self.out = nn.Linear(5, 8), nn.Linear(8, 3), nn.Linear(8, 2)
        self.w1 = nn.Parameter(torch.randn(3, 16, 8) / 8**0.5)
        self.w2 = nn.Parameter(torch.randn(3, 8, 16) / 4)

    def forward(self, x):
        h = self.inp(x)
        gate = self.router(h).softmax(-1)
        if self.batched:  # (E, N, 8) @ (E, 8, 16): the experts' dim is a batch dim
            y = F.grouped_mm(h.expand(3, -1, -1).contiguous(), self.w1.transpose(-2, -1))
            y = F.grouped_mm(y.relu(), self.w2.transpose(-2, -1))
            return self.out(h + (gate.T[..., None] * y).sum(0))
        index = gate.argmax(-1)
        order = index.argsort()
        offs = torch.bincount(index, minlength=3).cumsum(0).to(torch.int32)
        y = F.grouped_mm(h[order], self.w1.transpose(-2, -1), offs=offs).relu()
        y = F.grouped_mm(y, self.w2.transpose(-2, -1), offs=offs)
        return self.out(h + torch.zeros_like(h).index_copy(0, order, y))


@pytest.mark.skipif(not hasattr(F, "grouped_mm"), reason="torch without F.grouped_mm")
@pytest.mark.parametrize("batched", [False, True])
def test_grouped_mm_ties_contracted_axes_and_keeps_its_weights_columns(batched):
    # grouped_mm runs in float32 only on the CPU: the model stays float32, and verification
    # checks it there. Before: probed, and the residual stream and hidden units fixed
    torch.manual_seed(0)
    model = GroupedExperts(batched)
    spec, report = trace_with_report(model, torch.randn(7, 5))
    assert report.verification.ok and not report.probes
    if batched:
        # every expert on every token, weighted by the gate: the experts move with the
        # router's outputs, each expert's 16 hidden units on their own (stacked weights,
        # frontend.stacked). Before: the experts stayed and shared one permutation
        inner = Inner("w1", 0)
        assert spec["w1"].axes == ("w1.head", inner, "inp")
        assert spec["w2"].axes == ("w1.head", "inp", inner)
        assert spec["router.weight"].axes == ("w1.head", "inp")
        assert spec.block_shape("w1") == (3, 16)
    else:
        # each expert's 16 hidden units on their own (a row's columns are its group's
        # expert's), the experts fixed blocks: the routing reads their positions, and
        # grouped_mm meets its groups of rows with the weight's matrices by position. Before:
        # one permutation for every expert's units
        heads, inner = spec["w1"].axes[0], Inner("w1", 0)
        assert spec["w1"].axes == (heads, inner, "inp")
        assert spec["w2"].axes == (heads, "inp", inner)
        assert spec.block_shape("w1") == (3, 16)
        assert spec.blocks[spec.spaces["w1"].blocks].fixed
        assert spec["router.weight"].axes == (None, "inp")
    assert_equivariant(nfc.NFLinear(spec, 1, 2).double(), spec, trials=2)


class DoRA(nn.Module):
    """A DoRA-adapted layer as peft writes it: the adapter's weight read off by applying it to
    an identity (``lora_B(lora_A(eye)).T``), the adapted weight's row norms rescaling the
    output to a learned magnitude. ``eye``: the constant the adapter is applied to."""

    def __init__(self, eye: str = "identity") -> None:
        super().__init__()
        self.eye = eye
        self.pre, self.base, self.post = nn.Linear(3, 4), nn.Linear(4, 6), nn.Linear(6, 2)
        self.lora_a = nn.Linear(4, 2, bias=False)
        self.lora_b = nn.Linear(2, 6, bias=False)
        self.magnitude = nn.Parameter(torch.linspace(0.5, 1.5, 6))

    def forward(self, x):
        h = torch.relu(self.pre(x))
        if self.eye == "identity":
            eye = torch.eye(4)
        elif self.eye == "scaled identity plus a constant":
            eye = 2 * torch.eye(4) + 0.5
        else:  # a lower-triangular constant: its rows are positions
            eye = torch.tril(torch.ones(4, 4))
        lora = self.lora_b(self.lora_a(eye)).T
        norm = torch.linalg.norm(self.base.weight + lora, dim=1).detach()
        y = (self.magnitude / norm) * (self.base(h) + self.lora_b(self.lora_a(h)))
        return self.post(torch.relu(y))


@pytest.mark.parametrize("eye", ["identity", "scaled identity plus a constant", "triangular"])
def test_a_layer_applied_to_an_identity_keeps_its_input_neurons_free(eye):
    # an identity was a constant of positions: the adapter's input axis met it, and `pre`'s
    # neurons were fixed (peft's DoRA kept only its base model's other spaces)
    spec, report = trace_with_report(model_(lambda: DoRA(eye)), x_(5, 3))
    assert report.verification.ok and not report.probes
    pre = spec["pre.weight"].axes[0]
    assert pre == ("pre" if eye != "triangular" else None)
    assert spec["lora_a.weight"].axes[1] == spec["base.weight"].axes[1] == pre
    assert spec["lora_b.weight"].axes[0] == spec["base.weight"].axes[0] is not None
    layer = nfc.NFLinear(spec, 1, 1, basis="linear").double()
    assert_equivariant(layer, spec, in_channels=1, trials=2)


class Landmarks(nn.Module):
    """Nystromformer's attention: the pseudo-inverse of its landmarks' attention by the
    Moore-Penrose iteration, an identity over the landmark positions (``7 * I - xz``)."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv, self.out = nn.Linear(4, 12), nn.Linear(4, 2)

    def forward(self, x):
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        ql, kl = q.view(2, 3, 2, 4).mean(2), k.view(2, 3, 2, 4).mean(2)  # 3 landmarks
        a2 = (ql @ kl.transpose(-1, -2)).softmax(-1)
        z = a2.transpose(-1, -2) / a2.abs().sum(-1).amax()
        eye = torch.eye(3)
        for _ in range(2):
            xz = a2 @ z
            z = 0.25 * z @ (13 * eye - xz @ (15 * eye - xz @ (7 * eye - xz)))
        y = (
            (q @ kl.transpose(-1, -2)).softmax(-1)
            @ z
            @ ((ql @ k.transpose(-1, -2)).softmax(-1) @ v)
        )
        return self.out(y)


def test_an_identity_meeting_positions_breaks_no_symmetry():
    # the identity's run was a run of neurons: where it met the landmark positions, each
    # iteration was listed as a broken record that fixed no neuron (18 in Nystromformer)
    spec, report = trace_with_report(model_(Landmarks), x_(2, 6, 4), channel_dim=-1)
    assert report.verification.ok and not report.probes
    assert not report.broken, report.broken
    assert spec["out.weight"].axes[1] is not None  # the values' features stay free


class ConvDoRA(nn.Module):
    """peft's DoRA on a convolution: the adapter's weight is ``lora_B.weight @
    lora_A.weight.flatten(1)`` reshaped to the conv's weight, whose norm over everything but
    its output channels rescales the output."""

    def __init__(self) -> None:
        super().__init__()
        self.pre, self.base, self.post = nn.Conv2d(3, 4, 1), nn.Conv2d(4, 6, 3), nn.Linear(6, 2)
        self.lora_a = nn.Conv2d(4, 2, 3, bias=False)
        self.lora_b = nn.Conv2d(2, 6, 1, bias=False)
        self.magnitude = nn.Parameter(torch.linspace(0.5, 1.5, 6)[None, :, None, None])

    def forward(self, x):
        h = torch.relu(self.pre(x))
        w = self.base.weight
        lora = torch.mm(self.lora_b.weight.flatten(1), self.lora_a.weight.flatten(1))
        norm = (w + lora.reshape(w.shape)).norm(p=2, dim=(1, 2, 3), keepdim=True)
        y = self.magnitude / norm.transpose(1, 0) * (self.base(h) + self.lora_b(self.lora_a(h)))
        return self.post(torch.relu(y).mean((2, 3)))


def test_a_matmul_carries_a_flattened_product_of_columns():
    # the columns of lora_B.weight @ lora_A.weight.flatten(1), (pre's channels x taps), were
    # fixed by torch.mm, and with them pre's channels
    spec, report = trace_with_report(model_(ConvDoRA), x_(2, 3, 6, 6))
    assert report.verification.ok and not report.probes
    pre = spec["pre.weight"].axes[0]
    assert pre == "pre" and spec["lora_a.weight"].axes[1] == spec["base.weight"].axes[1] == pre
    assert spec["base.weight"].axes[0] == spec["lora_b.weight"].axes[0] is not None
    layer = nfc.NFLinear(spec, 1, 1, basis="linear").double()
    assert_equivariant(layer, spec, in_channels=1, trials=2)


class TensorDot(nn.Module):
    """Layers written with ``torch.tensordot`` (e3nn's tensor products contract this way): a
    weight contracted against the features by an int or by lists of dims, and two dims at
    once (each sample's outer product against a bilinear weight)."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how, self.a, self.b = how, nn.Linear(3, 4), nn.Linear(5, 2)
        self.w = nn.Parameter(torch.randn(4, 5) / 2)
        self.bilinear = nn.Parameter(torch.randn(4, 4, 5) / 4)

    def forward(self, x):
        h = torch.relu(self.a(x))
        if self.how == "int":
            h = torch.tensordot(h, self.w, 1)
        elif self.how == "lists":
            h = torch.tensordot(self.w, h, dims=([0], [1])).T
        else:
            h = torch.tensordot(h[:, :, None] * h[:, None, :], self.bilinear, dims=([1, 2], [0, 1]))
        return self.b(torch.relu(h))


@pytest.mark.parametrize("how", ["int", "lists", "two dims"])
def test_tensordot_is_read_as_the_einsum_it_is(how):
    # torch.tensordot had no rule: each call was probed (e3nn's failed their probes, which
    # fixed the neurons they read)
    spec, report = trace_with_report(model_(lambda: TensorDot(how)), x_(5, 3))
    assert report.verification.ok and not report.probes and not report.broken
    weight = spec["w" if how != "two dims" else "bilinear"].axes
    assert weight[0] == spec["a.weight"].axes[0] == "a" and weight[-1] == spec["b.weight"].axes[1]
    layer = nfc.NFLinear(spec, 1, 1, basis="linear").double()
    assert_equivariant(layer, spec, in_channels=1, trials=2)


class BinnedEmbedding(nn.Module):
    """Each of a layer's outputs binned into an id (``bucketize``, as binned features and
    spline grids do, or a threshold) and embedded, then read by a linear layer: an id is read
    on its own, so the ids' dims are the embedding's output dims."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how, self.a, self.b = how, nn.Linear(3, 6), nn.Linear(6 * 4, 2)
        self.emb = nn.Embedding(6, 4)
        self.register_buffer("edges", torch.linspace(-1.0, 1.0, 5))

    def forward(self, x):
        h = self.a(x)
        ids = torch.bucketize(h, self.edges) if self.how != "threshold" else (h > 0).long()
        e = self.emb(ids) if self.how != "functional" else F.embedding(ids, self.emb.weight)
        return self.b(e.flatten(1))


@pytest.mark.parametrize("how", ["bucketize", "threshold", "functional"])
def test_ids_computed_from_neurons_keep_their_dims_in_the_embedding(how):
    # nn.Embedding dropped the ids' labels without fixing them (the derived symmetry failed
    # verification: SymmetryError); F.embedding fixed them; bucketize had no rule
    spec, report = trace_with_report(model_(lambda: BinnedEmbedding(how)), x_(5, 3))
    assert report.verification.ok and not report.probes
    emb = spec["emb.weight"].axes
    assert spec["b.weight"].axes == ("out", "a", emb[1]) and emb[0] is None and emb[1]
    if how == "bucketize":
        assert spec["edges"].axes == (None,)
    layer = nfc.NFLinear(spec, 1, 1, basis="linear").double()
    assert_equivariant(layer, spec, in_channels=1, trials=2)


class _EinsumMoE(nn.Module):
    """GShard's and DeepSpeed-MoE's mixture of experts: a top-1 gate, tokens dispatched to
    ``(experts, capacity, d)`` buffers by ``einsum`` with a one-hot mask, each expert a module of
    its own run on its chunk of the experts dim (DeepSpeed's ``Experts``), combined by
    ``einsum`` with the gate's weights."""

    def __init__(self, experts: int = 3, capacity: int = 8) -> None:
        super().__init__()
        self.e, self.c = experts, capacity
        self.inp, self.gate, self.out = nn.Linear(5, 6), nn.Linear(6, experts), nn.Linear(6, 2)
        self.experts = nn.ModuleList(
            nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 6)) for _ in range(experts)
        )

    def forward(self, x):
        h = self.inp(x)
        logits = self.gate(h)
        mask = F.one_hot(logits.argmax(-1), self.e).to(h.dtype)
        slot = torch.cumsum(mask, 0) - 1
        mask = mask * (slot < self.c)
        slot = F.one_hot((slot * mask).sum(-1).long(), self.c).to(h.dtype)
        combine = (logits.softmax(-1) * mask)[:, :, None] * slot[:, None, :]
        buffers = torch.einsum("sec,sm->ecm", (combine > 0).to(h.dtype), h)
        chunks = buffers.chunk(self.e, dim=0)
        out = torch.cat([f(c) for c, f in zip(chunks, self.experts)], dim=0)
        return self.out(h + torch.einsum("sec,ecm->sm", combine, out))


def test_a_module_of_its_own_on_each_experts_chunk_fixes_the_experts():
    # before: the gate's outputs (the experts dim, chunked into one expert each) were a free
    # space, and the verification failed: moving them hands each chunk to another expert
    model, x = model_(lambda: _EinsumMoE().double()), x_(16, 5).double()
    spec, report = trace_with_report(model, x)
    assert report.verification.ok
    assert spec["gate.weight"].axes == (None, "inp")
    for e in range(3):  # each expert's hidden units a space of their own
        assert spec[f"experts.{e}.0.weight"].axes == (f"experts.{e}.0", "inp")
        assert spec[f"experts.{e}.2.weight"].axes == ("inp", f"experts.{e}.0")
    assert "runs on one of these neurons alone" in str(report)


def test_a_sparse_constant_times_a_weight_keeps_its_columns():
    # RecBole's LightGCN: torch.sparse.mm(norm_adj, embeddings) with the adjacency a plain
    # sparse attribute; before, reading the constant crashed (as_strided on SparseCPU)
    class Propagate(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(5, 4)
            i = torch.tensor([[0, 1, 2, 3, 4, 0], [1, 0, 3, 2, 0, 4]])
            self.adj = torch.sparse_coo_tensor(
                i, torch.full((6,), 0.5), (5, 5), check_invariants=True
            ).coalesce()
            self.out = nn.Linear(4, 1)

        def forward(self, idx):
            e = torch.sparse.mm(self.adj, self.emb.weight)
            e = torch.sparse.addmm(e, self.adj, e)
            return self.out(torch.relu(e[idx]))

    spec, report = trace_with_report(model_(Propagate), torch.tensor([1, 3]))
    assert spec.spaces["emb"].size == 4 and spec["emb.weight"].axes == (None, "emb")
    assert report.verification.ok
