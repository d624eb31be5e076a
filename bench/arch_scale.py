"""NFLinear at the scale of real architectures: build time, size, and cost against the floor.

For torchvision's ResNet-18, ResNet-50, MobileNetV2, DenseNet-121 and ShuffleNetV2 x1.0 (full
size, defined in ``nfncompile.architectures``, no download) and the catalogue's largest small
entries, traced with ``verify=False``, and for both bases (``complete``, ``linear``), prints
in one run:

* ``build s``: ``NFLinear(spec, C, C, mode, basis=...)`` construction (basis, plan, codegen);
* ``params``: layer parameters / model parameters;
* ``time``: forward+backward of the layer / of the *floor* (the same features through only the
  per-entry channel mix, fixed dims folded: one GEMM per tensor in the same channels-last
  layout, per batch entry above a batch of one, as the generated layer reads a batch of
  channels-first tiles): the median over rounds of each round's ratio, a round being two
  steps of each run back to back in one process in the order ours, floor, floor, ours
  (``range``: the lowest and highest round); the backward is seeded with gradients laid out
  like the outputs (what the next layer of a stack hands back). ``ours s`` and ``floor s``
  are the median seconds;
* ``mem``: peak memory of one forward+backward above the memory held before it (inputs,
  weights, gradients to seed), ours / the floor's, each measured in a fresh subprocess from the
  kernel's peak RSS (``VmHWM``, reset through ``/proc/self/clear_refs``), with glibc told to
  return every freed block over 128 KB at once (``MALLOC_MMAP_THRESHOLD_``, see
  :data:`MEMORY_ENV`): otherwise the peak counts only what the allocator had not kept from
  the warm-up step, which moves with the order of allocations (DenseNet-121's layer read
  105-278 MB from one commit to the next with the same tensors, 646 MB with this setting).

A complete basis that would not fit in memory is refused by NFLinear before allocating; the
table then shows its size. Usage::

    python bench/arch_scale.py [--channels 16] [--batch 1] [--rounds 3] [--models resnet18,...]
                               [--mode np] [--no-memory] [--input-grad]

``--input-grad``: the inputs require gradients, so the backward also computes the input's
gradient, as for every layer of a stack but the first (both sides alike).

One torch thread (``torch.set_num_threads(1)``) unless ``--threads``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import time
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from nfncompile.architectures import CATALOGUE, FACTORIES
from nfncompile.backend.fused import _per_batch_rows
from nfncompile.backend.plan import complete_num_params
from nfncompile.backend.tiles import tile_refs
from nfncompile.errors import ConfigError
from nfncompile.frontend.tracing import trace
from nfncompile.nn import NFLinear

warnings.filterwarnings("ignore", category=UserWarning)

#: name -> (factory name, keyword arguments, example input shape)
FULL_SIZE = {
    "resnet18": ("resnet18", {}, (2, 3, 32, 32)),
    "resnet50": ("resnet50", {}, (2, 3, 32, 32)),
    "mobilenetv2": ("mobilenetv2", {}, (2, 3, 32, 32)),
    "densenet121": ("densenet121", {}, (2, 3, 32, 32)),
    "shufflenetv2": ("shufflenetv2", {}, (2, 3, 32, 32)),
}
#: the original catalogue's largest entries (by number of tensors)
CATALOGUE_LARGEST = ("resnet20", "unet", "densenet_block")


def _pointwise(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``x @ w.T`` over the last dim of ``x`` ``(B, *rows, K)``, reading ``x`` in its own
    strides: one GEMM per batch entry for a batch of channels-first tiles, whose rows merge
    within each entry but not across the batch (the generated layer's own test,
    ``fused._per_batch_rows``: ``F.linear`` would first copy them into one matrix, a pass the
    layer does not make), else one GEMM."""
    if not _per_batch_rows(x):
        return F.linear(x, w)
    b, k = x.shape[0], x.shape[-1]
    y = torch.bmm(x.reshape(b, -1, k), w.t().expand(b, k, w.shape[0]))
    return y.view(*x.shape[:-1], w.shape[0])


