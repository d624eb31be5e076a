"""Op rules for attention: ``F.scaled_dot_product_attention``, flex attention
(``torch.nn.attention.flex_attention``) and ``F.multi_head_attention_forward`` (what
``nn.MultiheadAttention`` and ``nn.TransformerEncoderLayer`` call).

Scaled dot-product attention ``softmax(q k^T) v`` contracts the queries' and keys' last dims
(tied), sums over the key positions symmetrically (keys and values tied by position), and
returns the queries' positions with the values' last dim; a mask fixes positions.

The query, key and value's embedding neurons meet the input projection's columns. The
projection's rows are the queries, keys and values of ``num_heads`` heads; a head's score is
the dot product of its query and key, so each head's query and key dims permute together
(one space per head), and each head's value dims with the output projection's columns that
read them (another). Heads stay in place (a permutation of whole heads is not read: a
conservative reading). The output projection's rows are the output's neurons. Without this
rule the call was probed, and a probe fixes every space it touches (it returns
``(output, None)``); the probe of scaled dot-product attention passed the labels through,
tying the values' dims to the queries' and keys'.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch.nn.functional as F
from torch.nn.attention.flex_attention import flex_attention

from ..labels import UNIFORM, TensorLabels, is_plain, remade
from .registry import Unsupported, arg, register_function, structured
from .shape import merge_label

if TYPE_CHECKING:
    from ..analysis import SymmetryAnalysis

#: ``F.multi_head_attention_forward``'s parameters, in order
_PARAMS = (
    "query", "key", "value", "embed_dim_to_check", "num_heads", "in_proj_weight",
    "in_proj_bias", "bias_k", "bias_v", "add_zero_attn", "dropout_p", "out_proj_weight",
    "out_proj_bias", "training", "key_padding_mask", "need_weights", "attn_mask",
    "use_separate_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight",
)  # fmt: skip
_HEADS = "attention reads the projected neurons head by head"


def _plain(a: SymmetryAnalysis, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """The call's arguments as a rule of plain labels reads them, but for the uniform batch
    and heads dims of the queries, keys and values: a key/value head expanded for every query
    head (multi-query attention's one) meets each of them alike, and imposes nothing."""

    def one(t: Any, name: str) -> Any:
        if name not in ("query", "key", "value") or not isinstance(t, TensorLabels):
            return a.plain(t, a.op)
        labels = tuple(
            lab if lab is UNIFORM and d < t.ndim - 2 else a.plain_label(lab)
            for d, lab in enumerate(t.labels)
        )
        return TensorLabels(t.shape, labels, t.values)

    names = ("query", "key", "value")
    args = tuple(one(x, names[i] if i < 3 else "") for i, x in enumerate(args))
    return args, {k: one(v, k) for k, v in kwargs.items()}


@register_function(F.scaled_dot_product_attention)
@structured
def _scaled_dot_product_attention(a: SymmetryAnalysis, args: tuple, kwargs: dict) -> Any:
    args, kwargs = _plain(a, args, kwargs)
    mask = arg(args, kwargs, 3, "attn_mask")
    masked = mask is not None or bool(arg(args, kwargs, 5, "is_causal"))
    reason = "an attention mask is added to the scores position by position"
    q = args[0]
    per_head = isinstance(mask, TensorLabels) and mask.ndim >= 3 and mask.shape[-3] > 1
    heads = q.labels[-3] if isinstance(q, TensorLabels) and q.ndim >= 3 else None
    if per_head and isinstance(mask.labels[-3], tuple) and a.is_heads(heads):
        # a bias per head made by the model's own weights (BEiT's and T5's relative position
        # tables): added to each head's scores at fixed positions, its heads dim is the
        # heads', as ``scores + bias`` ties it
        a.fix_all(mask.with_label(mask.ndim - 3, None), reason)
        a.tie(mask.labels[-3], heads)
    else:
        a.fix_all(mask, reason)
        if per_head:  # one mask per head: the heads stay where it meets them
            _hold_heads(a, args, kwargs)
    gqa = bool(arg(args, kwargs, 7, "enable_gqa"))
    return _attention(a, args, kwargs, gqa, _MASK if masked else "")


@register_function(flex_attention)
@structured
def _flex_attention(a: SymmetryAnalysis, args: tuple, kwargs: dict) -> Any:
    """Flex attention: scaled dot-product attention whose scores a ``score_mod(score, batch,
    head, q_idx, kv_idx)`` may change by position and head (relative position biases, ALiBi)
    and a ``block_mask`` may mask by position. Either fixes the positions, and a score_mod
    the neurons along the batch and heads dims but the heads' own (which stay in place); the
    queries', keys' and values' feature dims stay free. Its log-sum-exp and largest scores
    (``return_lse``, ``return_aux``) are per query, as the output is."""
    args, kwargs = _plain(a, args, kwargs)
    score_mod = arg(args, kwargs, 3, "score_mod")
    masked = score_mod is not None or arg(args, kwargs, 4, "block_mask") is not None
    gqa = bool(arg(args, kwargs, 6, "enable_gqa"))
    whole = a.out()
    if isinstance(whole, TensorLabels):
        out = _attention(a, args, kwargs, gqa, _MASK if masked else "")
    else:  # (output, log-sum-exp) or (output, AuxOutput(lse, max_scores)): per query
        y = _attention(a, args, kwargs, gqa, _MASK if masked else "", whole[0].shape)
        out = remade(whole, (y, _per_query(whole[1], y)))
    if masked:  # a block mask may differ by head: the heads stay in place
        _hold_heads(a, args, kwargs)
    if score_mod is not None:
        # the score_mod's own arguments: the batch and head indices. Heads stay in place (see
        # frontend.heads), any other neurons along those dims are fixed
        for t in _operands(args, kwargs):
            for label in t.labels[:-2]:
                if label is not UNIFORM and not a.is_heads(label):
                    a.fix(label, "a flex attention score_mod reads the batch and head indices")
    return out


_MASK = "attention mask depends on position"


def _hold_heads(a: SymmetryAnalysis, args: tuple, kwargs: dict) -> None:
    """Keep the heads of attention's operands in place (:meth:`~nfncompile.frontend.analysis.
    SymmetryAnalysis.hold_heads`): a mask or score function meets each head where it is."""
    for t in _operands(args, kwargs):
        if isinstance(t, TensorLabels) and t.ndim >= 3:
            a.hold_heads(t.labels[-3])


def _per_query(value: Any, y: TensorLabels) -> Any:
    """A value per query of attention's output ``y`` (its log-sum-exp, its largest scores),
    or a tuple of them, labelled as ``y`` but its features."""
    if isinstance(value, tuple) and not isinstance(value, TensorLabels):
        return remade(value, (_per_query(v, y) for v in value))
    if isinstance(value, TensorLabels) and value.shape == y.shape[:-1]:
        return TensorLabels(value.shape, y.labels[:-1])
    if isinstance(value, TensorLabels):
        raise Unsupported("flex attention with an auxiliary output of another shape")
    return value


def _operands(args: tuple, kwargs: dict) -> tuple:
    return tuple(arg(args, kwargs, i, n) for i, n in enumerate(("query", "key", "value")))


def _attention(
    a: SymmetryAnalysis,
    args: tuple,
    kwargs: dict,
    gqa: bool,
    masked: str,
    shape: tuple | None = None,
) -> TensorLabels:
    """``softmax(q k^T) v`` over the last two dims, its heads (dim -3) grouped where ``gqa``;
    ``masked``: why the positions are fixed, or ``""``; ``shape``: the output's (default:
    the node's)."""
    q, k, v = _operands(args, kwargs)
    if not all(isinstance(t, TensorLabels) for t in (q, k, v)):
        raise Unsupported("attention with non-tensor operands")
    if gqa and q.ndim >= 3 and k.shape[-3] != q.shape[-3]:
        # grouped key/value heads: each read by q.shape[-3] // k.shape[-3] query heads in a row
        k, v = (_repeated(a, t, q.shape[-3] // t.shape[-3]) for t in (k, v))
    a.tie(q.labels[-1], k.labels[-1], "attention contracts the queries' and keys' dims")
    a.tie(k.labels[-2], v.labels[-2], "attention keys and values meet position by position")
    if masked:
        a.fix(q.labels[-2], masked)
        a.fix(k.labels[-2], masked)
    a.consume(k.labels[-2])
    shape = a.out_shape() if shape is None else tuple(shape)
    batch = a.broadcast([TensorLabels(t.shape[:-2], t.labels[:-2]) for t in (q, k, v)], shape[:-2])
    return TensorLabels(shape, batch.labels + (q.labels[-2], v.labels[-1]))


def _repeated(a: SymmetryAnalysis, t: TensorLabels, r: int) -> TensorLabels:
    """``t`` with each head (dim -3) ``r`` times in a row, as ``repeat_interleave`` makes it."""
    heads = merge_label(a, [t.labels[-3], UNIFORM], [t.shape[-3], r])
    shape = (*t.shape[:-3], t.shape[-3] * r, *t.shape[-2:])
    return TensorLabels(shape, t.with_label(t.ndim - 3, heads).labels)


@register_function(F.multi_head_attention_forward)
def _multi_head_attention(a: SymmetryAnalysis, args: tuple, kwargs: dict) -> Any:
    p = {name: arg(args, kwargs, i, name) for i, name in enumerate(_PARAMS)}
    if p["bias_k"] is not None or p["add_zero_attn"]:
        raise Unsupported("attention with key/value biases or zeros")
    w_out = p["out_proj_weight"]
    # one packed projection for q, k and v, or three (WavLM's use_separate_proj_weight)
    names = ("q_proj_weight", "k_proj_weight", "v_proj_weight")
    w_in = [p[n] for n in names] if p["use_separate_proj_weight"] else [p["in_proj_weight"]] * 3
    if not all(isinstance(w, TensorLabels) and w.ndim == 2 for w in (*w_in, w_out)):
        raise Unsupported("attention with projection weights that are not 2-D tensors")
    for x, w in zip((p["query"], p["key"], p["value"]), w_in):
        a.tie(x.labels[-1], w.labels[1], "attention input meets an unlabelled projection")
    # the heads' spaces named after the attention module (its projection's rows)
    if p["use_separate_proj_weight"]:
        parts = [a.plain_label(a.name_output(w.labels[0])) for w in w_in]
        rows = None if None in parts else tuple(seg for part in parts for seg in part)
        for part in parts if rows is None else ():
            a.fix(part, _HEADS)  # one unlabelled: every projection's rows fixed with it
    else:
        rows = a.plain_label(a.name_output(w_in[0].labels[0]))
    cols = a.plain_label(w_out.labels[1])
    if isinstance(p["in_proj_bias"], TensorLabels):
        rows = a.tie(rows, a.plain_label(p["in_proj_bias"].labels[0]))
    shapes = a.out()
    weights = shapes[1]
    # a mask per head, or weights returned per head, meet each head where it is
    per_head = isinstance(p["attn_mask"], TensorLabels) and p["attn_mask"].ndim == 3
    per_head |= isinstance(weights, TensorLabels) and weights.ndim == p["query"].ndim + 1
    _heads(a, rows, cols, w_out.shape[1], p["num_heads"], not per_head)
    out = a.name_output(w_out.labels[0])
    if isinstance(p["out_proj_bias"], TensorLabels):
        out = a.tie(out, p["out_proj_bias"].labels[0])
    q, k, v = p["query"], p["key"], p["value"]
    # (L, [N,] E): the keys' and values' positions move together, and the attention sums
    # over them symmetrically; the queries' positions are the output's
    a.tie(k.labels[0], v.labels[0], "attention keys and values meet position by position")
    if q.ndim == 3:
        a.tie(q.labels[1], a.tie(k.labels[1], v.labels[1]), "attention batches")
    masked = p["attn_mask"] is not None or kwargs.get("is_causal", False)
    if masked:  # a mask is a constant over positions
        a.fix(q.labels[0], "attention mask depends on position")
    if masked or p["key_padding_mask"] is not None:
        a.fix(k.labels[0], "attention mask depends on position")
    for mask in (p["attn_mask"], p["key_padding_mask"]):
        a.fix_all(mask, "an attention mask is added to the scores position by position")
    a.consume(k.labels[0])
    if isinstance(weights, TensorLabels):  # ([N,] [heads,] L, S): by query and key position
        labels = [None] * weights.ndim
        labels[-2:] = q.labels[0], k.labels[0]
        if q.ndim == 3:
            labels[0] = q.labels[1]
        weights = TensorLabels(weights.shape, tuple(labels))
    return TensorLabels(shapes[0].shape, q.labels[:-1] + (out,)), weights


def _heads(
    a: SymmetryAnalysis, rows: Any, cols: Any, embed: int, heads: int, movable: bool
) -> None:
    """Each head's query and key rows one space, its value rows and the output projection's
    columns another (``rows``: the ``3 * embed`` projected neurons). Where ``movable``, the
    heads move as blocks, head ``i`` of the queries, keys and values together (a
    :class:`~nfncompile.frontend.labels.BlockLink` of the query and the value features);
    else, or where that link fails, they stay in place."""
    dim = embed // heads
    if rows is None or cols is None or dim == 1 or not (is_plain(rows) and is_plain(cols)):
        a.fix(rows, _HEADS)
        a.fix(cols, _HEADS)
        return
    q, k, v = (a.slice_label(rows, i * embed, (i + 1) * embed) for i in range(3))
    a.tie(q, k, _HEADS)
    a.tie(v, cols, _HEADS)

    def in_place() -> None:  # every head of q, k and v permutes only on its own
        for i in range(1, 3 * heads):
            a.cut(rows, i * dim)

    if movable and heads > 1:
        origin = a.runs[rows[0].run].origin
        a.link_blocks(heads, (q, v), (), origin, in_place, what="heads")
    else:
        in_place()
