"""Op rules for elementwise ops: activations, arithmetic, comparisons, casts, dropout.

Elementwise ops act on every position alike, so their inputs' labels are tied dim by dim
(broadcasting from the right) and passed on; see
:meth:`~nfncompile.frontend.analysis.SymmetryAnalysis.broadcast`.
"""

from __future__ import annotations

import operator
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from ..fx import leaves, writes
from ..labels import UNIFORM, TensorLabels
from .registry import (
    Unsupported,
    arg,
    norm_dim,
    register_function,
    register_method,
    register_module,
    structured,
)

if TYPE_CHECKING:
    from ..analysis import SymmetryAnalysis


_ACTIVATION_MODULES = (
    nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.LeakyReLU, nn.ELU, nn.SELU,
    nn.CELU, nn.Softplus, nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Mish, nn.LogSigmoid,
    nn.Softsign, nn.Tanhshrink, nn.Softshrink, nn.Hardshrink, nn.Threshold, nn.Identity,
    nn.modules.dropout._DropoutNd, nn.Softmin, nn.Softmax, nn.LogSoftmax, nn.Softmax2d,
)  # fmt: skip

_ELEMENTWISE_FUNCTIONS = [
    F.relu, F.relu_, F.relu6, F.gelu, F.silu, F.elu, F.selu, F.celu, F.leaky_relu, F.softplus,
    F.hardswish, F.hardsigmoid, F.hardtanh, F.mish, F.logsigmoid, F.softsign, F.tanhshrink,
    F.softshrink, F.hardshrink, F.threshold, F.sigmoid, F.tanh, F.softmax, F.log_softmax,
    F.softmin, F.normalize,
    torch.relu, torch.relu_, torch.sigmoid, torch.tanh, torch.sin, torch.cos, torch.tan,
    torch.exp, torch.exp2, torch.expm1, torch.log, torch.log1p, torch.log2, torch.log10,
    torch.abs, torch.neg, torch.sqrt, torch.rsqrt, torch.square, torch.pow, torch.clamp,
    torch.clip, torch.clamp_min, torch.clamp_max, torch.erf, torch.erfc, torch.sign,
    torch.floor, torch.ceil, torch.round, torch.trunc, torch.frac, torch.reciprocal,
    torch.sinh, torch.cosh, torch.asin, torch.acos, torch.atan, torch.atan2, torch.asinh,
    torch.acosh, torch.atanh, torch.add, torch.sub, torch.subtract, torch.mul, torch.multiply,
    torch.div, torch.divide, torch.true_divide, torch.floor_divide, torch.remainder, torch.fmod,
    torch.maximum, torch.minimum, torch.fmax, torch.fmin, torch.lerp, torch.addcmul,
    torch.addcdiv, torch.nan_to_num, torch.softmax, torch.log_softmax, torch.sigmoid,
    torch.logit, torch.heaviside, torch.hypot, torch.eq, torch.ne, torch.gt, torch.ge, torch.lt,
    torch.le, torch.logical_and, torch.logical_or, torch.logical_not, torch.logical_xor,
    torch.isnan, torch.isfinite, torch.masked_fill, torch.special.expit, torch.special.erf,
    torch.selu, torch.celu, torch.rrelu, torch.hardshrink, torch.square,
    operator.add, operator.sub, operator.mul, operator.truediv, operator.floordiv,
    operator.pow, operator.neg, operator.pos, operator.abs, operator.mod, operator.iadd,
    operator.isub, operator.imul, operator.itruediv, operator.eq, operator.ne, operator.gt,
    operator.ge, operator.lt, operator.le, operator.and_, operator.or_, operator.invert,
    # (each of the following was probed, and a probe's random inputs leave the domain of
    # some: erfinv's (-1, 1), a log's positives)
    torch.sgn, torch.erfinv, torch.lgamma, torch.digamma, torch.xlogy, torch.logaddexp,
    torch.logaddexp2, torch.sinc, torch.isinf, torch.isposinf, torch.isneginf,
    torch.bitwise_and, torch.bitwise_or, torch.bitwise_xor, torch.bitwise_not, torch.clone,
    torch.detach, torch.float_power, torch.copysign, torch.real, torch.imag, torch.conj,
    torch.angle, torch.i0, torch.nextafter, torch.ldexp, torch.deg2rad, torch.rad2deg,
    torch.positive, torch.negative, torch.absolute, torch.arccos, torch.arcsin, torch.arctan,
    torch.arctan2, torch.arccosh, torch.arcsinh, torch.arctanh, torch.fix,
    torch.special.xlogy, torch.special.logit, torch.special.erfinv, torch.special.erfc,
    torch.special.sinc, torch.special.log1p, torch.special.expm1, torch.special.exp2,
    torch.special.gammaln, torch.special.digamma, torch.special.psi, torch.special.i0,
    torch.special.ndtr, torch.special.ndtri, torch.special.log_ndtr, torch.special.entr,
    torch.special.softmax, torch.special.log_softmax,
]  # fmt: skip

