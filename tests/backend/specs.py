"""Small hand-written weight spaces for the back-end and layer tests, and the brute-force oracle.

Every shape pattern the basis must handle appears once: MLPs, conv kernels (fixed dims), a
residual stream (a square weight on one space), a concatenation (composite axis with a fixed
piece), a depthwise conv, a flatten (a view), a square composite, and block spaces (grouped,
depthwise-multiplier and ResNeXt-style convs, a grouped conv inside its own block space, a
block permutation shared with the input space, and attention heads' composite axes:
positions inside blocks interleaved, spans of a space's neurons) and a channel shuffle's
reordered axes.

The oracle enumerates the group's orbits on (output index, input index) pairs explicitly:
connected components of the graph whose edges are the moves of every generator (adjacent
transpositions inside each space, inside each block of a block space, and adjacent swaps of
whole blocks moved together in every space sharing them).
"""

from __future__ import annotations

import networkx as nx
import torch

from nfncompile.backend.tiles import tile_refs
from nfncompile.spec import Permutation, WeightSpaceSpec


def make_spec(spaces: dict, params: dict, blocks: dict | None = None) -> WeightSpaceSpec:
    """``spaces``: name -> (size, role) or (size, role, block permutation)."""
    out: dict = {
        "spaces": {
            k: {"size": v[0], "role": v[1], **({"blocks": v[2]} if len(v) > 2 else {})}
            for k, v in spaces.items()
        },
        "params": params,
    }
    if blocks:  # name -> count, or name -> {count, fixed}
        out["blocks"] = {k: n if isinstance(n, dict) else {"count": n} for k, n in blocks.items()}
    return WeightSpaceSpec.from_dict(out)


def mlp_spec(widths: tuple, bias: bool = True) -> WeightSpaceSpec:
    names = ["in"] + [f"h{i}" for i in range(1, len(widths) - 1)] + ["out"]
    roles = ["input"] + ["hidden"] * (len(widths) - 2) + ["output"]
    spaces = {n: (w, r) for n, w, r in zip(names, widths, roles)}
    params = {}
    for i in range(1, len(widths)):
        params[f"l{i}.weight"] = {
            "shape": [widths[i], widths[i - 1]],
            "axes": [names[i], names[i - 1]],
        }
        if bias:
            params[f"l{i}.bias"] = {"shape": [widths[i]], "axes": [names[i]]}
    return make_spec(spaces, params)


def inner(space: str, block_of: int = 0) -> dict:
    return {"space": space, "block_of": block_of}


def span(space: str, n: int | str = 2) -> dict:
    return {"space": space, "span": n}


