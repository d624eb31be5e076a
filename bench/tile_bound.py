"""How close eager PyTorch gets to the pointwise floor on one large 2-D tile.

One tile of the linear basis, alone: a ``(n, m)`` weight at C channels (default the
MobileNetV2 classifier's 1000 x 1280 at C = 16), read channels-first as an NF-Layer receives it,
with its own row and column means mixed and broadcast back (the terms every 2-D tile has), and
its pointwise channel mix; forward and weight gradients (the input does not need a gradient,
as in ``arch_scale.py``). Prints ours / floor (the pointwise mix alone) in milliseconds, medians
of ``--rounds`` side by side, for the generated operations (``nfncompile.backend.fused``) and,
with ``--compile``, for both functions through ``torch.compile(dynamic=True)``. Usage::

    python bench/tile_bound.py [--n 1000] [--m 1280] [--channels 16] [--rounds 5] [--compile]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from nfncompile.backend import fused


def ours(x_cf: torch.Tensor, w0, w_row, w_col, grad: torch.Tensor) -> None:
    x = x_cf.permute(0, 2, 3, 1)
    row = fused.channel_mix(w_row, fused.mean(x, (2,))).unsqueeze(2)
    col = fused.channel_mix(w_col, fused.mean(x, (1,))).unsqueeze(1)
    fused.tile_sum(x, w0, row, col).permute(0, 3, 1, 2).backward(grad)


def plain(x_cf: torch.Tensor, w0, w_row, w_col, grad: torch.Tensor) -> None:
    """The same function in plain torch ops (what ``torch.compile`` is given)."""
    x = x_cf.permute(0, 2, 3, 1)
    y = F.linear(x, w0) + F.linear(x.mean(2, keepdim=True), w_row)
    (y + F.linear(x.mean(1, keepdim=True), w_col)).permute(0, 3, 1, 2).backward(grad)


def floor(x_cf: torch.Tensor, w0, grad: torch.Tensor) -> None:
    F.linear(x_cf.permute(0, 2, 3, 1), w0).permute(0, 3, 1, 2).backward(grad)


def side_by_side(a, b, rounds: int) -> tuple:
    a(), b()
    ta, tb = [], []
    for _ in range(rounds):
        for f, ts in ((a, ta), (b, tb)):
            t0 = time.perf_counter()
            f()
            ts.append(time.perf_counter() - t0)
    return statistics.median(ta) * 1e3, statistics.median(tb) * 1e3


def main(argv: list | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--m", type=int, default=1280)
    p.add_argument("--channels", type=int, default=16)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--compile", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    c, n, m = args.channels, args.n, args.m
    x = torch.randn(1, c, n, m, generator=gen)
    grad = torch.randn(1, c, n, m, generator=gen)
    ws = [torch.randn(c, c, generator=gen).requires_grad_() for _ in range(3)]
    print(f"# one {n} x {m} tile, C={c}, {args.threads} thread(s); ms, median of {args.rounds}")
    a, b = side_by_side(lambda: ours(x, *ws, grad), lambda: floor(x, ws[0], grad), args.rounds)
    print(f"generated ops     ours {a:7.1f}  floor {b:7.1f}  ratio {a / b:.2f}")
    if args.compile:
        t0 = time.perf_counter()
        c_ours, c_floor = torch.compile(plain, dynamic=True), torch.compile(floor, dynamic=True)
        c_ours(x, *ws, grad), c_floor(x, ws[0], grad)
        seconds = time.perf_counter() - t0
        a, b = side_by_side(
            lambda: c_ours(x, *ws, grad), lambda: c_floor(x, ws[0], grad), args.rounds
        )
        print(
            f"torch.compile     ours {a:7.1f}  floor {b:7.1f}  ratio {a / b:.2f}  ({seconds:.0f} s to compile)"
        )


if __name__ == "__main__":
    main()
