"""Front-end timing: trace + derive (+ verify) at growing depth and width, on one core.

Run ``python bench/trace_time.py`` (``--quick`` for a smaller sweep, ``--no-verify`` to skip
verification, ``--only sweep|opaque|patterns`` for one table). Prints three tables.

The *sweep*: MLPs, CIFAR ResNets, plain CNNs, RegNet-X stacks (grouped convs) and ConvNeXt
blocks at growing depth and width, one row per model:

* ``trace``: torch.fx symbolic trace + shape propagation (fake tensors above
  ``nfncompile.frontend.fx.FAKE_ABOVE`` parameter elements, real forward below);
* ``graph``: the symmetry analysis pass (:mod:`nfncompile.frontend.analysis`);
* ``spaces``: cut propagation + union-find (:mod:`nfncompile.frontend.spaces`) and building the spec;
* ``verify``: what ``nfc.trace`` runs by default: a float64 copy of the model and 2 joint
  random group elements (plus the unpermuted forwards).

Goals: ResNet-56 traced, derived and verified in under 1 s on one core; trace + derive time
linear in the number of layers and flat in width (the graph has one node per run of neurons,
whatever the width).

A second table (``--only opaque`` to print it alone) times what real model code hides from the
rule registry: ops no rule knows, probed numerically (``efficientnet_block``'s wrapped
stochastic depth), and submodules torch.fx cannot trace, kept as one call
(``tf_efficientnet``'s same-padding convs): spaces, fixed neurons, probed ops and the mean time
of one probe, kept submodules, derive time and the share of it spent probing, verify time.
Goal: a probe costs a few ms.

The *patterns* (``--only patterns``): the catalogue entries that reproduce the symmetry
patterns of real CNNs (grouped convs, depthwise convs on fixed channels, selective-kernel views,
weight standardisation, blur pools, space-to-depth), at their default size and at a larger one,
with what the front end derived: spaces (all / hidden / of size 1), spaces with block
structure, neurons fixed by broken ops, and the derive and verify times.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterator

import torch
from torch import nn

import nfncompile as nfc
from nfncompile.architectures import (
    blurpool_cnn,
    convnext_block,
    efficientnet_block,
    mlp,
    regnet_x,
    resnet_cifar,
    resnext_block,
    s2d_stem,
    sk_block,
    std_conv_block,
    tf_efficientnet,
)


def cnn(width: int, depth: int = 4) -> nn.Module:
    """``depth`` 3x3 convs of ``width`` channels with ReLU, global pool, linear head."""
    layers: list = [nn.Conv2d(3, width, 3, padding=1), nn.ReLU()]
    for _ in range(depth - 1):
        layers += [nn.Conv2d(width, width, 3, padding=1), nn.ReLU()]
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 10)]
    return nn.Sequential(*layers)


def measure(model: nn.Module, x: torch.Tensor, do_verify: bool, repeat: int) -> dict:
    best: dict = {}
    for _ in range(repeat):
        spec, report = nfc.trace_with_report(model, x, verify=do_verify)
        for k, v in report.timings.items():
            best[k] = min(best.get(k, v), v)
    graph = report.graph
    best["nodes"] = graph.number_of_nodes()
    best["runs"] = sum(1 for n in graph.nodes if n[0] == "run")
    best["spaces_n"] = len(spec.spaces)
    best["params"] = sum(p.numel for p in spec.params)
    best["hidden"] = sum(s.role == "hidden" for s in spec.spaces.values())
    best["size1"] = sum(s.size == 1 and s.role == "hidden" for s in spec.spaces.values())
    best["blocked"] = sum(s.blocks is not None for s in spec.spaces.values())
    best["fixed"] = sum(b.count for b in report.broken)
    best["probed"] = len(report.probes)
    best["probe"] = sum(p.seconds for p in report.probes) / max(1, len(report.probes))
    best["kept"] = len(report.leaf_calls)
    return best


#: name, factory, input shape: models with opaque ops, at their catalogue size and larger
OPAQUE = [
    ("efficientnet_block", efficientnet_block, (2, 3, 8, 8)),
    ("efficientnet 64x8", lambda: efficientnet_block(64, 8, 6, 256), (1, 3, 16, 16)),
    ("tf_efficientnet", tf_efficientnet, (2, 3, 9, 9)),
    (
        "tf_efficientnet 5",
        lambda: tf_efficientnet((32, 48, 48, 96, 96, 96), (2, 2, 1, 2, 1, 1), 6, 256),
        (1, 3, 33, 33),
    ),
]


def _rows(cases: list, do_verify: bool, repeat: int) -> Iterator[tuple]:
    """``(name, measurements, derive seconds)`` per ``(name, factory, input shape)`` case."""
    for name, factory, shape in cases:
        torch.manual_seed(0)
        r = measure(factory(), torch.randn(shape), do_verify, repeat)
        yield name, r, r["trace"] + r["graph"] + r["spaces"]


def _verify_ms(r: dict) -> str:
    return f"{r['verify'] * 1000:>11.1f}" if "verify" in r else f"{'-':>11}"


def opaque(do_verify: bool, repeat: int) -> None:
    cols = ["spaces_n", "hidden", "fixed", "probed", "kept"]
    heads = ["spaces", "hidden", "fixed", "probed", "kept"]
    print(f"{'model':<20}{'params':>11}" + "".join(f"{h:>8}" for h in heads), end="")
    print(f"{'probe ms':>10}{'derive ms':>11}{'probes %':>10}{'verify ms':>11}")
    for name, r, derive in _rows(OPAQUE, do_verify, repeat):
        line = f"{name:<20}{r['params']:>11,}" + "".join(f"{r[c]:>8}" for c in cols)
        share = 100 * r["probe"] * r["probed"] / derive  # of derive time, spent probing
        line += f"{r['probe'] * 1000:>10.2f}{derive * 1000:>11.1f}{share:>10.1f}"
        print(line + _verify_ms(r), flush=True)


class _Roll(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.roll(x, 1, dims=1)


def convnext_fixed_stream(channels: int, depth: int) -> nn.Module:
    """ConvNeXt blocks whose residual stream is fixed (a channel roll after the stem stands
    for any op that breaks its symmetry): every depthwise conv reads fixed channels."""
    net = convnext_block(channels, depth)
    net.stem = nn.Sequential(net.stem, _Roll())
    return net


#: name, factory, input shape: every pattern at its catalogue size and at a larger one
PATTERNS = [
    ("resnext_block", resnext_block, (2, 3, 8, 8)),
    ("resnext 32x4d", lambda: resnext_block(64, 128, 32), (1, 3, 8, 8)),
    ("regnet_x", regnet_x, (2, 3, 16, 16)),
    (
        "regnet_x 400MF",  # RegNet-X-400MF's stage widths, depths and group width
        lambda: regnet_x((32, 64, 160, 384), (1, 2, 7, 12), 16, stem=32),
        (1, 3, 32, 32),
    ),
    ("convnext_block", convnext_block, (2, 3, 8, 8)),
    ("convnext wrapped", lambda: convnext_block(96, 3, wrapped_drop_path=True), (1, 3, 8, 8)),
    ("convnext fixed", lambda: convnext_fixed_stream(96, 3), (1, 3, 8, 8)),
    ("sk_block", sk_block, (2, 3, 8, 8)),
    ("sk 64", lambda: sk_block(64, 2, 32), (1, 3, 8, 8)),
    ("std_conv_block", std_conv_block, (2, 3, 8, 8)),
    ("std_conv 64", lambda: std_conv_block(64), (1, 3, 8, 8)),
    ("blurpool_cnn", blurpool_cnn, (2, 3, 8, 8)),
    ("blurpool expand", lambda: blurpool_cnn(expand_filter=True), (2, 3, 8, 8)),
    ("s2d_stem", s2d_stem, (2, 3, 8, 8)),
    ("s2d bs4", lambda: s2d_stem(32, 4), (1, 3, 16, 16)),
]


def patterns(do_verify: bool, repeat: int) -> None:
    cols = ["spaces_n", "hidden", "size1", "blocked", "fixed"]
    heads = ["spaces", "hidden", "size-1", "blocks", "fixed"]
    print(f"{'pattern':<18}{'params':>11}" + "".join(f"{h:>8}" for h in heads), end="")
    print(f"{'derive ms':>11}{'verify ms':>11}")
    for name, r, derive in _rows(PATTERNS, do_verify, repeat):
        line = f"{name:<18}{r['params']:>11,}" + "".join(f"{r[c]:>8}" for c in cols)
        print(line + f"{derive * 1000:>11.1f}" + _verify_ms(r), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smaller sweep")
    ap.add_argument("--no-verify", action="store_true", help="skip verification")
    ap.add_argument("--repeat", type=int, default=3, help="best of N runs")
    ap.add_argument("--only", choices=("sweep", "opaque", "patterns"), help="print one table")
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    if args.only in (None, "sweep"):
        sweep(args)
    else:  # one-time costs first: the first fx trace, the fake-tensor import
        nfc.trace(mlp(4, (4,), 2), torch.randn(2, 4), verify=False)
        nfc.trace(mlp(4, (4,), 2), torch.randn(2, 4), verify=False, fake=True)
    for table, name in ((opaque, "opaque"), (patterns, "patterns")):
        if args.only in (None, name):
            if args.only is None:
                print()
            table(not args.no_verify, args.repeat)


def sweep(args: argparse.Namespace) -> None:

    cases = []
    depths = (10, 25, 50, 100) if not args.quick else (10, 50)
    for d in depths:
        cases.append((f"mlp depth {d}", lambda d=d: mlp(64, (64,) * (d - 1), 10), (2, 64)))
    widths = (16, 256, 2048) if not args.quick else (16, 2048)
    for w in widths:
        cases.append((f"mlp width {w}", lambda w=w: mlp(64, (w,) * 9, 10), (2, 64)))
    for depth in (20, 56, 110) if not args.quick else (56,):
        cases.append(
            (f"resnet depth {depth}", lambda depth=depth: resnet_cifar(depth), (1, 3, 32, 32))
        )
    for w in widths:
        cases.append((f"cnn width {w}", lambda w=w: cnn(w), (1, 3, 8, 8)))
    for d in (2, 8, 32) if not args.quick else (2, 32):  # grouped convs, 4 groups each
        factory = lambda d=d: regnet_x((16, 32), (1, d), 8)  # noqa: E731
        cases.append((f"regnet depth {d}", factory, (1, 3, 16, 16)))
    for w in (16, 256, 1024) if not args.quick else (16, 1024):
        factory = lambda w=w: regnet_x((w, 2 * w), (1, 2), w // 4)  # noqa: E731
        cases.append((f"regnet width {w}", factory, (1, 3, 16, 16)))
    for d in (2, 8, 32) if not args.quick else (2, 32):  # depthwise convs, channels-last MLPs
        cases.append((f"convnext depth {d}", lambda d=d: convnext_block(16, d), (1, 3, 8, 8)))

    # one-time costs, reported separately: first fx trace, fake-tensor machinery import
    t = time.perf_counter()
    nfc.trace(mlp(4, (4,), 2), torch.randn(2, 4), verify=False)
    first = time.perf_counter() - t
    t = time.perf_counter()
    nfc.trace(mlp(4, (4,), 2), torch.randn(2, 4), verify=False, fake=True)
    fake_import = time.perf_counter() - t
    print(f"one-time: first trace {first * 1000:.0f} ms, fake-tensor import {fake_import:.2f} s")

    cols = ["trace", "graph", "spaces", "derive", "verify"]
    head = f"{'model':<16}{'params':>11}{'runs':>6}{'nodes':>7}{'spaces':>8}"
    print(head + "".join(f"{c + ' ms':>11}" for c in cols) + f"{'size x':>9}{'derive x':>10}")
    first: dict = {}
    for name, factory, shape in cases:
        model = factory()
        x = torch.randn(shape)
        big = any(w in name for w in ("2048", "1024"))
        r = measure(model, x, not args.no_verify, 1 if big else args.repeat)
        r["derive"] = r["trace"] + r["graph"] + r["spaces"]
        line = f"{name:<16}{r['params']:>11,}{r['runs']:>6}{r['nodes']:>7}{r['spaces_n']:>8}"
        line += "".join(f"{r[c] * 1000:>11.1f}" if c in r else f"{'-':>11}" for c in cols)
        # ratios against the family's first row: layers (runs) for depth sweeps, width for
        # width sweeps; derive time should grow like the first and not at all with the second
        family, size = name.rsplit(" ", 1)
        scale = r["runs"] if "depth" in family else int(size)
        base = first.setdefault(family, (scale, r["derive"]))
        line += f"{scale / base[0]:>9.1f}{r['derive'] / base[1]:>10.2f}"
        print(line, flush=True)


if __name__ == "__main__":
    main()
