"""The fused tensor operations equal their straightforward compositions, forward and backward,
whatever the strides of their inputs (channels-last, channels-first views, batch 1), and small
tiles take the plain compositions (test_small_tiles_take_plain_ops)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from nfncompile.backend import fused
from nfncompile.backend.fused import channel_mix, mean, means, tile_sum


@pytest.fixture(autouse=True, scope="module")
def _fused_paths():
    """The tiles here are small: without this, every operation would take its plain
    composition (``fused.FUSE_MIN``), and these tests are about the fused paths."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(fused, "FUSE_MIN", 0)
        yield


def _layouts(gen: torch.Generator, b: int) -> dict:
    """A ``(b, 3, 4, 5)`` tile (5 channels) in the layouts the generated code hands over."""
    cl = torch.randn(b, 3, 4, 5, generator=gen, dtype=torch.float64)
    first = torch.randn(b, 5, 3, 4, generator=gen, dtype=torch.float64)
    outer = torch.randn(3, b, 4, 5, generator=gen, dtype=torch.float64)
    return {
        "channels_last": cl,
        "channels_first": first.permute(0, 2, 3, 1),  # a user's input tile, not copied
        "transposed": cl.transpose(1, 2).contiguous().transpose(1, 2),
        "batch_inner": outer.transpose(0, 1),
    }


def _grads(out: torch.Tensor, inputs: list, seed: torch.Tensor) -> tuple:
    return torch.autograd.grad(out, inputs, seed)


@pytest.mark.parametrize("b", [1, 2])
@pytest.mark.parametrize("dims", [(1,), (2,), (1, 2), (0, 2)])
@pytest.mark.parametrize("layout", ["channels_last", "channels_first", "transposed", "batch_inner"])
def test_mean_is_the_mean(layout, dims, b):
    gen = torch.Generator().manual_seed(0)
    x = _layouts(gen, b)[layout].requires_grad_()
    got, want = mean(x, dims), x.mean(dims)
    torch.testing.assert_close(got, want)
    seed = torch.randn(want.shape, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(_grads(got, [x], seed), _grads(want, [x], seed))


def test_mean_gradient_is_a_broadcast_view():
    """``mean``'s gradient is the output's divided by the count and expanded (stride 0 along
    the reduced dims, never a full-size tensor); dims in any order; twice differentiable; over
    no dims it is ``x`` itself, where ``torch.mean`` would average every dim."""
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(mean(x, (2, 0)), x, torch.ones(3, dtype=torch.float64))
    assert g.stride(0) == 0 and g.stride(2) == 0
    torch.testing.assert_close(g, torch.full_like(x, 1 / 8))
    assert torch.autograd.gradcheck(lambda t: mean(t, (2, 0)), (x,))
    assert torch.autograd.gradgradcheck(lambda t: mean(t, (1,)), (x,))
    assert mean(x, ()) is x


@pytest.fixture(params=["whole", "chunked", "chunked_gemv"])
def chunks(request, monkeypatch):
    """Large-tile reductions done whole, or in chunks of one slice (the path a large tile
    takes, forced here on small tiles), or in chunks with every outer-dim sum a matrix-vector
    product (``fused.GEMV_MIN``; the default keeps these small tiles on torch's sums)."""
    if request.param.startswith("chunked"):
        monkeypatch.setattr(fused, "CHUNK_MIN", 1)
        monkeypatch.setattr(fused, "CHUNK_BYTES", 64)
    if request.param == "chunked_gemv":
        monkeypatch.setattr(fused, "GEMV_MIN", 0)
    return request.param


@pytest.mark.parametrize("b", [1, 2])
@pytest.mark.parametrize("sets", [((1,), (2,)), ((2,), (1,), (1, 2)), ((0, 2), (1,))])
@pytest.mark.parametrize("layout", ["channels_last", "channels_first", "transposed", "batch_inner"])
def test_means_are_the_means(layout, sets, b, chunks):
    """``means`` (one pass for several means of a large tile) = each mean: values, and the
    gradient of x whichever of the means the loss reads."""
    gen = torch.Generator().manual_seed(5)
    x = _layouts(gen, b)[layout].requires_grad_()
    got, want = means(x, sets), [x.mean(dims) for dims in sets]
    assert len(got) == len(want)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)
    seeds = [torch.randn(w.shape, generator=gen, dtype=torch.float64) for w in want]
    torch.testing.assert_close(_grads(got, [x], seeds), _grads(want, [x], seeds))
    torch.testing.assert_close(_grads(got[-1], [x], seeds[-1]), _grads(want[-1], [x], seeds[-1]))
    if chunks != "whole":
        assert torch.autograd.gradcheck(lambda t: means(t, sets), (x,))


