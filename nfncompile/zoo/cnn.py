"""Training one shard of the CNN zoo: every model of the shard at once, as batched matmuls.

The shard's hyperparameters are drawn from its seed (:func:`~.store.shard_seed`), its models
stacked into one ``(models, P)`` tensor (:class:`~.stack.ParamStack`) and trained together:
``small_cnn``'s forward pass written as batched matrix products (each conv a matmul on 8x8
digits), Adam or SGD with momentum per model (:class:`~.optim.BatchedOptimizer`), L2 weight
decay, dropout on the pooled features and per-model gradient clipping. Models sharing an
activation and optimizer train as one group.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..nn.activations import ACTIVATIONS
from .config import CNNZooConfig
from .data import load_digits_tensors
from .optim import BatchedOptimizer
from .stack import ParamStack
from .store import shard_seed

__all__ = ["make_cnn_shard"]


def _loguniform(g: torch.Generator, k: int, low: float, high: float) -> torch.Tensor:
    u = torch.rand(k, generator=g, dtype=torch.float64)
    return torch.exp(math.log(low) + u * (math.log(high) - math.log(low)))


def _uniform(g: torch.Generator, k: int, low: float, high: float) -> torch.Tensor:
    return low + torch.rand(k, generator=g, dtype=torch.float64) * (high - low)


def _choice(g: torch.Generator, k: int, n: int) -> torch.Tensor:
    return torch.randint(n, (k,), generator=g)


def _conv2_scatter() -> torch.Tensor:
    """``(16 * 4, 9)`` 0/1 map from kernel taps to (input position, output position) pairs.

    conv2 reads a 4x4 map with a 3x3 kernel, stride 2, padding 1, and writes 2x2: written
    densely it is a ``(16 C) x (4 C)`` matrix whose blocks are kernel taps.
    """
    s = torch.zeros(16, 4, 9)
    for i in range(2):
        for j in range(2):
            for di in range(3):
                for dj in range(3):
                    r, c = 2 * i + di - 1, 2 * j + dj - 1
                    if 0 <= r < 4 and 0 <= c < 4:
                        s[r * 4 + c, i * 2 + j, di * 3 + dj] = 1.0
    return s.reshape(64, 9)


class _CNN:
    """The ``small_cnn`` forward pass for a stack of models (one activation) on their batches."""

    def __init__(self, channels: int, activation: str) -> None:
        self.c = channels
        self.act = ACTIVATIONS[activation]
        self.scatter = _conv2_scatter()

    def logits(
        self,
        p: dict[str, torch.Tensor],
        patches: torch.Tensor,
        keep: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``patches``: ``(k, B, 16, 9)`` conv1 input patches; returns ``(k, B, 10)``."""
        k, b, c = patches.shape[0], patches.shape[1], self.c
        w1 = p["conv1.weight"].reshape(k, c, 9).transpose(1, 2)
        h = self.act(torch.baddbmm(p["conv1.bias"][:, None], patches.reshape(k, b * 16, 9), w1))
        # conv2 as a dense (16 C -> 4 C) map built from the 9 taps
        taps = p["conv2.weight"].reshape(k, c, c, 9).permute(0, 3, 2, 1).reshape(k, 9, c * c)
        dense = torch.matmul(self.scatter, taps).reshape(k, 16, 4, c, c)
        dense = dense.permute(0, 1, 3, 2, 4).reshape(k, 16 * c, 4 * c)
        bias2 = p["conv2.bias"].repeat(1, 4)[:, None]
        h = self.act(torch.baddbmm(bias2, h.reshape(k, b, 16 * c), dense))
        # conv3 reads a 2x2 map: output (0, 0) sees only the kernel taps [1:, 1:]
        w3 = p["conv3.weight"][:, :, :, 1:, 1:].permute(0, 3, 4, 2, 1).reshape(k, 4 * c, c)
        h = self.act(torch.baddbmm(p["conv3.bias"][:, None], h, w3))  # (k, B, C) = pooled
        if keep is not None:
            h = h * keep
        return torch.baddbmm(p["fc.bias"][:, None], h, p["fc.weight"].transpose(1, 2))


