"""Parity with the paper (Zhou et al., "Permutation Equivariant Neural Functionals") and with the
reference ``nfn`` package (0.1.2).

* Free-parameter counts of NFLinear equal the NP / HNP layer counts, derived here in closed form
  for sequential nets (MLPs, and CNNs whose kernel dims fold into channels).
* Our NP layer reproduces ``nfn.layers.NPLinear`` exactly and our HNP layer reproduces
  ``nfn.layers.HNPLinear`` exactly (least squares over our parameters, residual ~ 0). ``HNPLinear``
  is incomplete (DESIGN.md section 5), so the HNP parity is one-directional.
"""

from __future__ import annotations

import pytest
import torch

from nfncompile.backend.basis import num_basis_dims
from nfncompile.nn import NFLinear
from nfncompile.spec import WeightSpaceSpec
from tests.backend.specs import make_spec, mlp_spec

# importing nfn (through einops' torch layers) triggers torch.jit deprecation warnings
pytestmark = pytest.mark.filterwarnings(
    "ignore:`torch.jit.script(_method)?` is deprecated:DeprecationWarning"
)


def cnn_spec(channels: tuple, n_out: int, kernel: int = 3) -> WeightSpaceSpec:
    """The Small-CNN-Zoo shape: convs (kernel x kernel), global average pool, one linear."""
    names = ["in"] + [f"c{i}" for i in range(1, len(channels))]
    spaces = {"in": (channels[0], "input"), "out": (n_out, "output")}
    params = {}
    for i in range(1, len(channels)):
        spaces[names[i]] = (channels[i], "hidden")
        params[f"conv{i}.weight"] = {
            "shape": [channels[i], channels[i - 1], kernel, kernel],
            "axes": [names[i], names[i - 1], None, None],
        }
        params[f"conv{i}.bias"] = {"shape": [channels[i]], "axes": [names[i]]}
    params["fc.weight"] = {"shape": [n_out, channels[-1]], "axes": ["out", names[-1]]}
    params["fc.bias"] = {"shape": [n_out], "axes": ["out"]}
    order = ["in", *names[1:], "out"]
    return make_spec({k: spaces[k] for k in order}, params)


# ---- closed-form layer sizes ---------------------------------------------------------------------


def paper_layer_params(
    kernels: list, n_in: int, n_out: int, mode: str, c_in: int, c_out: int
) -> int:
    """Free parameters of the NP / HNP layer of a sequential net with L = len(kernels) layers,
    weights W_i (n_i x n_{i-1} x kernel positions k_i) and biases b_i.

    Each (P, Q) pair has 2^k terms, k = number of permutable spaces both index (one axis each),
    times the fixed positions F(P) F(Q) folded into channels. Writing 2^k - 1 = k + [k = 2]:

        linear = (sum_P F_P)^2 + sum_s S_s^2 + sum_{W_i: both spaces permutable} F(W_i)^2,

    with S_s = sum of F_P over the params that index space s. That is O(L^2) for NP and
    O((L + n_in + n_out)^2) for HNP (where W_1, W_L and b_L carry the n_in / n_out positions).
    """
    L = len(kernels)
    hnp = mode == "hnp"
    f_w = [k for k in kernels]
    f_b = [1] * L
    if hnp:
        f_w[0] *= n_in
        f_w[-1] *= n_out
        f_b[-1] *= n_out
    total_f = sum(f_w) + sum(f_b)
    spaces = range(1, L) if hnp else range(L + 1)
    s_sq = 0
    for s in spaces:
        s_total = 0
        if s >= 1:
            s_total += f_w[s - 1] + f_b[s - 1]  # W_s and b_s index s as rows
        if s < L:
            s_total += f_w[s]  # W_{s+1} indexes s as columns
        s_sq += s_total**2
    both = [f_w[i - 1] ** 2 for i in range(1, L + 1) if (not hnp or 2 <= i <= L - 1)]
    linear = total_f**2 + s_sq + sum(both)
    return linear * c_in * c_out + total_f * c_out


def test_closed_form_mlp_np_is_4l2():
    for L in range(1, 7):
        assert paper_layer_params([1] * L, 5, 5, "np", 1, 1) == 4 * L * L + 12 * L - 4