SPECS = {
    "mlp": mlp_spec((2, 3, 3, 2)),
    "cnn": make_spec(
        {"in": (1, "input"), "c1": (2, "hidden"), "c2": (3, "hidden"), "out": (2, "output")},
        {
            "conv1.weight": {"shape": [2, 1, 2, 2], "axes": ["c1", "in", None, None]},
            "conv1.bias": {"shape": [2], "axes": ["c1"]},
            "conv2.weight": {"shape": [3, 2, 2, 1], "axes": ["c2", "c1", None, None]},
            "fc.weight": {"shape": [2, 3], "axes": ["out", "c2"]},
            "fc.bias": {"shape": [2], "axes": ["out"]},
        },
    ),
    "residual": make_spec(
        {"in": (2, "input"), "h": (3, "hidden"), "out": (2, "output")},
        {
            "embed.weight": {"shape": [3, 2], "axes": ["h", "in"]},
            "block.weight": {"shape": [3, 3], "axes": ["h", "h"]},
            "block.bias": {"shape": [3], "axes": ["h"]},
            "head.weight": {"shape": [2, 3], "axes": ["out", "h"]},
        },
    ),
    "concat": make_spec(
        {"in": (2, "input"), "a": (2, "hidden"), "b": (3, "hidden"), "out": (2, "output")},
        {
            "la.weight": {"shape": [2, 2], "axes": ["a", "in"]},
            "lb.weight": {"shape": [3, 2], "axes": ["b", "in"]},
            "head.weight": {"shape": [2, 6], "axes": ["out", ["a", 1, "b"]]},
        },
    ),
    "depthwise": make_spec(
        {"in": (2, "input"), "c": (3, "hidden"), "out": (2, "output")},
        {
            "pw.weight": {"shape": [3, 2, 1, 1], "axes": ["c", "in", None, None]},
            "dw.weight": {"shape": [3, 1, 2, 2], "axes": ["c", None, None, None]},
            "dw.bias": {"shape": [3], "axes": ["c"]},
            "fc.weight": {"shape": [2, 3], "axes": ["out", "c"]},
        },
    ),
    "flatten": make_spec(
        {"in": (1, "input"), "c": (2, "hidden"), "out": (2, "output")},
        {
            "conv.weight": {"shape": [2, 1, 2, 1], "axes": ["c", "in", None, None]},
            "fc.weight": {"shape": [2, 6], "view": [2, 2, 3], "axes": ["out", "c", None]},
        },
    ),
    "square_composite": make_spec(
        {"in": (2, "input"), "h": (2, "hidden")},
        {
            "w": {"shape": [4, 2], "axes": [["h", "h"], "in"]},
            "u": {"shape": [2, 2], "axes": ["h", "h"]},
        },
    ),
    # ---- block spaces (S_k wr S_g) ------------------------------------------------------------
    # ResNeXt-style: a 1x1 conv into 2 groups, a grouped conv (2 -> 2 channels per group), its
    # bias, and a linear reading the grouped output whole.
    "grouped": make_spec(
        {
            "in": (2, "input"),
            "c1": (4, "hidden", "g"),
            "c2": (4, "hidden", "g"),
            "out": (2, "output"),
        },
        {
            "conv1.weight": {"shape": [4, 2], "axes": ["c1", "in"]},
            "conv2.weight": {"shape": [4, 2, 2], "axes": ["c2", inner("c1"), None]},
            "conv2.bias": {"shape": [4], "axes": ["c2"]},
            "fc.weight": {"shape": [2, 4], "axes": ["out", "c2"]},
        },
        {"g": 2},
    ),
    # depthwise with channel multiplier 2: 3 blocks of 1 input channel, 3 blocks of 2 outputs.
    "depthwise_multiplier": make_spec(
        {
            "in": (2, "input"),
            "c": (3, "hidden", "g"),
            "d": (6, "hidden", "g"),
            "out": (2, "output"),
        },
        {
            "pw.weight": {"shape": [3, 2], "axes": ["c", "in"]},
            "dw.weight": {"shape": [6, 1, 2], "axes": ["d", inner("c"), None]},
            "fc.weight": {"shape": [2, 6], "axes": ["out", "d"]},
        },
        {"g": 3},
    ),
    # a grouped conv inside its own block space (a grouped residual block), and its bias.
    "grouped_square": make_spec(
        {"in": (2, "input"), "c": (4, "hidden", "g")},
        {
            "stem.weight": {"shape": [4, 2], "axes": ["c", "in"]},
            "gconv.weight": {"shape": [4, 2], "axes": ["c", inner("c")]},
            "gconv.bias": {"shape": [4], "axes": ["c"]},
        },
        {"g": 2},
    ),
    # a block permutation shared with the input space (a grouped conv on the raw input): in hnp
    # the blocks do not move.
    "input_blocks": make_spec(
        {"in": (4, "input", "g"), "h": (4, "hidden", "g"), "out": (2, "output")},
        {
            "gconv.weight": {"shape": [4, 2], "axes": ["h", inner("in")]},
            "gconv.bias": {"shape": [4], "axes": ["h"]},
            "fc.weight": {"shape": [2, 4], "axes": ["out", "h"]},
        },
        {"g": 2},
    ),
    # an ensemble of 3 members with stacked weights, each member reading its own data: the
    # members stay in place (fixed blocks), each member's units permute on their own
    "fixed_blocks": make_spec(
        {
            "in": (2, "input"),
            "m": (3, "hidden", "members"),
            "h": (6, "hidden", "members"),
            "out": (2, "output"),
        },
        {
            "l1.weight": {"shape": [3, 2, 2], "axes": ["m", "in", inner("h")]},
            "l1.bias": {"shape": [3, 2], "axes": ["m", inner("h")]},
            "l2.weight": {"shape": [3, 2, 2], "axes": ["m", inner("h"), "out"]},
        },
        {"members": {"count": 3, "fixed": True}},
    ),
    # attention heads laid out per head (GPT-NeoX's fused (heads, 3 * d) projection): a space
    # of one neuron per head, each row holding that head's queries, keys and values as
    # positions inside its blocks; the values come out in block order.
    "interleaved_heads": make_spec(
        {
            "in": (2, "input"),
            "h": (2, "hidden", "heads"),
            "qk": (4, "hidden", "heads"),
            "v": (2, "hidden", "heads"),
            "out": (2, "output"),
        },
        {
            "qkv.weight": {
                "shape": [10, 2],
                "view": [2, 5, 2],
                "axes": ["h", [inner("qk"), inner("qk"), inner("v")], "in"],
            },
            "dense.weight": {"shape": [2, 2], "axes": ["out", "v"]},
        },
        {"heads": 2},
    ),
    # partial rotary: the first position of each head's queries fixed, the rest permuted
    "partial_rotary": make_spec(
        {"in": (2, "input"), "h": (2, "hidden", "heads"), "qk": (4, "hidden", "heads")},
        {
            "q.weight": {
                "shape": [6, 2],
                "view": [2, 3, 2],
                "axes": ["h", [1, inner("qk")], "in"],
            },
            "q.bias": {"shape": [6], "view": [2, 3], "axes": ["h", [1, inner("qk")]]},
        },
        {"heads": 2},
    ),
    # one projection sliced into [q | k | v] whose q and k RoPE fixes: each head's queries
    # (and keys) one neuron of the heads' space, a run of 2 fixed positions
    "span_heads": make_spec(
        {
            "in": (2, "input"),
            "h": (2, "hidden", "heads"),
            "v": (4, "hidden", "heads"),
            "out": (2, "output"),
        },
        {
            "qkv.weight": {"shape": [12, 2], "axes": [[span("h"), span("h"), "v"], "in"]},
            "o.weight": {"shape": [2, 4], "axes": ["out", "v"]},
        },
        {"heads": 2},
    ),
    # multi-query attention fused [q | k | v]: each query head's rows a copy of the one key
    # head's features (a span of a space), the heads a space of their own
    "span_space": make_spec(
        {
            "in": (2, "input"),
            "h": (2, "hidden"),
            "qk": (2, "hidden"),
            "v": (2, "hidden"),
            "out": (2, "output"),
        },
        {
            "qkv.weight": {"shape": [8, 2], "axes": [[span("h", "qk"), "qk", "v"], "in"]},
            "o.weight": {"shape": [2, 4], "view": [2, 2, 2], "axes": ["out", "h", "v"]},
        },
    ),
    # the same with the spanned space in blocks: each copy moved by its blocks' permutation
    "span_block_space": make_spec(
        {
            "in": (2, "input"),
            "h": (2, "hidden"),
            "qk": (4, "hidden", "g"),
            "out": (2, "output"),
        },
        {
            "w.weight": {"shape": [12, 2], "axes": [[span("h", "qk"), "qk"], "in"]},
            "o.weight": {"shape": [2, 4], "axes": ["out", "qk"]},
        },
        {"g": 2},
    ),
    # a channel shuffle: two spaces interleaved position by position where a layer reads them
    # (stored positions a fixed reordering of the labelled ones), also in a norm's vector and
    # in a viewed kernel with a fixed dim
    "shuffled": make_spec(
        {
            "in": (2, "input"),
            "a": (2, "hidden"),
            "b": (2, "hidden"),
            "c": (3, "hidden"),
            "out": (2, "output"),
        },
        {
            "l.weight": {"shape": [2, 2], "axes": ["a", "in"]},
            "r.weight": {"shape": [2, 2], "axes": ["b", "in"]},
            "r.bias": {"shape": [2], "axes": ["b"]},
            "norm.weight": {"shape": [4], "axes": [["a", "b"]], "order": {0: [1, 3, 0, 2]}},
            "mix.weight": {"shape": [3, 4], "axes": ["c", ["a", "b"]], "order": {1: [0, 2, 1, 3]}},
            "mix.bias": {"shape": [3], "axes": ["c"]},
            "head.weight": {
                "shape": [2, 3, 8],
                "view": [2, 3, 4, 2],
                "axes": ["out", "c", ["b", "a"], None],
                "order": {2: [3, 0, 2, 1]},
            },
        },
    ),
}