@pytest.mark.parametrize("b", [1, 2])
@pytest.mark.parametrize("layout", ["channels_last", "channels_first", "transposed", "batch_inner"])
def test_channel_mix_is_a_gemm(layout, b):
    gen = torch.Generator().manual_seed(1)
    x = _layouts(gen, b)[layout].requires_grad_()
    w = torch.randn(6, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    got, want = channel_mix(w, x), x @ w.t()
    torch.testing.assert_close(got, want)
    seed = torch.randn(want.shape, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(_grads(got, [x, w], seed), _grads(want, [x, w], seed))


def test_runs_read_as_their_entries():
    """A run ``(tuple, start, stop)`` in a variadic argument is its entries in order: the
    channel mix, stack, sum and mean of a run equal those of the entries named one by one."""
    gen = torch.Generator().manual_seed(3)
    parts = torch.randn(2, 3, 5, generator=gen, dtype=torch.float64).unbind(-1)
    x = torch.randn(2, 3, generator=gen, dtype=torch.float64)
    w = torch.randn(4, 5, generator=gen, dtype=torch.float64)
    named = [(parts, i) for i in range(1, 4)]
    run = (parts, 1, 4)
    assert [float(t.sum()) for t in fused._refs((x, run, (parts, 4)))] == [
        float(t.sum()) for t in (x, *parts[1:])
    ]
    cols = tuple(p.unsqueeze(-1) for p in parts)  # one channel each
    want = x.unsqueeze(-1) @ w[:, :1].t() + torch.stack(parts[1:], -1) @ w[:, 1:].t()
    torch.testing.assert_close(channel_mix(w, x.unsqueeze(-1), (cols, 1, 5)), want)
    torch.testing.assert_close(fused.total(run), fused.total(*named))
    torch.testing.assert_close(fused.average(x, run), fused.average(x, *named))
    torch.testing.assert_close(
        fused.stack_cat((run, ((parts, 0),))),
        fused.stack_cat(((named[0],), (named[1],), (named[2],), ((parts, 0),))),
    )
    rows = fused.stack_cat((run,))
    torch.testing.assert_close(rows, torch.stack(parts[1:4], 0))
    mixed = channel_mix(w[:, :3], (cols, 1, 4))  # a run as the mix's only argument
    torch.testing.assert_close(mixed, torch.stack(parts[1:4], -1) @ w[:, :3].t())


#: broadcast contributions to a (b, 3, 4, 6) output tile, smallest first, as the code generator
#: passes them: shapes with 1 where a value is broadcast (b stands for the batch size)
VALUES = {
    "none": [],
    "bias": [(1, 1, 1, 6)],
    "row": [(1, 3, 1, 6)],
    "row_col": [(1, 1, 1, 6), ("b", 3, 1, 6), ("b", 1, 4, 6)],  # sums to the full size
    "partial": [("b", 1, 1, 6), (1, 3, 4, 6)],  # the batch broadcast: sums short of it
    "full": [("b", 3, 4, 6)],  # one full-size value: an input, must stay unchanged
    "nested": [(1, 1, 1, 6), ("b", 1, 1, 6), ("b", 1, 4, 6), ("b", 3, 4, 6)],
}


@pytest.mark.parametrize("b", [1, 2])
@pytest.mark.parametrize("values", sorted(VALUES))
@pytest.mark.parametrize("layout", ["channels_last", "channels_first", "transposed", "batch_inner"])
def test_tile_sum_is_the_plain_sum(layout, values, b, chunks):
    """``tile_sum`` = ``channel_mix + sum(values)``: same output and same gradients for ``x``,
    the weight and every value, and it leaves its inputs as they were."""
    gen = torch.Generator().manual_seed(2)
    x = _layouts(gen, b)[layout].requires_grad_()
    w = torch.randn(6, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    vals = [
        torch.randn(
            [b if s == "b" else s for s in shape], generator=gen, dtype=torch.float64
        ).requires_grad_()
        for shape in VALUES[values]
    ]
    before = [v.detach().clone() for v in (x, w, *vals)]
    got = tile_sum(x, w, *vals)
    want = x @ w.t()
    for v in vals:
        want = want + v
    torch.testing.assert_close(got, want)
    assert got.is_contiguous()
    for v, old in zip((x, w, *vals), before):
        assert torch.equal(v, old)
    seed = torch.randn(want.shape, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(_grads(got, [x, w, *vals], seed), _grads(want, [x, w, *vals], seed))


def test_tile_sum_gradcheck_and_partial_grads():
    """Numerical gradients (float64), including second order, and only the requested ones."""
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 4, 3, 3, generator=gen, dtype=torch.float64).permute(0, 2, 3, 1)
    w = torch.randn(2, 4, generator=gen, dtype=torch.float64)
    row = torch.randn(2, 3, 1, 2, generator=gen, dtype=torch.float64)
    col = torch.randn(2, 1, 3, 2, generator=gen, dtype=torch.float64)
    args = [t.requires_grad_() for t in (x, w, row, col)]
    assert torch.autograd.gradcheck(tile_sum, args)
    assert torch.autograd.gradgradcheck(tile_sum, args)
    frozen = tile_sum(x.detach(), w, row.detach(), col)  # only w and col need a gradient
    (gw, gcol) = torch.autograd.grad(frozen.sum(), [w, col])
    torch.testing.assert_close(gcol, torch.full_like(col, 3.0))  # summed over the 3 rows
    torch.testing.assert_close(gw, (x.detach().sum((0, 1, 2)))[None].expand(2, 4))


# jacfwd's first use imports parts of torch that warn about torch.jit.script
@pytest.mark.filterwarnings("ignore:`torch.jit.script(_method)?` is deprecated:DeprecationWarning")
def test_tile_sum_under_vmap_and_jacfwd():
    """functorch transforms take the plain composition: same values."""
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(3, 2, 3, 4, generator=gen, dtype=torch.float64)
    w = torch.randn(5, 4, generator=gen, dtype=torch.float64)
    row = torch.randn(1, 3, 5, generator=gen, dtype=torch.float64)
    got = torch.func.vmap(lambda xi: tile_sum(xi, w, row))(x)
    torch.testing.assert_close(got, x @ w.t() + row)
    jac = torch.func.jacfwd(lambda ww: tile_sum(x[0], ww, row))(w)
    want = torch.func.jacfwd(lambda ww: x[0] @ ww.t() + row)(w)
    torch.testing.assert_close(jac, want)


def test_one_call_per_tile_is_the_plain_composition():
    """``tile_in``, ``place``, ``tile_sum`` with ``groups`` and ``layout``, ``tile_add`` and
    ``tensor_add`` equal the slicing, permutes, reshapes, sums and concatenations they fold into
    one call: values and gradients (float64)."""
    from nfncompile.backend.fused import tensor_add, tile_add, tile_in

    gen = torch.Generator().manual_seed(3)

    def rand(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64).requires_grad_()

    # a (B=2, C=3, 4, 5, 2) tensor, tile 1:4 along its first axis, the last axis fixed
    x, emb = rand(2, 3, 4, 5, 2), rand(3, 1, 5, 1)
    got = tile_in(x, ((1, 4), (0, 5), (0, 2)), (emb,), None, (0, 2, 3, 1, 4), (3, 5, 6), True)
    want = (x[:, :, 1:4] + emb).permute(0, 2, 3, 1, 4).reshape(2, 3, 5, 6)
    assert got.is_contiguous()
    torch.testing.assert_close(got, want)
    # an output tile (B, 3, 5, 4 channels): a row from a split mix result and a whole one, a
    # column unbound from a stack, a bias alone, the pointwise GEMM; then back to (B, 4, 5, 3)
    w, xin = rand(4, 6), rand(2, 3, 5, 6)
    row1, row2, cols, bias = rand(2, 3, 7), rand(1, 3, 4), rand(3, 2, 5, 4), rand(4)
    groups = (
        (((row1.split([2, 4, 1], -1), 1), row2), (3, 1, 4)),
        (((cols.unbind(0), 1),), (1, 5, 4)),
        ((), (1, 1, 4), None, bias),
    )

    def broadcasts():
        return (
            bias.reshape(1, 1, 1, 4)
            + (row1[..., 2:6] + row2).reshape(-1, 3, 1, 4)
            + cols[1].reshape(-1, 1, 5, 4)
        )

    def row():
        return (row1[..., 2:6] + row2).reshape(-1, 3, 1, 4).expand(2, 3, 5, 4)

    cases = [
        (
            lambda: tile_sum(xin, w, groups=groups, layout=(None, (0, 3, 2, 1))),
            lambda: (broadcasts() + xin @ w.t()).permute(0, 3, 2, 1),
        ),
        (lambda: tile_add(xin, groups, (3, 5, 4)), lambda: broadcasts().expand(2, 3, 5, 4)),
        (
            lambda: tensor_add(xin, ((groups, (3, 5, 4)), (groups[:1], (3, 5, 4))), (1, 2)),
            lambda: torch.cat([broadcasts().expand(2, 3, 5, 4), row()], 3),  # param axis 1
        ),
    ]
    for make, reference in cases:
        out, ref = make(), reference()
        torch.testing.assert_close(out, ref)
        inputs = [x for x in (w, xin, row1, row2, cols, bias)]
        seed = torch.randn(ref.shape, generator=gen, dtype=torch.float64)
        g1 = torch.autograd.grad(out, inputs, seed, allow_unused=True)
        g2 = torch.autograd.grad(ref, inputs, seed, allow_unused=True)
        for a, b in zip(g1, g2):
            assert (a is None) == (b is None)
            if a is not None:
                torch.testing.assert_close(a, b)


_CHUNKED = fused._chunked_sums  # the real one (the test below wraps it to count calls)

#: (gradient shape, requested sums): rows kept and summed, a shape of lower rank, ``None``
SUMS = [
    ((1, 4, 5, 3), [(1, 4, 1, 3), (1, 1, 5, 3), (1, 1, 1, 3)]),
    ((1, 4, 5, 3), [(4, 1, 1), (5, 3), None, (1, 3)]),
    ((2, 4, 5, 3), [(2, 1, 5, 3), (1, 4, 5, 3)]),
]


@pytest.mark.parametrize("grad_shape, shapes", SUMS)
def test_chunked_sums_equal_whole_sums(grad_shape, shapes, monkeypatch):
    """The one-pass chunked reduction of a large gradient gives every requested sum, with
    chunks of one slice, of 3 rows (4 = 3 + 1: a short last chunk) and of the whole."""
    gen = torch.Generator().manual_seed(7)
    grad = torch.randn(grad_shape, generator=gen, dtype=torch.float64)
    want = [None if s is None else grad.sum_to_size(s) for s in shapes]
    monkeypatch.setattr(fused, "CHUNK_MIN", 1)
    calls = []
    monkeypatch.setattr(fused, "_chunked_sums", lambda *a: calls.append(1) or _CHUNKED(*a))
    for chunk_bytes in (8, 3 * 5 * 3 * 8, 1 << 20):
        monkeypatch.setattr(fused, "CHUNK_BYTES", chunk_bytes)
        got = fused._sum_to(grad, shapes)
        for g, w in zip(got, want):
            if w is None:
                assert g is None
            else:
                torch.testing.assert_close(g, w)
    assert len(calls) == 3  # the chunked pass ran each time


@pytest.mark.parametrize("chunk_bytes", [8, 64, 1 << 20])
def test_means_over_a_size_one_dim(chunk_bytes, monkeypatch):
    """A mean over a dim of size 1 (a conv with one input channel) is the tile itself, chunked
    or not, whole or one slice at a time."""
    monkeypatch.setattr(fused, "CHUNK_MIN", 1)
    monkeypatch.setattr(fused, "CHUNK_BYTES", chunk_bytes)
    x = torch.randn(2, 4, 1, 3, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    for got, dims in zip(means(x, ((1,), (2,), (1, 2))), ((1,), (2,), (1, 2))):
        torch.testing.assert_close(got, x.mean(dims))


@pytest.mark.parametrize("op", ["sum", "mean"])
def test_outer_sums_are_matrix_vector_products_only_where_they_apply(op, monkeypatch):
    """``_outer_sum`` takes the sums over a contiguous tensor's outermost dims (size-1 dims
    anywhere) and equals torch's; it declines inner or interleaved dims, all dims, views that
    are not contiguous, small tensors and ops autograd records (whose backward would be a
    full-size product)."""
    monkeypatch.setattr(fused, "GEMV_MIN", 0)
    gen = torch.Generator().manual_seed(3)
    y = torch.randn(1, 6, 1, 5, 4, generator=gen, dtype=torch.float64)
    for dims in [(1,), (0, 1), (1, 2), (1, 2, 3), (0, 1, 2, 3)]:
        got = fused._outer_sum(y, dims, op)
        torch.testing.assert_close(got, getattr(y, op)(dims, keepdim=True))
    for dims in [(3,), (4,), (1, 4), (3, 4), (1, 3, 4), (0, 1, 2, 3, 4)]:
        assert fused._outer_sum(y, dims, op) is None
    assert fused._outer_sum(y.transpose(1, 3), (1,), op) is None
    assert fused._outer_sum(y.requires_grad_(), (1,), op) is None
    with torch.no_grad():
        assert fused._outer_sum(y, (1,), op) is not None
    monkeypatch.setattr(fused, "GEMV_MIN", y.numel() + 1)
    assert fused._outer_sum(y.detach(), (1,), op) is None


@settings(max_examples=60, deadline=None)
@given(
    shape=st.lists(st.integers(1, 4), min_size=2, max_size=4),
    order=st.randoms(use_true_random=False),
    picks=st.lists(st.lists(st.booleans(), min_size=4, max_size=4), min_size=1, max_size=3),
    chunk_bytes=st.sampled_from([8, 24, 64, 200, 1 << 20]),
    gemv=st.booleans(),
)
def test_chunked_reductions_are_the_reductions(shape, order, picks, chunk_bytes, gemv):
    """Any tile shape (dims of size 1 included), any memory order, any sets of means, any chunk
    size, outer-dim sums as matrix-vector products or not: ``means`` = each mean and
    ``_sum_to`` = each ``sum_to_size``."""
    perm = list(range(len(shape)))
    order.shuffle(perm)
    gen = torch.Generator().manual_seed(9)
    base = torch.randn([shape[p] for p in perm], generator=gen, dtype=torch.float64)
    x = base.permute([perm.index(d) for d in range(len(shape))])  # shape, strides of perm
    sets = [tuple(d for d in range(len(shape)) if p[d]) for p in picks]
    sets = [d for d in sets if d] or [(0,)]
    keep = [tuple(1 if d in dims else n for d, n in enumerate(shape)) for dims in sets]
    old = (fused.CHUNK_MIN, fused.CHUNK_BYTES, fused.GEMV_MIN)
    fused.CHUNK_MIN, fused.CHUNK_BYTES = 1, chunk_bytes
    fused.GEMV_MIN = 0 if gemv else old[2]
    try:
        got_means = means(x, sets)
        got_sums = fused._chunked_sums(x, keep)
    finally:
        fused.CHUNK_MIN, fused.CHUNK_BYTES, fused.GEMV_MIN = old
    for got, dims in zip(got_means, sets):
        torch.testing.assert_close(got, x.mean(dims))
    for k in keep:
        torch.testing.assert_close(got_sums[k], x.sum_to_size(k))


@settings(max_examples=80, deadline=None)
@given(
    dims=st.lists(
        st.tuples(st.lists(st.integers(1, 4), min_size=1, max_size=3), st.booleans()),
        min_size=1,
        max_size=3,
    ),
    order=st.randoms(use_true_random=False),
    batch=st.integers(1, 2),
    large=st.booleans(),
)
def test_grid_means_are_the_tiles_means(dims, order, batch, large):
    """Any grid (one to three permutable dims, each cut into segments of any sizes or not),
    any dims averaged (cut or not), any memory order, small tiles (one product with an
    averaging matrix per cut dim) or large ones (a mean per segment): ``grid_means`` = each
    tile's mean, in row-major order, values and gradients (float64)."""
    sizes = [tuple(seg) for seg, _ in dims]
    shape = (batch, *(sum(seg) for seg in sizes), 3)
    grid = tuple((1 + i, seg) for i, seg in enumerate(sizes) if len(seg) > 1)
    reduced = tuple(1 + i for i, (_, r) in enumerate(dims) if r) or (1,)
    assume(grid)  # (no dim cut: no tiles)
    perm = list(range(len(shape)))
    order.shuffle(perm)
    gen = torch.Generator().manual_seed(11)
    base = torch.randn([shape[p] for p in perm], generator=gen, dtype=torch.float64)
    x = base.permute([perm.index(d) for d in range(len(shape))]).requires_grad_()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(fused, "FUSE_MIN", 0 if large else 1 << 17)
        got = fused.grid_means(x, grid, reduced)
    want = tuple(x[index].mean(reduced) for index in fused.grid_regions(grid))
    assert len(got) == len(want)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)
    seeds = [torch.randn(w.shape, generator=gen, dtype=torch.float64) for w in want]
    dg = torch.autograd.grad(got, x, seeds)
    torch.testing.assert_close(dg, torch.autograd.grad(want, x, seeds))


def test_grid_means_of_a_dense_layers_norm():
    """The case it was written for: a norm over the concatenation of a block's input (64) and
    three layers' outputs (32 each), channels-first as the user hands it over; one call, the
    four tiles' means."""
    gen = torch.Generator().manual_seed(12)
    x = torch.randn(2, 4, 160, generator=gen, dtype=torch.float64).transpose(1, 2)
    got = fused.grid_means(x, ((1, (64, 32, 32, 32)),), (1,))
    want = [p.mean(1) for p in x.split((64, 32, 32, 32), 1)]
    assert len(got) == 4
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)


# a composite tensor's grid: (B, 5, 4 + 2 + 3, 6 channels) cut along dim 2, or (B, 2 + 3, 4 + 3,
# 6) cut along dims 1 and 2; per tile the broadcast shapes of its values ("b": the batch)
GRIDS = {
    "one_cut": (
        ((2, (4, 2, 3)),),
        [[(1, 1, 1, 6), (1, 5, 1, 6), ("b", 1, 4, 6)], [], [("b", 5, 3, 6)]],
    ),
    "two_cuts": (
        ((1, (2, 3)), (2, (4, 3))),
        [[(1, 1, 1, 6)], [("b", 2, 1, 6), ("b", 1, 3, 6)], [(1, 3, 1, 6)], [("b", 3, 3, 6)]],
    ),
}


def _grid_case(name: str, b: int, gen: torch.Generator, gemm: bool = True):
    grid, shapes = GRIDS[name]
    dims = [5, 9] if name == "one_cut" else [5, 7]

    def rand(*shape):
        shape = [b if s == "b" else s for s in shape]
        return torch.randn(*shape, generator=gen, dtype=torch.float64).requires_grad_()

    x = rand(b, 4, *dims).permute(0, 2, 3, 1)  # channels-first memory, as a user's input
    w = rand(6, 4) if gemm else None
    vals = [[rand(*s) for s in tile] for tile in shapes]

    def reference():
        parts = []
        for index, tile in zip(fused.grid_regions(grid), vals):
            shape = fused.region_shape(index, (b, *dims, 6))
            acc = torch.zeros(shape, dtype=torch.float64)
            for v in tile:
                acc = acc + v
            parts.append(acc)
        for dim, sizes in reversed(grid):
            c = len(sizes)
            parts = [torch.cat(parts[i : i + c], dim) for i in range(0, len(parts), c)]
        return parts[0] + x @ w.t() if gemm else parts[0]

    tiles = tuple(tuple(((v,), tuple(v.shape[1:])) for v in tile) for tile in vals)
    return x, w, vals, tiles, grid, reference


@pytest.mark.parametrize("gemm", [True, False])
@pytest.mark.parametrize("b", [1, 2])
@pytest.mark.parametrize("name", sorted(GRIDS))
def test_tensor_sum_is_the_concatenated_tile_sums(name, b, gemm, monkeypatch):
    """``tensor_sum`` (every tile's values written into its region of one tensor, one GEMM over
    all of it, or none) = the tiles' sums concatenated (plus the mix): values and gradients of
    ``x``, the weight and every value; a tile without values is zero."""
    gen = torch.Generator().manual_seed(6)
    x, w, vals, tiles, grid, reference = _grid_case(name, b, gen, gemm)
    inputs = [x, w, *[v for tile in vals for v in tile]] if gemm else [v for t in vals for v in t]
    kwargs = {} if gemm else {"channels": 6}
    got, want = fused.tensor_sum(x, w, tiles, grid, **kwargs), reference()
    torch.testing.assert_close(got, want)
    seed = torch.randn(want.shape, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(_grads(got, inputs, seed), _grads(want, inputs, seed))
    # with a layout back to (B, channels, dims); the plain composition (vmap, torch.compile)
    moved = fused.tensor_sum(x, w, tiles, grid, (None, (0, 3, 1, 2)), **kwargs)
    torch.testing.assert_close(moved, want.permute(0, 3, 1, 2))
    monkeypatch.setattr(fused, "_plain", lambda: True)
    plain = fused.tensor_sum(x, w, tiles, grid, **kwargs)
    torch.testing.assert_close(plain, want)
    want = reference()
    torch.testing.assert_close(_grads(plain, inputs, seed), _grads(want, inputs, seed))


@pytest.mark.parametrize("name", sorted(GRIDS))
def test_packed_tensor_sum_is_tensor_sum(name):
    """The generated code's form (the tensors once each, the nesting kept on the module, as
    ``codegen._pack`` makes it from groups of all five fields) is the same call: values and
    gradients."""
    from nfncompile.backend.codegen import _pack

    gen = torch.Generator().manual_seed(8)
    x, w, vals, tiles, grid, _ = _grid_case(name, 2, gen)
    # parts as the generated code passes them: a tensor, or an entry of a tuple (here one
    # tuple read by two tiles)
    first = vals[0][0]
    pair = (torch.zeros(1, dtype=first.dtype), first)
    tiles = list(tiles)
    tiles[0] = ((((pair, 1),), *tiles[0][0][1:]), *tiles[0][1:])
    tiles[-1] = (*tiles[-1], (((pair, 1),), tuple(first.shape[1:])))
    # every field of every group, as the generated code keeps them for the module
    tiles = [tuple((*g, None, None, ()) for g in tile) for tile in tiles]
    refs, packed = _pack(tiles)
    assert refs.count(pair) == 1 and len(refs) < sum(len(g[0]) for t in tiles for g in t)
    got = fused.packed_tensor_sum(x, w, refs, fused.TensorSumArgs(packed, grid))
    want = fused.tensor_sum(x, w, tiles, grid)
    torch.testing.assert_close(got, want)
    inputs = [x, w, *[v for tile in vals for v in tile]]
    seed = torch.randn(want.shape, generator=gen, dtype=torch.float64)
    grads = torch.autograd.grad(got, inputs, seed, allow_unused=True)
    torch.testing.assert_close(grads, torch.autograd.grad(want, inputs, seed, allow_unused=True))


def test_tensor_sum_gradcheck_and_partial_grads():
    """Numerical gradients (float64), second order included; only the requested ones."""
    gen = torch.Generator().manual_seed(7)
    x, w, vals, tiles, grid, _ = _grid_case("two_cuts", 2, gen)
    flat = [v for tile in vals for v in tile]

    def fn(x, w, *flat):
        it = iter(flat)
        t = tuple(tuple(((next(it),), s) for (_, s) in tile) for tile in tiles)
        return fused.tensor_sum(x, w, t, grid)

    assert torch.autograd.gradcheck(fn, [x, w, *flat])
    assert torch.autograd.gradgradcheck(fn, [x, w, *flat])
    out = fn(x.detach(), w.detach(), *[v.detach() for v in flat[:-1]], flat[-1])
    (g,) = torch.autograd.grad(out.sum(), [flat[-1]])
    torch.testing.assert_close(g, torch.ones_like(flat[-1]))  # the last tile's full-size value


def test_small_tiles_take_plain_ops(monkeypatch):
    """Below ``FUSE_MIN`` elements no custom autograd function runs (their per-call cost in
    Python is more than the passes they save there); at it they do; the values and gradients
    are the same either way."""
    gen = torch.Generator().manual_seed(8)
    x = torch.randn(1, 4, 8, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    row = torch.randn(1, 4, 1, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    seed = torch.randn(1, 4, 8, 3, generator=gen, dtype=torch.float64)
    calls = []
    for cls in (fused._TileSum, fused._Mean):
        apply = cls.apply
        monkeypatch.setattr(cls, "apply", lambda *a, _f=apply: calls.append(1) or _f(*a))

    def run(fuse_min: int) -> tuple:
        monkeypatch.setattr(fused, "FUSE_MIN", fuse_min)
        calls.clear()
        y = tile_sum(x, w, row) + mean(x, (2,)).sum(-1, keepdim=True).unsqueeze(-1)
        return y, _grads(y, [x, w, row], seed), len(calls)

    (y_plain, g_plain, n_plain), (y_fused, g_fused, n_fused) = run(x.numel() + 1), run(x.numel())
    assert (n_plain, n_fused) == (0, 2)
    torch.testing.assert_close(y_plain, y_fused)
    torch.testing.assert_close(g_plain, g_fused)


@pytest.mark.parametrize("b", [1, 2])
@pytest.mark.parametrize("layout", ["channels_last", "channels_first"])
def test_an_input_gradient_is_written_once_in_the_inputs_layout(layout, b, monkeypatch):
    """A tile's ``x``-gradient is written once, in the strides of the parameter it views: a
    channels-first parameter receives it without autograd copying it into its own layout, and
    the means' gradients (broadcast views, one autograd node per mean) are added into it in
    place. In the backward no full-size tensor is copied or summed out of place."""
    monkeypatch.setattr(fused, "CHUNK_MIN", 1)  # means' one-pass path on this small tile
    monkeypatch.setattr(fused, "CHUNK_BYTES", 64)
    gen = torch.Generator().manual_seed(9)
    native = (b, 5, 6, 7) if layout == "channels_first" else (b, 6, 7, 5)
    param = torch.randn(native, generator=gen, dtype=torch.float64, requires_grad=True)
    w, rows, cols = (torch.randn(4, 5, generator=gen, dtype=torch.float64) for _ in range(3))
    seed = torch.randn(b, 6, 7, 4, generator=gen, dtype=torch.float64)

    def forward(ops: bool) -> torch.Tensor:
        x = param.permute(0, 2, 3, 1) if layout == "channels_first" else param
        r, c = means(x, ((1,), (2,))) if ops else (x.mean(1), x.mean(2))
        if ops:
            return tile_sum(x, w, (r @ rows.t()).unsqueeze(1), (c @ cols.t()).unsqueeze(2))
        return x @ w.t() + (r @ rows.t()).unsqueeze(1) + (c @ cols.t()).unsqueeze(2)

    (want,) = torch.autograd.grad(forward(False), param, seed)
    out = forward(True)
    wasted = _full_size_writes(out, seed, [native, (*seed.shape[:-1], 5)])
    torch.testing.assert_close(param.grad, want)
    assert param.grad.stride() == param.stride()
    assert wasted == []


def _full_size_writes(out: torch.Tensor, seed: torch.Tensor, full: list) -> list:
    """The copies, clones and out-of-place sums of tensors of a ``full`` shape while
    ``out.backward(seed)`` runs."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        out.backward(seed)
    full = [list(s) for s in full]
    return [
        (e.name, e.input_shapes)
        for e in prof.events()
        if e.name in ("aten::copy_", "aten::clone", "aten::add")
        and any(s in full for s in e.input_shapes)
    ]


@pytest.mark.parametrize("b", [1, 2])
def test_a_composite_tensors_input_gradient_is_written_in_its_layout(b):
    """``tensor_sum``'s ``x``-gradient, too, is written in the strides of the channels-first
    parameter it views: no full-size copy into the parameter's layout."""
    gen = torch.Generator().manual_seed(10)
    x, w, _, tiles, grid, reference = _grid_case("two_cuts", b, gen)
    seed = torch.randn(*x.shape[:-1], 6, generator=gen, dtype=torch.float64)
    (want,) = torch.autograd.grad(reference(), x._base, seed)
    wasted = _full_size_writes(fused.tensor_sum(x, w, tiles, grid), seed, [x._base.shape, x.shape])
    torch.testing.assert_close(x._base.grad, want)
    assert wasted == []