@pytest.mark.parametrize("mode", ["np", "hnp"])
@pytest.mark.parametrize("widths", [(2, 3, 3, 2), (4, 5, 6, 7, 3), (3, 5, 2), (784, 128, 128, 10)])
def test_param_count_mlp(widths, mode):
    spec = mlp_spec(widths)
    kernels = [1] * (len(widths) - 1)
    want = paper_layer_params(kernels, widths[0], widths[-1], mode, 3, 5)
    assert num_basis_dims(spec, mode, bias=True, in_channels=3, out_channels=5) == want
    if widths[0] < 100:
        assert NFLinear(spec, 3, 5, mode=mode).num_params == want


@pytest.mark.parametrize("n_in", [1, 3])
@pytest.mark.parametrize("mode", ["np", "hnp"])
def test_param_count_small_cnn_zoo(mode, n_in):
    """Small CNN Zoo: 3 convs 3x3 (n_in -> 16 -> 16 -> 16), global pool, linear 16 -> 10.

    The closed form assumes every permutable space has >= 2 neurons. The zoo's inputs are
    grayscale (n_in = 1): under NP a 1-neuron space admits one index class only, so the exact
    basis is smaller than the formula (the reference NPLinear then carries redundant terms).
    """
    spec = cnn_spec((n_in, 16, 16, 16), 10)
    want = paper_layer_params([9, 9, 9, 1], n_in, 10, mode, 2, 3)
    got = NFLinear(spec, 2, 3, mode=mode).num_params
    if mode == "np" and n_in == 1:
        assert got < want
    else:
        assert got == want


def test_mlp_2332_counts():
    spec = mlp_spec((2, 3, 3, 2))
    assert num_basis_dims(spec, "np", bias=True) == 68
    assert num_basis_dims(spec, "hnp", bias=True) == 123


# ---- parity with the nfn package -----------------------------------------------------------------


def to_nfn(spec: WeightSpaceSpec, feats: dict):
    from nfn.common import WeightSpaceFeatures as NfnFeatures

    weights = [feats[n] for n in spec.names if n.endswith("weight")]
    biases = [feats[n] for n in spec.names if n.endswith("bias")]
    return NfnFeatures(weights, biases)


def nfn_network_spec(spec: WeightSpaceSpec):
    from nfn.common import ArraySpec, NetworkSpec

    w = [ArraySpec(spec[n].shape) for n in spec.names if n.endswith("weight")]
    b = [ArraySpec(spec[n].shape) for n in spec.names if n.endswith("bias")]
    return NetworkSpec(w, b)


def design_matrix(layer: NFLinear, spec: WeightSpaceSpec, feats: dict) -> torch.Tensor:
    """Columns: the layer's flattened output for each unit parameter (it is linear in them)."""
    names = [n for n, _ in layer.named_parameters()]
    shapes = [p.shape for _, p in layer.named_parameters()]
    sizes = [p.numel() for _, p in layer.named_parameters()]

    def out(theta: torch.Tensor) -> torch.Tensor:
        params = {n: t.reshape(s) for n, t, s in zip(names, theta.split(sizes), shapes)}
        y = torch.func.functional_call(layer, params, (feats,))
        return torch.cat([y[n].flatten() for n in spec.names])

    theta = torch.zeros(sum(sizes), dtype=torch.float64)
    return torch.func.jacfwd(out)(theta)


def fit(layer: NFLinear, spec: WeightSpaceSpec, feats: dict, target: torch.Tensor) -> float:
    """Relative residual of the least-squares fit of ``layer``'s parameters to ``target``.

    Each output parameter depends on its own weights only, so the fit splits into one small
    least-squares problem per output parameter (rank-revealing driver: the samples need not
    determine every weight).
    """
    a = design_matrix(layer, spec, feats)
    batch = next(iter(feats.values())).shape[0]
    sizes = [batch * layer.out_channels * spec[n].numel for n in spec.names]
    sq = 0.0
    for rows_a, rows_t in zip(a.split(sizes), target.split(sizes)):
        cols = rows_a.abs().sum(0) > 0
        sub = rows_a[:, cols]
        sol = torch.linalg.lstsq(sub, rows_t.unsqueeze(1), driver="gelsd").solution
        sq += ((sub @ sol).squeeze(1) - rows_t).square().sum().item()
    return sq**0.5 / target.norm().item()


