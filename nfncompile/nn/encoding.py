"""The input/output encoding: sinusoidal encodings of the positions of input and output
neurons, concatenated to the features as channels (the NFN paper's IO encoding, ``hnp`` only)."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError, FeatureMismatchError, SpecError, StateDictMismatchError
from ..features import WeightSpaceFeatures
from ..spec import Inner, Span, WeightSpaceSpec, piece_space
from .checks import as_features

__all__ = ["IOEncoding", "sinusoidal_encoding"]


def sinusoidal_encoding(
    size: int,
    max_freq: float,
    num_freqs: int,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Fourier features of ``size`` positions spread evenly over ``[-1, 1]``.

    Position ``x`` becomes ``[sin(pi f_1 x), ..., sin(pi f_K x), cos(pi f_1 x), ...,
    cos(pi f_K x), x]`` with ``K = num_freqs`` frequencies ``f`` evenly spaced in
    ``[1, max_freq / 2]`` (the NFN paper's ``fourier_encode``). A single position sits at ``-1``.

    Returns
    -------
    Tensor
        ``(size, 2 * num_freqs + 1)``.

    Examples
    --------
    >>> enc = sinusoidal_encoding(3, max_freq=2, num_freqs=1)
    >>> enc.shape
    torch.Size([3, 3])
    >>> enc[:, 1:]  # cos(pi x) and x itself
    tensor([[-1., -1.],
            [ 1.,  0.],
            [-1.,  1.]])
    """
    x = torch.linspace(-1.0, 1.0, size, dtype=dtype, device=device).unsqueeze(-1)
    freqs = torch.linspace(1.0, max_freq / 2, num_freqs, dtype=dtype, device=device)
    angles = math.pi * x * freqs
    return torch.cat([angles.sin(), angles.cos(), x], dim=-1)


