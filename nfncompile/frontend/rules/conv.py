"""Op rules for convolutions (modules and functional, plain, grouped, depthwise, transposed).

A convolution mixes spatial positions (their labels are fixed) and maps input channels to a
new run of output channels; grouped and depthwise convolutions constrain which channels may
move together.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch.nn.functional as F
from torch import nn

from ..labels import Seg, TensorLabels
from .registry import Rule, Unsupported, arg, register_function, register_module

if TYPE_CHECKING:
    from ..analysis import SymmetryAnalysis


def _conv(a: SymmetryAnalysis, mod: nn.Module, target: str, x: TensorLabels) -> TensorLabels:
    nd = len(mod.kernel_size)
    cd = x.ndim - nd - 1
    x = a.keep(x, tuple(range(cd + 1, x.ndim)), "convolution mixes spatial positions")
    lab = x.labels[cd]
    g = mod.groups
    cin, cout = mod.in_channels, mod.out_channels
    transposed = isinstance(mod, nn.modules.conv._ConvTransposeNd)
    kernel = [None] * nd
    wkey, bkey = a.key(target, "weight"), a.key(target, "bias")
    if g == 1:
        out = a.new_run(cout, "neuron", target)
        a.label_param(wkey, [lab, out, *kernel] if transposed else [out, lab, *kernel])
        a.label_param(bkey, [out])
    elif cin == g:
        # depthwise: output group i is made from input neuron i alone
        m = cout // g
        if lab is None:
            out = a.new_run(cout, "neuron", target)
            for k in range(1, g):
                a.cut(out, k * m)
            w_axes = [None, out, *kernel] if transposed else [out, None, *kernel]
            a.label_param(wkey, w_axes)
            a.label_param(bkey, [out])
        else:
            out = tuple(Seg(s.run, s.offset, s.length, s.inner * m) for s in lab)
            if transposed:
                a.label_param(wkey, [lab, None, *kernel])
            else:
                a.label_param(wkey, [out, None, *kernel])
            a.label_param(bkey, [out])
    else:
        k_in, m = cin // g, cout // g
        if not transposed:
            # the input channels of every group move together (one space of size cin/g);
            # each output group permutes on its own
            pieces = [a.slice_label(lab, i * k_in, (i + 1) * k_in) for i in range(g)]
            for p in pieces[1:]:
                a.tie(pieces[0], p)
            out = a.new_run(cout, "neuron", target)
            for i in range(1, g):
                a.cut(out, i * m)
            a.label_param(wkey, [out, pieces[0], *kernel])
        else:
            for i in range(1, g):
                a.cut(lab, i * k_in)
            out = a.new_run(cout, "neuron", target)
            first = a.slice_label(out, 0, m)
            for i in range(1, g):
                a.tie(first, a.slice_label(out, i * m, (i + 1) * m))
            a.label_param(wkey, [lab, first, *kernel])
        a.label_param(bkey, [out])
    return TensorLabels(a.out_shape(), x.with_label(cd, out).labels)


@register_module(nn.modules.conv._ConvNd)
def _module_conv(a: SymmetryAnalysis, mod: nn.Module, target: str, args: Any, kw: Any) -> Any:
    return _conv(a, mod, target, args[0])


def _function_conv(transposed: bool) -> Rule:
    def rule(a: SymmetryAnalysis, args: tuple, kwargs: dict) -> Any:
        x, w = args[0], arg(args, kwargs, 1, "weight")
        b = arg(args, kwargs, 2, "bias")
        groups = arg(args, kwargs, 7 if transposed else 6, "groups", 1)
        if not isinstance(w, TensorLabels) or groups != 1:
            raise Unsupported("functional convolution with groups > 1 or a computed weight")
        nd = w.ndim - 2
        cd = x.ndim - nd - 1
        x = a.keep(x, tuple(range(cd + 1, x.ndim)), "convolution mixes spatial positions")
        a.keep(w, tuple(range(2, w.ndim)), "convolution kernel positions are not neurons")
        cin_axis, out_axis = (0, 1) if transposed else (1, 0)
        a.tie(x.labels[cd], w.labels[cin_axis], "convolution input meets unlabelled weight")
        if isinstance(b, TensorLabels):
            a.tie(w.labels[out_axis], b.labels[0])
        return TensorLabels(a.out_shape(), x.with_label(cd, w.labels[out_axis]).labels)

    return rule


register_function(F.conv1d, F.conv2d, F.conv3d)(_function_conv(False))
register_function(F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)(_function_conv(True))