#: the operators that join or repeat Python sequences
_SEQUENCE_OPS = (operator.add, operator.iadd, operator.mul, operator.imul)

_ELEMENTWISE_METHODS = [
    "relu", "relu_", "sigmoid", "sigmoid_", "tanh", "tanh_", "sin", "sin_", "cos", "exp",
    "exp_", "log", "log1p", "abs", "abs_", "neg", "neg_", "sqrt", "rsqrt", "square", "pow",
    "pow_", "clamp", "clamp_", "clip", "clamp_min", "clamp_max", "erf", "sign", "floor",
    "ceil", "round", "reciprocal", "add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_",
    "true_divide", "maximum", "minimum", "lerp", "addcmul", "addcdiv", "nan_to_num",
    "softmax", "log_softmax", "eq", "ne", "gt", "ge", "lt", "le", "masked_fill",
    "masked_fill_", "logical_not", "float", "double", "half", "bfloat16", "long", "int",
    "short", "bool", "contiguous", "clone", "detach", "requires_grad_", "cpu", "cuda",
    "trunc", "frac", "fmod", "remainder", "logit", "float_power", "bitwise_not", "bitwise_and",
    "bitwise_or", "bitwise_xor", "isnan", "isinf", "isfinite", "sgn", "erfinv", "lgamma",
    "digamma", "sinc", "expm1", "exp2", "log2", "log10", "sinh", "cosh", "tan", "asin", "acos",
    "atan", "atan2", "floor_divide", "xlogy", "logaddexp", "hypot", "fmax", "fmin",
    "heaviside", "copysign", "erfc", "logical_and", "logical_or", "logical_xor", "real",
    "imag", "conj", "angle", "absolute", "positive", "negative", "arccos", "arcsin", "arctan",
    "i0", "where",  # (``x.where(condition, y)``: the three broadcast together)
    "cos_", "sign_", "square_", "clamp_min_", "clamp_max_", "sqrt_", "rsqrt_", "reciprocal_",
    "floor_", "ceil_", "round_", "trunc_", "frac_", "log_", "log1p_", "erf_", "erfc_",
    "addcmul_", "addcdiv_", "lerp_", "nan_to_num_", "logical_not_", "remainder_", "fmod_",
]  # fmt: skip


@register_module(*_ACTIVATION_MODULES)
@structured
def _module_elementwise(a: SymmetryAnalysis, mod: nn.Module, target: str, args: Any, kw: Any):
    return a.broadcast([*args, *kw.values()])


@register_function(*_ELEMENTWISE_FUNCTIONS, torch.where)
@structured
def _function_elementwise(a: SymmetryAnalysis, args: tuple, kwargs: dict) -> Any:
    if a.node.target is torch.where and len(args) + len(kwargs) == 1:
        raise Unsupported("torch.where(cond) returns positions")
    if any(isinstance(v, tuple | list) for v in args) and a.node.target in _SEQUENCE_OPS:
        # tuples joined or repeated (``(out,) + outs[1:]``, LED's attention): so are their labels
        return a.node.target(*args)
    return a.broadcast([*leaves(list(args)), *leaves(list(kwargs.values()))])


@register_method(*_ELEMENTWISE_METHODS)
@structured
def _method_elementwise(a: SymmetryAnalysis, args: tuple, kwargs: dict) -> Any:
    return a.broadcast([*leaves(list(args)), *leaves(list(kwargs.values()))])


@register_method("to", "type", "type_as", "as_subclass")
@register_function(torch.as_tensor, torch.asarray)
@structured
def _cast(a: SymmetryAnalysis, args: tuple, kwargs: dict) -> Any:
    # a tensor as it is (nflows' and zuko's distributions take their inputs through as_tensor)
    if not isinstance(args[0], TensorLabels):
        name = getattr(a.node.target, "__name__", a.node.target)
        raise Unsupported(f"{name} of a value that is no tensor")
    return TensorLabels(a.out_shape(), args[0].labels)


