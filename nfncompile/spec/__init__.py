"""Weight-space specs: the contract between the tracer and the layer generator.

A :class:`WeightSpaceSpec` names the *neuron spaces* of a network (sets of neurons that may be
permuted freely) and labels every axis of every parameter tensor with the space that indexes it.
It is frozen, hashable, validated at construction and round-trips exactly through YAML.

Axis labels
-----------
``"c1"``
    a space name: the axis is indexed by the neurons of space ``c1``.
``None`` (YAML ``null``)
    a *fixed* axis: conv kernel dims, flattened spatial positions, broken symmetry.
``("c1", "c2")`` (YAML ``[c1, c2]``)
    a *composite* axis: the pieces concatenated in order, e.g. the input axis of a linear layer
    after ``torch.cat``. A piece is a space name, an ``int`` n (a run of n fixed positions) or
    an ``Inner`` position (below), whose length is one block's.
``Inner("c1", 0)`` (YAML ``{space: c1, block_of: 0}``)
    the position *inside one block* of the block space ``c1``, the block being the one axis 0
    of the same tensor sits in (a grouped convolution's input-channel axis). As a composite
    piece it interleaves block spaces: a projection laid out per attention head, viewed as
    ``(heads, 3 * d, C)`` with axes ``[h, [{space: qk, block_of: 0}, {space: qk, block_of:
    0}, {space: v, block_of: 0}], c]``, holds head ``i``'s queries, keys and values in row
    ``i`` (``h`` a space of one neuron per block of the same block permutation).
``Span("h", 8)`` (YAML ``{space: h, span: 8}``)
    the neurons of space ``h``, each a run of 8 fixed positions (as a composite piece, or a
    whole axis): a projection sliced into ``[q | k | v]`` whose query and key features RoPE
    fixes holds each head's queries as one neuron of the heads' space.
``Span("h", "qk")`` (YAML ``{space: h, span: qk}``)
    the neurons of space ``h``, each a copy of the neurons of space ``qk`` (permuted by
    ``qk``'s permutation): multi-query attention fused as ``[q | k | v]`` holds each query
    head's rows as a copy of the one key head's features, ``[{space: h, span: qk}, qk, v]``.

Block spaces
------------
A grouped convolution with ``g`` groups permutes whole groups together and the channels inside
every group independently: the wreath product ``S_k wr S_g``. A :class:`Blocks` record names one
such *block permutation* of ``g`` blocks; every space that declares ``blocks: name`` is cut into
``g`` blocks of ``size / g`` neurons, and all of them move their blocks by that one permutation
(each with its own permutations inside the blocks). A space of ``g`` neurons with ``g`` blocks
is an ordinary space whose permutation is the block permutation (a depthwise conv's channels).
A block permutation declared ``fixed: true`` never moves its blocks, in either mode, while the
neurons inside each block still permute on their own: an ensemble's members that each read
their own data, each member's units a block (``specs/weight_spaces/ensemble_own_data.yaml``).

A parameter may also declare a ``view``: the shape its axes refer to, when the stored tensor is
a reshape of it (a linear layer after flattening C channels x P spatial positions has shape
``[out, C*P]`` and view ``[out, C, P]`` with axes ``[out, c, null]``).

And an ``order`` per axis, where the stored positions are a fixed reordering of the ones its
label lists: YAML ``order: {1: [0, 2, 1, 3]}`` says stored position ``p`` of axis 1 is
position ``order[p]`` of the label. A layer that reads channels after a channel shuffle holds
two spaces interleaved, ``[a0, b0, a1, b1]``: label ``[a, b]`` with that order
(``specs/weight_spaces/channel_shuffle.yaml``). Layers read such a tensor in label order
(:meth:`ParamSpec.to_labelled`) and write it back in stored order.

Examples
--------
>>> spec = WeightSpaceSpec.from_dict({
...     "spaces": {"in": {"size": 2, "role": "input"}, "h": {"size": 3, "role": "hidden"},
...                "out": {"size": 1, "role": "output"}},
...     "params": {"l1.weight": {"shape": [3, 2], "axes": ["h", "in"]},
...                "l1.bias": {"shape": [3], "axes": ["h"]},
...                "l2.weight": {"shape": [1, 3], "axes": ["out", "h"]}}})
>>> spec
WeightSpaceSpec(mode='np', spaces=[in:2/input, h:3/hidden, out:1/output], params=[l1.weight(3, 2)[h, in], l1.bias(3,)[h], l2.weight(1, 3)[out, h]])
>>> WeightSpaceSpec.from_yaml(spec.to_yaml()) == spec
True
>>> spec.with_mode("hnp").spaces["in"].permutable
False

A ResNeXt-style grouped conv, 2 groups of 2 channels, between two block spaces:

>>> grouped = WeightSpaceSpec.from_yaml('''
... blocks:
...   g: {count: 2}
... spaces:
...   in: {size: 3, role: input}
...   c1: {size: 4, role: hidden, blocks: g}
...   c2: {size: 4, role: hidden, blocks: g}
...   out: {size: 1, role: output}
... params:
...   conv1.weight: {shape: [4, 3], axes: [c1, in]}
...   conv2.weight: {shape: [4, 2, 3, 3], axes: [c2, {space: c1, block_of: 0}, null, null]}
...   fc.weight: {shape: [1, 4], axes: [out, c2]}
... ''')
>>> grouped.block_shape("c2")
(2, 2)
>>> grouped["conv2.weight"].axes[1]
Inner('c1', 0)
"""

from __future__ import annotations

from .labels import (
    MODES,
    ROLES,
    AxisLabel,
    Inner,
    Span,
    axis_pieces,
    check_mode,
    piece_space,
    spaces_named,
)
from .params import ParamSpec, Tile
from .permutation import Permutation
from .spaces import Blocks, Space, SpaceMap
from .weight_space import WeightSpaceSpec, holds_no_weight, is_counter

__all__ = [
    "ROLES",
    "MODES",
    "AxisLabel",
    "Space",
    "Blocks",
    "Inner",
    "Span",
    "ParamSpec",
    "Tile",
    "SpaceMap",
    "WeightSpaceSpec",
    "Permutation",
    "check_mode",
    "is_counter",
    "holds_no_weight",
    "axis_pieces",
    "piece_space",
    "spaces_named",
]