class Floor(nn.Module):
    """The pointwise floor: per tile, the channel mix of every entry (fixed dims folded), one
    GEMM, in the channels-last layout the generated layers use."""

    def __init__(self, spec, c_in: int, c_out: int, mode: str = "np") -> None:
        super().__init__()
        self.spec, self.c_out = spec, c_out
        self.tiles = tile_refs(spec, mode)
        self.weights = nn.ParameterList(
            nn.Parameter(torch.randn(c_out * t.fixed_size, c_in * t.fixed_size) * 0.01)
            for t in self.tiles
        )

    def forward(self, x: dict) -> dict:
        parts: dict = {}
        for t, w in zip(self.tiles, self.weights):
            v = x[t.param]
            p = self.spec[t.param]
            v = v.reshape(v.shape[0], v.shape[1], *p.labelled_shape)
            if t.shape != p.labelled_shape:
                v = v[
                    (
                        slice(None),
                        slice(None),
                        *(slice(s, s + n) for s, n in zip(t.starts, t.shape)),
                    )
                ]
            v = v.reshape(v.shape[0], v.shape[1], *t.dim_shape)
            perm = [t.dims[d].size for d in t.perm_dims]
            fixed = [t.dims[d].size for d in t.fixed_dims]
            v = v.permute(0, *(2 + d for d in t.perm_dims), 1, *(2 + d for d in t.fixed_dims))
            y = _pointwise(v.reshape(v.shape[0], *perm, -1), w)
            n = len(perm)
            y = y.reshape(y.shape[0], *perm, self.c_out, *fixed)
            back = [0, 1 + n] + [
                1 + t.perm_dims.index(d) if d in t.perm_dims else 2 + n + t.fixed_dims.index(d)
                for d in range(len(t.dims))
            ]
            parts.setdefault(t.param, []).append(
                y.permute(back).reshape(y.shape[0], self.c_out, *t.shape)
            )
        out = {}
        for name, ys in parts.items():
            p = self.spec[name]
            if len(ys) > 1:  # composite axes: tiles in row-major order; cat back axis by axis
                counts = [len(a) if isinstance(a, tuple) else 1 for a in p.axes]
                for ax in reversed(range(len(counts))):
                    if counts[ax] > 1:
                        ys = [
                            torch.cat(ys[i : i + counts[ax]], 2 + ax)
                            for i in range(0, len(ys), counts[ax])
                        ]
            out[name] = ys[0].reshape(ys[0].shape[0], self.c_out, *p.shape)
        return out


def load_spec(name: str):
    torch.manual_seed(0)
    if name in FULL_SIZE:
        factory, kwargs, shape = FULL_SIZE[name]
        model = FACTORIES[factory](**kwargs)
    else:
        arch = CATALOGUE[name]
        model, shape = arch.factory(), arch.input_shape
    spec = trace(model, torch.randn(shape), verify=False)
    return spec, sum(p.numel for p in spec.params)


def make_inputs(spec, batch: int, channels: int, input_grad: bool = False) -> dict:
    """Seeded features; with ``input_grad`` they require gradients (a layer inside a stack,
    whose input is the previous layer's output, computes its input's gradient too)."""
    gen = torch.Generator().manual_seed(0)
    return {
        n: torch.randn((batch, channels, *spec[n].shape), generator=gen).requires_grad_(input_grad)
        for n in spec.names
    }


class Step:
    """forward + backward seeded with fixed gradients shaped like the outputs. Input
    gradients, where the inputs require them, are dropped after each step (not accumulated:
    an accumulation would add a pass to both sides that a real stack does not make)."""

    def __init__(self) -> None:
        self.grads: dict = {}

    def __call__(self, module: nn.Module, x: dict) -> None:
        y = module(x)
        names = list(y)
        if not self.grads:
            gen = torch.Generator().manual_seed(1)
            self.grads = {n: torch.empty_like(y[n]).normal_(generator=gen) for n in names}
        torch.autograd.backward([y[n] for n in names], [self.grads[n] for n in names])
        for t in x.values():
            t.grad = None


def build(spec, basis: str, channels: int, mode: str):
    t0 = time.perf_counter()
    layer = NFLinear(spec, channels, channels, mode=mode, basis=basis)
    return layer, time.perf_counter() - t0


def _rss() -> tuple:
    with open("/proc/self/status") as f:
        info = dict(line.split(":", 1) for line in f)
    return int(info["VmRSS"].split()[0]) * 1024, int(info["VmHWM"].split()[0]) * 1024


def memory_child(args) -> None:
    """Subprocess: peak extra RSS of one fwd+bwd of one module (prints bytes as JSON)."""
    torch.set_num_threads(args.threads)
    spec, _ = load_spec(args.child_model)
    if args.child_kind == "floor":
        module = Floor(spec, args.channels, args.channels, args.mode)
    else:
        module, _ = build(spec, args.child_kind, args.channels, args.mode)
    x = make_inputs(spec, args.batch, args.channels, args.input_grad)
    step = Step()
    step(module, x)  # warm-up, allocates the seeded gradients
    module.zero_grad(set_to_none=False)
    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before, _ = _rss()
    step(module, x)
    _, peak = _rss()
    print(json.dumps({"bytes": peak - before}))


#: the memory child's environment beyond the caller's: freed blocks over 128 KB go back to the
#: kernel (no dynamic threshold), so that peak RSS follows the live tensors
MEMORY_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072"}


def _mb(n: int) -> str:
    """Bytes as megabytes for the table: one decimal below 10 MB (a small entry's 0.4 MB)."""
    mb = n / 2**20
    return f"{mb:.1f}" if mb < 10 else f"{mb:.0f}"


def measure_memory(model: str, kind: str, args) -> int | None:
    cmd = [
        sys.executable, __file__, "--child-model", model, "--child-kind", kind,
        "--channels", str(args.channels), "--batch", str(args.batch), "--mode", args.mode,
        "--threads", str(args.threads), *(["--input-grad"] if args.input_grad else []),
    ]  # fmt: skip
    env = {**os.environ, **MEMORY_ENV}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        return None
    return json.loads(out.stdout.strip().splitlines()[-1])["bytes"]