def nfn_design_rank(module: torch.nn.Module, spec: WeightSpaceSpec, feats: dict) -> int:
    """Rank of the reference layer's map parameters -> outputs (the dimension it spans)."""
    params = dict(module.named_parameters())
    names = list(params)
    sizes = [p.numel() for p in params.values()]
    shapes = [p.shape for p in params.values()]

    def out(theta: torch.Tensor) -> torch.Tensor:
        ps = {n: t.reshape(s) for n, t, s in zip(names, theta.split(sizes), shapes)}
        y = torch.func.functional_call(module, ps, (to_nfn(spec, feats),))
        return torch.cat([t.flatten() for w, b in y for t in (w, b)])

    theta = torch.cat([p.detach().flatten() for p in params.values()])
    return int(torch.linalg.matrix_rank(torch.func.jacfwd(out)(theta)))


def nfn_output(module, spec, feats) -> torch.Tensor:
    y = module(to_nfn(spec, feats))
    out = {}
    for i, (w, b) in enumerate(y):
        out[f"w{i}"], out[f"b{i}"] = w, b
    ordered = []
    wi = bi = 0
    for n in spec.names:
        if n.endswith("weight"):
            ordered.append(out[f"w{wi}"].flatten())
            wi += 1
        else:
            ordered.append(out[f"b{bi}"].flatten())
            bi += 1
    return torch.cat(ordered).detach()


def random_feats(spec: WeightSpaceSpec, channels: int, batch: int, seed: int) -> dict:
    gen = torch.Generator().manual_seed(seed)
    return {
        n: torch.randn((batch, channels, *spec[n].shape), generator=gen, dtype=torch.float64)
        for n in spec.names
    }


PARITY_SPECS = {
    "mlp": lambda: mlp_spec((2, 3, 3, 2)),
    "mlp_deep": lambda: mlp_spec((3, 4, 2, 4, 2)),
    "cnn": lambda: cnn_spec((1, 2, 2, 2), 2),
}


@pytest.mark.parametrize("name", sorted(PARITY_SPECS))
def test_reproduces_nplinear(name):
    layers = pytest.importorskip("nfn.layers")
    spec = PARITY_SPECS[name]()
    torch.manual_seed(0)
    channels = 1 if name == "cnn" else 2
    ref = layers.NPLinear(nfn_network_spec(spec), channels, channels).double()
    feats = random_feats(spec, channels, 6, seed=1)
    target = nfn_output(ref, spec, feats)
    ours = NFLinear(spec, channels, channels, mode="np").double()
    assert fit(ours, spec, feats, target) < 1e-10


@pytest.mark.parametrize("name", sorted(PARITY_SPECS))
def test_reproduces_hnplinear(name):
    layers = pytest.importorskip("nfn.layers")
    spec = PARITY_SPECS[name]()
    torch.manual_seed(0)
    channels = 1 if name == "cnn" else 2
    ref = layers.HNPLinear(nfn_network_spec(spec), channels, channels).double()
    feats = random_feats(spec, channels, 6, seed=2)
    target = nfn_output(ref, spec, feats)
    ours = NFLinear(spec, channels, channels, mode="hnp").double()
    assert fit(ours, spec, feats, target) < 1e-10
    # and not by accident: the NP layer cannot (HNP maps mix input/output neurons)
    np_layer = NFLinear(spec, channels, channels, mode="np").double()
    assert fit(np_layer, spec, feats, target) > 1e-3


def test_spanned_dimensions_2332():
    """NPLinear spans all 68 NP dimensions; HNPLinear only 121 of the 123 HNP ones; ours 123."""
    layers = pytest.importorskip("nfn.layers")
    spec = mlp_spec((2, 3, 3, 2))
    feats = random_feats(spec, 1, 40, seed=3)  # 40 >= 29 inputs: the samples pin every map
    torch.manual_seed(0)
    assert (
        nfn_design_rank(layers.NPLinear(nfn_network_spec(spec), 1, 1).double(), spec, feats) == 68
    )
    assert (
        nfn_design_rank(layers.HNPLinear(nfn_network_spec(spec), 1, 1).double(), spec, feats) == 121
    )
    for mode, want in (("np", 68), ("hnp", 123)):
        a = design_matrix(NFLinear(spec, 1, 1, mode=mode).double(), spec, feats)
        assert a.shape[1] == want and torch.linalg.matrix_rank(a) == want
