"""NFLinear against the reference ``nfn`` package (NPLinear / HNPLinear): time and memory.

Runs ours and theirs alternately in one process on the same weight spaces, inputs and channels
and prints ratios ours/theirs (below 1.0 means we are faster / smaller):

* forward+backward time (median over rounds), eager and ``torch.compile``;
* peak memory of one forward+backward: ``torch.cuda.max_memory_allocated`` on CUDA; on CPU the
  bytes of the tensors autograd saves for backward plus the outputs (a proxy: CPU peak memory is
  not tracked per call by PyTorch);
* how building, compiling and running NFLinear scale with depth (L = 2 .. 64).

Our layers use ``basis="complete"`` (the reference's layers are NP/HNP bases too); the
linear-size basis is measured against its floor by ``bench/arch_scale.py``.

Usage::

    python bench/layer_speed.py [--device cuda] [--quick] [--no-compile] [--no-depth]
                                [--case small-cnn]

Needs ``pip install nfn==0.1.2 einops`` (the ``bench`` extra).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings

import torch

from nfncompile.nn import NFLinear
from nfncompile.spec import WeightSpaceSpec
from nfncompile.testing import mlp_spec

warnings.filterwarnings("ignore", category=DeprecationWarning)
warnings.filterwarnings("ignore", category=UserWarning)


def cnn_spec(channels: tuple, n_out: int, kernel: int = 3) -> WeightSpaceSpec:
    names = ["in"] + [f"c{i}" for i in range(1, len(channels))]
    spaces = {"in": {"size": channels[0], "role": "input"}}
    params = {}
    for i in range(1, len(channels)):
        spaces[names[i]] = {"size": channels[i], "role": "hidden"}
        params[f"conv{i}.weight"] = {
            "shape": [channels[i], channels[i - 1], kernel, kernel],
            "axes": [names[i], names[i - 1], None, None],
        }
        params[f"conv{i}.bias"] = {"shape": [channels[i]], "axes": [names[i]]}
    spaces["out"] = {"size": n_out, "role": "output"}
    params["fc.weight"] = {"shape": [n_out, channels[-1]], "axes": ["out", names[-1]]}
    params["fc.bias"] = {"shape": [n_out], "axes": ["out"]}
    return WeightSpaceSpec.from_dict({"spaces": spaces, "params": params})


def nfn_parts(spec: WeightSpaceSpec, feats: dict):
    from nfn.common import ArraySpec, NetworkSpec
    from nfn.common import WeightSpaceFeatures as NfnFeatures

    wn = [n for n in spec.names if n.endswith("weight")]
    bn = [n for n in spec.names if n.endswith("bias")]
    net = NetworkSpec(
        [ArraySpec(spec[n].shape) for n in wn], [ArraySpec(spec[n].shape) for n in bn]
    )
    return net, NfnFeatures([feats[n] for n in wn], [feats[n] for n in bn])


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def loss_of(out) -> torch.Tensor:
    if isinstance(out, dict) or (hasattr(out, "values") and not hasattr(out, "weights")):
        return sum(v.float().square().mean() for v in out.values())
    return sum(w.float().square().mean() + b.float().square().mean() for w, b in out)


def step(module, x) -> None:
    loss_of(module(x)).backward()


def time_pair(fns: dict, x: dict, device: str, rounds: int, inner: int) -> dict:
    """Median seconds per fwd+bwd of each fn, alternating between them every round."""
    for name, fn in fns.items():  # warm up
        for _ in range(2):
            step(fn, x[name])
    sync(device)
    times = {k: [] for k in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            sync(device)
            t = time.perf_counter()
            for _ in range(inner):
                step(fn, x[name])
            sync(device)
            times[name].append((time.perf_counter() - t) / inner)
    return {k: statistics.median(v) for k, v in times.items()}


def peak_memory(fn, x, device: str) -> int:
    """Bytes: CUDA peak allocated during one fwd+bwd, or (CPU) saved-for-backward + outputs."""
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step(fn, x)
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    seen: dict = {}

    def pack(t: torch.Tensor):
        try:
            key = t.untyped_storage().data_ptr()
            seen[key] = t.untyped_storage().nbytes()
        except RuntimeError:
            pass
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn(x)
    total = sum(seen.values())
    vals = (
        out.values()
        if hasattr(out, "values") and not hasattr(out, "weights")
        else [t for wb in out for t in wb]
    )
    total += sum(
        v.untyped_storage().nbytes() for v in vals if v.untyped_storage().data_ptr() not in seen
    )
    loss_of(out).backward()
    return total


def compare(name, spec, mode, batch, channels, device, args, rows) -> None:
    from nfn import layers as nfn_layers

    gen = torch.Generator().manual_seed(0)
    feats = {
        n: torch.randn((batch, channels, *spec[n].shape), generator=gen).to(device)
        for n in spec.names
    }
    net, theirs_x = nfn_parts(spec, feats)
    torch.manual_seed(0)
    ours = NFLinear(spec, channels, channels, mode=mode, basis="complete").to(device)
    ref_cls = nfn_layers.NPLinear if mode == "np" else nfn_layers.HNPLinear
    theirs = ref_cls(net, channels, channels).to(device)
    n_ours = sum(p.numel() for p in ours.parameters())
    n_theirs = sum(p.numel() for p in theirs.parameters())
    fns = {"ours": ours, "theirs": theirs}
    xs = {"ours": feats, "theirs": theirs_x}
    rounds, inner = (5, 3) if args.quick else (15, 5)
    t = time_pair(fns, xs, device, rounds, inner)
    mem = {k: peak_memory(fns[k], xs[k], device) for k in fns}
    row = {
        "case": f"{name} {mode}",
        "params": f"{n_ours}/{n_theirs}",
        "ours_ms": t["ours"] * 1e3,
        "theirs_ms": t["theirs"] * 1e3,
        "time": t["ours"] / t["theirs"],
        "mem": mem["ours"] / mem["theirs"],
        "mem_mb": f"{mem['ours'] / 2**20:.1f}/{mem['theirs'] / 2**20:.1f}",
    }
    if not args.no_compile:
        torch._dynamo.reset()
        t0 = time.perf_counter()
        c_ours = torch.compile(ours)
        step(c_ours, feats)
        sync(device)
        compile_s = time.perf_counter() - t0
        c_theirs = torch.compile(theirs)
        step(c_theirs, theirs_x)
        tc = time_pair({"ours": c_ours, "theirs": c_theirs}, xs, device, rounds, inner)
        row.update(
            compiled_ms=f"{tc['ours'] * 1e3:.2f}/{tc['theirs'] * 1e3:.2f}",
            compiled=tc["ours"] / tc["theirs"],
            compile_s=compile_s,
        )
    rows.append(row)
    print(format_row(row), flush=True)


COLUMNS = [
    ("case", 28, "{}"),
    ("params", 16, "{}"),
    ("ours_ms", 9, "{:.2f}"),
    ("theirs_ms", 10, "{:.2f}"),
    ("time", 6, "{:.2f}"),
    ("mem_mb", 14, "{}"),
    ("mem", 6, "{:.2f}"),
    ("compiled_ms", 14, "{}"),
    ("compiled", 9, "{:.2f}"),
    ("compile_s", 10, "{:.1f}"),
]


def format_row(row: dict) -> str:
    return " ".join(
        (fmt.format(row[k]) if k in row else "-").rjust(w) if i else fmt.format(row[k]).ljust(w)
        for i, (k, w, fmt) in enumerate(COLUMNS)
    )


def depth_scaling(device: str, args) -> None:
    from nfn import layers as nfn_layers

    print("\n## depth scaling: MLP width 32, batch 32, 16 channels, mode np")
    print(
        f"{'L':>3} {'terms':>7} {'build_s':>8} {'ours_ms':>8} {'theirs_ms':>9} {'time':>6}"
        + ("" if args.no_compile else f" {'compile_s':>9} {'compiled_ms':>11}")
    )
    depths = [2, 4, 8, 16] if args.quick else [2, 4, 8, 16, 32, 64]
    for L in depths:
        spec = mlp_spec((32,) * (L + 1))
        gen = torch.Generator().manual_seed(0)
        feats = {
            n: torch.randn((32, 16, *spec[n].shape), generator=gen).to(device) for n in spec.names
        }
        t0 = time.perf_counter()
        ours = NFLinear(spec, 16, 16, basis="complete").to(device)
        build = time.perf_counter() - t0
        net, theirs_x = nfn_parts(spec, feats)
        theirs = nfn_layers.NPLinear(net, 16, 16).to(device)
        t = time_pair(
            {"ours": ours, "theirs": theirs},
            {"ours": feats, "theirs": theirs_x},
            device,
            3 if args.quick else 7,
            2,
        )
        line = (
            f"{L:>3} {ours.num_terms:>7} {build:>8.2f} {t['ours'] * 1e3:>8.2f} "
            f"{t['theirs'] * 1e3:>9.2f} {t['ours'] / t['theirs']:>6.2f}"
        )
        max_compiled = 16 if args.quick else 32
        if not args.no_compile and max_compiled >= L:
            torch._dynamo.reset()
            t0 = time.perf_counter()
            c = torch.compile(ours)
            step(c, feats)
            sync(device)
            cs = time.perf_counter() - t0
            tc = time_pair({"ours": c}, {"ours": feats}, device, 3, 2)
            line += f" {cs:>9.1f} {tc['ours'] * 1e3:>11.2f}"
        print(line, flush=True)


def main(argv: list | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--quick", action="store_true", help="fewer rounds and depths")
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile runs")
    parser.add_argument("--no-depth", action="store_true", help="skip the depth scaling table")
    parser.add_argument(
        "--case", default="", help="only the cases whose name contains this (e.g. small-cnn)"
    )
    args = parser.parse_args(argv)
    try:
        import nfn.layers  # noqa: F401
    except ImportError:
        sys.exit("needs the reference package: pip install nfn==0.1.2 einops")
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device available")
    dev = args.device
    name = (
        torch.cuda.get_device_name() if dev == "cuda" else f"CPU x{torch.get_num_threads()} threads"
    )
    print(f"# layer_speed: torch {torch.__version__}, {name}")
    print("ratios are ours/theirs (< 1: ours faster / smaller); params ours/theirs\n")
    print(" ".join(k.ljust(w) if i == 0 else k.rjust(w) for i, (k, w, _) in enumerate(COLUMNS)))
    rows: list = []
    cases = [
        ("small-cnn-zoo b128 c32", cnn_spec((1, 16, 16, 16), 10), ("np", "hnp"), 128, 32),
        ("siren 2-32-32-32-1 b128 c32", mlp_spec((2, 32, 32, 32, 1)), ("np", "hnp"), 128, 32),
        ("mlp 784-128-128-10 b32 c16", mlp_spec((784, 128, 128, 10)), ("np",), 32, 16),
    ]
    for cname, spec, modes, batch, channels in cases:
        if args.case not in cname:
            continue
        for mode in modes:
            compare(cname, spec, mode, batch, channels, dev, args, rows)
    if not args.no_depth:
        depth_scaling(dev, args)


if __name__ == "__main__":
    main()
