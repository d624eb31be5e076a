"""Pointwise NF modules: activations, channel norm, dropout and the input/output encoding.

Every module here maps :class:`~nfncompile.features.WeightSpaceFeatures` to
:class:`~nfncompile.features.WeightSpaceFeatures` with the same parameter names, so they chain
with :class:`~nfncompile.nn.layers.NFLinear` in a plain :class:`torch.nn.Sequential`.

=============== ============================== =============================================
module          acts on                        equivariant under
=============== ============================== =============================================
NFActivation    every entry separately         ``np`` and ``hnp``
NFNorm          the channel dim of each entry  ``np`` and ``hnp``
NFDropout       every entry separately         ``np`` and ``hnp`` (in distribution; eval: id)
IOEncoding      adds channels that encode the  ``hnp`` only (it breaks the symmetry of the
                positions of input / output    input and output spaces on purpose)
                neurons
=============== ============================== =============================================

Examples
--------
>>> import torch
>>> from nfncompile.features import WeightSpaceFeatures
>>> feats = WeightSpaceFeatures({"w": torch.tensor([[[-1.0, 2.0]]])})
>>> NFActivation("relu")(feats)["w"]
tensor([[[0., 2.]]])
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError, FeatureMismatchError, SpecError, StateDictMismatchError
from ..features import WeightSpaceFeatures
from ..spec import WeightSpaceSpec, axis_pieces
from .activations import ACTIVATIONS, activation_fn

__all__ = ["NFActivation", "NFNorm", "NFDropout", "IOEncoding"]

def _as_features(x: Any, who: str) -> WeightSpaceFeatures:
    """Accept :class:`WeightSpaceFeatures` or a plain mapping of ``(B, C, ...)`` tensors."""
    if isinstance(x, WeightSpaceFeatures):
        return x
    if isinstance(x, Mapping):
        return WeightSpaceFeatures(x)
    raise FeatureMismatchError(
        f"{who} expects WeightSpaceFeatures (a mapping name -> (B, C, *shape) tensor), "
        f"got {type(x).__name__}"
    )


class NFActivation(nn.Module):
    """An elementwise activation applied to every entry of every parameter.

    Any elementwise function commutes with every permutation, so this module is equivariant in
    both modes.

    Parameters
    ----------
    fn : str or callable or nn.Module, default "relu"
        A name from :data:`~nfncompile.nn.activations.ACTIVATIONS` (``relu``, ``gelu``,
        ``tanh``, ``sigmoid``, ``silu``, ...), or any elementwise callable / module
        ``Tensor -> Tensor`` (a module is registered as the submodule ``fn``).
    **kwargs
        Keyword arguments for a named activation, e.g. ``negative_slope=0.2`` for
        ``leaky_relu``.

    Raises
    ------
    ConfigError
        For an unknown name (the message lists the valid names) or keyword arguments the named
        function does not take.

    Examples
    --------
    >>> import torch
    >>> from nfncompile.features import WeightSpaceFeatures
    >>> act = NFActivation("leaky_relu", negative_slope=0.5)
    >>> act
    NFActivation('leaky_relu', negative_slope=0.5)
    >>> act(WeightSpaceFeatures({"b": torch.tensor([[[-2.0, 2.0]]])}))["b"]
    tensor([[[-1.,  2.]]])
    """

    def __init__(self, fn: str | Callable[[torch.Tensor], torch.Tensor] = "relu", **kwargs: Any):
        super().__init__()
        self.name: str | None = None
        self.kwargs = dict(kwargs)
        if isinstance(fn, str):
            self.name = fn
            self.fn = activation_fn(fn, **self.kwargs)
        elif callable(fn):
            if kwargs:
                raise ConfigError("keyword arguments are only taken with an activation name")
            self.fn = fn
        else:
            raise ConfigError(
                f"fn must be an activation name ({', '.join(ACTIVATIONS)}) or a callable, "
                f"got {type(fn).__name__}"
            )

    def forward(self, features: WeightSpaceFeatures) -> WeightSpaceFeatures:
        """Apply the activation to every tensor."""
        features = _as_features(features, "NFActivation")
        return features.map(self.fn)

    def __repr__(self) -> str:
        if self.name is None:
            return f"NFActivation({self.fn!r})"
        extra = "".join(f", {k}={v!r}" for k, v in self.kwargs.items())
        return f"NFActivation({self.name!r}{extra})"


class NFNorm(nn.Module):
    """Channel layer norm: normalise across the ``C`` channels of every entry of every parameter.

    For each network ``b``, parameter and position ``i``, the vector ``x[b, :, i]`` is shifted
    to mean 0 and scaled to variance 1 (biased variance, ``eps`` added inside the square root,
    as :func:`torch.nn.functional.layer_norm`), then ``gamma * x + beta`` is applied with one
    learnable ``gamma, beta`` per channel. Positions never mix, so the module is equivariant in
    both modes.

    Unlike the reference ``nfn`` package's ``ChannelLayerNorm`` (which divides by the unbiased
    standard deviation plus ``eps``), this is exactly :class:`torch.nn.LayerNorm` over the
    channel dim; and unlike its ``SimpleLayerNorm`` it never folds fixed axes (conv kernel
    positions) into the normalised group.

    Parameters
    ----------
    channels : int
        ``C``, the channel count of the features.
    eps : float, default 1e-5
        Added to the variance.
    affine : bool, default True
        Learn ``weight`` (``gamma``, init 1) and ``bias`` (``beta``, init 0), shape ``(C,)``.

    Raises
    ------
    FeatureMismatchError
        When the features do not have ``channels`` channels.

    Examples
    --------
    >>> import torch
    >>> from nfncompile.features import WeightSpaceFeatures
    >>> norm = NFNorm(2)
    >>> norm(WeightSpaceFeatures({"b": torch.tensor([[[1.0], [3.0]]])}))["b"].squeeze()
    tensor([-1.0000,  1.0000], grad_fn=<SqueezeBackward0>)
    """

    def __init__(self, channels: int, eps: float = 1e-5, affine: bool = True) -> None:
        super().__init__()
        if not isinstance(channels, int) or isinstance(channels, bool) or channels < 1:
            raise ConfigError(f"NFNorm: channels must be a positive int, got {channels!r}")
        self.channels = channels
        self.eps = eps
        self.affine = affine
        if affine:
            self.weight = nn.Parameter(torch.ones(channels))
            self.bias = nn.Parameter(torch.zeros(channels))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)

    def forward(self, features: WeightSpaceFeatures) -> WeightSpaceFeatures:
        """Normalise every ``(B, C, *shape)`` tensor over ``C``."""
        features = _as_features(features, "NFNorm")
        if features.channels != self.channels:
            raise FeatureMismatchError(
                f"NFNorm({self.channels}) got features with {features.channels} channels"
            )
        return features.map(self._norm)

    def _norm(self, x: torch.Tensor) -> torch.Tensor:
        y = F.layer_norm(x.movedim(1, -1), (self.channels,), self.weight, self.bias, self.eps)
        return y.movedim(-1, 1)

    def extra_repr(self) -> str:
        return f"{self.channels}, eps={self.eps}, affine={self.affine}"


class NFDropout(nn.Module):
    """Elementwise dropout on every entry of every parameter (the identity in eval mode).

    Each entry is zeroed independently with probability ``p`` and the rest scaled by
    ``1 / (1 - p)``, as :func:`torch.nn.functional.dropout`. The mask is drawn independently of
    positions, so the module is equivariant in distribution in both modes; in eval mode it is
    exactly equivariant.

    Parameters
    ----------
    p : float
        Drop probability, ``0 <= p < 1``.

    Examples
    --------
    >>> import torch
    >>> from nfncompile.features import WeightSpaceFeatures
    >>> drop = NFDropout(0.5).eval()
    >>> drop(WeightSpaceFeatures({"b": torch.ones(1, 1, 3)}))["b"]
    tensor([[[1., 1., 1.]]])
    """

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        if not isinstance(p, (int, float)) or isinstance(p, bool) or not 0 <= p < 1:
            raise ConfigError(f"NFDropout: p must be a float in [0, 1), got {p!r}")
        self.p = float(p)

    def forward(self, features: WeightSpaceFeatures) -> WeightSpaceFeatures:
        """Drop entries (training) or pass through (eval)."""
        features = _as_features(features, "NFDropout")
        if not self.training or self.p == 0:
            return features
        return features.map(lambda t: F.dropout(t, self.p, True))

    def extra_repr(self) -> str:
        return f"p={self.p}"


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
        used_roles = set()
        for p in spec.params:
            for a in p.axes:
                for piece in axis_pieces(a):
                    if isinstance(piece, str):
                        used_roles.add(spec.spaces[piece].role)
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
        for axis, (label, _) in enumerate(zip(p.axes, shape)):
            start = 0
            for piece in axis_pieces(label):
                if isinstance(piece, int):
                    start += piece
                    continue
                space = self.spec.spaces[piece]
                if space.role in self.roles:
                    pe = sinusoidal_encoding(
                        space.size, self.max_freq, self.num_freqs, dtype=dtype, device=device
                    ).T  # (enc_dim, size)
                    view = [self.enc_dim] + [1] * nd
                    view[1 + axis] = space.size
                    index = [slice(None)] * (1 + nd)
                    index[1 + axis] = slice(start, start + space.size)
                    enc[self.roles.index(space.role)][tuple(index)] += pe.reshape(view)
                start += space.size
        return enc.reshape(len(self.roles) * self.enc_dim, *p.shape)

    def forward(self, features: WeightSpaceFeatures) -> WeightSpaceFeatures:
        """Concatenate the encoding to every parameter's channels."""
        features = _as_features(features, "IOEncoding")
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
