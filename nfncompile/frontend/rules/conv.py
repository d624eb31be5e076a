"""Op rules for convolutions (modules and functional, plain, grouped, depthwise, transposed).

A convolution mixes spatial positions (their labels are fixed, but along a dim where its
kernel is 1, its stride 1 and it pads nothing: there it acts position by position) and maps
input channels to a
new run of output channels. Its groups constrain which channels may move together:

* depthwise (one input channel per group): output group ``i`` is made from input channel
  ``i``, so the output neurons are the input neurons (each spanning the channel multiplier);
* grouped (``1 < groups < channels``): input group ``j`` feeds output group ``j`` only. The
  rule records a :class:`~nfncompile.frontend.labels.BlockLink`: input and output channels
  are ``groups`` blocks moved by one block permutation, the channels inside every block
  permute on their own, and the weight's input axis is indexed inside the input block of its
  output row. When the derivation finds that the link cannot hold (the input is not one whole
  space, ...), it falls back to the conservative alternative recorded with it: every output
  group on its own, the input groups tied to one another.

A functional convolution whose weight is the same for every channel (a blur filter repeated
or expanded over the channels, :data:`~nfncompile.frontend.labels.UNIFORM` along its output
axis) is depthwise-equivariant whatever the channels are.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch.nn.functional as F
from torch import nn

from ..labels import POSITIONS, UNIFORM, Label, Seg, TensorLabels, is_plain
from .registry import Rule, Unsupported, arg, register_function, register_module, structured

if TYPE_CHECKING:
    from ..analysis import SymmetryAnalysis


def _repeat_each(label: Any, m: int) -> Any:
    """``label`` with every neuron spanning ``m`` consecutive channels (a depthwise conv's
    channel multiplier)."""
    if m == 1 or label is None or label is UNIFORM:
        return label
    return tuple(Seg(s.run, s.offset, s.length, s.inner * m) for s in label)


def _split_groups(a: SymmetryAnalysis, label: Label, groups: int, reason: str) -> None:
    """Let every one of ``groups`` equal groups of ``label`` permute only on its own; a group
    of one neuron cannot move at all, so it is fixed (never a one-neuron space)."""
    size = sum(s.width for s in label) // groups
    if size == 1:
        a.fix(label, reason)
        return
    for i in range(1, groups):
        a.cut(label, i * size)


def grouped(
    a: SymmetryAnalysis,
    lab: Any,
    groups: int,
    cin: int,
    cout: int,
    transposed: bool,
    origin: str,
    out: Any = None,
    inner: Any = None,
) -> tuple:
    """The labels of a grouped convolution: ``(output channels, in-group weight axis)``.

    Records a :class:`~nfncompile.frontend.labels.BlockLink` between the input label ``lab``
    and the output channels when both are plain labels, else applies the conservative rule
    at once. ``out`` and ``inner`` default to new runs (a module's weight); a functional
    convolution passes its weight's labels.
    """
    k_in, m = cin // groups, cout // groups
    if out is None:
        out = a.new_run(cout, "neuron", origin)
    if inner is None:
        inner = a.new_run(m if transposed else k_in, "param", f"{origin} (in group)")

    def conservative() -> None:
        if transposed:
            for i in range(1, groups):
                a.cut(lab, i * k_in)
            if m == 1:
                a.fix(out, "grouped transposed conv: each output channel is alone in its group")
                a.fix(inner, "grouped transposed conv: each output channel is alone in its group")
            for i in range(groups if m > 1 else 0):
                a.tie(inner, a.slice_label(out, i * m, (i + 1) * m))
        else:
            for i in range(groups):
                a.tie(a.slice_label(lab, i * k_in, (i + 1) * k_in), inner)
            _split_groups(a, out, groups, "grouped conv: each output channel is alone in its group")

    if is_plain(lab) and is_plain(out) and is_plain(inner):
        link_inner = ((inner, 1, 0),) if transposed else ((inner, 0, 1),)
        a.link_blocks(groups, (lab, out), link_inner, origin, conservative)
    else:
        conservative()
    return out, inner


def _mixed(
    x: TensorLabels, nd: int, kernel: Any, stride: Any, padding: Any, plain: bool = True
) -> tuple:
    """The spatial dims of ``x`` a convolution mixes: all but those along which it is
    pointwise (kernel 1, stride 1, no padding, and ``plain``: zero padding mode, no output
    padding), as a Conv1d over tokens whose length is a channel axis is (Swin-MLP's spatial MLP,
    MLP-Mixers written with convs)."""

    def each(v: Any) -> list:
        return list(v) if isinstance(v, (tuple, list)) else [v] * nd

    pads = [0] * nd if padding in ("valid", "same") else each(padding)
    return tuple(
        x.ndim - nd + i
        for i, (k, s, p) in enumerate(zip(each(kernel), each(stride), pads))
        if not plain or (k, s, p) != (1, 1, 0)
    )


def _conv(
    a: SymmetryAnalysis, mod: nn.Module, target: str, x: TensorLabels, constant: bool = False
) -> TensorLabels:
    """``mod`` on ``x`` (plain labels); ``constant``: ``x``'s channels hold one value (a
    recurrence's zero state), which imposes nothing on the weight's input axis."""
    nd = len(mod.kernel_size)
    cd = x.ndim - nd - 1
    plain = mod.padding_mode == "zeros" and not any(getattr(mod, "output_padding", ()) or ())
    mixed = _mixed(x, nd, mod.kernel_size, mod.stride, mod.padding, plain)
    x = a.keep(x, mixed, "convolution mixes spatial positions")
    lab = x.labels[cd]
    g = mod.groups
    cin, cout = mod.in_channels, mod.out_channels
    transposed = isinstance(mod, nn.modules.conv._ConvTransposeNd)
    kernel = [None] * nd
    wkey, bkey = a.key(target, "weight"), a.key(target, "bias")
    if g == 1:
        out = a.new_run(cout, "neuron", target)
        labels = [lab, out, *kernel] if transposed else [out, lab, *kernel]
        a.label_param(wkey, labels, constant=(int(not transposed),) if constant else ())
    elif cin == g:
        # depthwise: output group i is made from input neuron i alone
        m = cout // g
        if lab is None:
            out = a.new_run(cout, "neuron", target)
            reason = "depthwise conv of fixed channels: each output channel stays with its input"
            _split_groups(a, out, g, reason)
            a.label_param(wkey, [None, out, *kernel] if transposed else [out, None, *kernel])
        else:
            out = _repeat_each(lab, m)
            a.label_param(wkey, [lab, None, *kernel] if transposed else [out, None, *kernel])
    else:
        out, inner = grouped(a, lab, g, cin, cout, transposed, target)
        a.label_param(wkey, [lab, inner, *kernel] if transposed else [out, inner, *kernel])
    a.label_param(bkey, [out])
    return TensorLabels(a.out_shape(), x.with_label(cd, out).labels)


@register_module(nn.modules.conv._ConvNd)
@structured
def _module_conv(a: SymmetryAnalysis, mod: nn.Module, target: str, args: Any, kw: Any) -> Any:
    x = args[0]
    constant = x.labels[x.ndim - len(mod.kernel_size) - 1] is UNIFORM
    return _conv(a, mod, target, a.plain(x, a.op), constant)


def _function_conv(transposed: bool) -> Rule:
    @structured
    def rule(a: SymmetryAnalysis, args: tuple, kwargs: dict) -> Any:
        x, w = args[0], arg(args, kwargs, 1, "weight")
        b = arg(args, kwargs, 2, "bias")
        g = arg(args, kwargs, 6, "groups", 1)  # 6th in both (conv_transpose: then dilation)
        if not isinstance(x, TensorLabels) or not isinstance(w, TensorLabels):
            raise Unsupported("functional convolution of a non-tensor")
        x = a.plain(x, a.op)
        nd = w.ndim - 2
        cd = x.ndim - nd - 1
        stride = arg(args, kwargs, 3, "stride", 1)
        padding = arg(args, kwargs, 4, "padding", 0)
        out_pad = arg(args, kwargs, 5, "output_padding", 0) if transposed else 0
        plain = not any(out_pad if isinstance(out_pad, (tuple, list)) else [out_pad])
        mixed = _mixed(x, nd, w.shape[2:], stride, padding, plain)
        x = a.keep(x, mixed, "convolution mixes spatial positions")
        w = a.keep(w, tuple(range(2, w.ndim)), POSITIONS)  # kernel taps
        lab, cin = x.labels[cd], x.shape[cd]
        w0, w1 = w.labels[0], w.labels[1]
        if transposed:
            if g != 1:
                out, _ = grouped(
                    a, lab, g, cin, w.shape[1] * g, True, a.node.name, inner=a.plain_label(w1)
                )
                a.tie(lab, a.plain_label(w0), "convolution input meets unlabelled weight")
            else:
                a.tie(lab, w0, "convolution input meets unlabelled weight")
                out = w1
        elif g == 1:
            if w1 is UNIFORM:  # the same filter for every input channel: a symmetric sum
                a.consume(lab)
            else:
                a.tie(lab, w1, "convolution input meets unlabelled weight")
            out = w0
        elif cin == g:
            m = w.shape[0] // g
            if w0 is UNIFORM:  # one filter shared by every channel (a blur)
                out = _repeat_each(lab, m)
            elif m == 1:
                a.tie(lab, w0, "depthwise conv of fixed channels: each filter stays with its input")
                out = w0 if lab is not None else None
            else:
                raise Unsupported("functional depthwise convolution with a channel multiplier")
        else:
            w0, w1 = a.plain_label(w0), a.plain_label(w1)
            if w0 is None or w1 is None:
                raise Unsupported("functional grouped convolution with an unlabelled weight axis")
            out, _ = grouped(a, lab, g, cin, w.shape[0], False, a.node.name, out=w0, inner=w1)
        if isinstance(b, TensorLabels):  # per-channel biases: the output is no longer uniform
            out = a.tie(out, a.plain_label(b.labels[0]) if b.ndim else None)
        return TensorLabels(a.out_shape(), x.with_label(cd, a.name_output(out)).labels)

    return rule


register_function(F.conv1d, F.conv2d, F.conv3d)(_function_conv(False))
register_function(F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)(_function_conv(True))


@register_module(nn.Unfold, nn.Fold)
def _module_unfold(a: SymmetryAnalysis, mod: nn.Module, target: str, args: Any, kw: Any) -> Any:
    return _unfold(a, args[0], mod.kernel_size, isinstance(mod, nn.Unfold))


@register_function(F.unfold, F.fold)
def _function_unfold(a: SymmetryAnalysis, args: tuple, kwargs: dict) -> Any:
    unfold = a.node.target is F.unfold
    size = arg(args, kwargs, 1 if unfold else 2, "kernel_size")
    return _unfold(a, args[0], size, unfold)


def _unfold(a: SymmetryAnalysis, x: TensorLabels, kernel: Any, unfold: bool) -> TensorLabels:
    """``unfold`` (im2col: TNT's and T2T-ViT's soft split): each channel becomes a block of
    ``kh * kw`` rows of the output, one per kernel position, and the sliding positions one
    dim; ``fold`` sums such blocks back into channels, so its input's channels must move in
    blocks of ``kh * kw`` (asked for where they are single channels, as ``pixel_shuffle``
    does, and fixed until then). Positions are fixed."""
    k = kernel * kernel if isinstance(kernel, int) else math.prod(kernel)
    batch = x.ndim - (3 if unfold else 2)  # (B,) C, H, W -> (B,) C*k, L, and back
    x = a.keep(x, tuple(range(batch + 1, x.ndim)), "unfold reads sliding windows of positions")
    reason = "fold sums each block of kernel positions into one channel"
    out = a.regrouped(x.labels[batch], k, unfold, reason)
    shape = a.out_shape()
    return TensorLabels(shape, x.labels[:batch] + (out,) + (None,) * (len(shape) - batch - 1))
