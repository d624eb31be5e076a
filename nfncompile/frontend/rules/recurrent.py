"""Op rules for recurrent layers: ``nn.RNN``, ``nn.GRU``, ``nn.LSTM`` and their cells
(``nn.RNNCell``, ``nn.GRUCell``, ``nn.LSTMCell``, stepped by the forward's own loop).

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

A batch of sequences of several lengths is *packed* for a recurrent layer
(``pack_padded_sequence``) and padded back after it (``pad_packed_sequence``): the packed data
holds every sequence's steps one after another, ``(steps, *features)``, so its steps are
positions and its features keep their labels; the layer reads it as one sequence's steps, and
padding back gives the features of every step of every sequence their labels again.

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

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence, pad_sequence

from ..fx import leaves
from ..labels import TensorLabels, remade
from .registry import Unsupported, arg, register_function, register_module, structured

if TYPE_CHECKING:
    from ..analysis import SymmetryAnalysis

#: weight blocks stacked per hidden unit, by ``mode``
GATES = {"LSTM": 4, "GRU": 3, "RNN_TANH": 1, "RNN_RELU": 1}


@register_module(nn.RNNBase)
@structured  # a constant initial state (torch.zeros) is uniform: it moves with any units
def _module_recurrent(a: SymmetryAnalysis, mod: nn.RNNBase, target: str, args: Any, kw: Any):
    if getattr(mod, "proj_size", 0):
        raise Unsupported("LSTM with projections")
    packed = _packed_data(args[0])
    x = a.plain(args[0] if packed is None else packed, a.op)
    if not isinstance(x, TensorLabels):
        raise Unsupported("a sequence that is neither a tensor nor packed")
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
    batch = (0 if mod.batch_first else 1) if x.ndim == 3 else None
    for h0 in _states(hx):
        a.tie(h0.labels[-1], state, "an initial state of a multi-layer recurrence")
        # (layers * directions, batch, hidden): each layer reads its own row, and each
        # sequence of the batch its own initial state
        a.fix(a.plain_label(h0.labels[0]), "a recurrence reads each layer's initial state")
        if batch is not None and h0.ndim == 3:
            a.tie(h0.labels[1], x.labels[batch], "an initial state meets its sequence")
    out, states = a.out()
    data = out if packed is None else out[0]  # the output packed as the input was
    labels = TensorLabels(data.shape, x.labels[:feat] + (layer_in,))
    if packed is not None:
        labels = remade(out, (labels, *out[1:]))
    return labels, _final(states, state)


def _packed_data(value: Any) -> TensorLabels | None:
    """The labels of a packed sequence's data (its first tensor), or ``None`` where ``value`` is
    no packed sequence (shape propagation records one as the tuple of its tensors)."""
    if isinstance(value, tuple) and len(value) == 4 and isinstance(value[0], TensorLabels):
        return value[0]
    return None


@register_function(pack_padded_sequence)
def _pack(a: SymmetryAnalysis, args: tuple, kwargs: dict) -> Any:
    """A padded batch of sequences packed: the data's steps (every sequence's, one after
    another) are positions, its features keep their labels."""
    x = a.plain(args[0], a.op)
    if not isinstance(x, TensorLabels) or x.ndim < 2:
        raise Unsupported("packing a value that is no batch of sequences")
    x = a.keep(x, (0, 1), "packing reads each sequence's steps up to its length")
    out = a.out()
    data = TensorLabels(out[0].shape, (None, *x.labels[2:]))
    return remade(out, (data, *out[1:]))


@register_function(pad_sequence, torch._C._nn.pad_sequence)  # (the latter what fx records)
def _pad_list(a: SymmetryAnalysis, args: tuple, kwargs: dict) -> Any:
    """Sequences of several lengths padded into one batch, ``(time, batch, *features)`` (or
    batch first): each sequence's steps land on positions, their features are one another's
    (tied, as an elementwise op ties them) and keep their labels."""
    xs = arg(args, kwargs, 0, "sequences")
    if not isinstance(xs, (tuple, list)) or not all(isinstance(x, TensorLabels) for x in xs):
        raise Unsupported("padding a value that is no list of sequences")
    xs = [a.keep(a.plain(x, a.op), (0,), "padding reads each sequence's steps") for x in xs]
    out = a.out()
    rest = a.broadcast([TensorLabels(x.shape[1:], x.labels[1:]) for x in xs], tuple(out.shape[2:]))
    return TensorLabels(out.shape, (None, None, *rest.labels))


@register_function(pad_packed_sequence)
def _pad(a: SymmetryAnalysis, args: tuple, kwargs: dict) -> Any:
    """A packed sequence padded back to ``(time, batch, *features)`` (or batch first): its
    steps land on positions, its features keep their labels."""
    data = _packed_data(args[0])
    if data is None:
        raise Unsupported("padding a value that is no packed sequence")
    data = a.plain(data, a.op)
    out = a.out()  # (padded, lengths); batch first or not, its two leading dims are positions
    padded = TensorLabels(out[0].shape, (None, None, *data.labels[1:]))
    return remade(out, (padded, *out[1:]))


#: weight blocks stacked per hidden unit of a cell, by class
CELL_GATES = {nn.LSTMCell: 4, nn.GRUCell: 3, nn.RNNCell: 1}


@register_module(nn.RNNCellBase)
@structured  # a constant state (torch.zeros) is uniform: it moves with any units
def _module_cell(a: SymmetryAnalysis, mod: nn.RNNCellBase, target: str, args: Any, kw: Any):
    """One step of a recurrence (``nn.LSTMCell``, ``GRUCell``, ``RNNCell``), called in the
    forward's own loop: its hidden units are a run, the states it takes are tied with them
    (the previous step's output, or a constant), as is the new state it returns."""
    gates = next((g for t, g in CELL_GATES.items() if isinstance(mod, t)), None)
    if gates is None:
        raise Unsupported(f"a recurrent cell of type {type(mod).__name__}")
    x = a.plain(args[0], a.op)
    hx = args[1] if len(args) > 1 else kw.get("hx")
    h = a.new_run(mod.hidden_size, "neuron", target)
    a.label_param(a.key(target, "weight_ih"), [h * gates, x.labels[-1]])
    a.label_param(a.key(target, "weight_hh"), [h * gates, h])
    a.label_param(a.key(target, "bias_ih"), [h * gates])
    a.label_param(a.key(target, "bias_hh"), [h * gates])
    for h0 in _states(hx):
        a.tie(h0.labels[-1], h, "a recurrent state meets the cell's units")
        if h0.ndim == 2 and x.ndim == 2:
            a.tie(h0.labels[0], x.labels[0], "a state meets its sequence")
    out = a.out()
    outs = [TensorLabels(o.shape, x.labels[:-1] + (h,)) for o in leaves(out)]
    return tuple(outs) if isinstance(out, tuple) else outs[0]


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
