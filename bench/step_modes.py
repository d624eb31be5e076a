"""One NF-Layer's training step in three ways of running it, against the floor: eager,
``torch.compile`` and bf16 autocast (issue 9 item 5: batches of 8 ResNet-18 weight vectors at
C=16 on a GPU).

For one of ``bench/arch_scale.py``'s models, prints per mode: the forward+backward seconds of
``NFLinear(spec, C, C, basis=...)`` and of the pointwise floor (``arch_scale.Floor``, run the
same way), their ratio (median over ``arch_scale.counterbalanced`` rounds: ours, floor, floor, ours),
the peak memory of one step above what was held before it (CUDA only:
``torch.cuda.max_memory_allocated``) and, for ``compile``, the seconds the first (compiling)
step took. Usage::

    python bench/step_modes.py [--model resnet18] [--batch 8] [--channels 16] [--device cuda]
                               [--modes eager,compile,bf16] [--rounds 3] [--basis linear]

The device defaults to CUDA when there is one. On CPU, bf16 autocast needs a CPU with bf16
support to be fast, and compiling a full-size model takes minutes.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import torch
from arch_scale import Floor, Step, build, counterbalanced, load_spec, make_inputs
from torch import nn

MODES = ("eager", "compile", "bf16")


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def autocast(mode: str, device: str):
    """bf16 autocast for ``bf16``; nothing for the other modes."""
    if mode == "bf16":
        return torch.autocast(device, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def timed_step(step: Step, module: nn.Module, x: dict, mode: str, device: str) -> float:
    sync(device)
    t0 = time.perf_counter()
    with autocast(mode, device):
        step(module, x)
    sync(device)
    return time.perf_counter() - t0


def peak_bytes(step: Step, module: nn.Module, x: dict, mode: str, device: str) -> int | None:
    """Peak memory of one step above what was allocated before it (CUDA only)."""
    if device != "cuda":
        return None
    sync(device)
    module.zero_grad(set_to_none=False)
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    timed_step(step, module, x, mode, device)
    return torch.cuda.max_memory_allocated() - base


def run_mode(mode: str, spec, args, x: dict) -> dict:
    ours, _ = build(spec, args.basis, args.channels, "np")
    floor = Floor(spec, args.channels, args.channels)
    mods = {"ours": ours.to(args.device), "floor": floor.to(args.device)}
    if mode == "compile":
        mods = {k: torch.compile(m) for k, m in mods.items()}
    steps = {k: Step() for k in mods}
    first = {k: timed_step(steps[k], mods[k], x, mode, args.device) for k in mods}
    times, ratios = counterbalanced(
        lambda k: timed_step(steps[k], mods[k], x, mode, args.device), args.rounds
    )
    mem = {k: peak_bytes(steps[k], mods[k], x, mode, args.device) for k in mods}
    return {
        "ours s": statistics.median(times["ours"]),
        "floor s": statistics.median(times["floor"]),
        "time": statistics.median(ratios),
        "range": (min(ratios), max(ratios)),
        "mem": mem,
        "first s": first["ours"] if mode == "compile" else None,
    }


def main(argv: list | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet18")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--channels", type=int, default=16)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--modes", default=",".join(MODES))
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--basis", default="linear", choices=("linear", "complete"))
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    modes = args.modes.split(",")
    unknown = sorted(set(modes) - set(MODES))
    if unknown:
        p.error(f"unknown mode(s) {unknown}; valid: {', '.join(MODES)}")
    torch.set_num_threads(args.threads)
    name = f"cpu, {args.threads} thread(s)"
    if args.device == "cuda":
        name = torch.cuda.get_device_name()
    print(
        f"# step_modes: {args.model}, basis {args.basis}, batch {args.batch}, C={args.channels}, "
        f"torch {torch.__version__}, {name}"
    )
    spec, _ = load_spec(args.model)
    x = {k: v.to(args.device) for k, v in make_inputs(spec, args.batch, args.channels).items()}
    print(
        f"{'mode':8} {'ours s':>8} {'floor s':>8} {'time':>6} {'range':>10} {'mem MB':>12}"
        f" {'mem':>6} {'compile s':>9}"
    )
    for mode in modes:
        r = run_mode(mode, spec, args, x)
        ours_mem, floor_mem = r["mem"]["ours"], r["mem"]["floor"]
        mem = f"{ours_mem / 2**20:.0f}/{floor_mem / 2**20:.0f}" if ours_mem is not None else "-"
        mem_ratio = f"{ours_mem / floor_mem:.2f}" if ours_mem is not None and floor_mem else "-"
        first = f"{r['first s']:.1f}" if r["first s"] is not None else "-"
        spread = "{:.2f}-{:.2f}".format(*r["range"])
        print(
            f"{mode:8} {r['ours s']:8.3f} {r['floor s']:8.3f} {r['time']:6.2f} {spread:>10}"
            f" {mem:>12} {mem_ratio:>6} {first:>9}",
            flush=True,
        )


if __name__ == "__main__":
    main()
