"""The symmetry analysis: a :class:`torch.fx.Interpreter` over neuron labels.

:class:`SymmetryAnalysis` walks a shape-propagated :class:`torch.fx.GraphModule` like an
interpreter, but instead of tensors it computes, for every node, *which neurons index which
dims* of the value (a :class:`~nfncompile.frontend.labels.TensorLabels`), stores it as
``node.meta["nfn_labels"]`` and collects the constraints that define the neuron spaces:

* ``tie``: two slices of runs must move together (elementwise ops, residual add, concat and
  split index maps, norms, depthwise convs);
* ``cut``: a run may only permute within pieces (symmetric reductions over a slice);
* ``fix``: neurons whose symmetry is broken (unknown functions, channel-position-dependent
  indexing, reshapes that mix channels with other axes), with the op and the reason;
* ``link_blocks``: labels cut into equal blocks that one block permutation moves together
  (grouped convs, GroupNorm), with the conservative ties and cuts to use if that cannot hold;
* parameter axis labels: which runs index each axis of each state_dict entry.

What each op does is decided by the op rules (:mod:`nfncompile.frontend.rules`); a call no rule
knows goes through :meth:`SymmetryAnalysis.unknown`. Errors are re-raised as
:class:`~nfncompile.errors.TraceError` with the node that caused them (``node.format_node()``).

Examples
--------
>>> import torch
>>> from nfncompile.frontend.fx import trace_module
>>> net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
>>> gm = trace_module(net, torch.randn(5, 3))
>>> a = SymmetryAnalysis(gm, net)
>>> _ = a.run(None, enable_io_processing=False)
>>> [(r.origin, r.size) for r in a.runs]
[('in', 3), ('0', 4), ('2', 2)]
>>> gm.graph.find_nodes(op="call_module", target="1")[0].meta["nfn_labels"].labels[1]
(Seg(run=1, offset=0, length=4, inner=1),)
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
import operator
from typing import Any

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn
from torch.fx.operator_schemas import get_signature_for_torch_op

from ..errors import ConfigError, TraceError
from ..spec import holds_no_weight
from . import (
    rules,  # noqa: F401  (importing the package registers every op rule)
    stacked,
)
from .channel_dims import ChannelDim, channel_dim_of
from .fx import PlainArgsInterpreter, aliases, canonical_keys, leaves, namedtuple_of, writes
from .labels import (
    MIXED,
    POSITIONS,
    UNIFORM,
    UNREAD,
    BlockLink,
    Broken,
    HeadMerge,
    HeadSplit,
    Label,
    ParamLabel,
    Prod,
    Run,
    Seg,
    TensorLabels,
    Tie,
    as_prod,
    label_width,
    merged,
    remade,
    segments,
    tensors,
)
from .probe import ProbeRecord, probe_op
from .rules.inplace import index_ranges, write
from .rules.registry import (
    FUNCTION_RULES,
    METHOD_RULES,
    STRUCTURED,
    VALUE_RULES,
    Rule,
    Unsupported,
    class_rule,
    module_rule,
)

__all__ = ["SymmetryAnalysis"]


class SymmetryAnalysis(PlainArgsInterpreter):
    """An Interpreter over labels: computes ``node.meta["nfn_labels"]`` for every node and
    collects the constraints that define the neuron spaces.

    Parameters
    ----------
    gm : torch.fx.GraphModule
        Output of :func:`nfncompile.frontend.fx.trace_module` (every node has shape meta).
    model : nn.Module, optional
        The traced model (for its state_dict keys; defaults to ``gm``).
    blocks : dict, optional
        Runs to make in blocks: :attr:`run_keys` entry -> how many of their neurons move as one
        (asked for by an earlier analysis of the same graph in :attr:`requests`).
    channel_dim : int, sequence of (int or None), or None
        The dim of each input whose neurons form the input spaces (default 1, see
        :mod:`~nfncompile.frontend.channel_dims`).

    Attributes
    ----------
    requests : dict
        Runs this analysis found tied, block by block, to neurons that span several positions
        (a conv's output added to a depthwise conv with two outputs per channel; the second
        half of a channel shuffle): run key -> the block size that would let the tie hold.
        :func:`~nfncompile.frontend.graph.build_symmetry_graph` analyses again with them.
    chunked : list
        ``(label, positions per chunk)`` of every dim a reshape split into equal chunks
        (:func:`~nfncompile.frontend.rules.shape.split_label`): where such a label ends up
        wholly fixed, the graph is analysed again with it in blocks.
    selected_chunks : dict
        ``(reshape node name, dim) -> chunk labels`` for chunks that every use selects one
        at a time (:mod:`~nfncompile.frontend.rules.chunks`): not tied to each other.
    reordered : bool
        Whether a channel shuffle was read as one reordering of positions
        (:mod:`~nfncompile.frontend.rules.reorder`; only with ``reorder_chains``, else each of
        its ops is read on its own): the graph is then analysed both ways.
    """

    def __init__(
        self,
        gm: torch.fx.GraphModule,
        model: nn.Module | None = None,
        blocks: dict | None = None,
        channel_dim: ChannelDim = 1,
        stride_blocks: bool = False,
        reorder_chains: bool = True,
    ) -> None:
        super().__init__(gm, garbage_collect_values=False)
        self.model = model if model is not None else gm
        self.blocks = dict(blocks or {})
        self.channel_dim = channel_dim
        # whether a strided slice of single positions asks for its run in blocks (``strided``:
        # whether one would have)
        self.stride_blocks, self.strided = stride_blocks, False
        self._order = {n: i for i, n in enumerate(gm.graph.nodes)}
        self.requests: dict = {}
        self.chunked: list = []  # (label, positions per chunk) of every split read as chunks
        # (reshape node, dim) -> chunk labels, for chunks only ever selected one at a time
        self.selected_chunks: dict = {}
        # chains of reshapes and permutes that reorder one dim (rules/reorder.py): whether to
        # read them as one op, whether one was read, last node -> (labels at the start, dim,
        # index), and the nodes inside them
        self.reorder_chains, self.reordered = reorder_chains, False
        self.reorders: dict = {}
        self.reorder_inside: set = set()
        self.run_keys: list[tuple] = []  # (node, ordinal at that node, size) per run
        self._made_at: dict[str, int] = {}
        self.runs: list[Run] = []
        self.ties: list[Tie] = []
        self.cuts: list[tuple] = []  # (run, pos, op, node)
        self.fixes: list[tuple] = []  # (run, offset, length, broken index)
        self.broken: list[Broken] = []
        self.inputs: list = []  # (name, TensorLabels)
        self.outputs: list = []  # TensorLabels per output leaf (None for non-tensors)
        self.state = {k: v for k, v in self.model.state_dict(keep_vars=True).items()}
        self.state_keys = [k for k, v in self.state.items() if not holds_no_weight(v)]
        self._canonical = canonical_keys({k: self.state[k] for k in self.state_keys})
        self.params: dict[str, ParamLabel] = {}
        #: param axes so far met only as contracted with a constant (labelled ``None`` until a
        #: use labels them, see :meth:`label_param`)
        self._uniform_axes: dict[str, set] = {}
        self.unused_param_runs: list[int] = []
        self.param_runs: set[int] = set()  # the runs of parameter axes (get_attr)
        self.reads: dict[int, list] = {}  # param run -> (start, stop) read by an op
        self.node: torch.fx.Node | None = None
        self.sources: tuple = ((), {})  # the current call's fx arguments (see run_node)
        self.op = ""
        self.touched: dict = {}  # run id -> ops that read a label holding it
        self.probes: list[ProbeRecord] = []  # every op no rule knows, probed numerically
        self.links: list[BlockLink] = []
        self.head_splits: list[HeadSplit] = []
        self.head_merges: list[HeadMerge] = []
        #: the heads and dims runs of every head split: run id -> (split id, "heads" or "dims")
        self.split_runs: dict[int, tuple] = {}
        #: heads runs that met positions where they stand (a constant per head, heads flattened
        #: into positions): those heads cannot move as blocks (:func:`.heads.blocks`); each
        #: with the ``(op, node)`` that first held it (the report names it where a stacked
        #: split's members held so end up fixed)
        self.heads_held: dict[int, tuple[str, str]] = {}
        #: (heads run, heads run): the first's heads met the second's repeated tiled (query
        #: head i, key/value head i % count: einops' ``(r h)`` repeat), read so when merged
        self.tiled_heads: set[tuple[int, int]] = set()
        self._constants: dict = {}  # fx node -> whether it is computed from no input or weight
        # selected chunk label -> {run of the first chunk's head splits: the same run of its own}
        self.twin_runs: dict = {}
        self.calls: list = []  # (op, node name) of every call, in graph order
        #: (state_dict key, heads axis, dims axis, its split's id, the id of the split it is
        #: read by) of every stacked parameter axis read per head (:func:`.stacked.adopt`;
        #: ``None`` until it runs)
        self.adopted: list | None = None
        #: a traced ``torch.vmap`` over stacked weights (:func:`.stacked.member_slice`): per
        #: loop its members' run, the splits of each weight's axes, whether its results
        #: were stacked and whether a mapped input was data (each member its own); and
        #: (state_dict key, members axis, axis, split id) of those splits
        self.member_loops: dict = {}
        self.member_axes: list = []
        #: rows of the groups a ``grouped_mm``'s offsets cut, each in its group's expert
        #: (:func:`.stacked.grouped`): rows run -> the offsets' key; the split of those
        #: groups' experts (offsets' key -> split id); and (experts run, contracted axis run,
        #: split id) of each stacked weight that reads such rows, to read per expert
        #: (:func:`.stacked.adopt`)
        self.routed: dict[int, Any] = {}
        self.routed_splits: dict = {}
        self.routed_axes: list[tuple] = []
        #: the sorted expert ids that offsets were counted from (fx node -> the offsets' key,
        #: :func:`.stacked.expert_ids`), and the parameter axes read at those ids (a bias per
        #: expert gathered per row: label, key)
        self.expert_ids: dict = stacked.expert_ids(gm)
        self.routed_params: list[tuple] = []
        #: fx nodes where two tensors' rows of the same experts' groups met: their experts
        #: are aligned there, as heads that meet (:mod:`.heads`' ``heads_met``)
        self.routed_met: set[str] = set()
        self._recording: list | None = None  # fixes of a block link's alternative

    # ---- bookkeeping ------------------------------------------------------------------------

    def new_run(self, size: int, kind: str, origin: str) -> Label:
        """A fresh run of ``size`` neurons; returns its full label. A run :attr:`blocks` names
        is made of ``size / b`` neurons each spanning ``b`` positions."""
        node = self.node.name if self.node else ""
        key = (node, self._made_at.get(node, 0), size)
        self._made_at[node] = key[1] + 1
        b = self.blocks.get(key, 1)
        run = Run(len(self.runs), size // b, kind, origin, node, self.op)
        self.runs.append(run)
        self.run_keys.append(key)
        if kind == "fixed":
            self._fix_run(run.id, 0, run.size, self._broken(POSITIONS))
        return (Seg(run.id, 0, run.size, b),)

    def _request_blocks(self, sa: Seg, pa: int, sb: Seg, pb: int, pos: int, end: int) -> None:
        """Positions ``[pos, end)`` of two tied labels, whose segments ``sa`` (starting at
        ``pa``) and ``sb`` (at ``pb``) have neurons of different spans: where the finer one's
        neurons fall into whole blocks of the coarser one's, ask for its run to be made in such
        blocks (:attr:`requests`), so that the tie holds block by block next time."""
        (fine, pf), (coarse, pc) = sorted(((sa, pa), (sb, pb)), key=lambda t: t[0].inner)
        if coarse.inner % fine.inner or (pos - pc) % coarse.inner or (end - pos) % coarse.inner:
            return
        factor = coarse.inner // fine.inner
        first = fine.offset + (pos - pf) // fine.inner
        key = self.run_keys[fine.run]
        blocks = self.blocks.get(key, 1) * factor
        if first % factor or self.runs[fine.run].size % factor or key[2] % blocks:
            return
        self.requests[key] = math.lcm(self.requests.get(key, blocks), blocks)

    def request_blocks(self, label: Label, factor: int) -> None:
        """Ask for the runs of ``label`` to be made of neurons spanning ``factor`` times the
        positions each spans now (:attr:`requests`), where whole blocks line up with them
        (a ``pixel_shuffle`` reading blocks of ``r * r`` channels)."""
        pos = 0
        for s in label:
            coarse = Seg(s.run, s.offset, s.length, s.inner * factor)
            self._request_blocks(s, pos, coarse, pos, pos, pos + s.width)
            pos += s.width

    def regrouped(self, label: Any, factor: int, spread: bool, reason: str) -> Any:
        """``label`` of a dim whose positions are regrouped by ``factor``: with ``spread``,
        each neuron comes to span ``factor`` times its positions (``unfold``,
        ``pixel_unshuffle``); else each ``factor`` consecutive positions become one (``fold``,
        ``pixel_shuffle``), which a run of single positions can only follow in blocks: asked
        for (:meth:`request_blocks`) and fixed, with ``reason``, until then."""
        if label is None:
            return None
        if spread:
            return tuple(Seg(s.run, s.offset, s.length, s.inner * factor) for s in label)
        if all(s.inner % factor == 0 for s in label):
            return tuple(Seg(s.run, s.offset, s.length, s.inner // factor) for s in label)
        self.request_blocks(label, factor)
        self.fix(label, reason)
        return None

    def fix_unread(self) -> None:
        """After a run: fix the positions of a parameter axis that no op read where others
        were read (a positional table sliced to the example's length, ``pe[:, :T]``): the
        example's shapes do not reach them, other shapes may, so they are positions."""
        self.op, self.node = "unread positions", None
        for run, spans in self.reads.items():
            pos = 0
            for lo, hi in [*sorted(spans), (self.runs[run].size, self.runs[run].size)]:
                if lo > pos:
                    self.fix((Seg(run, pos, lo - pos),), UNREAD)
                pos = max(pos, hi)

    def uniform_run(self, size: int, what: str) -> Label:
        """The label of ``size`` positions that all hold one value (padding, a constant piece
        of a concatenation or of a buffer written in place): a fresh run of free neurons, since
        permuting equal values changes nothing (fixed when it is one neuron, which has no
        permutation to allow); ``()`` for none."""
        if size <= 0:
            return ()
        kind = "neuron" if size > 1 else "fixed"
        label = self.new_run(size, kind, f"{self.node.name}.{what}")
        self.runs[label[0].run].uniform = True
        return label

    def _equal_slices(self, t: torch.Tensor, dim: int) -> Label | None:
        """The label of dim ``dim`` of a constant ``t`` (a mask buffer, a table the group does
        not act on) where consecutive slices along it are equal (:func:`_equal_stretches`):
        each such stretch a run of free neurons, since permuting equal slices leaves ``t`` as
        it is, and the positions whose slice differs from both neighbours one fixed run;
        ``None`` where no two neighbours are equal. Permuting equal slices along one dim keeps
        those along every other equal, so each dim's runs stand on their own."""
        stretches = _equal_stretches(t, dim)
        if stretches is None:
            return None
        origin = f"{self.node.name}.equal.d{dim}"
        lone = stretches.count(1)
        fixed = self.new_run(lone, "fixed", origin)[0].run if lone else None
        segs, taken = [], 0
        for k in stretches:
            if k > 1:  # named after what it meets, and positions where it meets positions
                segs.extend(self.new_run(k, "constant", origin))
            else:
                segs.append(Seg(fixed, taken, 1))
                taken += 1
        return merged(tuple(segs))

    def name_output(self, label: Any) -> Any:
        """``label``, the output of a functional layer that is its weight's axis
        (``F.conv2d(x, self.weight)``), named after the weight's module as a module's call names
        its output (``stem.weight.d0`` -> ``stem``); returns it."""
        for seg in segments(label):
            run = self.runs[seg.run]
            if run.kind == "param":
                run.kind, run.origin = "neuron", run.origin.rsplit(".", 2)[0]
        return label

    def _broken(self, reason: str) -> int:
        name = self.node.name if self.node else ""
        for i, b in enumerate(self.broken):
            if b.node == name and b.reason == reason:
                return i
        self.broken.append(Broken(self.op, name, reason))
        return len(self.broken) - 1

    def _fix_run(self, run: int, offset: int, length: int, bi: int) -> None:
        self.fixes.append((run, offset, length, bi))
        self.broken[bi].neurons.append((run, offset, length))

    def fix(self, label: Any, reason: str) -> None:
        """Mark every neuron of ``label`` fixed, recording the current op and ``reason``."""
        segs = tuple(segments(label))
        if not segs:
            return
        if self._recording is not None:
            self._recording.append((segs, reason))
            return
        bi = self._broken(reason)
        for s in segs:
            self._fix_run(s.run, s.offset, s.length, bi)

    def fix_pieces(self, labels: Any, reason: str) -> None:
        """Fix every single neuron of a larger run that ``labels`` (dim labels) hold alone (a
        chunk of one position, ``x.chunk(n, d)`` of a dim of ``n``): where a layer with weights
        of its own passes such a dim through, the run's other neurons may meet other weights
        (DeepSpeed's experts, each a module of its own run on its chunk of the router's experts
        dim), and moving them would hand each to another layer. (A piece of several neurons
        is the slices' and chunks' own reading: a layer maps its positions alike.)"""
        for label in labels:
            one = [
                s for s in segments(label)
                if self.runs[s.run].kind in ("neuron", "input") and s.length == 1
                and self.runs[s.run].size > 1
            ]  # fmt: skip
            if one:
                self.fix(tuple(one), reason)

    def fix_all(self, value: Any, reason: str) -> None:
        """Fix every label in a (nested) value."""
        for info in tensors(value):
            for lab in info.labels:
                self.fix(lab, reason)

    def tie(self, a: Any, b: Any, reason: str = "") -> Any:
        """Tie two labels position by position (of equal width); returns ``a`` (or ``b`` when
        ``a`` is :data:`~nfncompile.frontend.labels.UNIFORM`).

        A labelled side meeting an unlabelled one is fixed (a position-dependent partner); a
        uniform side imposes nothing; two flattened products are tied factor by factor.
        """
        if a is UNIFORM or b is UNIFORM:
            return b if a is UNIFORM else a
        if a is None and b is None:
            return None
        if isinstance(a, Prod) or isinstance(b, Prod):
            # one labelled dim flattened with unlabelled ones meets a product as a product
            pa = as_prod(a, b.sizes) or a if isinstance(b, Prod) else a
            pb = as_prod(b, pa.sizes) or b if isinstance(pa, Prod) else b
            if isinstance(pa, Prod) and isinstance(pb, Prod) and pa.sizes == pb.sizes:
                for fa, fb in zip(pa.factors, pb.factors):
                    self.tie(fa, fb, reason)
                return a
            # a run of single positions meeting a product with a labelled leading factor
            # (spectral norm's v against a conv weight flattened to (out, in * taps)): asked
            # for in blocks of the positions after it, which then meet factor by factor
            for plain, prod in ((pa, pb), (pb, pa)):
                leading = isinstance(prod, Prod) and bool(prod.factors[0])
                if leading and isinstance(plain, tuple):
                    self.request_blocks(plain, math.prod(prod.sizes[1:]))
            self.fix(a, reason or "meets a flattened product of neuron axes")
            self.fix(b, reason or "meets a flattened product of neuron axes")
            return None
        if a is None or b is None:
            self.fix(a or b, reason or "meets a tensor the group does not act on")
            return None
        if label_width(a) != label_width(b):
            raise TraceError(
                f"internal: tying labels of widths {label_width(a)} and {label_width(b)}"
            )
        for once, tiled in ((a, b), (b, a)):  # heads meeting another split's heads tiled
            if (
                len(once) == 1 and len(tiled) > 1 and once[0].inner == tiled[0].inner == 1
                and self.is_whole_heads(once) and self.is_whole_heads(tiled)
            ):  # fmt: skip
                self.tiled_heads.add((once[0].run, tiled[0].run))
        ia = ib = 0
        pa = pb = 0  # start positions of segs a[ia], b[ib]
        pos = 0
        total = label_width(a)
        while pos < total:
            sa, sb = a[ia], b[ib]
            end = min(pa + sa.width, pb + sb.width)
            ok = (
                sa.inner == sb.inner
                and (pos - pa) % sa.inner == 0
                and (pos - pb) % sb.inner == 0
                and (end - pos) % sa.inner == 0
            )
            if ok:
                na = sa.offset + (pos - pa) // sa.inner
                nb = sb.offset + (pos - pb) // sb.inner
                n = (end - pos) // sa.inner
                if not (sa.run == sb.run and na == nb):
                    self.ties.append(Tie(sa.run, na, sb.run, nb, n, self.op, self._name()))
            elif self.is_heads((sa, sb)):
                # heads meeting repeated heads (GQA): position by position; the family's
                # blocks (heads.blocks) then move each key/value head with its query heads
                for at in range(pos, end):
                    na = sa.offset + (at - pa) // sa.inner
                    nb = sb.offset + (at - pb) // sb.inner
                    self.ties.append(Tie(sa.run, na, sb.run, nb, 1, self.op, self._name()))
            else:
                self._request_blocks(sa, pa, sb, pb, pos, end)
                self.fix((sa, sb), "ties neurons to positions inside other neurons' blocks")
            pos = end
            if pos == pa + sa.width:
                pa += sa.width
                ia += 1
            if pos == pb + sb.width:
                pb += sb.width
                ib += 1
        return a

    def cut(self, label: Label | None, pos: int) -> None:
        """Allow permutations only within ``[0, pos)`` and ``[pos, width)`` of ``label``."""
        if label is None:
            return
        start = 0
        for s in label:
            if start < pos < start + s.width:
                local = pos - start
                if local % s.inner:
                    self.fix((s,), "splits a neuron's block of positions")
                else:
                    self.cuts.append((s.run, s.offset + local // s.inner, self.op, self._name()))
                return
            start += s.width

    def consume(self, label: Any) -> None:
        """A label the op reduces over symmetrically (sum, mean, max): its segments may only
        permute within themselves, so their boundaries become cuts."""
        for s in segments(label):
            self.cuts.append((s.run, s.offset, self.op, self._name()))
            self.cuts.append((s.run, s.offset + s.length, self.op, self._name()))

    def slice_label(self, label: Label | None, start: int, stop: int) -> Label | None:
        """The sub-label of positions ``[start, stop)``; raises :class:`Unsupported` when the
        bounds split a neuron's block of positions."""
        if label is None:
            return None
        out = []
        p = 0
        for s in label:
            lo, hi = max(start, p), min(stop, p + s.width)
            if lo < hi:
                a, b = lo - p, hi - p
                if a % s.inner or b % s.inner:
                    raise Unsupported("slices through a flattened neuron's block of positions")
                out.append(Seg(s.run, s.offset + a // s.inner, (b - a) // s.inner, s.inner))
            p += s.width
        return tuple(out) if out else None

    def _name(self) -> str:
        return self.node.name if self.node else ""

    def link_blocks(
        self,
        count: int,
        members: tuple,
        inner: tuple,
        origin: str,
        alternative: Rule,
        what: str = "groups",
    ) -> None:
        """Record a :class:`~nfncompile.frontend.labels.BlockLink`: ``members`` (plain labels)
        cut into ``count`` blocks moved by one block permutation, ``inner`` axes indexed
        inside the blocks. ``alternative()`` records, instead of applying, the conservative
        constraints (ties, cuts, fixes) the derivation falls back to if the link fails;
        ``what`` names the blocks (``"<origin>.<what>"``: groups, heads)."""
        saved = self.ties, self.cuts
        self.ties, self.cuts, self._recording = [], [], []
        try:
            alternative()
            ties, cuts, fixes = self.ties, self.cuts, self._recording
        finally:
            self.ties, self.cuts = saved
            self._recording = None
        link = BlockLink(
            len(self.links), self.op, self._name(), origin, count, members, inner, what
        )
        link.ties, link.cuts, link.fixes = ties, cuts, fixes
        self.links.append(link)

    def split_heads(self, chunks: list, stacked: bool = False) -> tuple | None:
        """Record a :class:`~nfncompile.frontend.labels.HeadSplit` of ``chunks`` (equal labels
        of single positions); returns the labels of its heads dim and of the rest, or ``None``
        where the rest's run is made in blocks (the chunks are then tied as before).
        ``stacked``: the heads are a stacked parameter's axis (:mod:`.stacked`), whose chunks
        may be neurons of ``b`` positions each (an expert's interleaved gate and up) where the
        rest's run is made in such blocks too."""
        width = label_width(chunks[0])
        (heads,) = self.new_run(len(chunks), "heads", f"{self._name()} (heads)")
        (dims,) = self.new_run(width, "neuron", f"{self._name()} (per head)")
        spans = {s.inner for chunk in chunks for s in chunk}
        if heads.inner != 1 or spans != {dims.inner}:
            if heads.inner == dims.inner == 1 and len(spans) == 1 and not stacked:
                # each chunk's neurons span positions (GroupNorm written out: a conv's
                # (C, H, W) viewed as (groups, C / groups * H * W)): the next round makes the
                # dims so too
                self.request_blocks((dims,), spans.pop())
            for seg in (heads, dims):  # unused: positions, not a space of their own
                self.runs[seg.run].kind = "fixed"
                self._fix_run(seg.run, 0, self.runs[seg.run].size, self._broken(POSITIONS))
            return None
        split = HeadSplit(
            len(self.head_splits), self.op, self._name(), tuple(chunks), heads.run, dims.run,
            stacked,
        )  # fmt: skip
        self.head_splits.append(split)
        self.split_runs[heads.run] = (split.id, "heads")
        self.split_runs[dims.run] = (split.id, "dims")
        return (heads,), (dims,)

    def merge_heads(self, heads: Any, dims: Any) -> Label | None:
        """The label of a heads dim labelled ``heads`` flattened with a dim labelled ``dims``
        (row-major): the chunks of ``dims``'s split, where both are the whole runs of splits'
        heads and dims (recorded as a :class:`~nfncompile.frontend.labels.HeadMerge`); else
        ``None``."""
        heads, dims = merged(heads), merged(dims)
        if not (self._whole(heads) and isinstance(dims, tuple) and len(dims) == 1):
            return None
        # the whole per-head dims, or a slice of them (GPT-NeoX's values: the last third of
        # each head's fused q, k, v), read in every chunk
        (seg,) = dims
        whole = [self.split_runs.get(run) for run in (heads[0].run, seg.run)]
        if whole[0] is not None and whole[0][1] == "heads" and whole[1] is None and seg.inner == 1:
            return self._merge_shared(self.head_splits[whole[0][0]], heads, dims)
        if None in whole or whole[0][1] != "heads" or whole[1][1] != "dims":
            return None
        h, split = self.head_splits[whole[0][0]], self.head_splits[whole[1][0]]
        if len(h.chunks) % len(split.chunks) or seg.inner != split.span:
            return None
        # with fewer chunks, each read by that many heads in a row (GQA's values), or tiled
        # where the heads met them so: the check (heads.check) holds them to heads aligned so
        group = len(h.chunks) // len(split.chunks)
        tiled = (h.heads, split.heads) in self.tiled_heads
        self.head_merges.append(HeadMerge(h.id, split.id, self._name()))
        start, stop = seg.offset * seg.inner, (seg.offset + seg.length) * seg.inner
        chunks = [self.slice_label(c, start, stop) for c in split.chunks]
        pick = (lambda i: i % len(chunks)) if tiled else (lambda i: i // group)
        return tuple(s for i in range(len(h.chunks)) for s in chunks[pick(i)])

    def _merge_shared(self, h: HeadSplit, heads: Label, dims: Label) -> Label | None:
        """The label of split ``h``'s heads flattened with neurons ``dims`` that no split's
        heads hold, each head reading all of them (multi-query attention's one value head,
        read by every query head): a fresh run, a new split of one chunk per head whose heads
        are ``h``'s and whose every chunk is tied to ``dims`` (recorded as a
        :class:`~nfncompile.frontend.labels.HeadMerge`). ``None`` where the run is made in
        blocks."""
        width = label_width(dims)
        (run,) = self.new_run(len(h.chunks) * width, "neuron", f"{self._name()} (heads merged)")
        if run.inner != 1:
            return None
        chunks = [(Seg(run.run, i * width, width),) for i in range(len(h.chunks))]
        made = self.split_heads(chunks)
        if made is None:
            return None
        self.tie(made[0], heads, "heads flattened with the neurons every head reads")
        self.tie(made[1], dims, "heads flattened with the neurons every head reads")
        self.head_merges.append(HeadMerge(h.id, self.head_splits[-1].id, self._name()))
        return (run,)

    def _resplit(self, value: Any) -> Any:
        """``value`` (nested) with each tensor that holds some heads of a split (a proper
        subset, in any order) beside that split's whole per-head dims relabelled as a new
        split of those heads' chunks: a fused projection's heads taken apart on the heads dim
        (Falcon's multi-query ``split([H, 1, 1], dim=-2)``) gives its queries, keys and values
        splits of their own, where the sliced heads would make the split fall."""
        if isinstance(value, (tuple, list)) and not isinstance(value, TensorLabels):
            return remade(value, [self._resplit(v) for v in value])
        if not isinstance(value, TensorLabels):
            return value
        labels = list(value.labels)
        for d, lab in enumerate(labels):
            segs = list(segments(lab)) if isinstance(lab, tuple) else []
            owners = {self.split_runs.get(seg.run, (-1, ""))[0] for seg in segs}
            if not self.is_heads(lab) or self.is_whole_heads(lab) or len(owners) != 1:
                continue
            split = self.head_splits[owners.pop()]
            whole_dims = (Seg(split.dims, 0, self.runs[split.dims].size, split.span),)
            dims = [e for e, other in enumerate(labels) if e != d and other == whole_dims]
            if len(dims) != 1 or any(seg.inner != 1 for seg in segs):
                continue
            heads = [seg.offset + i for seg in segs for i in range(seg.length)]
            if len(heads) == 1:  # one head (multi-query attention's key or value): its neurons
                labels[d], labels[dims[0]] = None, split.chunks[heads[0]]
                continue
            new = self.split_heads([split.chunks[h] for h in heads])
            if new is not None:
                labels[d], labels[dims[0]] = new
        return dataclasses.replace(value, labels=tuple(labels))

    def head_checks(self) -> tuple[dict, list]:
        """Where the :class:`~nfncompile.frontend.labels.HeadSplit` s' dims are carried:
        ``(faults, carried)``.

        A split's dims stand for each of its heads only on a tensor that also has a whole
        heads dim: ``carried`` lists ``(heads split id, dims split id, node)`` for each such
        tensor (the two splits' heads must be aligned), and ``faults`` maps a split to why
        it cannot hold where a tensor holds its dims without one heads dim (heads summed,
        mixed by a layer, sliced or flattened with the dims in another way). Beside one whole
        heads dim, dims whose neurons span several positions each (an interleaved rotary's
        pairs stacked and flattened, GPT-J's ``rotate_every_two``) are still each head's. Rows
        each in one expert's group of a ``grouped_mm`` (:meth:`is_routed`) count as that
        split's heads dim.
        """
        faults: dict = {}
        carried: list = []
        for node, value in self.env.items():
            for t in tensors(value):
                heads = [
                    self.split_runs[lab[0].run][0] for lab in t.labels if self.is_whole_heads(lab)
                ]
                heads += [
                    self.routed_splits[self.routed[lab[0].run]]
                    for lab in t.labels
                    if self.is_routed(lab)
                ]
                for s in (s for lab in t.labels for s in segments(lab)):
                    split, what = self.split_runs.get(s.run, (-1, ""))
                    if what != "dims":
                        continue
                    if len(heads) != 1:
                        faults.setdefault(
                            split,
                            f"{node.name} holds its per-head dims without one whole heads dim "
                            "(an op reads across heads)",
                        )
                    else:
                        carried.append((heads[0], split, node.name))
        return faults, list(dict.fromkeys(carried))

    def repeats_heads(self, heads: Any, chunks: Any) -> bool:
        """Whether ``heads`` is a split's whole heads run, in order, each head repeated over
        as many positions as its chunk has in ``chunks``, which holds that split's chunks in
        order (a group's statistics expanded over its channels and viewed back to channels,
        beside those channels)."""
        whole = isinstance(heads, tuple) and len(heads) == 1 and self.is_whole_heads(heads)
        if not (isinstance(chunks, tuple) and whole):
            return False
        spans = {s.inner for s in chunks}
        if len(spans) != 1:
            return False
        (seg,) = heads
        split = self.head_splits[self.split_runs[seg.run][0]]
        neurons = [(s.run, s.offset + i) for s in chunks for i in range(s.length)]
        ours = [(s.run, s.offset + i) for c in split.chunks for s in c for i in range(s.length)]
        return neurons == ours and seg.inner == split.width * spans.pop()

    def is_whole_heads(self, label: Any) -> bool:
        """Whether ``label`` is one split's whole heads run, each head in place or repeated,
        once or tiled (heads merged with the batch)."""
        return (
            self.is_heads(label) and len(set(label)) == 1 and label[0].offset == 0
            and label[0].length == self.runs[label[0].run].size
        )  # fmt: skip

    def _whole(self, label: Any) -> bool:
        """Whether ``label`` is one whole run of single positions."""
        return (
            isinstance(label, tuple) and len(label) == 1 and label[0].offset == 0
            and label[0].inner == 1 and label[0].length == self.runs[label[0].run].size
        )  # fmt: skip

    def is_routed(self, label: Any) -> bool:
        """Whether ``label`` is one whole run of rows each in one expert's group of a
        ``grouped_mm`` whose experts are a split (:attr:`routed`), which stands for that
        split's heads."""
        return self._whole(label) and self.routed.get(label[0].run) in self.routed_splits

    def hold_heads(self, *labels: Any) -> None:
        """Record that the heads runs in ``labels`` met positions where they stand: they stay
        in place (:attr:`heads_held`), though their neurons are not fixed."""
        for label in labels:
            for s in segments(label) if isinstance(label, tuple) else ():
                if self.split_runs.get(s.run, (0, ""))[1] == "heads":
                    self.heads_held.setdefault(s.run, (self.op, self._name()))

    def is_stacked(self, label: Any) -> bool:
        """Whether ``label`` holds only the heads of stacked parameters' splits (an ensemble's
        members, :mod:`.stacked`): values that index them index neurons, as a plain run's."""
        segs = list(segments(label))
        splits = [self.split_runs.get(s.run, (-1, ""))[0] for s in segs]
        return (
            bool(segs) and self.is_heads(label) and all(self.head_splits[i].stacked for i in splits)
        )

    def is_heads(self, label: Any) -> bool:
        """Whether ``label`` holds only neurons of heads runs (see :meth:`split_heads`)."""
        segs = list(segments(label))
        return bool(segs) and all(self.split_runs.get(s.run, (0, ""))[1] == "heads" for s in segs)

    # ---- parameters ---------------------------------------------------------------------------

    def key(self, prefix: str, attr: str) -> str | None:
        """The state_dict key of ``prefix.attr`` if it is a float entry, else ``None``."""
        k = f"{prefix}.{attr}" if prefix else attr
        return k if k in self._canonical else None

    def label_param(self, key: str | None, labels: list, *, constant: tuple = ()) -> None:
        """Label state_dict entry ``key`` (one label or ``None`` per dim of its shape).

        Labels with ``inner > 1`` split the axis into ``(neurons, inner)`` in the param's
        ``view``. A second labelling of the same entry is tied to the first. ``constant``:
        dims (labelled ``None``) that this use contracts with an input constant along them
        (a layer applied to a recurrence's zero state); they take the label of a use that
        gives them one.
        """
        if key is None:
            return
        key = self._canonical[key]
        shape = tuple(self.state[key].shape)
        if len(labels) != len(shape):
            raise TraceError(
                f"internal: {len(labels)} labels for {key} of shape {list(shape)} "
                f"at {self.node.format_node() if self.node else '?'}"
            )
        view, axes, split = [], [], False
        for d, (lab, n) in enumerate(zip(labels, shape)):
            if isinstance(lab, Prod):  # a flattened product (viewable): one view axis per factor
                split = True
                view += list(lab.sizes)
                axes += [None if f is UNIFORM else f for f in lab.factors]
                continue
            inner = {s.inner for s in lab} if lab else {1}
            if len(inner) > 1:
                reason = f"{key}: flattened blocks of different sizes on one axis"
                if 1 not in inner:
                    self.fix(lab, reason)
                    lab, inner = None, {1}
                else:
                    # a flattened conv's features next to plain ones (a CNN's and a vector's
                    # features concatenated): the plain neurons stay, the flattened ones are
                    # fixed and their positions are positions of the axis
                    self.fix(tuple(s for s in lab if s.inner > 1), reason)
                    lab = tuple(
                        s if s.inner == 1 else self.new_run(s.width, "fixed", f"{key}.d{d}")[0]
                        for s in lab
                    )
                    inner = {1}
            q = inner.pop()
            if q > 1:
                split = True
                view += [n // q, q]
                axes += [tuple(Seg(s.run, s.offset, s.length) for s in lab), None]
            else:
                view.append(n)
                axes.append(lab)
        new = ParamLabel(shape, tuple(view) if split else None, axes, [self.op])
        # an axis contracted with a constant (a recurrence's zero state: ``W @ 0``) imposes
        # nothing, as any permutation of it leaves ``W @ const`` unchanged; an axis that only
        # such uses have met so far takes the next use's label
        uniform = set() if split else set(constant)
        old = self.params.get(key)
        if old is None:
            self.params[key] = new
            self._uniform_axes[key] = uniform
            return
        old.ops.append(self.op)
        pending = self._uniform_axes.setdefault(key, set())
        if old.view != new.view:
            for lab in old.axes + new.axes:
                self.fix(lab, f"{key} is used with two different flattenings")
            old.view, old.axes = None, [None] * len(shape)
            pending.clear()
            return
        for i, (x, y) in enumerate(zip(old.axes, new.axes)):
            if i in uniform:
                continue
            if i in pending:
                old.axes[i] = y
                pending.discard(i)
            elif x is None or y is None:
                self.tie(x, y, f"{key} axis {i} is indexed by neurons in one use, fixed in another")
                old.axes[i] = None
            else:
                self.tie(x, y)

    # ---- Interpreter overrides ------------------------------------------------------------------

    def run_node(self, n: torch.fx.Node) -> Any:
        self.node = n
        self.op = _describe(self, n)
        # the call's fx arguments, as the rules (and the probe) read its values: a function's
        # leading keyword arguments moved into ``args``
        self.sources = (n.args, dict(n.kwargs))
        if n.op == "call_function":
            self.sources = _positional(n.target, *self.sources)
        if n.op not in ("placeholder", "get_attr", "output"):
            self.calls.append((self.op, n.name))
            reads = not _selects(n)
            for info in tensors(self.fetch_args_kwargs_from_env(n)):
                for lab in info.labels:
                    for s in segments(lab):
                        ops = self.touched.setdefault(s.run, [])
                        if not ops or ops[-1] != self.op:
                            ops.append(self.op)
                        if reads and s.run in self.param_runs:
                            self.reads.setdefault(s.run, []).append((s.offset, s.offset + s.length))
        try:
            value = super().run_node(n)
        except (TraceError, ConfigError):  # ConfigError: a channel_dim the input does not fit
            raise
        except Exception as e:
            raise TraceError(
                f"symmetry analysis failed at node {n.format_node()} ({self.op}): "
                f"{type(e).__name__}: {e}"
            ) from e
        n.meta["nfn_labels"] = value
        if writes(n) and isinstance(value, TensorLabels):
            self.written(n.args[0], value)
        return value

    def written(
        self,
        target: torch.fx.Node,
        labels: TensorLabels,
        current: frozenset = frozenset(),
        region: Any = None,
    ) -> None:
        """Record that ``target``'s tensor was written in place and has ``labels`` now: every
        later use of it reads them. A basic slice of a tensor (``t[..., :4].copy_(x)``) writes
        into that tensor, whose labels are pieced together as a ``t[..., :4] = x`` would
        piece them. Otherwise, where the tensor shares its memory with views of it (or is
        one), the write changes them too; when it put values the old labels do not describe
        and such views, made before it, are read after it (``current`` excepted: their labels
        are already the new ones; and slices of it that miss the written ``region``, a basic
        index), every tensor of that family is made position-dependent (its neurons fixed)."""
        old = self.env.get(target)
        if not isinstance(old, TensorLabels):
            return
        base, index = _sliced_from(target)
        if (
            base is not None
            and base not in current
            and isinstance(self.env.get(base), TensorLabels)
        ):
            try:
                whole = write(self, self.env[base], index, labels)
            except Unsupported:
                whole = None
            if whole is not None:
                self.env[target] = labels
                self.written(base, whole, current | {target}, index)
                return
        # the same neurons spelled in pieces (``x[:, :4] += r`` writes back the first four of
        # the eight it had) change nothing
        same = [merged(new) == merged(was) for new, was in zip(labels.labels, old.labels)]
        if all(same):
            return
        described = all(new is UNIFORM or s for new, s in zip(labels.labels, same))
        # views made before the write hold labels from before it (later ones read the new);
        # they matter only where something reads them after it
        after = self._order[self.node]
        stale = [
            m
            for m in aliases(target)
            if m is not target
            and m not in current
            and not _apart(m, target, region, old)
            and m in self.env
            and any(self._order[u] > after for u in m.users)
        ]
        if described or not stale:
            self.env[target] = labels
            return
        reason = "written in place through a view of its tensor"
        for node in [target, *stale]:
            value = self.env.get(node)
            if isinstance(value, TensorLabels):
                self.fix_all(value, reason)
                self.env[node] = TensorLabels.plain(value.shape)
        self.fix_all(labels, reason)

    def placeholder(self, target: Any, args: Any, kwargs: Any) -> Any:
        # ``forward(*xs)``, a tuple or dict input: each tensor in it labelled as if it had a
        # parameter of its own
        return self._inputs(_meta_value(self.node), self.node.meta.get("tensor_meta"))

    def _inputs(self, info: Any, meta: Any) -> Any:
        """The labels of one input value: each tensor in it, at any depth of its tuples,
        lists and dicts, an input of its own (:meth:`_input`), in order."""
        if isinstance(info, TensorLabels):
            return self._input(info, meta)
        sequences = isinstance(info, (tuple, list)) and isinstance(meta, (tuple, list))
        if sequences and len(info) == len(meta):
            return remade(info, (self._inputs(i, m) for i, m in zip(info, meta)))
        if isinstance(info, dict) and isinstance(meta, dict):
            return {k: self._inputs(v, meta.get(k)) for k, v in info.items()}
        return info

    def _input(self, info: Any, meta: Any) -> Any:
        """An input's labels: its :attr:`channel_dim` (dim 1 by default, dim 0 of a 1-D input)
        a fresh run of input neurons."""
        if not isinstance(info, TensorLabels):
            return info
        index = len(self.inputs)  # among the tensor inputs, integer ones included
        float_input = meta.dtype.is_floating_point and info.ndim > 0
        # an integer input has no neurons: its entry is not read (nor checked against it)
        dim = (
            channel_dim_of(self.channel_dim, index, info.shape, self.node.name)
            if float_input
            else None
        )
        if dim is None:
            self.inputs.append((self.node.name, info))
            return info
        origin = "in" if not self.inputs else f"in{len(self.inputs) + 1}"
        info = info.with_label(dim, self.new_run(info.shape[dim], "input", origin))
        self.inputs.append((self.node.name, info))
        return info

    def get_attr(self, target: str, args: Any, kwargs: Any) -> Any:
        info = _meta_value(self.node)
        if not isinstance(info, TensorLabels):
            return info
        if target not in self._canonical:
            # a tensor constant: the group does not act on it, and a dim along which its values
            # repeat (a filter repeated over channels) may take any label
            t = self.fetch_attr(target)
            if not isinstance(t, torch.Tensor) or t.is_meta:
                return info
            if t.layout != torch.strided:  # a sparse matrix (RecBole's normalised adjacency)
                if t.numel() > _DENSE_LIMIT:
                    return info
                t = t.to_dense()
            labels = tuple(
                UNIFORM if n > 1 and torch.equal(t, t.narrow(d, 0, 1).expand_as(t)) else None
                for d, n in enumerate(t.shape)
            )
            if labels[-2:] == (None, None) and _permutes_jointly(t):
                # an identity (``torch.eye``, DoRA's ``lora_B(lora_A(eye))``): permuting its rows
                # and columns alike leaves it as it is, so both dims are one run of free
                # neurons, a constant's (as equal slices are: named after what it meets, and
                # where it meets positions, positions: Nystromformer's `7 * I - xz` over its
                # landmarks broke no symmetry, and was listed as 18 broken records)
                n = t.shape[-1]
                run = self.new_run(
                    n, "constant" if n > 1 else "fixed", f"{self.node.name}.diagonal"
                )
                labels = labels[:-2] + (run, run)
            else:
                labels = tuple(
                    self._equal_slices(t, d) if lab is None else lab for d, lab in enumerate(labels)
                )
            return TensorLabels(info.shape, labels)
        labels = []
        for d, n in enumerate(info.shape):
            labels.append(self.new_run(n, "param", f"{target}.d{d}") if n > 1 else None)
        self.param_runs.update(lab[0].run for lab in labels if lab)
        if not self.node.users:
            for lab in labels:
                if lab:
                    self.unused_param_runs.append(lab[0].run)
        self.label_param(target, labels)
        return TensorLabels(info.shape, tuple(labels))

    def call_module(self, target: str, args: Any, kwargs: Any) -> Any:
        mod = self.fetch_attr(target)
        base = self.node.meta.get("nfn_base")  # a subclass's super().forward: the base's rule
        rule = module_rule(mod) if base is None else class_rule(base)
        # (``self.rnn(input=x, hx=h)``, as darts' TFT calls its LSTMs)
        forward = mod.forward if base is None else base.forward.__get__(mod)
        args, kwargs = _positional(forward, args, kwargs)
        return self._apply(rule, (self, mod, target, args, kwargs), args, kwargs)

    def call_function(self, target: Any, args: Any, kwargs: Any) -> Any:
        if isinstance(target, type) and dataclasses.is_dataclass(target):
            # a dataclass returned by the forward: fx builds it from its fields, in order
            return dict(kwargs)
        if isinstance(target, type) and issubclass(target, tuple) and hasattr(target, "_fields"):
            return namedtuple_of(target, args, kwargs)  # a namedtuple: its values as they are
        if "tensor_meta" not in self.node.meta and target is not operator.setitem:
            return self.node.meta.get("nfn_value")
        if str(getattr(target, "__module__", None) or "torch").startswith("torch"):
            kwargs = _torch_names(kwargs)
        args, kwargs = _positional(target, args, kwargs)
        return self._apply(FUNCTION_RULES.get(target), (self, args, kwargs), args, kwargs)

    def call_method(self, target: str, args: Any, kwargs: Any) -> Any:
        if "tensor_meta" not in self.node.meta and target != "__setitem__":
            return self.node.meta.get("nfn_value")
        kwargs = _torch_names(kwargs)
        return self._apply(METHOD_RULES.get(target), (self, args, kwargs), args, kwargs)

    def output(self, target: Any, args: Any, kwargs: Any) -> Any:
        self.fix_values(args[0], "a model output holds neuron positions")
        outs = leaves(self.plain(args[0], "a model output"))
        self.outputs = [v if isinstance(v, TensorLabels) else None for v in outs]
        return args[0]

    def _apply(self, rule: Rule | None, call: tuple, args: Any, kwargs: Any) -> Any:
        moved = _moves_values(self.node)
        if rule not in VALUE_RULES:
            # neuron positions read as numbers (or as an index into another tensor): a
            # permutation changes what the op computes
            read = (args[1:], kwargs) if moved else (args, kwargs)
            self.fix_values(read)
        result = self._applied(rule, call, args, kwargs)
        if self.head_splits:
            result = self._resplit(result)
        source = args[0] if args else None
        if moved and isinstance(source, TensorLabels) and isinstance(result, TensorLabels):
            # an op that moves or casts entries (a view, a transpose, an index, ``long()``)
            return dataclasses.replace(result, values=source.values)
        return result

    def fix_values(self, value: Any, reason: str | None = None) -> None:
        """Fix the labels whose neurons the values of the tensors in ``value`` index (by
        default because the current op reads those positions as values)."""
        reason = reason or f"{self.op} reads neuron positions as values"
        for info in tensors(value):
            if info.values is not None:
                self.fix(info.values, reason)

    def _applied(self, rule: Rule | None, call: tuple, args: Any, kwargs: Any) -> Any:
        if rule is None:
            return self.unknown(args, kwargs)
        if rule not in STRUCTURED:
            what = self.op
            args, kwargs = self.plain(args, what), self.plain(kwargs, what)
            call = call[:-2] + (args, kwargs)
        try:
            return rule(*call)
        except Unsupported as e:
            return self.fallback(args, kwargs, str(e))

    def plain(self, value: Any, reader: str) -> Any:
        """``value`` (nested) with every flattened-product label fixed and every uniform label
        dropped, for a rule that reads plain labels only; ``reader`` names it for the report."""
        if isinstance(value, TensorLabels):
            if not any(isinstance(lab, Prod) or lab is UNIFORM for lab in value.labels):
                return value
            labels = tuple(self.plain_label(lab, reader) for lab in value.labels)
            return TensorLabels(value.shape, labels, value.values)
        if isinstance(value, (tuple, list)):
            return remade(value, (self.plain(v, reader) for v in value))
        if isinstance(value, dict):
            return {k: self.plain(v, reader) for k, v in value.items()}
        return value

    @staticmethod
    def viewable(label: Any) -> bool:
        """Whether a flattened product's factors are plain labels of single positions (or
        unlabelled): a parameter axis it labels is viewed as one axis per factor."""
        return isinstance(label, Prod) and all(
            f is None or f is UNIFORM or (isinstance(f, tuple) and all(s.inner == 1 for s in f))
            for f in label.factors
        )

    def plain_label(self, label: Any, reader: str = "", uniform: bool = False) -> Any:
        """One dim's label as a plain label: a flattened product keeps the neurons of its
        largest factor (the last of equals), each spanning the positions of the factors after
        it and repeated for each position of those before, and its other factors are fixed
        (a conv over channels flattened from (hidden, fields), xDeepFM's CIN; a product
        concatenated with a layer's outputs, AutoInt's); uniform is dropped (kept with
        ``uniform``, for a rule that reads it)."""
        if isinstance(label, Prod):
            reason = f"{reader or self.op} reads a flattened product of neuron axes"
            kept = [t for t, f in enumerate(label.factors) if isinstance(f, tuple)]
            if not kept:
                return None
            keep = max(kept, key=lambda t: (label_width(label.factors[t]), t))
            for t in kept:
                if t != keep:
                    self.fix(label.factors[t], reason)
            after = math.prod(label.sizes[keep + 1 :])
            own = tuple(
                Seg(s.run, s.offset, s.length, s.inner * after) for s in label.factors[keep]
            )
            return own * math.prod(label.sizes[:keep])
        return None if label is UNIFORM and not uniform else label

    def unknown(self, args: Any, kwargs: Any) -> Any:
        """The one entry point for a call no rule knows (a leaf module, a wrapped function, a
        method): probed numerically (:func:`~nfncompile.frontend.probe.probe_op`); when it is
        not found equivariant, the conservative :meth:`fallback` with the probe's reason."""
        record, value = probe_op(self, args, kwargs)
        reason = f"no symmetry rule for {self.op}"
        if record is not None:
            self.probes.append(record)
            if record.passed:
                return value
            reason += f"; {record.detail}"
        return self.fallback(args, kwargs, reason)

    def fallback(self, args: Any, kwargs: Any, reason: str) -> Any:
        """The conservative rule: fix every labelled input, the output is unlabelled."""
        self.fix_all((args, kwargs), reason)
        return _meta_value(self.node)

    def out(self) -> Any:
        """The unlabelled abstract value of the current node (shapes from its meta)."""
        return _meta_value(self.node)

    def out_shape(self) -> tuple:
        return tuple(self.node.meta["tensor_meta"].shape)

    # ---- generic helpers used by rules ------------------------------------------------------

    def broadcast(
        self,
        values: list,
        shape: tuple | None = None,
        mixed: str = MIXED,
        batch: bool = False,
    ) -> TensorLabels:
        """Elementwise op: align dims from the right, tie labels along each output dim.

        A labelled dim (size > 1) meeting an unlabelled dim of size > 1 is fixed (``mixed``
        says why): the op treats channel positions differently. Attention heads, which never
        move, are not fixed where that partner is a constant of the model or where the dims
        are a matmul's ``batch`` dims. Broadcast and uniform dims impose nothing; a dim that
        only they fill is uniform. A stacked parameter's members (:mod:`.stacked`) stay in
        place wherever they meet such a dim (each member its own data): held, as fixed blocks.
        """
        shape = self.out_shape() if shape is None else shape
        infos = [v for v in values if isinstance(v, TensorLabels)]
        data = [info for info in infos if not self._data_free(info)]
        labels = []
        for d in range(len(shape)):
            found, plain, uniform, data_free = [], False, False, True
            for info in infos:
                k = d - (len(shape) - info.ndim)
                if k < 0:
                    continue
                lab = info.labels[k]
                if info.shape[k] == 1 and shape[d] > 1:
                    # one neuron's value broadcast to every position
                    self.fix(lab, "broadcasts one neuron's value to all positions")
                    uniform = True
                elif lab is UNIFORM:
                    uniform = True
                elif lab is None:
                    plain = plain or info.shape[k] > 1
                    data_free = data_free and (info.shape[k] == 1 or info not in data)
                else:
                    found.append(lab)
            stacked = [self.is_stacked(lab) for lab in found]
            if (
                found
                and plain
                and all(self.is_heads(lab) for lab in found)
                and (all(stacked) or (not any(stacked) and (data_free or batch)))
            ):
                # attention heads stay in place: a constant per head (ALiBi's slopes), or a
                # matmul's batch of scores whose heads labels are lost (RoFormer's rotated q
                # and k), meets each head where it is; so do a stacked parameter's members
                # where each meets its own data (fixed blocks, or fixed where their split
                # falls: heads.rewrite)
                self.hold_heads(*found)
                for lab in found[1:]:
                    self.tie(found[0], lab)
                labels.append(found[0])
            elif found and all(self.is_routed(lab) and lab == found[0] for lab in found):
                # rows each in one expert's group, scaled row by row (the routing weights) or
                # met by rows of the same groups (a bias per expert read at their ids): each
                # row still holds its expert's units, its expert the same on both sides
                if len(found) > 1:
                    self.routed_met.add(self._name())
                labels.append(found[0])
            elif found and plain:
                for lab in found:
                    self.fix(lab, mixed)
                labels.append(None)
            elif found:
                # a value per head repeated over its chunk meets the chunks themselves (a
                # GroupNorm's statistics expanded and viewed back to channels): each chunk
                # meets its own head, which the split already says
                found = [f for f in found if not any(self.repeats_heads(f, g) for g in found)]
                # attention heads (a stacked weight's members) label the output where they
                # meet a weight per head (``self.bias + x @ W``), so it holds them whole
                first = next((lab for lab in found if self.is_heads(lab)), found[0])
                for lab in found:
                    if lab is not first:
                        self.tie(first, lab)
                labels.append(first)
            else:
                labels.append(UNIFORM if uniform and not plain else None)
        return TensorLabels(tuple(shape), tuple(labels))

    def _data_free(self, info: TensorLabels) -> bool:
        """Whether the current call's argument holding ``info`` is a constant of the model:
        computed from no input and no parameter (shapes aside)."""
        args = [n for n in leaves(list(self.sources)) if isinstance(n, torch.fx.Node)]
        nodes = [n for n in args if self.env.get(n) is info]
        return bool(nodes) and all(self._constant(n) for n in nodes)

    def _constant(self, node: torch.fx.Node) -> bool:
        if node not in self._constants:
            if node.op == "placeholder":
                self._constants[node] = False
            elif node.op == "get_attr":
                self._constants[node] = self.key("", node.target) is None
            elif "tensor_meta" not in node.meta:
                self._constants[node] = True  # a size, a dtype: the same for any input
            else:
                self._constants[node] = all(self._constant(n) for n in node.all_input_nodes)
        return self._constants[node]

    def keep(self, info: TensorLabels, mixed: tuple, reason: str) -> TensorLabels:
        """Fix labels on ``mixed`` dims (which the op mixes across positions)."""
        labels = list(info.labels)
        for d in mixed:
            if labels[d] is not None:
                self.fix(labels[d], reason)
                labels[d] = None
        return TensorLabels(info.shape, tuple(labels))


def _equal_stretches(t: torch.Tensor, dim: int) -> list[int] | None:
    """The lengths of the stretches of equal consecutive slices of ``t`` along ``dim``, in
    order, or ``None`` where no two neighbours are equal (or ``t`` is too large to compare).
    A block-diagonal mask (``mask * weight``) keeps the units within each block
    exchangeable. Equal slices apart (a MADE mask's hidden units of one degree, taken in turn)
    are not one stretch: a space is consecutive positions of an axis. NaN differs from itself.

    >>> mask = torch.block_diag(torch.ones(2, 2), torch.ones(3, 3), torch.ones(1, 1))
    >>> _equal_stretches(mask, 0), _equal_stretches(torch.eye(3), 1)
    ([2, 3, 1], None)
    """
    n = t.shape[dim]
    if n < 3 or t.numel() > _MAX_CONSTANT_CLASSES or t.is_complex():
        return None
    rows = t.detach().movedim(dim, 0).reshape(n, -1)
    same = (rows[1:] == rows[:-1]).all(dim=1).tolist()
    if not any(same):
        return None
    stretches, start = [], 0
    for p in range(1, n + 1):
        if p == n or not same[p - 1]:
            stretches.append(p - start)
            start = p
    return stretches


def _permutes_jointly(t: torch.Tensor) -> bool:
    """Whether every matrix of ``t``'s last two dims is ``a * I + b`` (its diagonal one value,
    the rest another): ``P M P^T = M`` for every permutation ``P``.

    >>> _permutes_jointly(torch.eye(3)), _permutes_jointly(torch.tensor([[1.0, 2], [3, 1]]))
    (True, False)
    """
    n = t.shape[-1] if t.ndim >= 2 else 0
    if n < 2 or t.shape[-2] != n or t.is_complex() or t.dtype == torch.bool:
        return False
    diagonal = t.diagonal(dim1=-2, dim2=-1)
    rest = t[..., ~torch.eye(n, dtype=torch.bool, device=t.device)]
    return all(torch.equal(v, v[..., :1].expand_as(v)) for v in (diagonal, rest))


#: the largest constant whose equal slices are sought (:func:`_equal_stretches`)
_MAX_CONSTANT_CLASSES = 1 << 22

#: the most entries a sparse constant is made dense to read which of its dims repeat
_DENSE_LIMIT = 1 << 22


@functools.cache
def _signatures(fn: Any) -> tuple:
    """The signatures ``fn`` may be called with (a torch op's overloads, a Python function's
    own), or none where they cannot be read."""
    try:
        return (inspect.signature(fn),)
    except (TypeError, ValueError):
        return tuple(get_signature_for_torch_op(fn) or ())


#: ops that pick positions of their input without reading the values elsewhere
_SELECTING = frozenset(
    [operator.getitem, torch.narrow, torch.split, torch.chunk, torch.tensor_split,
     torch.unbind, torch.select, "narrow", "split", "chunk", "tensor_split", "unbind",
     "select", "__getitem__"]
)  # fmt: skip


def _selects(n: torch.fx.Node) -> bool:
    """Whether node ``n`` selects positions of its input (a slice, a split)."""
    return n.op in ("call_function", "call_method") and n.target in _SELECTING


#: numpy's keyword names that torch's functions and tensor methods take for their own
_NUMPY_NAMES = {"axis": "dim", "keepdims": "keepdim"}


def _torch_names(kwargs: dict) -> dict:
    """``kwargs`` with numpy's names torch accepts (``x.mean(axis=2, keepdims=True)``, as
    I-BERT writes it) under torch's own: rules read ``dim`` and ``keepdim``.

    >>> _torch_names({"axis": 1, "keepdims": True})
    {'dim': 1, 'keepdim': True}
    """
    out = dict(kwargs)
    for numpy, name in _NUMPY_NAMES.items():
        if numpy in out and name not in out:
            out[name] = out.pop(numpy)
    return out


#: ops whose output holds the entries of their first input, moved, selected or cast: an index
#: tensor's values keep indexing the same neurons
_VALUE_MOVING_METHODS = frozenset({
    "view", "reshape", "flatten", "squeeze", "unsqueeze", "permute", "transpose", "contiguous",
    "clone", "detach", "to", "long", "int", "type", "t", "expand", "expand_as",
})  # fmt: skip
_VALUE_MOVING_FUNCTIONS = frozenset({
    torch.flatten, torch.reshape, torch.squeeze, torch.unsqueeze, torch.permute, torch.transpose,
    operator.getitem, getattr,
})  # fmt: skip


def _moves_values(n: torch.fx.Node | None) -> bool:
    if n is None:
        return False
    if n.op == "call_method":
        return n.target in _VALUE_MOVING_METHODS
    return n.op == "call_function" and n.target in _VALUE_MOVING_FUNCTIONS


def _positional(target: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """A call's leading arguments given by keyword (``F.linear(input=x, weight=w)``, as the
    official Swin-V2 calls it, or a module's ``self.lin(input=x)``) moved into ``args`` in
    the signature's order: rules read the input they act on by position."""
    if not kwargs:
        return args, kwargs
    for sig in _signatures(target):
        try:
            bound = sig.bind(*args, **kwargs).arguments
        except TypeError:
            continue
        pos, rest = [], dict(kwargs)
        for name, p in sig.parameters.items():
            if p.kind not in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) or name not in bound:
                break
            pos.append(bound[name])
            rest.pop(name, None)
        return (*pos, *args[len(pos) :]), rest
    return args, kwargs


def _sliced_from(node: torch.fx.Node) -> tuple:
    """``(base, index)`` where ``node`` is ``base[index]`` with a basic index of constants
    (ints, slices, ``...``), else ``(None, None)``."""
    if node.op != "call_function" or node.target is not operator.getitem or len(node.args) != 2:
        return None, None
    base, index = node.args
    entries = index if isinstance(index, tuple) else (index,)
    basic = all(
        i is Ellipsis
        or (isinstance(i, int) and not isinstance(i, bool))
        or (
            isinstance(i, slice)
            and all(v is None or isinstance(v, int) for v in (i.start, i.stop, i.step))
        )
        for i in entries
    )
    return (base, index) if basic and isinstance(base, torch.fx.Node) else (None, None)


def _apart(view: torch.fx.Node, base: torch.fx.Node, region: Any, labels: TensorLabels) -> bool:
    """Whether ``view`` is a basic slice of ``base`` that misses ``region`` (a basic index
    of ``base``, of shape ``labels.shape``) along some dim."""
    of, index = _sliced_from(view)
    if of is not base or region is None:
        return False
    try:
        ours, theirs = index_ranges(labels, region), index_ranges(labels, index)
    except Unsupported:
        return False
    return any(a1 <= b0 or b1 <= a0 for (a0, a1, *_), (b0, b1, *_) in zip(ours, theirs))


def _describe(a: SymmetryAnalysis, n: torch.fx.Node) -> str:
    if n.op == "call_module":
        return f"{type(a.fetch_attr(n.target)).__name__} {n.target}"
    if n.op == "call_function":
        mod = getattr(n.target, "__module__", "") or ""
        name = getattr(n.target, "__name__", str(n.target))
        prefix = {"torch.nn.functional": "F.", "_operator": "operator."}.get(mod, "torch.")
        if not mod.startswith("torch") and mod not in ("_operator", "builtins"):
            prefix = ""  # a user function (kept whole by torch.fx.wrap)
        if getattr(F, name, None) is n.target:
            prefix = "F."
        return f"{prefix}{name} ({n.name})"
    if n.op == "call_method":
        return f".{n.target}() ({n.name})"
    return f"{n.op} {n.target}"


def _meta_value(n: torch.fx.Node) -> Any:
    if "tensor_meta" not in n.meta:
        return n.meta.get("nfn_value")

    def conv(m: Any) -> Any:
        if hasattr(m, "shape") and hasattr(m, "dtype") and hasattr(m, "stride"):
            return TensorLabels.plain(tuple(m.shape))
        if isinstance(m, (tuple, list)):
            return remade(m, (conv(x) for x in m))
        if isinstance(m, dict):
            return {k: conv(v) for k, v in m.items()}
        return m

    return conv(n.meta["tensor_meta"])