@register_function(torch.bucketize)
def _bucketize(a: SymmetryAnalysis, args: tuple, kwargs: dict) -> Any:
    # each value's bucket among boundaries read in order (KAN's spline grids, binned
    # features): elementwise in the input, the boundaries' positions fixed
    x, boundaries = args[0], arg(args, kwargs, 1, "boundaries")
    if not isinstance(x, TensorLabels):
        raise Unsupported("torch.bucketize of a value that is no tensor")
    if isinstance(boundaries, TensorLabels):
        for lab in boundaries.labels:
            a.fix(lab, "bucketize reads its boundaries in order")
    return TensorLabels(a.out_shape(), x.labels)


@register_function(torch.zeros_like, torch.ones_like, torch.full_like, torch.empty_like)
@structured
def _constant_like(a: SymmetryAnalysis, args: tuple, kwargs: dict) -> Any:
    """One value everywhere, unchanged by any permutation: uniform along every dim, so it
    imposes nothing on what it meets (BEiT's qkv bias ``cat((q_bias, zeros_like(v_bias),
    v_bias))`` leaves k's units free). Where the forward writes into it (an expert's outputs
    ``index_add_``-ed into ``zeros_like(x)``; ``empty_like``, whose values are only what is
    written), it carries ``x``'s labels, which the writes then meet."""
    written = any(writes(u) and u.args[0] is a.node for u in a.node.users)
    if written or a.node.target is torch.empty_like:
        return TensorLabels(a.out_shape(), args[0].labels)
    return TensorLabels(a.out_shape(), (UNIFORM,) * len(a.out_shape()))


@register_function(torch.randn_like, torch.rand_like, torch.randint_like)
@register_function(torch.rand, torch.randn, torch.randint, torch.randperm, torch.arange)
@structured
def _random_like(a: SymmetryAnalysis, args: tuple, kwargs: dict) -> Any:
    # fresh draws (of x's shape), or a range: nothing they hold is moved by a permutation,
    # and each position has its own value, so what they meet depends on position (as in the
    # verification's seeded runs)
    return TensorLabels.plain(a.out_shape())


#: the dropout functions, each with whether it drops by default (``F.dropout(x, p)`` does)
_DROPOUTS = {
    F.dropout: True, F.dropout1d: True, F.dropout2d: True, F.dropout3d: True,
    F.alpha_dropout: False, F.feature_alpha_dropout: False, torch.dropout: None,
}  # fmt: skip


@register_function(*_DROPOUTS)
@structured
def _dropout(a: SymmetryAnalysis, args: tuple, kwargs: dict) -> Any:
    # where it drops (speechbrain's Tacotron2 prenet: `F.dropout(x, p, training=True)`, on in
    # eval too), a random mask over positions multiplies x, which then depends on position as
    # it does on fresh draws; else x as it is
    x = arg(args, kwargs, 0, "input", None)
    p = arg(args, kwargs, 1, "p", 0.5)
    default = _DROPOUTS[a.node.target]
    on = arg(args, kwargs, 2, "training", arg(args, kwargs, 2, "train", default))
    if on and p:
        return a.broadcast([x, TensorLabels.plain(x.shape)])
    return a.broadcast([x])


@register_module(nn.GLU)
def _module_glu(a: SymmetryAnalysis, mod: nn.GLU, target: str, args: Any, kw: Any) -> Any:
    return _glu(a, args[0], mod.dim)


@register_function(F.glu)
def _function_glu(a: SymmetryAnalysis, args: tuple, kwargs: dict) -> Any:
    return _glu(a, args[0], arg(args, kwargs, 1, "dim", -1))


def _glu(a: SymmetryAnalysis, x: TensorLabels, dim: int) -> TensorLabels:
    """``a * sigmoid(b)`` of the two halves of ``dim`` (S4's output projection): the halves
    are combined elementwise, so each neuron of the first is tied to its partner in the
    second."""
    d = norm_dim(dim, x.ndim)
    half = x.shape[d] // 2
    lab = x.labels[d]
    if lab is not None:
        lab = a.tie(a.slice_label(lab, 0, half), a.slice_label(lab, half, 2 * half))
    return x.with_label(d, lab)


@register_module(nn.PReLU)
def _prelu(a: SymmetryAnalysis, mod: nn.PReLU, target: str, args: Any, kw: Any) -> Any:
    x = args[0]
    lab = None
    if mod.num_parameters > 1:
        lab = x.labels[1 if x.ndim >= 2 else 0]
        if lab is None:
            raise Unsupported("PReLU with per-channel weights on an unlabelled channel dim")
    a.label_param(a.key(target, "weight"), [lab])
    return x