def _conv1_patches(images: torch.Tensor) -> torch.Tensor:
    """``(N, 16, 9)``: the 3x3 stride-2 padding-1 patches of 8x8 images."""
    return F.unfold(images, 3, padding=1, stride=2).transpose(1, 2).contiguous()


def _init_uniform(
    g: torch.Generator, flat: ParamStack, k: int, scale: torch.Tensor, fan_in: dict[str, int]
) -> torch.Tensor:
    """PyTorch's default conv/linear init, ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``, scaled."""
    theta = torch.empty(k, flat.size)
    for name, sl in flat.slices.items():
        bound = 1.0 / math.sqrt(fan_in[name])
        u = torch.rand(k, sl.stop - sl.start, generator=g) * 2 - 1
        theta[:, sl] = u * bound * scale.float()[:, None]
    return theta


def make_cnn_shard(config: CNNZooConfig, index: int) -> tuple[dict, list[dict]]:
    """Train the CNNs of shard ``index``: ``(key -> stacked weights, one metadata row each)``."""
    g = torch.Generator().manual_seed(shard_seed(config.seed, "cnn", index))
    first = index * config.models_per_shard
    k = min(config.models_per_shard, config.num_models - first)
    images, labels = load_digits_tensors()
    train_pool, test = config.split()
    n_pool = len(train_pool)
    patches = _conv1_patches(images)

    # hyperparameters, in model-id order
    act = _choice(g, k, len(config.activations))
    opt = _choice(g, k, len(config.optimizers))
    lr = _loguniform(g, k, *config.learning_rate)
    wd = _loguniform(g, k, *config.weight_decay)
    scale = _loguniform(g, k, *config.init_scale)
    drop = _uniform(g, k, *config.dropout)
    frac = _uniform(g, k, *config.train_fraction)
    lo, hi = config.steps
    steps = _loguniform(g, k, lo, hi).round().long().clamp(lo, hi)
    n_train = (frac * n_pool).round().long().clamp(1, n_pool)
    subsets = torch.argsort(torch.rand(k, n_pool, generator=g), dim=1)  # first n_train: subset
    flat = ParamStack(config.param_shapes)
    c = config.channels
    fan_in = {
        "conv1.weight": 9, "conv1.bias": 9, "conv2.weight": 9 * c, "conv2.bias": 9 * c,
        "conv3.weight": 9 * c, "conv3.bias": 9 * c, "fc.weight": c, "fc.bias": c,
    }  # fmt: skip
    theta = _init_uniform(g, flat, k, scale, fan_in)

    # Train group by group (one activation and optimizer each), each group in order of
    # decreasing steps: the models of a group still training are always a prefix of it.
    n_opt = len(config.optimizers)
    group = act * n_opt + opt
    order = torch.argsort(group * (hi + 1) + (hi - steps), stable=True)
    counts = torch.bincount(group[order], minlength=len(config.activations) * n_opt).tolist()
    groups, start = [], 0
    for gi, n in enumerate(counts):
        if n:
            name = config.activations[gi // n_opt]
            adam = config.optimizers[gi % n_opt] == "adam"
            groups.append((start, n, _CNN(c, name), adam))
        start += n
    theta = theta[order].contiguous()
    optimizer = BatchedOptimizer(k, flat.size, lr[order], config.momentum)
    wd_o = wd[order].float()[:, None]
    keep_p = (1 - drop[order]).float()[:, None, None]
    steps_o, n_train_o, subsets_o = steps[order], n_train[order], subsets[order]
    alive = torch.ones(k, dtype=torch.bool)
    bs = config.batch_size
    for t in range(int(steps.max())):
        spans, leaves, losses = [], [], []
        for s0, n, net, adam in groups:
            active = int((steps_o[s0 : s0 + n] > t).sum())
            if not active:
                continue
            span = slice(s0, s0 + active)
            pos = (torch.rand(active, bs, generator=g) * n_train_o[span, None]).long()
            idx = train_pool[subsets_o[span].gather(1, pos)]
            keep = (torch.rand(active, bs, c, generator=g) < keep_p[span]).float() / keep_p[span]
            views = flat.views(theta[span])
            params = {key: v.detach().requires_grad_(True) for key, v in views.items()}
            logits = net.logits(params, patches[idx], keep)
            loss = F.cross_entropy(
                logits.reshape(-1, 10), labels[idx].reshape(-1), reduction="none"
            )
            spans.append((span, adam))
            leaves.extend(params.values())
            losses.append(loss.reshape(active, bs).mean(1))
        grads = torch.autograd.grad(sum(loss.sum() for loss in losses), leaves)
        optimizer.tick()
        per = len(flat.slices)
        with torch.no_grad():
            for i, ((span, adam), loss) in enumerate(zip(spans, losses)):
                grad = flat.flatten(grads[i * per : (i + 1) * per])
                grad += wd_o[span] * theta[span]
                norm = grad.norm(dim=1)
                alive[span] &= torch.isfinite(loss) & torch.isfinite(norm)
                grad = grad * (config.max_grad_norm / (norm + 1e-12)).clamp(max=1.0)[:, None]
                grad = torch.where(alive[span, None], grad, 0.0)
                optimizer.step(theta, span, grad, alive, adam)

    # evaluate every model on its train subset and on the test set, then back to id order
    member = torch.zeros(k, n_pool, dtype=torch.bool)
    member.scatter_(1, subsets, torch.arange(n_pool).expand(k, -1) < n_train[:, None])
    member = member[order]
    metrics = torch.zeros(k, 4, dtype=torch.float64)
    with torch.no_grad():
        for s0, n, net, _ in groups:
            span = slice(s0, s0 + n)
            params = flat.views(theta[span])
            hits, loss = _evaluate(net, params, patches, labels, test, None)
            metrics[span, 0], metrics[span, 1] = hits.double(), loss
            hits, loss = _evaluate(net, params, patches, labels, train_pool, member[span])
            metrics[span, 2], metrics[span, 3] = hits.double(), loss
    inverse = torch.argsort(order)
    theta, alive, metrics = theta[inverse].contiguous(), alive[inverse], metrics[inverse]
    test_correct, test_loss, train_correct, train_loss = metrics.unbind(1)
    rows = []
    n_test = len(test)
    for j in range(k):
        n_tr = int(n_train[j])
        rows.append(
            {
                "id": first + j,
                "shard": index,
                "activation": config.activations[int(act[j])],
                "optimizer": config.optimizers[int(opt[j])],
                "learning_rate": float(lr[j]),
                "weight_decay": float(wd[j]),
                "init_scale": float(scale[j]),
                "dropout": float(drop[j]),
                "train_fraction": float(frac[j]),
                "train_size": n_tr,
                "steps": int(steps[j]),
                "batch_size": bs,
                "diverged": int(not alive[j]),
                "train_loss": float(train_loss[j]) / n_tr,
                "train_accuracy": int(train_correct[j]) / n_tr,
                "test_loss": float(test_loss[j]) / n_test,
                "test_accuracy": int(test_correct[j]) / n_test,
            }
        )
    return flat.stacked(theta), rows


def _evaluate(
    net: _CNN,
    params: dict[str, torch.Tensor],
    patches: torch.Tensor,
    labels: torch.Tensor,
    indices: torch.Tensor,
    member: torch.Tensor | None,
    chunk: int = 256,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-model (correct count, summed loss) over ``indices`` (restricted to ``member``)."""
    k = next(iter(params.values())).shape[0]
    correct = torch.zeros(k, dtype=torch.long)
    total = torch.zeros(k, dtype=torch.float64)
    for start in range(0, len(indices), chunk):
        idx = indices[start : start + chunk]
        b = len(idx)
        logits = net.logits(params, patches[idx].unsqueeze(0).expand(k, -1, -1, -1))
        y = labels[idx]
        hit = logits.argmax(-1) == y
        loss = F.cross_entropy(logits.reshape(-1, 10), y.repeat(k), reduction="none").reshape(k, b)
        if member is not None:
            m = member[:, start : start + b]
            hit = hit & m
            loss = torch.where(m, loss, 0.0)
        correct += hit.sum(1)
        total += loss.double().sum(1)
    return correct, total
