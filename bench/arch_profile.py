"""Where one forward+backward of a generated NF-Layer goes, by generated call.

For one of ``bench/arch_scale.py``'s models (linear basis by default), wraps every function the
generated ``torch.fx`` module calls (``nfncompile.backend.fused``'s operations) with a wall-clock
timer and prints, for each of ``--steps`` steps after a warm-up: the forward's and the
backward's seconds, the step's page faults, the seconds spent inside each generated function
(forward only: the backward runs in autograd), and beside them the pointwise floor's. A step
is one ``arch_scale`` round (ours, floor, floor, ours); each side's figures are the mean of its
two. Run it at ``--channels 1`` as well to see the per-call cost that does not shrink with the
data. Usage::

    python bench/arch_profile.py mobilenetv2 [--basis linear] [--channels 16] [--steps 2]
                                             [--batch 1]
                                             [--input-grad]
"""

from __future__ import annotations

import argparse
import collections
import resource
import time

import torch
from arch_scale import ROUND, Floor, Step, build, load_spec, make_inputs

PREFIX = "nfncompile_backend_fused_"


def timed_globals(module: torch.nn.Module) -> collections.Counter:
    """Wrap the fused operations the generated code of ``module`` calls; returns the counter
    (seconds per function) they add to."""
    (gm,) = [m for m in module.modules() if isinstance(m, torch.fx.GraphModule)]
    names = gm.forward.__globals__
    seconds: collections.Counter = collections.Counter()
    for key in [k for k in names if k.startswith(PREFIX) and callable(names[k])]:
        fn, short = names[key], key.removeprefix(PREFIX)

        def wrapped(*args, _fn=fn, _key=short, **kwargs):
            t0 = time.perf_counter()
            try:
                return _fn(*args, **kwargs)
            finally:
                seconds[_key] += time.perf_counter() - t0

        names[key] = wrapped
    return seconds


def _faults() -> int:
    """Minor page faults of this process so far (a fresh large allocation faults in each page)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def step_times(module: torch.nn.Module, x: dict, step: Step) -> tuple:
    """Forward seconds, backward seconds, and the page faults of the whole step."""
    f0, t0 = _faults(), time.perf_counter()
    y = module(x)
    t1 = time.perf_counter()
    names = list(y)
    torch.autograd.backward([y[n] for n in names], [step.grads[n] for n in names])
    for t in x.values():
        t.grad = None
    return t1 - t0, time.perf_counter() - t1, _faults() - f0


def main(argv: list | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model")
    p.add_argument("--basis", default="linear", choices=("linear", "complete"))
    p.add_argument("--channels", type=int, default=16)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch", type=int, default=1, help="weight vectors per step (arch_scale: 2)")
    p.add_argument("--input-grad", action="store_true", help="inputs require gradients")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    spec, _ = load_spec(args.model)
    ours, _ = build(spec, args.basis, args.channels, "np")
    floor = Floor(spec, args.channels, args.channels, "np")
    x = make_inputs(spec, args.batch, args.channels, args.input_grad)
    seconds = timed_globals(ours)
    steps = {"ours": Step(), "floor": Step()}
    steps["ours"](ours, x)
    steps["floor"](floor, x)
    print(
        f"# {args.model}, basis {args.basis}, C={args.channels}, batch {args.batch}, {args.threads} thread(s)"
        + (", inputs require gradients" if args.input_grad else "")
    )
    mods = {"ours": ours, "floor": floor}
    for i in range(args.steps):
        seconds.clear()
        # one arch_scale round (ours, floor, floor, ours): each side's figures are its two steps'
        # mean, so a machine state that alternates step to step falls on both alike
        sums = {k: [0.0, 0.0, 0] for k in mods}
        for k in ROUND:
            for j, v in enumerate(step_times(mods[k], x, steps[k])):
                sums[k][j] += v / 2
        (fwd, bwd, faults), (ffwd, fbwd, ffaults) = sums["ours"], sums["floor"]
        calls = ", ".join(f"{k} {v / 2 * 1e3:.1f}" for k, v in seconds.most_common())
        print(
            f"step {i + 1}: ours forward {fwd * 1e3:.1f} ms ({calls}), backward {bwd * 1e3:.1f} ms,"
            f" {faults:.0f} page faults; floor forward {ffwd * 1e3:.1f} ms, backward"
            f" {fbwd * 1e3:.1f} ms, {ffaults:.0f} page faults;"
            f" ratio {(fwd + bwd) / (ffwd + fbwd):.2f}"
        )


if __name__ == "__main__":
    main()
