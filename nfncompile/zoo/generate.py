"""Model zoos: many small networks trained (or fitted) on the digits, stored for NFNs to read.

Two kinds, each configured by a frozen dataclass parsed from YAML (``specs/zoos/*.yaml``):

``type: cnn`` (:class:`CNNZooConfig`)
    Small CNNs in the manner of the Small CNN Zoo (Unterthiner et al. 2020): the
    :func:`~nfncompile.architectures.small_cnn` network trained on the 8x8 digits with a
    learning rate, weight decay, init scale, dropout, train fraction, step count, activation and
    optimizer drawn per model; each model's test accuracy is recorded (the target of
    generalization prediction).
``type: inr`` (:class:`INRZooConfig`)
    One :func:`~nfncompile.architectures.siren` fitted to every digit image, with its PSNR, the
    image's label and index (INR classification and editing).

Training is vectorised: a shard of models is one stacked ``(models, params)`` tensor, the
networks run as batched matrix products (each conv written as a matmul) and the optimizer
(Adam or SGD with momentum, per-model learning rates) is a hand-vectorised update.

Storage (a zoo directory)::

    shard-00000.safetensors   stacked weights: key -> (models in shard, *param shape)
    ...                       (header metadata: the shard's CSV rows, as JSON)
    metadata.csv              one row per model: id, shard, hyperparameters, targets
    manifest.json             config, seed, versions, sha256 per shard, column types, summary

State_dict keys are exactly those of the architecture (``conv1.weight``, ..., ``fc.bias`` /
``hidden.0.weight``, ..., ``out.bias``), so ``WeightSpaceFeatures.from_state_dicts`` works with
the traced spec. Every shard is generated from a seed derived from ``(seed, shard index)``: any
shard can be recomputed alone and the same seed gives byte-identical shards (on one machine and
torch version: every shard is computed with one thread). Generation is resumable (finished
shards are recorded with their sha256 and skipped; a shard is written to a temp file, fsynced
and renamed, so none is ever half-written), parallel (``workers``) and splittable across
machines (``shard=(i, n)`` makes every n-th shard from i; copy the parts into one directory and
run once more without ``--shard`` to finish).

Examples
--------
>>> config = load_zoo_config("specs/zoos/digits_cnn.yaml", quick=True)  # doctest: +SKIP
>>> generate_zoo(config, "zoo", progress=False)  # doctest: +SKIP
>>> zoo = load_zoo("zoo")  # doctest: +SKIP
>>> feats = zoo.features(spec)  # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import hashlib
import io
import json
import math
import os
import statistics
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..declarative.validate import parse, to_dict
from ..errors import ConfigError, FieldError, ZooError
from ..files import atomic_write, load_yaml
from ..nn.activations import ACTIVATIONS

__all__ = [
    "ZooError",
    "CNNZooConfig",
    "INRZooConfig",
    "ZooConfig",
    "ZooReport",
    "config_from_dict",
    "shard_name",
    "Zoo",
    "load_zoo_config",
    "generate_zoo",
    "make_shard",
    "load_zoo",
    "parse_shard",
    "add_zoo_arguments",
    "run_zoo_command",
    "FORMAT",
    "FORMAT_VERSION",
]

#: The ``format`` field of every manifest and shard header.
FORMAT = "nfncompile-zoo"
#: Bumped when the layout of a zoo directory changes.
FORMAT_VERSION = 1

MANIFEST = "manifest.json"
METADATA = "metadata.csv"
#: The one key of a shard's safetensors header metadata (a JSON object with its rows).
SHARD_METADATA_KEY = "nfncompile"


# --------------------------------------------------------------------------------------------
# configs
# --------------------------------------------------------------------------------------------

OPTIMIZERS = ("adam", "sgd")


def _positive_range(name: str, value: tuple, *, allow_zero: bool = False) -> None:
    lo, hi = value
    if lo > hi:
        raise FieldError(name, f"expected [low, high] with low <= high, got [{lo}, {hi}]")
    if (lo < 0) if allow_zero else (lo <= 0):
        need = "non-negative" if allow_zero else "positive (the range is log-uniform)"
        raise FieldError(name, f"expected {need} bounds, got [{lo}, {hi}]")


@dataclass(frozen=True)
class CNNZooConfig:
    """A zoo of small CNNs trained on the digits with hyperparameters drawn per model.

    Ranges are ``[low, high]``: learning rate, weight decay, init scale and steps are drawn
    log-uniformly, dropout and train fraction uniformly; activation and optimizer uniformly
    from their lists. The digits are split once (``test_fraction``, ``split_seed``) into a
    train pool and a test set shared by every model.
    """

    type: ClassVar[str] = "cnn"

    name: str = field(default="digits_cnn", metadata={"help": "zoo name"})
    out: str = field(default="zoos/digits_cnn", metadata={"help": "default output directory"})
    seed: int = field(default=0, metadata={"help": "seeds every shard (with its index)"})
    num_models: int = field(default=1536, metadata={"min": 1})
    models_per_shard: int = field(default=128, metadata={"min": 1})
    channels: int = field(default=8, metadata={"min": 1, "help": "channels of every conv"})
    activations: tuple[str, ...] = field(
        default=("relu", "tanh"), metadata={"min_items": 1, "choices": tuple(ACTIVATIONS)}
    )
    optimizers: tuple[str, ...] = field(
        default=("adam", "sgd"), metadata={"min_items": 1, "choices": OPTIMIZERS}
    )
    learning_rate: tuple[float, float] = field(
        default=(1e-3, 0.3), metadata={"help": "log-uniform"}
    )
    weight_decay: tuple[float, float] = field(
        default=(1e-6, 0.03), metadata={"help": "L2 coefficient, log-uniform"}
    )
    init_scale: tuple[float, float] = field(
        default=(1.0, 6.0), metadata={"help": "multiplies PyTorch's default init; log-uniform"}
    )
    dropout: tuple[float, float] = field(
        default=(0.0, 0.5),
        metadata={"min": 0.0, "max": 0.95, "help": "on the pooled features; uniform"},
    )
    train_fraction: tuple[float, float] = field(
        default=(0.05, 1.0),
        metadata={"min": 0.0, "max": 1.0, "help": "of the train pool; uniform"},
    )
    steps: tuple[int, int] = field(
        default=(30, 1000), metadata={"min": 1, "help": "SGD/Adam steps; log-uniform"}
    )
    batch_size: int = field(default=32, metadata={"min": 1})
    momentum: float = field(default=0.9, metadata={"min": 0.0, "max": 0.999})
    max_grad_norm: float = field(default=5.0, metadata={"help": "per-model gradient clipping"})
    test_fraction: float = field(default=0.3, metadata={"min": 0.01, "max": 0.9})
    split_seed: int = 0

    def __post_init__(self) -> None:
        for name in ("learning_rate", "weight_decay", "init_scale"):
            _positive_range(name, getattr(self, name))
        for name in ("dropout", "train_fraction", "steps"):
            _positive_range(name, getattr(self, name), allow_zero=True)
        if self.train_fraction[0] <= 0:
            raise FieldError(
                "train_fraction", f"expected a low bound > 0, got {self.train_fraction[0]}"
            )
        if self.max_grad_norm <= 0:
            raise FieldError(
                "max_grad_norm", f"expected a positive number, got {self.max_grad_norm}"
            )

    @property
    def num_shards(self) -> int:
        """``ceil(num_models / models_per_shard)``."""
        return -(-self.num_models // self.models_per_shard)

    @property
    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """State_dict key -> shape of one model (``small_cnn``'s order)."""
        c = self.channels
        return {
            "conv1.weight": (c, 1, 3, 3),
            "conv1.bias": (c,),
            "conv2.weight": (c, c, 3, 3),
            "conv2.bias": (c,),
            "conv3.weight": (c, c, 3, 3),
            "conv3.bias": (c,),
            "fc.weight": (10, c),
            "fc.bias": (10,),
        }

    @property
    def input_shape(self) -> tuple[int, ...]:
        """An example input shape for tracing (batch of 2 digits)."""
        return (2, 1, 8, 8)

    def build(self, activation: str = "relu") -> nn.Module:
        """A fresh ``small_cnn`` of this zoo's width (load weights into it)."""
        from ..architectures import small_cnn

        return small_cnn(
            in_channels=1, channels=self.channels, num_classes=10, activation=activation
        )

    def split(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(train_pool, test)`` digit indices shared by every model of the zoo."""
        from .data import NUM_DIGITS, split_indices

        train, test = split_indices(
            NUM_DIGITS, (1 - self.test_fraction, self.test_fraction), self.split_seed
        )
        return train, test


@dataclass(frozen=True)
class INRZooConfig:
    """A zoo of SIRENs, each fitted to one digit image (full-batch Adam on its 64 pixels)."""

    type: ClassVar[str] = "inr"

    name: str = field(default="digits_inr", metadata={"help": "zoo name"})
    out: str = field(default="zoos/digits_inr", metadata={"help": "default output directory"})
    seed: int = field(default=0, metadata={"help": "seeds every shard (with its index)"})
    num_images: int | None = field(
        default=None,
        metadata={"min": 1, "max": 1797, "help": "the first N digits (null: all 1797)"},
    )
    fits_per_image: int = field(
        default=1, metadata={"min": 1, "help": "independent fits (random inits) per image"}
    )
    models_per_shard: int = field(default=128, metadata={"min": 1})
    hidden: tuple[int, ...] = field(default=(32, 32, 32), metadata={"min": 1, "min_items": 1})
    w0: float = field(default=30.0, metadata={"min": 1e-6})
    steps: int = field(default=300, metadata={"min": 1})
    learning_rate: float = field(default=2e-4, metadata={"min": 1e-12, "help": "Adam"})

    @property
    def num_models(self) -> int:
        """``num_images * fits_per_image``."""
        from .data import NUM_DIGITS

        return (self.num_images or NUM_DIGITS) * self.fits_per_image

    @property
    def num_shards(self) -> int:
        """``ceil(num_models / models_per_shard)``."""
        return -(-self.num_models // self.models_per_shard)

    @property
    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """State_dict key -> shape of one model (``siren``'s order)."""
        widths = (2, *self.hidden)
        out: dict[str, tuple[int, ...]] = {}
        for i in range(len(self.hidden)):
            out[f"hidden.{i}.weight"] = (widths[i + 1], widths[i])
            out[f"hidden.{i}.bias"] = (widths[i + 1],)
        out["out.weight"] = (1, widths[-1])
        out["out.bias"] = (1,)
        return out

    @property
    def input_shape(self) -> tuple[int, ...]:
        """An example input shape for tracing (2 coordinates)."""
        return (2, 2)

    def build(self) -> nn.Module:
        """A fresh ``siren`` of this zoo's shape (load weights into it)."""
        from ..architectures import siren

        return siren(2, self.hidden, 1, self.w0)


#: Either zoo config; YAML picks one by its ``type`` key (``cnn`` or ``inr``).
ZooConfig = CNNZooConfig | INRZooConfig


def load_zoo_config(path: str | os.PathLike, *, quick: bool = False) -> ZooConfig:
    """Read a zoo spec YAML.

    A top-level ``quick:`` mapping holds overrides that ``quick=True`` (``--quick``) applies:
    a tiny zoo for tests and smoke runs.

    Raises
    ------
    ConfigError
        Path-qualified, naming the file (and ``quick.`` for an error in the overrides).
    """
    data, source = load_yaml(path)
    return config_from_dict(data, source=source, quick=quick)


def config_from_dict(data: Any, *, source: str = "<dict>", quick: bool = False) -> ZooConfig:
    """Like :func:`load_zoo_config`, from plain data."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping with a 'type' key (cnn or inr)")
    data = dict(data)
    overrides = data.pop("quick", None) or {}
    if not isinstance(overrides, dict):
        raise ConfigError(f"{source}: quick: expected a mapping of overrides")
    if "type" in overrides:
        raise ConfigError(f"{source}: quick.type: the zoo type cannot be overridden")
    config = parse(ZooConfig, data, source=source)
    try:
        quick_config = parse(ZooConfig, {**data, **overrides}, source=source)
    except ConfigError as e:
        raise ConfigError(f"{e} (in the quick: overrides)") from None
    return quick_config if quick else config


# --------------------------------------------------------------------------------------------
# vectorised training helpers
# --------------------------------------------------------------------------------------------


def _shard_seed(seed: int, kind: str, index: int) -> int:
    digest = hashlib.sha256(f"{FORMAT}/{kind}/{seed}/{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


class _Flat:
    """Offsets of named parameters inside a flat ``(models, P)`` tensor."""

    def __init__(self, shapes: dict[str, tuple[int, ...]]) -> None:
        self.shapes = shapes
        self.slices: dict[str, slice] = {}
        start = 0
        for name, shape in shapes.items():
            n = math.prod(shape)
            self.slices[name] = slice(start, start + n)
            start += n
        self.size = start

    def views(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        k = flat.shape[0]
        return {n: flat[:, s].reshape(k, *self.shapes[n]) for n, s in self.slices.items()}

    def stacked(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        return {n: v.contiguous().clone() for n, v in self.views(flat).items()}


def _loguniform(g: torch.Generator, k: int, low: float, high: float) -> torch.Tensor:
    u = torch.rand(k, generator=g, dtype=torch.float64)
    return torch.exp(math.log(low) + u * (math.log(high) - math.log(low)))


def _uniform(g: torch.Generator, k: int, low: float, high: float) -> torch.Tensor:
    return low + torch.rand(k, generator=g, dtype=torch.float64) * (high - low)


def _choice(g: torch.Generator, k: int, n: int) -> torch.Tensor:
    return torch.randint(n, (k,), generator=g)


class _Optimizer:
    """Adam or SGD with momentum for a stack of models, one learning rate per model.

    Models are updated in contiguous row ranges (``rows``) that share an optimizer; every model
    has taken the same number of steps ``t`` when it is updated (models that stopped training
    are simply no longer passed). The update of a model that is not ``alive`` is zero.
    """

    def __init__(self, k: int, p: int, lr: torch.Tensor, momentum: float) -> None:
        self.m = torch.zeros(k, p)
        self.v = torch.zeros(k, p)
        self.lr = lr.float()[:, None]
        self.momentum = momentum
        self.t = 0

    @torch.no_grad()
    def step(
        self, theta: torch.Tensor, rows: slice, grad: torch.Tensor, alive: torch.Tensor, adam: bool
    ) -> None:
        """Update ``theta[rows]`` in place from ``grad`` (already zero where not alive)."""
        m = self.m[rows]
        if adam:
            v = self.v[rows]
            m.mul_(0.9).add_(grad, alpha=0.1)
            v.mul_(0.999).addcmul_(grad, grad, value=0.001)
            denom = (v / (1 - 0.999**self.t)).sqrt_().add_(1e-8)
            update = (m / (1 - 0.9**self.t)).div_(denom)
        else:
            m.mul_(self.momentum).add_(grad)
            update = m.clone()
        update.mul_(self.lr[rows] * alive[rows, None])
        theta[rows] -= update


# ---- the small CNN as batched matmuls ------------------------------------------------------


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
    g: torch.Generator, flat: _Flat, k: int, scale: torch.Tensor, fan_in: dict[str, int]
) -> torch.Tensor:
    """PyTorch's default conv/linear init, ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``, scaled."""
    theta = torch.empty(k, flat.size)
    for name, sl in flat.slices.items():
        bound = 1.0 / math.sqrt(fan_in[name])
        u = torch.rand(k, sl.stop - sl.start, generator=g) * 2 - 1
        theta[:, sl] = u * bound * scale.float()[:, None]
    return theta


def _make_cnn_shard(config: CNNZooConfig, index: int) -> tuple[dict, list[dict]]:
    from .data import load_digits_tensors

    g = torch.Generator().manual_seed(_shard_seed(config.seed, "cnn", index))
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
    flat = _Flat(config.param_shapes)
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
    optimizer = _Optimizer(k, flat.size, lr[order], config.momentum)
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
        optimizer.t += 1
        per = len(flat.slices)
        with torch.no_grad():
            for i, ((span, adam), loss) in enumerate(zip(spans, losses)):
                grad = torch.cat([x.flatten(1) for x in grads[i * per : (i + 1) * per]], 1)
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


# ---- SIRENs ---------------------------------------------------------------------------------


def _siren_render(
    p: dict[str, torch.Tensor], coords: torch.Tensor, depth: int, w0: float
) -> torch.Tensor:
    """``(k, P)`` pixel values of ``k`` SIRENs at ``coords`` ``(P, 2)``."""
    k = p["out.weight"].shape[0]
    h = coords.unsqueeze(0).expand(k, -1, -1)
    for i in range(depth):
        w, b = p[f"hidden.{i}.weight"], p[f"hidden.{i}.bias"]
        h = torch.sin(w0 * torch.baddbmm(b[:, None], h, w.transpose(1, 2)))
    out = torch.baddbmm(p["out.bias"][:, None], h, p["out.weight"].transpose(1, 2))
    return out.squeeze(-1)


def _make_inr_shard(config: INRZooConfig, index: int) -> tuple[dict, list[dict]]:
    from .data import load_digits_tensors, pixel_grid, psnr

    g = torch.Generator().manual_seed(_shard_seed(config.seed, "inr", index))
    first = index * config.models_per_shard
    k = min(config.models_per_shard, config.num_models - first)
    ids = torch.arange(first, first + k)
    image_index = ids // config.fits_per_image
    images, labels = load_digits_tensors()
    target = images[image_index].reshape(k, -1)
    coords = pixel_grid(8)
    flat = _Flat(config.param_shapes)
    depth = len(config.hidden)
    theta = torch.empty(k, flat.size)
    widths = (2, *config.hidden, 1)
    for i in range(depth + 1):
        prefix = "out" if i == depth else f"hidden.{i}"
        fan_in = widths[i]
        w_bound = 1.0 / fan_in if i == 0 else math.sqrt(6.0 / fan_in) / config.w0
        for suffix, bound in (("weight", w_bound), ("bias", 1.0 / math.sqrt(fan_in))):
            sl = flat.slices[f"{prefix}.{suffix}"]
            theta[:, sl] = (torch.rand(k, sl.stop - sl.start, generator=g) * 2 - 1) * bound
    lr = torch.full((k,), config.learning_rate, dtype=torch.float64)
    optimizer = _Optimizer(k, flat.size, lr, 0.0)
    alive = torch.ones(k, dtype=torch.bool)
    per = len(flat.slices)
    for _ in range(config.steps):
        params = {n: v.detach().requires_grad_(True) for n, v in flat.views(theta).items()}
        pred = _siren_render(params, coords, depth, config.w0)
        loss = (pred - target).pow(2).mean(1)
        grads = torch.autograd.grad(loss.sum(), list(params.values()))
        optimizer.t += 1
        with torch.no_grad():
            grad = torch.cat([x.flatten(1) for x in grads[:per]], 1)
            alive &= torch.isfinite(loss)
            grad = torch.where(alive[:, None], grad, 0.0)
            optimizer.step(theta, slice(0, k), grad, alive, adam=True)
    with torch.no_grad():
        pred = _siren_render(flat.views(theta), coords, depth, config.w0)
        mse = (pred - target).pow(2).mean(1)
        quality = psnr(pred, target)
    rows = []
    for j in range(k):
        rows.append(
            {
                "id": first + j,
                "shard": index,
                "image_index": int(image_index[j]),
                "label": int(labels[image_index[j]]),
                "fit": int(ids[j] % config.fits_per_image),
                "steps": config.steps,
                "learning_rate": config.learning_rate,
                "mse": float(mse[j]),
                "psnr": float(quality[j]),
            }
        )
    return flat.stacked(theta), rows


_COLUMNS = {
    "cnn": {
        "id": "int", "shard": "int", "activation": "str", "optimizer": "str",
        "learning_rate": "float", "weight_decay": "float", "init_scale": "float",
        "dropout": "float", "train_fraction": "float", "train_size": "int", "steps": "int",
        "batch_size": "int", "diverged": "int", "train_loss": "float",
        "train_accuracy": "float", "test_loss": "float", "test_accuracy": "float",
    },
    "inr": {
        "id": "int", "shard": "int", "image_index": "int", "label": "int", "fit": "int",
        "steps": "int", "learning_rate": "float", "mse": "float", "psnr": "float",
    },
}  # fmt: skip
_TARGET = {"cnn": "test_accuracy", "inr": "psnr"}


# --------------------------------------------------------------------------------------------
# shards on disk
# --------------------------------------------------------------------------------------------


def shard_name(index: int) -> str:
    """``shard-00042.safetensors``."""
    return f"shard-{index:05d}.safetensors"


def _config_digest(config: ZooConfig) -> str:
    text = json.dumps(to_dict(config), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def make_shard(config: ZooConfig, index: int) -> bytes:
    """The bytes of shard ``index`` of a zoo: a safetensors file, computed with one thread.

    Deterministic: the same config and index always give the same bytes (on one machine and
    torch version). The header metadata (one key, ``nfncompile``) holds the rows (JSON) and
    the config digest.
    """
    from safetensors.torch import save

    if not 0 <= index < config.num_shards:
        raise ZooError(f"shard index {index} out of range: the zoo has {config.num_shards} shards")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        if config.type == "cnn":
            tensors, rows = _make_cnn_shard(config, index)
        else:
            tensors, rows = _make_inr_shard(config, index)
    finally:
        torch.set_num_threads(threads)
    header = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "kind": config.type,
        "shard": index,
        "models": len(rows),
        "config_sha256": _config_digest(config),
        "rows": rows,
    }
    # one metadata key holding sorted JSON: safetensors writes several keys in hash order,
    # which would change the bytes from one process to the next
    meta = {SHARD_METADATA_KEY: json.dumps(header, sort_keys=True)}
    return save(tensors, metadata=meta)


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _shard_job(config: ZooConfig, index: int, out: str) -> tuple[int, str, int]:
    """Make one shard and write it into ``out``: ``(index, sha256, models)``."""
    data = make_shard(config, index)
    atomic_write(Path(out) / shard_name(index), data)
    return index, hashlib.sha256(data).hexdigest(), _models_in(config, index)


def _models_in(config: ZooConfig, index: int) -> int:
    first = index * config.models_per_shard
    return min(config.models_per_shard, config.num_models - first)


def _worker_init() -> None:
    torch.set_num_threads(1)


# --------------------------------------------------------------------------------------------
# manifests
# --------------------------------------------------------------------------------------------


def _manifest_name(part: tuple[int, int] | None) -> str:
    if part is None or part[1] == 1:
        return MANIFEST
    return f"manifest.part-{part[0]}-of-{part[1]}.json"


def _base_manifest(config: ZooConfig, spec: str | None) -> dict:
    from .. import __version__

    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "kind": config.type,
        "name": config.name,
        "seed": config.seed,
        "nfncompile_version": __version__,
        "torch_version": torch.__version__.split("+")[0],
        "spec": spec,
        "config": to_dict(config),
        "num_models": config.num_models,
        "num_shards": config.num_shards,
        "models_per_shard": config.models_per_shard,
        "params": {k: list(v) for k, v in config.param_shapes.items()},
        "input_shape": list(config.input_shape),
    }


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ZooError(f"{path}: cannot read the zoo manifest ({e}); delete it and rerun") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ZooError(f"{path}: not an nfncompile zoo manifest")
    return data


def _verified_shards(out: Path, config: ZooConfig, skip: Any = ()) -> dict[int, dict]:
    """Shards the manifests in ``out`` record whose file matches a recorded sha256.

    Every manifest (``manifest.json`` and the ``--shard`` parts) must have been made with
    ``config``; shard indices in ``skip`` are not checked.
    """
    candidates: dict[int, list[dict]] = {}
    paths = sorted(out.glob("manifest.part-*.json"))
    if (out / MANIFEST).exists():
        paths.insert(0, out / MANIFEST)
    want = to_dict(config)
    for path in paths:
        if not path.exists():  # a run that finished the zoo removed its part manifest
            continue
        data = _read_json(path)
        if data.get("config") != want or data.get("format_version") != FORMAT_VERSION:
            got = data.get("config") or {}
            diff = sorted(k for k in set(want) | set(got) if want.get(k) != got.get(k))
            raise ZooError(
                f"{path}: {out} holds a zoo made with a different config (differs in: "
                f"{', '.join(diff) or 'format version'}); choose another --out or delete it"
            )
        for entry in data.get("shards", {}).values():
            candidates.setdefault(int(entry["index"]), []).append(entry)
    verified = {}
    for i, entries in sorted(candidates.items()):
        path = out / shard_name(i)
        if i in skip or not path.exists():
            continue
        sha = _sha256_file(path)
        for entry in entries:
            if entry["sha256"] == sha:
                verified[i] = {"models": entry["models"], "sha256": sha}
                break
    return verified


def _write_manifest(out: Path, name: str, base: dict, done: dict[int, dict], **extra: Any) -> None:
    shards = {
        shard_name(i): {"index": i, "models": e["models"], "sha256": e["sha256"]}
        for i, e in sorted(done.items())
    }
    data = {**base, **extra, "shards": shards}
    atomic_write(out / name, (json.dumps(data, indent=2) + "\n").encode())


def _finalize(out: Path, config: ZooConfig, base: dict, done: dict[int, dict]) -> dict:
    """Write ``metadata.csv`` and the complete ``manifest.json``; return the summary."""
    from safetensors import safe_open

    columns = _COLUMNS[config.type]
    rows: list[dict] = []
    for i in range(config.num_shards):
        path = out / shard_name(i)
        try:
            with safe_open(str(path), framework="pt") as f:
                rows.extend(json.loads(f.metadata()[SHARD_METADATA_KEY])["rows"])
        except Exception as e:
            raise _corrupt(path, out, base, f"unreadable ({e})") from None
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([repr(row[c]) if columns[c] == "float" else row[c] for c in columns])
    atomic_write(out / METADATA, buf.getvalue().encode())
    target = _TARGET[config.type]
    values = [r[target] for r in rows if math.isfinite(r[target])]
    summary = {
        target: {
            "min": min(values),
            "median": statistics.median(values),
            "max": max(values),
            "mean": statistics.fmean(values),
        }
    }
    if config.type == "cnn":
        summary["diverged"] = sum(r["diverged"] for r in rows)
    _write_manifest(
        out,
        MANIFEST,
        base,
        done,
        complete=True,
        metadata=METADATA,
        columns=columns,
        summary=summary,
    )
    for part in out.glob("manifest.part-*.json"):
        part.unlink()
    return summary


def _corrupt(path: Path, out: Path, manifest: dict, why: str) -> ZooError:
    spec = manifest.get("spec") or "SPEC.yaml"
    quick = " --quick" if manifest.get("quick") else ""
    return ZooError(
        f"{path}: corrupted or truncated zoo shard: {why}. Delete {path.name} and rerun "
        f"`nfncompile zoo {spec}{quick} --out {out}` to regenerate it"
    )


# --------------------------------------------------------------------------------------------
# generate
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ZooReport:
    """What :func:`generate_zoo` did.

    Attributes
    ----------
    directory : Path
    num_models, num_shards : int
        Of the whole zoo.
    made, skipped : tuple of int
        Shards made by this run, and shards of this run's part already complete.
    complete : bool
        Whether every shard of the zoo now exists (``metadata.csv`` is written).
    seconds : float
        Wall-clock time of this run.
    summary : dict or None
        Min/median/max/mean of the target (``test_accuracy`` or ``psnr``) when complete.
    """

    directory: Path
    num_models: int
    num_shards: int
    made: tuple[int, ...]
    skipped: tuple[int, ...]
    complete: bool
    seconds: float
    summary: dict | None = None

    def __str__(self) -> str:
        lines = [
            f"zoo {self.directory}: made {len(self.made)} shard(s), skipped {len(self.skipped)} "
            f"already complete, in {self.seconds:.1f} s"
        ]
        if self.complete and self.summary:
            for key, stats in self.summary.items():
                if isinstance(stats, dict):
                    body = ", ".join(f"{k} {v:.4g}" for k, v in stats.items())
                    lines.append(f"  {key}: {body}")
                else:
                    lines.append(f"  {key}: {stats}")
            lines.append(f"  complete: {self.num_models} models in {self.num_shards} shards")
        elif not self.complete:
            lines.append(
                "  incomplete: other shards are missing (made elsewhere with --shard?); copy "
                "them in and rerun without --shard to finish"
            )
        return "\n".join(lines)


def parse_shard(text: str) -> tuple[int, int]:
    """Parse ``"i/n"`` (this machine makes the shards ``s`` with ``s % n == i``).

    Examples
    --------
    >>> parse_shard("1/4")
    (1, 4)
    >>> parse_shard("4/4")
    Traceback (most recent call last):
    ...
    nfncompile.errors.ConfigError: --shard: expected i/n with 0 <= i < n, got '4/4'
    """
    try:
        i, n = (int(x) for x in str(text).split("/"))
    except ValueError:
        i, n = -1, 0
    if not (n >= 1 and 0 <= i < n):
        raise ConfigError(f"--shard: expected i/n with 0 <= i < n, got {text!r}")
    return i, n


def generate_zoo(
    config: ZooConfig,
    out: str | os.PathLike | None = None,
    *,
    workers: int = 1,
    shard: tuple[int, int] | None = None,
    progress: bool = True,
    on_shard_done: Callable[[int], None] | None = None,
    spec: str | None = None,
    quick: bool = False,
) -> ZooReport:
    """Generate (or finish) a zoo in ``out``.

    Parameters
    ----------
    config : CNNZooConfig or INRZooConfig
    out : path, optional
        The zoo directory (default ``config.out``).
    workers : int
        Processes making shards in parallel (each with one torch thread). Any value gives the
        same bytes.
    shard : (i, n), optional
        Make only the shards ``s`` with ``s % n == i`` (recorded in
        ``manifest.part-i-of-n.json``). When every shard of the zoo is present the zoo is
        finished (``metadata.csv``, ``manifest.json``), whichever run completes it.
    progress : bool
        Show a tqdm bar over models.
    on_shard_done : callable, optional
        Called with each shard index once the shard is written and recorded (tests use it to
        simulate an interruption).
    spec, quick : optional
        The spec file and ``--quick`` flag, recorded so error messages can say how to rerun.

    Raises
    ------
    ZooError
        When ``out`` holds a zoo made with a different config.
    """
    from tqdm import tqdm

    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
        raise ConfigError(f"workers must be a positive int, got {workers!r}")
    if shard is not None:
        shard = parse_shard(f"{shard[0]}/{shard[1]}")
    start = time.perf_counter()
    out = Path(config.out if out is None else out)
    out.mkdir(parents=True, exist_ok=True)
    base = {**_base_manifest(config, spec), "quick": bool(quick)}
    name = _manifest_name(shard)
    mine = [s for s in range(config.num_shards) if shard is None or s % shard[1] == shard[0]]

    done = _verified_shards(out, config)  # every shard recorded and intact
    todo = [s for s in mine if s not in done]
    skipped = tuple(s for s in mine if s in done)
    for s in todo:  # temp files a killed run left behind
        for tmp in out.glob(f".{shard_name(s)}.tmp-*"):
            with contextlib.suppress(OSError):
                tmp.unlink()
    part_done = {i: e for i, e in done.items() if i in set(mine)}
    if name == MANIFEST:
        part_done = dict(done)
    if todo:  # (a finished zoo's manifest is not touched when there is nothing to make)
        _write_manifest(out, name, base, part_done, complete=False, part=_part_str(shard))

    total = sum(_models_in(config, s) for s in mine)
    initial = sum(_models_in(config, s) for s in skipped)
    bar = tqdm(
        total=total,
        initial=initial,
        desc=f"zoo {config.name}",
        unit="model",
        disable=not progress,
        dynamic_ncols=True,
    )
    made: list[int] = []

    def record(index: int, sha: str, models: int) -> None:
        done[index] = part_done[index] = {"models": models, "sha256": sha}
        _write_manifest(out, name, base, part_done, complete=False, part=_part_str(shard))
        made.append(index)
        bar.update(models)
        if on_shard_done is not None:
            on_shard_done(index)

    try:
        if workers == 1 or len(todo) <= 1:
            for s in todo:
                record(*_shard_job(config, s, str(out)))
        else:
            ctx = get_context("spawn")
            n = min(workers, len(todo))
            with ProcessPoolExecutor(n, mp_context=ctx, initializer=_worker_init) as pool:
                pending = {pool.submit(_shard_job, config, s, str(out)) for s in todo}
                try:
                    while pending:
                        finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                        for fut in sorted(finished, key=lambda f: f.result()[0]):
                            record(*fut.result())
                finally:
                    for fut in pending:
                        fut.cancel()
    finally:
        bar.close()

    # shards other runs (other --shard parts sharing this directory) recorded meanwhile
    done.update(_verified_shards(out, config, skip=set(done)))
    complete = len(done) == config.num_shards
    summary = _finalize(out, config, base, done) if complete else None
    return ZooReport(
        directory=out,
        num_models=config.num_models,
        num_shards=config.num_shards,
        made=tuple(sorted(made)),
        skipped=skipped,
        complete=complete,
        seconds=time.perf_counter() - start,
        summary=summary,
    )


def _part_str(shard: tuple[int, int] | None) -> str | None:
    return None if shard is None else f"{shard[0]}/{shard[1]}"


# --------------------------------------------------------------------------------------------
# load
# --------------------------------------------------------------------------------------------


class Zoo:
    """A generated zoo: metadata rows and stacked weights, loaded shard by shard on demand.

    Use :func:`load_zoo`. Indices are model ids (row positions): ``None`` (all), an int, a
    slice, or a sequence / 1-D tensor of ints.

    Attributes
    ----------
    directory : Path
    config : CNNZooConfig or INRZooConfig
    kind : {"cnn", "inr"}
    manifest : dict
    metadata : list of dict
        One row per model (``id``, ``shard``, hyperparameters, ``test_accuracy`` / ``psnr``...).
    """

    def __init__(self, directory: Path, manifest: dict, config: ZooConfig, rows: list[dict]):
        self.directory = directory
        self.manifest = manifest
        self.config = config
        self.kind = config.type
        self.metadata = rows
        self._cache: dict[int, dict[str, torch.Tensor]] = {}

    def __len__(self) -> int:
        return len(self.metadata)

    def __repr__(self) -> str:
        return (
            f"Zoo({str(self.directory)!r}, kind={self.kind!r}, models={len(self)}, "
            f"shards={self.config.num_shards})"
        )

    @property
    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """State_dict key -> shape of one model."""
        return self.config.param_shapes

    def column(self, name: str, indices: Any = None) -> list:
        """The values of one metadata column for ``indices``."""
        if self.metadata and name not in self.metadata[0]:
            raise ZooError(f"no column {name!r}; columns: {', '.join(self.metadata[0])}")
        return [self.metadata[i][name] for i in self._indices(indices).tolist()]

    def _indices(self, indices: Any) -> torch.Tensor:
        n = len(self)
        if indices is None:
            return torch.arange(n)
        if isinstance(indices, slice):
            return torch.arange(n)[indices]
        idx = torch.as_tensor(indices, dtype=torch.long).reshape(-1)
        bad = idx[(idx < -n) | (idx >= n)]
        if len(bad):
            raise ZooError(f"model index {int(bad[0])} out of range for a zoo of {n} models")
        return idx % max(n, 1)

    def _shard(self, index: int) -> dict[str, torch.Tensor]:
        if index not in self._cache:
            self._cache[index] = _read_shard(self.directory, self.manifest, index)
        return self._cache[index]

    def arrays(self, indices: Any = None) -> dict[str, torch.Tensor]:
        """Stacked weights ``key -> (len(indices), *shape)``, in the order of ``indices``."""
        idx = self._indices(indices)
        per = self.config.models_per_shard
        shard_of, offset = idx // per, idx % per
        out = {}
        for key, shape in self.param_shapes.items():
            out[key] = torch.empty(len(idx), *shape)
        for s in shard_of.unique().tolist():
            where = (shard_of == s).nonzero().squeeze(1)
            tensors = self._shard(s)
            for key in out:
                out[key][where] = tensors[key][offset[where]]
        return out

    def state_dicts(self, indices: Any = None) -> list[dict[str, torch.Tensor]]:
        """One state_dict per model (keys as the architecture's ``state_dict()``)."""
        arrays = self.arrays(indices)
        n = len(next(iter(arrays.values())))
        return [{k: v[i] for k, v in arrays.items()} for i in range(n)]

    def features(self, spec: Any = None, indices: Any = None) -> Any:
        """:class:`~nfncompile.features.WeightSpaceFeatures` ``(B, 1, *shape)`` for ``indices``.

        Parameters
        ----------
        spec : WeightSpaceSpec, optional
            When given, the weights are checked against it (by key) and follow its order.
        """
        from ..features import WeightSpaceFeatures

        arrays = self.arrays(indices)
        if spec is not None:
            spec.check_state_dict(arrays, leading=1)
            arrays = {k: arrays[k] for k in spec.names}
        return WeightSpaceFeatures({k: v.unsqueeze(1) for k, v in arrays.items()})

    def model(self, index: int) -> nn.Module:
        """The architecture with model ``index``'s weights loaded, in eval mode."""
        (i,) = self._indices(index).tolist()
        if self.kind == "cnn":
            net = self.config.build(self.metadata[i]["activation"])
        else:
            net = self.config.build()
        net.load_state_dict(self.state_dicts([i])[0])
        return net.eval()


def _read_shard(directory: Path, manifest: dict, index: int) -> dict[str, torch.Tensor]:
    from safetensors.torch import load

    name = shard_name(index)
    path = directory / name
    entry = manifest["shards"].get(name)
    if entry is None:
        raise ZooError(f"{manifest_path(directory)}: records no shard {name}")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise _corrupt(path, directory, manifest, f"cannot read it ({e.strerror})") from None
    got = hashlib.sha256(data).hexdigest()
    if got != entry["sha256"]:
        raise _corrupt(
            path,
            directory,
            manifest,
            f"sha256 {got[:16]}... but the manifest records {entry['sha256'][:16]}...",
        )
    try:
        tensors = load(data)
    except Exception as e:
        raise _corrupt(path, directory, manifest, f"unreadable ({e})") from None
    return tensors


def manifest_path(directory: str | os.PathLike) -> Path:
    """``directory / "manifest.json"``."""
    return Path(directory) / MANIFEST


def load_zoo(directory: str | os.PathLike, *, verify: bool = True) -> Zoo:
    """Open a zoo directory made by :func:`generate_zoo` / ``nfncompile zoo``.

    Parameters
    ----------
    directory : path
    verify : bool
        Check every shard's sha256 now (shards are checked again when first read).

    Raises
    ------
    ZooError
        When the zoo is missing or incomplete, or a shard is corrupted or truncated (the
        message names the file and says to delete it and rerun ``nfncompile zoo``).
    """
    directory = Path(directory)
    path = manifest_path(directory)
    if not path.exists():
        parts = sorted(directory.glob("manifest.part-*.json"))
        if parts:
            raise ZooError(
                f"{directory}: incomplete zoo (only part manifests: "
                f"{', '.join(p.name for p in parts)}); gather every part's shards here and "
                "rerun `nfncompile zoo SPEC.yaml` without --shard to finish it"
            )
        raise ZooError(f"{directory}: no zoo here (no {MANIFEST}); make one with `nfncompile zoo`")
    manifest = _read_json(path)
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ZooError(
            f"{path}: zoo format version {manifest.get('format_version')}, this nfncompile "
            f"reads version {FORMAT_VERSION}; regenerate the zoo"
        )
    config = parse(ZooConfig, manifest["config"], source=str(path), path="config")
    if not manifest.get("complete"):
        n = len(manifest.get("shards", {}))
        raise ZooError(
            f"{directory}: incomplete zoo ({n} of {config.num_shards} shards); rerun "
            f"`nfncompile zoo {manifest.get('spec') or 'SPEC.yaml'}"
            f"{' --quick' if manifest.get('quick') else ''} --out {directory}` to finish it"
        )
    if verify:
        for name in manifest["shards"]:
            shard = directory / name
            if not shard.exists():
                raise _corrupt(shard, directory, manifest, "the file is missing")
            got = _sha256_file(shard)
            if got != manifest["shards"][name]["sha256"]:
                raise _corrupt(
                    shard,
                    directory,
                    manifest,
                    f"sha256 {got[:16]}... but the manifest records "
                    f"{manifest['shards'][name]['sha256'][:16]}...",
                )
    rows = _read_metadata(directory / manifest.get("metadata", METADATA), manifest["columns"])
    if len(rows) != config.num_models:
        raise ZooError(
            f"{directory / METADATA}: {len(rows)} rows for a zoo of {config.num_models} models; "
            "delete it and rerun `nfncompile zoo` to rewrite it"
        )
    return Zoo(directory, manifest, config, rows)


def _read_metadata(path: Path, columns: dict[str, str]) -> list[dict]:
    cast = {"int": int, "float": float, "str": str}
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            if reader.fieldnames != list(columns):
                raise ZooError(f"{path}: columns {reader.fieldnames}, expected {list(columns)}")
            return [{k: cast[columns[k]](v) for k, v in row.items()} for row in reader]
    except (OSError, ValueError) as e:
        raise ZooError(f"{path}: cannot read the zoo metadata ({e}); delete it and rerun") from None


# --------------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------------


def _shard_arg(text: str) -> tuple[int, int]:
    try:
        return parse_shard(text)
    except ConfigError as e:
        raise argparse.ArgumentTypeError(str(e).removeprefix("--shard: ")) from None


def _default_workers() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on every platform
        return os.cpu_count() or 1


def add_zoo_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the options of ``nfncompile zoo`` on ``parser``."""
    parser.add_argument("spec", help="zoo spec YAML, e.g. specs/zoos/digits_cnn.yaml")
    parser.add_argument(
        "--out", default=None, help="zoo directory (default: the spec's `out`, or its quick one)"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="processes making shards in parallel (default: the number of CPUs)",
    )
    parser.add_argument(
        "--shard",
        type=_shard_arg,
        default=None,
        metavar="i/n",
        help="make only every n-th shard starting at i (split the work across machines)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="the spec's tiny `quick:` zoo (tests, smoke runs)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run_zoo_command(args: argparse.Namespace) -> int:
    """Run ``nfncompile zoo`` with parsed ``args``; return the exit code."""
    config = load_zoo_config(args.spec, quick=args.quick)
    workers = _default_workers() if args.workers is None else args.workers
    report = generate_zoo(
        config,
        args.out,
        workers=workers,
        shard=args.shard,
        progress=not args.no_progress,
        spec=args.spec,
        quick=args.quick,
    )
    print(report)
    return 0