#: the order of one round's steps: each side runs once first and once second, so that a
#: machine state that alternates from one step to the next (on a VM, glibc hands every large
#: freed tensor back to the kernel, and every other step's fresh pages can cost up to 5x as
#: much to fault in, see bench/README.md) falls on both sides alike
ROUND = ("ours", "floor", "floor", "ours")


def counterbalanced(step, rounds: int) -> tuple:
    """``rounds`` rounds of :data:`ROUND`, ``step(side)`` running one step of ``"ours"`` or
    ``"floor"`` and returning its seconds: each side's step seconds and each round's ratio
    ours / floor (ours' two steps over the floor's two)."""
    times: dict = {"ours": [], "floor": []}
    ratios = []
    for _ in range(rounds):
        spent = dict.fromkeys(times, 0.0)
        for k in ROUND:
            times[k].append(step(k))
            spent[k] += times[k][-1]
        ratios.append(spent["ours"] / spent["floor"])
    return times, ratios


def time_pair(ours: nn.Module, floor: nn.Module, x: dict, rounds: int) -> tuple:
    """Median step seconds of ours and of the floor, and each round's ratio ours / floor.

    A round is :data:`ROUND`: four steps back to back, so that its ratio sees the same machine
    state on both sides (:func:`counterbalanced`)."""
    steps = {"ours": Step(), "floor": Step()}
    mods = {"ours": ours, "floor": floor}
    for k in mods:
        steps[k](mods[k], x)

    def step(k: str) -> float:
        t0 = time.perf_counter()
        steps[k](mods[k], x)
        return time.perf_counter() - t0

    times, ratios = counterbalanced(step, rounds)
    return statistics.median(times["ours"]), statistics.median(times["floor"]), ratios


COLUMNS = (
    ("model", 14), ("tensors", 8), ("tiles", 6), ("basis", 9), ("build s", 8),
    ("params M", 9), ("/model", 7), ("ours s", 8), ("floor s", 8), ("time", 6), ("range", 10),
    ("mem MB", 12), ("mem", 6),
)  # fmt: skip


def row(values: dict) -> str:
    return " ".join(
        str(values.get(k, "-")).ljust(w) if i == 0 else str(values.get(k, "-")).rjust(w)
        for i, (k, w) in enumerate(COLUMNS)
    )


def main(argv: list | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--channels", type=int, default=16)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--mode", default="np", choices=("np", "hnp"))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--models", default=",".join([*FULL_SIZE, *CATALOGUE_LARGEST]))
    p.add_argument("--bases", default="complete,linear")
    p.add_argument("--no-memory", action="store_true")
    p.add_argument(
        "--input-grad",
        action="store_true",
        help="inputs require gradients (a layer inside a stack, not the first)",
    )
    p.add_argument("--child-model", help=argparse.SUPPRESS)
    p.add_argument("--child-kind", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child_model:
        memory_child(args)
        return
    torch.set_num_threads(args.threads)
    print(
        f"# arch_scale: torch {torch.__version__}, {args.threads} thread(s), C={args.channels}, "
        f"batch {args.batch}, mode {args.mode}, {args.rounds} rounds"
        + (", inputs require gradients" if args.input_grad else "")
    )
    print(row({k: k for k, _ in COLUMNS}))
    for name in args.models.split(","):
        spec, model_params = load_spec(name)
        tiles = len(tile_refs(spec, args.mode))
        floor = Floor(spec, args.channels, args.channels, args.mode)
        x = make_inputs(spec, args.batch, args.channels, args.input_grad)
        floor_mem = None if args.no_memory else measure_memory(name, "floor", args)
        for basis in args.bases.split(","):
            vals = {"model": name, "tensors": len(spec.params), "tiles": tiles, "basis": basis}
            try:
                layer, seconds = build(spec, basis, args.channels, args.mode)
            except ConfigError:
                n = complete_num_params(spec, args.mode, args.channels, args.channels)
                vals.update({"build s": "refused", "params M": f"{n / 1e6:.0f}"})
                vals["/model"] = f"{n / model_params:.0f}x"
                print(row(vals), flush=True)
                continue
            vals["build s"] = f"{seconds:.2f}"
            vals["params M"] = f"{layer.num_params / 1e6:.2f}"
            vals["/model"] = f"{layer.num_params / model_params:.2f}x"
            t_ours, t_floor, ratios = time_pair(layer, floor, x, args.rounds)
            vals.update(
                {
                    "ours s": f"{t_ours:.2f}",
                    "floor s": f"{t_floor:.2f}",
                    "time": f"{statistics.median(ratios):.2f}",
                    "range": f"{min(ratios):.2f}-{max(ratios):.2f}",
                }
            )
            del layer
            gc.collect()
            if not args.no_memory:
                ours_mem = measure_memory(name, basis, args)
                if ours_mem and floor_mem:
                    vals["mem MB"] = f"{_mb(ours_mem)}/{_mb(floor_mem)}"
                    vals["mem"] = f"{ours_mem / floor_mem:.2f}"
            print(row(vals), flush=True)
        del floor, x
        gc.collect()


if __name__ == "__main__":
    main()