class IOEncoding(nn.Module):
    """Concatenate sinusoidal encodings of the input and output neurons' positions.

    The NFN paper's IO encoding: in ``hnp`` mode the input and output neurons of the network
    are not interchangeable, and an NFN may tell them apart. For every parameter axis labelled
    with an ``input``- or ``output``-role space (a whole axis, or a piece of a composite axis),
    the position of each neuron along it is encoded with :func:`sinusoidal_encoding`
    (``d = 2 * num_freqs + 1`` numbers) and broadcast over the parameter's other axes.

    The encoding is **concatenated** to the features along the channel dim (it never alters
    the incoming channels): one block of ``d`` channels for input-role axes, then one block of
    ``d`` channels for output-role axes (a block only when the spec has a space of that role).
    Entries not indexed by such an axis get zeros in that block; two axes of the same role in
    one parameter add up in its block. So ``out_channels = channels + d * (number of blocks)``.

    The result depends on the positions of input and output neurons and is constant along
    hidden axes: it is equivariant under ``hnp`` (hidden permutations) but **not** under
    ``np``. Its ``mode`` attribute is ``"hnp"`` so that
    :func:`nfncompile.testing.assert_equivariant` checks that group by default.

    Parameters
    ----------
    spec : WeightSpaceSpec
        The weight space (its spaces' roles; its mode is ignored).
    channels : int
        ``C`` of the incoming features.
    max_freq : float, default 10
        Highest frequency is ``max_freq / 2`` (in units of ``pi`` per half-range).
    num_freqs : int, default 6
        Frequencies per encoding.

    Raises
    ------
    SpecError
        When the spec has no input- or output-role space on any parameter axis.
    FeatureMismatchError
        When features do not match the spec or do not have ``channels`` channels.

    Examples
    --------
    >>> from nfncompile.spec import WeightSpaceSpec
    >>> spec = WeightSpaceSpec.from_dict({
    ...     "spaces": {"in": {"size": 2, "role": "input"}, "h": {"size": 3, "role": "hidden"},
    ...                "out": {"size": 1, "role": "output"}},
    ...     "params": {"l1.weight": {"shape": [3, 2], "axes": ["h", "in"]},
    ...                "l2.weight": {"shape": [1, 3], "axes": ["out", "h"]}}})
    >>> enc = IOEncoding(spec, channels=4, num_freqs=2)
    >>> enc.out_channels
    14
    >>> from nfncompile.testing import random_features
    >>> enc(random_features(spec, 4, batch=2))["l1.weight"].shape
    torch.Size([2, 14, 3, 2])
    """

    mode = "hnp"

    def __init__(
        self,
        spec: WeightSpaceSpec,
        channels: int,
        max_freq: float = 10.0,
        num_freqs: int = 6,
    ) -> None:
        super().__init__()
        if not isinstance(channels, int) or isinstance(channels, bool) or channels < 1:
            raise ConfigError(f"IOEncoding: channels must be a positive int, got {channels!r}")
        if not isinstance(num_freqs, int) or isinstance(num_freqs, bool) or num_freqs < 1:
            raise ConfigError(f"IOEncoding: num_freqs must be a positive int, got {num_freqs!r}")
        if not max_freq > 0:
            raise ConfigError(f"IOEncoding: max_freq must be positive, got {max_freq!r}")
        self.spec = spec
        self.channels = channels
        self.max_freq = float(max_freq)
        self.num_freqs = num_freqs
        self.enc_dim = 2 * num_freqs + 1
        used_roles = {spec.spaces[name].role for p in spec.params for name in p.spaces_used()}
        #: Roles that get a block of ``enc_dim`` channels, in channel order.
        self.roles = tuple(r for r in ("input", "output") if r in used_roles)
        if not self.roles:
            raise SpecError(
                "IOEncoding: no parameter axis is labelled with an input- or output-role space; "
                f"spaces: {', '.join(f'{s.name}/{s.role}' for s in spec.spaces.values())}"
            )

    @property
    def out_channels(self) -> int:
        """Channels of the output: ``channels + enc_dim * len(roles)``."""
        return self.channels + self.enc_dim * len(self.roles)

    def encoding(
        self, name: str, dtype: torch.dtype = torch.float32, device: Any = None
    ) -> torch.Tensor:
        """The ``(enc_dim * len(roles), *shape)`` encoding concatenated to parameter ``name``."""
        p = self.spec[name]
        shape = p.labelled_shape
        enc = torch.zeros((len(self.roles), self.enc_dim, *shape), dtype=dtype, device=device)
        nd = len(shape)
        for axis, label in enumerate(p.axes):
            start = 0
            for piece in label if isinstance(label, tuple) else (label,):
                if piece is None or isinstance(piece, int):
                    start += piece or shape[axis]
                    continue
                length = 0
                for space, pe, ref in self._piece(piece, axis, shape, dtype, device):
                    length = pe.shape[-1]
                    if space.role not in self.roles:
                        continue
                    view = [self.enc_dim] + [1] * nd
                    view[1 + axis] = length
                    if ref != axis:
                        view[1 + ref] = shape[ref]
                        pe = pe if ref < axis else pe.transpose(1, 2)
                    index = [slice(None)] * (1 + nd)
                    index[1 + axis] = slice(start, start + length)
                    enc[self.roles.index(space.role)][tuple(index)] += pe.reshape(view)
                start += length
        return p.from_labelled(enc.reshape(len(self.roles) * self.enc_dim, *shape), 1)

    def _piece(self, piece: Any, axis: int, shape: tuple, dtype: torch.dtype, device: Any) -> list:
        """``(space, encoding, ref)`` for each space a label piece on ``axis`` names: its
        neurons' encodings in the piece's positions, ``(enc_dim, length)``, or ``(enc_dim,
        n_ref, length)`` where the neuron depends on axis ``ref``'s block."""

        def pe(space: Any) -> torch.Tensor:  # (enc_dim, size): neuron j's in column j
            return sinusoidal_encoding(
                space.size, self.max_freq, self.num_freqs, dtype=dtype, device=device
            ).T

        space = self.spec.spaces[piece_space(piece)]
        if isinstance(piece, Span) and isinstance(piece.span, str):  # a copy of a space's
            # neurons for each neuron of the other
            other = self.spec.spaces[piece.span]
            return [
                (space, pe(space).repeat_interleave(other.size, dim=1), axis),
                (other, pe(other).repeat(1, space.size), axis),
            ]
        if isinstance(piece, Span):  # each neuron's run of positions
            return [(space, pe(space).repeat_interleave(piece.span, dim=1), axis)]
        if isinstance(piece, Inner):  # the neuron inside the block axis block_of is in
            ref = piece.block_of
            count, k = self.spec.block_shape(space.name)
            block = torch.arange(shape[ref], device=device) // (shape[ref] // count)
            return [(space, pe(space).reshape(self.enc_dim, count, k)[:, block], ref)]
        return [(space, pe(space), axis)]

    def forward(self, features: WeightSpaceFeatures) -> WeightSpaceFeatures:
        """Concatenate the encoding to every parameter's channels."""
        features = as_features(features, "IOEncoding")
        try:
            self.spec.check_state_dict(features, leading=2)
        except StateDictMismatchError as e:
            raise FeatureMismatchError(f"IOEncoding: {e}") from None
        if features.channels != self.channels:
            raise FeatureMismatchError(
                f"IOEncoding(channels={self.channels}) got features with "
                f"{features.channels} channels"
            )
        out = {}
        for name, x in features.items():
            enc = self.encoding(name, x.dtype, x.device)
            out[name] = torch.cat([x, enc.expand(x.shape[0], *enc.shape)], dim=1)
        return WeightSpaceFeatures(out)

    def extra_repr(self) -> str:
        return (
            f"channels={self.channels}, out_channels={self.out_channels}, "
            f"roles={list(self.roles)}, max_freq={self.max_freq}, num_freqs={self.num_freqs}"
        )
