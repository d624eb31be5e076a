"""Op rules for pooling, resampling, padding and Fourier transforms: they mix spatial positions
only."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from ..labels import TensorLabels
from .registry import Rule, Unsupported, arg, module_nd, register_function, register_module

if TYPE_CHECKING:
    from ..analysis import SymmetryAnalysis


#: pooling modules: a mean, max or norm over each window
_POOLS = (
    nn.modules.pooling._MaxPoolNd, nn.modules.pooling._AvgPoolNd,
    nn.modules.pooling._AdaptiveAvgPoolNd, nn.modules.pooling._AdaptiveMaxPoolNd,
    nn.modules.pooling._LPPoolNd,
)  # fmt: skip
_SPATIAL_MODULES = _POOLS + (
    nn.Upsample,
    nn.modules.padding._ReflectionPadNd, nn.modules.padding._ReplicationPadNd,
    nn.modules.padding.CircularPad1d, nn.modules.padding.CircularPad2d,
    nn.modules.padding.CircularPad3d,
)  # fmt: skip


@register_module(*_SPATIAL_MODULES)
def _module_spatial(a: SymmetryAnalysis, mod: nn.Module, target: str, args: Any, kw: Any):
    if isinstance(mod, nn.Upsample):
        nd = args[0].ndim - 2
    else:
        nd = module_nd(mod)
    window = [getattr(mod, k, None) for k in ("kernel_size", "stride")]
    pools = isinstance(mod, _POOLS)
    return _spatial(a, args[0], nd, *window, getattr(mod, "padding", 0), pools=pools)


def _spatial(
    a: SymmetryAnalysis, x: TensorLabels, nd: int, kernel: Any = None, stride: Any = None,
    padding: Any = 0, pools: bool = False,
) -> TensorLabels:  # fmt: skip
    """The last ``nd`` dims' positions mixed, but where the op is the identity along one: a
    window of 1 at stride 1 without padding (Funnel's ``(2, 1)`` pool over ``(T, D)``), or,
    without a window (adaptive pooling, resampling), a dim whose size it keeps. A pool
    (``pools``) to one position over a whole dim, without padding, is a mean or a max over
    it, which no permutation of its neurons changes (spikingjelly's MA-SNN pools
    ``(N, T, C, H, W)`` with ``AdaptiveAvgPool3d(1)``, over the channels too)."""
    out = a.out()
    indices = None
    if isinstance(out, tuple) and len(out) == 2:  # return_indices: (values, where they were)
        out, indices = out
    if not isinstance(out, TensorLabels):
        raise Unsupported("pooling with an output other than a tensor or (values, indices)")
    cd = x.ndim - nd - 1
    spatial = range(cd + 1, x.ndim)
    if kernel is None:
        same = [d for d in spatial if out.shape[d] == x.shape[d]]
    else:
        k, s, p = (_per_dim(v, nd) for v in (kernel, kernel if stride is None else stride, padding))
        same = [d for i, d in enumerate(spatial) if (k[i], s[i], p[i]) == (1, 1, 0)]
    if pools and indices is None:
        whole = [
            d for i, d in enumerate(spatial) if out.shape[d] == 1 and (
                kernel is None or (k[i] >= x.shape[d] and p[i] == 0)
            )
        ]  # fmt: skip
        same += [d for d in whole if d not in same]
    mixed = tuple(d for d in spatial if d not in same)
    x = a.keep(x, mixed, "pooling/resampling mixes spatial positions")
    labels = tuple(
        None if d in mixed or out.shape[d] != x.shape[d] else lab for d, lab in enumerate(x.labels)
    )
    if indices is None:
        return TensorLabels(out.shape, labels)
    # a max's position in its channel's plane: computed channel by channel, so the indices
    # move with the channels; their values are positions, no neurons
    return TensorLabels(out.shape, labels), TensorLabels(indices.shape, labels)


def _unpool(a: SymmetryAnalysis, x: TensorLabels, indices: Any, nd: int) -> TensorLabels:
    """``max_unpool``: each channel's values written at that channel's ``indices`` (as a max
    pool with ``return_indices`` gave them) into a plane of zeros; the channels move with
    their indices'."""
    if not isinstance(indices, TensorLabels) or indices.ndim != x.ndim:
        raise Unsupported("max_unpool with indices that are not a tensor of the input's dims")
    labels = []
    for d in range(x.ndim):
        if d >= x.ndim - nd:  # the plane: positions
            a.fix(x.labels[d], "max_unpool writes values at positions the indices give")
            labels.append(None)
        else:
            labels.append(a.tie(x.labels[d], indices.labels[d], "max_unpool reads each "
                                "channel's values at that channel's indices"))  # fmt: skip
    return TensorLabels(a.out_shape(), tuple(labels))


@register_module(nn.MaxUnpool1d, nn.MaxUnpool2d, nn.MaxUnpool3d)
def _module_unpool(a: SymmetryAnalysis, mod: nn.Module, target: str, args: Any, kw: Any):
    indices = args[1] if len(args) > 1 else kw.get("indices")
    return _unpool(a, args[0], indices, module_nd(mod))


def _function_unpool(nd: int) -> Rule:
    def rule(a: SymmetryAnalysis, args: tuple, kwargs: dict) -> Any:
        return _unpool(a, arg(args, kwargs, 0, "input"), arg(args, kwargs, 1, "indices"), nd)

    return rule


for _nd_, _fn in enumerate((F.max_unpool1d, F.max_unpool2d, F.max_unpool3d), start=1):
    register_function(_fn)(_function_unpool(_nd_))


def _per_dim(value: Any, nd: int) -> tuple:
    """A pooling argument given once or per dim (``2`` or ``(2, 1)``), per dim; ``[]`` (a
    default stride) reads as the kernel's."""
    if isinstance(value, int):
        return (value,) * nd
    return tuple(value) if value else (None,) * nd


def _function_spatial(nd: int | None, window: bool, lp: bool = False) -> Rule:
    def rule(a: SymmetryAnalysis, args: tuple, kwargs: dict) -> Any:
        x = args[0]
        n = nd if nd is not None else x.ndim - 2
        if not window:
            return _spatial(a, x, n, pools=nd is not None)
        at = 2 if lp else 1  # lp_pool takes its norm type first, and no padding
        kernel, stride = arg(args, kwargs, at, "kernel_size"), arg(args, kwargs, at + 1, "stride")
        padding = 0 if lp else arg(args, kwargs, 3, "padding", 0)
        return _spatial(a, x, n, kernel, stride, padding, pools=True)

    return rule


for _nd_, _fns in (
    (1, (F.max_pool1d, F.avg_pool1d, F.adaptive_avg_pool1d, F.adaptive_max_pool1d, F.lp_pool1d)),
    (2, (F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d, F.adaptive_max_pool2d, F.lp_pool2d)),
    (3, (F.max_pool3d, F.avg_pool3d, F.adaptive_avg_pool3d, F.adaptive_max_pool3d)),
):
    # and the max pools that return their indices, called by name
    _fns += tuple(getattr(F, f"{f.__name__}_with_indices") for f in _fns if "max" in f.__name__)
    for _fn in _fns:
        name = _fn.__name__
        register_function(_fn)(_function_spatial(_nd_, "adaptive" not in name, "lp" in name))
register_function(F.interpolate, F.upsample)(_function_spatial(None, False))


@register_function(F.affine_grid)
def _function_affine_grid(a: SymmetryAnalysis, args: tuple, kwargs: dict) -> Any:
    """A spatial transformer's sampling grid from each sample's affine matrix, ``(N, 2, 3)``:
    its entries are read by position (a translation is no scale), and the grid holds
    positions and coordinates."""
    theta = a.keep(args[0], tuple(range(1, args[0].ndim)), "affine_grid reads a matrix by position")
    shape = a.out_shape()
    return TensorLabels(shape, (theta.labels[0],) + (None,) * (len(shape) - 1))


@register_function(F.grid_sample)
def _function_grid_sample(a: SymmetryAnalysis, args: tuple, kwargs: dict) -> Any:
    """Each channel's plane sampled at the grid's points, ``(N, H, W, 2)``: the channels keep
    their neurons, the planes' positions are mixed, the output's positions are the grid's,
    and its last dim holds coordinates."""
    x, grid = args[0], arg(args, kwargs, 1, "grid")
    if not isinstance(grid, TensorLabels):
        raise Unsupported("grid_sample with a grid that is no tensor")
    x = a.keep(x, tuple(range(2, x.ndim)), "grid_sample mixes spatial positions")
    grid = a.keep(grid, (grid.ndim - 1,), "grid_sample reads coordinates by position")
    n = x.shape[0]
    samples = [TensorLabels((n,), x.labels[:1]), TensorLabels((n,), grid.labels[:1])]
    (batch,) = a.broadcast(samples, (n,)).labels
    return TensorLabels(a.out_shape(), (batch, x.labels[1], *grid.labels[1:-1]))


@register_function(F.pad)
def _function_pad(a: SymmetryAnalysis, args: tuple, kwargs: dict) -> Any:
    pad = list(arg(args, kwargs, 1, "pad"))
    return _pad(a, args[0], pad, arg(args, kwargs, 2, "mode", "constant"))


@register_module(nn.modules.padding._ConstantPadNd)
def _module_constant_pad(a: SymmetryAnalysis, mod: nn.Module, target: str, args: Any, kw: Any):
    return _pad(a, args[0], list(mod.padding), "constant")


def _pad(a: SymmetryAnalysis, x: TensorLabels, pad: list, mode: str) -> TensorLabels:
    """``F.pad(x, pad, mode)``: a constant pad of a neuron axis adds a free run on each side
    (:meth:`~nfncompile.frontend.analysis.SymmetryAnalysis.uniform_run`); other modes, and
    negative pads (crops), fix the axis."""
    labels = list(x.labels)
    for k in range(len(pad) // 2):
        d = x.ndim - 1 - k
        lo, hi = pad[2 * k], pad[2 * k + 1]
        if labels[d] is None or (lo == 0 and hi == 0):
            continue
        if mode != "constant" or lo < 0 or hi < 0:
            a.fix(labels[d], f"F.pad(mode={mode!r}) along a neuron axis")
            labels[d] = None
            continue
        # every padded position holds the same value: permuting them among themselves
        # changes nothing, so each padded side is a new run of free neurons (a channel
        # shortcut's zero padding, as in the CIFAR ResNets' "option A")
        labels[d] = a.uniform_run(lo, "pad") + labels[d] + a.uniform_run(hi, "pad")
    return TensorLabels(a.out_shape(), tuple(labels))


_FOURIER = {
    1: ("fft", "ifft", "rfft", "irfft", "hfft", "ihfft"),
    2: ("fft2", "ifft2", "rfft2", "irfft2", "hfft2", "ihfft2"),
    None: ("fftn", "ifftn", "rfftn", "irfftn", "hfftn", "ihfftn", "fftshift", "ifftshift"),
}


def _function_fourier(nd: int | None, shift: bool) -> Rule:
    """``torch.fft`` transforms (and shifts) mix the positions of the dims they act on and
    leave every other dim as it is (a Fourier neural operator's channels pass through)."""

    def rule(a: SymmetryAnalysis, args: tuple, kwargs: dict) -> Any:
        x = args[0]
        if shift:
            dim = arg(args, kwargs, 1, "dim", None)
            dims = range(x.ndim) if dim is None else dim
        elif nd == 1:
            dims = [arg(args, kwargs, 2, "dim", -1)]
        elif nd == 2:
            dims = arg(args, kwargs, 2, "dim", (-2, -1))
        else:
            dim, s = arg(args, kwargs, 2, "dim", None), arg(args, kwargs, 1, "s", None)
            dims = dim if dim is not None else range(-len(s), 0) if s is not None else range(x.ndim)
        dims = [dims] if isinstance(dims, int) else list(dims)
        x = a.keep(x, tuple(d % x.ndim for d in dims), "a Fourier transform mixes positions")
        return TensorLabels(a.out_shape(), x.labels)

    return rule


for _nd, _names in _FOURIER.items():
    for _name in _names:
        register_function(getattr(torch.fft, _name))(_function_fourier(_nd, "shift" in _name))
