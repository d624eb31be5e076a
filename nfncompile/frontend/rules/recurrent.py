"""Op rules for recurrent layers: ``nn.RNN``, ``nn.GRU``, ``nn.LSTM``.

A recurrent layer's hidden units are neurons like a dense layer's: each layer and direction
makes a new run of ``hidden_size`` neurons. Its gates stack their weights along one axis
(``[input, forget, cell, output]`` for an LSTM, ``[reset, update, new]`` for a GRU), so that
axis is the hidden run repeated once per gate (the gates stay in place, the units move in all
of them alike); the recurrent weight's columns are the same run, the input weight's columns the
layer's input (the features, or the previous layer's directions one after the other). The
recurrence mixes the time steps, whose labels are fixed.

The final states ``h_n`` (and an LSTM's ``c_n``) stack every layer and direction along their
first dim, so the hidden dim can only be labelled if those runs are one: where the forward
reads them (or passes initial states), every hidden run is tied to the first.

Examples
--------
>>> import torch
>>> import nfncompile as nfc
>>> class Tagger(torch.nn.Module):
...     def __init__(self):
...         super().__init__()
...         self.rnn, self.head = torch.nn.GRU(3, 5, batch_first=True), torch.nn.Linear(5, 2)
...     def forward(self, x):
...         out, _ = self.rnn(x)
...         return self.head(out)
>>> spec = nfc.trace(Tagger(), torch.randn(4, 7, 3))
>>> spec["rnn.weight_hh_l0"].axes
(('rnn.l0', 'rnn.l0', 'rnn.l0'), 'rnn.l0')
"""

from __future__ import annotations

import operator
from typing import TYPE_CHECKING, Any

from torch import nn

from ..labels import TensorLabels
from .registry import Unsupported, register_module, structured

if TYPE_CHECKING:
    from ..analysis import SymmetryAnalysis

#: weight blocks stacked per hidden unit, by ``mode``
GATES = {"LSTM": 4, "GRU": 3, "RNN_TANH": 1, "RNN_RELU": 1}


@register_module(nn.RNNBase)
@structured  # a constant initial state (torch.zeros) is uniform: it moves with any units
def _module_recurrent(a: SymmetryAnalysis, mod: nn.RNNBase, target: str, args: Any, kw: Any):
    if getattr(mod, "proj_size", 0):
        raise Unsupported("LSTM with projections")
    if not isinstance(args[0], TensorLabels):
        raise Unsupported("a packed sequence")
    x = a.plain(args[0], a.op)
    hx = args[1] if len(args) > 1 else kw.get("hx")
    feat, time = x.ndim - 1, (1 if mod.batch_first else 0) if x.ndim == 3 else 0
    x = a.keep(x, (time,), "a recurrence mixes the time steps")
    gates, dirs = GATES[mod.mode], 2 if mod.bidirectional else 1
    layer_in, runs = x.labels[feat], []
    for layer in range(mod.num_layers):
        outs = []
        for d in range(dirs):
            suffix = f"_l{layer}" + ("_reverse" if d else "")
            h = a.new_run(mod.hidden_size, "neuron", f"{target}.l{layer}" + ("r" if d else ""))
            a.label_param(a.key(target, "weight_ih" + suffix), [h * gates, layer_in])
            a.label_param(a.key(target, "weight_hh" + suffix), [h * gates, h])
            a.label_param(a.key(target, "bias_ih" + suffix), [h * gates])
            a.label_param(a.key(target, "bias_hh" + suffix), [h * gates])
            outs.append(h)
            runs.append(h)
        layer_in = sum(outs, ())
    # final (and initial) states: every layer and direction on one dim, so one run for all
    state = runs[0] if len(runs) == 1 or _reads_states(a, hx) else None
    if state is not None:
        for h in runs[1:]:
            a.tie(runs[0], h)
    for h0 in _states(hx):
        a.tie(h0.labels[-1], state, "an initial state of a multi-layer recurrence")
    out, states = a.out()
    labels = TensorLabels(out.shape, x.labels[:feat] + (layer_in,))
    return labels, _final(states, state)


def _states(hx: Any) -> list:
    if isinstance(hx, TensorLabels):
        return [hx]
    return [h for h in hx or () if isinstance(h, TensorLabels)]


def _reads_states(a: SymmetryAnalysis, hx: Any) -> bool:
    """Whether the forward passes initial states or reads the final ones."""
    if _states(hx):
        return True
    return any(
        u.op == "call_function" and u.target is operator.getitem and u.args[1] == 1 and u.users
        for u in a.node.users
    )


def _final(states: Any, state: Any) -> Any:
    """``h_n`` (or ``(h_n, c_n)``), their hidden dim labelled ``state``."""
    if isinstance(states, TensorLabels):
        return TensorLabels(states.shape, states.labels[:-1] + (state,))
    return tuple(_final(s, state) for s in states)
