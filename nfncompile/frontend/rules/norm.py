"""Op rules for normalisation layers: batch, instance, group, layer and RMS norm.

Per-channel statistics and affine parameters are labelled with the channels they index.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch.nn.functional as F
from torch import nn

from ..labels import Label, TensorLabels
from .registry import arg, module_nd, register_function, register_module

if TYPE_CHECKING:
    from ..analysis import SymmetryAnalysis


def _channel_label(a: SymmetryAnalysis, x: TensorLabels, cd: int, what: str) -> Label | None:
    return x.labels[cd] if x.ndim > cd else None


@register_module(nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm)
def _module_batchnorm(a: SymmetryAnalysis, mod: nn.Module, target: str, args: Any, kw: Any):
    x = args[0]
    cd = 1
    if isinstance(mod, nn.modules.instancenorm._InstanceNorm) and x.ndim == module_nd(mod) + 1:
        cd = 0
    lab = _channel_label(a, x, cd, type(mod).__name__)
    for attr in ("weight", "bias", "running_mean", "running_var"):
        a.label_param(a.key(target, attr), [lab])
    return TensorLabels(a.out_shape(), x.with_label(cd, lab).labels)


@register_function(F.batch_norm, F.instance_norm)
def _function_batchnorm(a: SymmetryAnalysis, args: tuple, kwargs: dict) -> Any:
    x = args[0]
    lab = _channel_label(a, x, 1, "batch norm")
    names = ("running_mean", "running_var", "weight", "bias")
    for i, name in enumerate(names, 1):
        t = arg(args, kwargs, i, name)
        if isinstance(t, TensorLabels):
            a.tie(lab, t.labels[0], f"{name} indexes channels the group does not act on")
    return TensorLabels(a.out_shape(), x.with_label(1, lab).labels)


@register_module(nn.GroupNorm)
def _module_groupnorm(a: SymmetryAnalysis, mod: nn.GroupNorm, target: str, args: Any, kw: Any):
    x = args[0]
    lab = _channel_label(a, x, 1, "GroupNorm")
    size = mod.num_channels // mod.num_groups
    for i in range(1, mod.num_groups):
        a.cut(lab, i * size)
    a.label_param(a.key(target, "weight"), [lab])
    a.label_param(a.key(target, "bias"), [lab])
    return TensorLabels(a.out_shape(), x.with_label(1, lab).labels)


@register_function(F.group_norm)
def _function_groupnorm(a: SymmetryAnalysis, args: tuple, kwargs: dict) -> Any:
    x, groups = args[0], arg(args, kwargs, 1, "num_groups")
    lab = _channel_label(a, x, 1, "group norm")
    for i in range(1, groups):
        a.cut(lab, i * (x.shape[1] // groups))
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
    a.label_param(a.key(target, "weight"), labels)
    if isinstance(mod, nn.LayerNorm):
        a.label_param(a.key(target, "bias"), labels)
    return x


@register_function(F.layer_norm, *([F.rms_norm] if hasattr(F, "rms_norm") else []))
def _function_layernorm(a: SymmetryAnalysis, args: tuple, kwargs: dict) -> Any:
    x, shape = args[0], arg(args, kwargs, 1, "normalized_shape")
    k = len(shape)
    for i, name in ((2, "weight"), (3, "bias")):
        t = arg(args, kwargs, i, name)
        if isinstance(t, TensorLabels):
            for d in range(k):
                a.tie(x.labels[x.ndim - k + d], t.labels[d])
    return x
