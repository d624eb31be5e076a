"""Op rules for dense layers: ``nn.Linear``, ``F.linear``, ``nn.Embedding``, matmul and
``addmm``/``baddbmm`` (Hugging Face's GPT-2 ``Conv1D`` is ``torch.addmm(bias, x, weight)``).

A dense layer's output neurons are a new run; its weight's input axis is labelled with the
neurons of its input's last dim.
"""

from __future__ import annotations

import operator
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from ..labels import Label, TensorLabels
from .registry import Unsupported, arg, register_function, register_method, register_module

if TYPE_CHECKING:
    from ..analysis import SymmetryAnalysis


def _linear(a: SymmetryAnalysis, x: TensorLabels, out: Label) -> tuple:
    labels = x.labels[:-1] + (out,)
    return TensorLabels(a.out_shape(), labels)


@register_module(nn.Linear)
def _module_linear(a: SymmetryAnalysis, mod: nn.Linear, target: str, args: Any, kw: Any):
    x = args[0]
    out = a.new_run(mod.out_features, "neuron", target)
    a.label_param(a.key(target, "weight"), [out, x.labels[-1]])
    a.label_param(a.key(target, "bias"), [out])
    return _linear(a, x, out)


@register_module(nn.Embedding)
def _module_embedding(a: SymmetryAnalysis, mod: nn.Embedding, target: str, args: Any, kw: Any):
    out = a.new_run(mod.embedding_dim, "neuron", target)
    a.label_param(a.key(target, "weight"), [None, out])
    return TensorLabels(a.out_shape(), (None,) * (len(a.out_shape()) - 1) + (out,))


@register_function(F.linear)
def _function_linear(a: SymmetryAnalysis, args: tuple, kwargs: dict) -> Any:
    x, w, b = args[0], arg(args, kwargs, 1, "weight"), arg(args, kwargs, 2, "bias")
    if not isinstance(w, TensorLabels) or w.ndim != 2:
        raise Unsupported("F.linear with a weight that is not a 2-D tensor")
    a.tie(x.labels[-1], w.labels[1], "F.linear input meets an unlabelled weight axis")
    if isinstance(b, TensorLabels):
        a.tie(w.labels[0], b.labels[0] if b.ndim else None)
    return _linear(a, x, a.name_output(w.labels[0]))


@register_function(torch.matmul, operator.matmul, torch.mm, torch.bmm)
@register_method("matmul", "mm", "bmm")
def _matmul(a: SymmetryAnalysis, args: tuple, kwargs: dict) -> Any:
    x, y = args[0], args[1]
    if not (isinstance(x, TensorLabels) and isinstance(y, TensorLabels)):
        raise Unsupported("matmul with a non-tensor operand")
    if x.ndim < 2 or y.ndim < 2:
        raise Unsupported("matmul with a 1-D operand")
    a.tie(x.labels[-1], y.labels[-2], "matmul contracts neurons with positions")
    bx = TensorLabels(x.shape[:-2], x.labels[:-2])
    by = TensorLabels(y.shape[:-2], y.labels[:-2])
    shape = a.out_shape()
    batch = a.broadcast([bx, by], shape[:-2])
    # x @ self.weight: the output neurons are the weight's axis, named after its module
    return TensorLabels(shape, batch.labels + (x.labels[-2], a.name_output(y.labels[-1])))


@register_function(torch.addmm, torch.baddbmm)
@register_method("addmm", "baddbmm")
def _addmm(a: SymmetryAnalysis, args: tuple, kwargs: dict) -> Any:
    """``beta * input + alpha * (x @ y)``: a matmul, added to ``input`` elementwise."""
    inp = arg(args, kwargs, 0, "input")
    x = arg(args, kwargs, 1, "mat1", kwargs.get("batch1"))
    y = arg(args, kwargs, 2, "mat2", kwargs.get("batch2"))
    return a.broadcast([inp, _matmul(a, (x, y), {})])
