"""Op rules for normalisation layers: batch, instance, group, layer and RMS norm, and weight
normalisation.

Per-channel statistics and affine parameters are labelled with the channels they index.
Statistics are symmetric over the dims they reduce, so labels there are consumed (a weight
reshaped to ``(1, out, in * kh * kw)`` and batch-normalised in training mode keeps its
input-channel labels). GroupNorm with ``G`` groups treats whole groups alike: it links its
channels into ``G`` blocks (:meth:`~nfncompile.frontend.analysis.SymmetryAnalysis.link_blocks`),
falling back to separate groups when the link cannot hold.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrizations

from ..labels import Label, TensorLabels, is_plain
from .registry import arg, module_nd, register_function, register_module, structured

if TYPE_CHECKING:
    from ..analysis import SymmetryAnalysis


def _channel_label(a: SymmetryAnalysis, x: TensorLabels, cd: int) -> Label | None:
    return a.plain_label(x.labels[cd]) if x.ndim > cd else None


def _consume(a: SymmetryAnalysis, x: TensorLabels, dims: range | tuple) -> None:
    for d in dims:
        a.consume(x.labels[d])


@register_module(nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm)
def _module_batchnorm(a: SymmetryAnalysis, mod: nn.Module, target: str, args: Any, kw: Any):
    x = args[0]
    cd = 1
    if isinstance(mod, nn.modules.instancenorm._InstanceNorm):
        if x.ndim == module_nd(mod) + 1:
            cd = 0
        _consume(a, x, range(cd + 1, x.ndim))  # statistics over the spatial dims
    lab = _channel_label(a, x, cd)
    for attr in ("weight", "bias", "running_mean", "running_var"):
        a.label_param(a.key(target, attr), [lab])
    return TensorLabels(a.out_shape(), x.with_label(cd, lab).labels)


@register_function(F.batch_norm, F.instance_norm)
@structured
def _function_batchnorm(a: SymmetryAnalysis, args: tuple, kwargs: dict) -> Any:
    x = args[0]
    lab = _channel_label(a, x, 1)
    names = ("running_mean", "running_var", "weight", "bias")
    for i, name in enumerate(names, 1):
        t = arg(args, kwargs, i, name)
        if isinstance(t, TensorLabels):
            lt = a.plain_label(t.labels[0])
            a.tie(lab, lt, f"{name} indexes channels the group does not act on")
    if a.node.target is F.instance_norm:
        if arg(args, kwargs, 5, "use_input_stats", True):
            _consume(a, x, range(2, x.ndim))
    elif arg(args, kwargs, 5, "training", False):  # batch statistics over every other dim
        _consume(a, x, [d for d in range(x.ndim) if d != 1])
    return TensorLabels(a.out_shape(), x.with_label(1, lab).labels)


def _groups(a: SymmetryAnalysis, lab: Label | None, groups: int, channels: int, origin: str):
    """GroupNorm's ``groups`` groups: one block each (or separate pieces if that fails)."""
    if lab is None or groups in (1, channels):
        return  # one group (LayerNorm-like), or one channel per group: no constraint
    size = channels // groups

    def separate() -> None:
        for i in range(1, groups):
            a.cut(lab, i * size)

    if is_plain(lab):
        a.link_blocks(groups, (lab,), (), origin, separate)
    else:
        separate()


@register_module(nn.GroupNorm)
def _module_groupnorm(a: SymmetryAnalysis, mod: nn.GroupNorm, target: str, args: Any, kw: Any):
    x = args[0]
    lab = _channel_label(a, x, 1)
    _groups(a, lab, mod.num_groups, mod.num_channels, target)
    _consume(a, x, range(2, x.ndim))
    a.label_param(a.key(target, "weight"), [lab])
    a.label_param(a.key(target, "bias"), [lab])
    return TensorLabels(a.out_shape(), x.with_label(1, lab).labels)


@register_function(F.group_norm)
def _function_groupnorm(a: SymmetryAnalysis, args: tuple, kwargs: dict) -> Any:
    x, groups = args[0], arg(args, kwargs, 1, "num_groups")
    lab = _channel_label(a, x, 1)
    _groups(a, lab, groups, x.shape[1], a.node.name)
    _consume(a, x, range(2, x.ndim))
    for i, name in ((2, "weight"), (3, "bias")):
        t = arg(args, kwargs, i, name)
        if isinstance(t, TensorLabels):
            a.tie(lab, t.labels[0])
    return TensorLabels(a.out_shape(), x.with_label(1, lab).labels)


@register_module(nn.LayerNorm, *([nn.RMSNorm] if hasattr(nn, "RMSNorm") else []))
def _module_layernorm(a: SymmetryAnalysis, mod: nn.Module, target: str, args: Any, kw: Any):
    x = args[0]
    k = len(mod.normalized_shape)
    labels = list(x.labels[x.ndim - k :])
    _consume(a, x, range(x.ndim - k, x.ndim))
    a.label_param(a.key(target, "weight"), labels)
    if isinstance(mod, nn.LayerNorm):
        a.label_param(a.key(target, "bias"), labels)
    return x


@register_function(F.layer_norm, *([F.rms_norm] if hasattr(F, "rms_norm") else []))
@structured
def _function_layernorm(a: SymmetryAnalysis, args: tuple, kwargs: dict) -> Any:
    x, shape = args[0], arg(args, kwargs, 1, "normalized_shape")
    k = len(shape)
    _consume(a, x, range(x.ndim - k, x.ndim))
    for i, name in ((2, "weight"), (3, "bias")):
        t = arg(args, kwargs, i, name)
        if isinstance(t, TensorLabels):
            for d in range(k):
                a.tie(x.labels[x.ndim - k + d], t.labels[d])
    return x


@register_function(torch._weight_norm)
def _function_weight_norm(a: SymmetryAnalysis, args: tuple, kwargs: dict) -> Any:
    """Weight normalisation (``torch._weight_norm(v, g, dim)``, which both
    ``nn.utils.weight_norm`` and its parametrization call): ``v * g / ||v||``, the norm over
    every dim of ``v`` but ``dim`` (all of them for ``dim=-1``), which any permutation of
    those dims leaves as it is; ``g`` scales ``v`` along ``dim``, as a broadcast product
    does."""
    return a.broadcast([args[0], arg(args, kwargs, 1, "g")])


def _module_weight_norm(a: SymmetryAnalysis, mod: nn.Module, target: str, args: Any, kw: Any):
    """The parametrization's module: ``forward(weight_g, weight_v)``."""
    return a.broadcast([args[1], args[0]])


if hasattr(parametrizations, "_WeightNorm"):  # a private class of torch's
    register_module(parametrizations._WeightNorm)(_module_weight_norm)