BLOCK_SPECS = (
    "grouped",
    "fixed_blocks",
    "depthwise_multiplier",
    "grouped_square",
    "input_blocks",
    "interleaved_heads",
    "partial_rotary",
    "span_heads",
    "span_block_space",
)


class Oracle:
    """Element-level group action of a spec in a mode, from its generators.

    ``blocks="group"`` moves a block permutation when the spec's group does (every space
    sharing it permutable); ``blocks="layer"`` whenever one of its spaces is permutable: the
    larger group the layers are built for (see :mod:`nfncompile.backend.tiles`).
    """

    def __init__(self, spec: WeightSpaceSpec, mode: str, blocks: str = "group") -> None:
        self.spec, self.mode = spec, mode
        self.offsets, total = {}, 0
        for p in spec.params:
            self.offsets[p.name] = total
            total += p.numel
        self.total = total
        self.moves = []  # one position map per generator: element id -> new element id
        moded = spec.with_mode(mode)
        for s in spec.permutable_spaces(mode):
            n = spec.spaces[s].size
            count, k = spec.block_shape(s) or (1, n)
            for b in range(count):
                for j in range(k - 1):
                    perm = torch.arange(n)
                    i = b * k + j
                    perm[i], perm[i + 1] = i + 1, i
                    self.moves.append(self.position_map(Permutation(spec, {s: perm})))
        for bl in moded.blocks.values():
            members = [s for s in moded.spaces.values() if s.blocks == bl.name]
            moves = bl.permutable if blocks == "group" else any(s.permutable for s in members)
            if not moves:
                continue
            for j in range(bl.count - 1):
                perms = {}
                for s in members:
                    k = s.size // bl.count
                    order = torch.arange(bl.count)
                    order[j], order[j + 1] = j + 1, j
                    perms[s.name] = (order[:, None] * k + torch.arange(k)).reshape(-1)
                self.moves.append(self.position_map(Permutation(spec, perms)))
        self.tiles = {}
        for t in tile_refs(spec, mode):
            p = spec[t.param]
            ids = p.to_labelled(torch.arange(p.numel).reshape(p.shape)) + self.offsets[p.name]
            idx = tuple(slice(s, s + n) for s, n in zip(t.starts, t.shape))
            self.tiles[t.name] = ids[idx].flatten().tolist()

    def position_map(self, perm: Permutation) -> list:
        f = [0] * self.total
        for p in self.spec.params:
            ids = torch.arange(p.numel) + self.offsets[p.name]
            moved = perm.apply_tensor(p.name, ids.reshape(p.shape)).flatten()
            for pos, e in zip(ids.tolist(), moved.tolist()):
                f[e] = pos
        return f

    def pair_orbits(self, p_tile: str, q_tile: str) -> int:
        g = nx.Graph()
        ps, qs = self.tiles[p_tile], self.tiles[q_tile]
        g.add_nodes_from((q, p) for q in qs for p in ps)
        for f in self.moves:
            g.add_edges_from(((q, p), (f[q], f[p])) for q in qs for p in ps)
        return nx.number_connected_components(g)

    def orbits(self, q_tile: str) -> int:
        g = nx.Graph()
        qs = self.tiles[q_tile]
        g.add_nodes_from(qs)
        for f in self.moves:
            g.add_edges_from((q, f[q]) for q in qs)
        return nx.number_connected_components(g)

    def dimensions(self) -> tuple:
        """``(linear, bias)``: the dimensions of the equivariant linear maps and biases."""
        names = list(self.tiles)
        lin = sum(self.pair_orbits(p, q) for p in names for q in names)
        return lin, sum(self.orbits(q) for q in names)

    def matrices(self) -> list:
        """The generators as permutation matrices on the flat weight space."""
        out = []
        for f in self.moves:
            m = torch.zeros(self.total, self.total, dtype=torch.float64)
            m[torch.tensor(f), torch.arange(self.total)] = 1.0
            out.append(m)
        return out
