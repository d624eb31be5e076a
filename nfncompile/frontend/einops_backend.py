"""einops' ``rearrange``, ``reduce``, ``repeat``, ``einsum`` and ``pack`` on traced values.

einops picks a backend by the type of the tensor it is given, and a traced value (an fx
``Proxy``) is of no type it knows: ``rearrange(x, "b c h w -> b (h w) c")`` in a forward
raised "Tensor type unknown to einops". Where einops is imported, :func:`register` adds a
backend for proxies that does what einops' torch backend does, with the same tensor methods,
so each call is recorded as the reshape, permute, expand and reduction nodes the op rules
read. einops plans its recipe from the input's shape, so only a trace that answers shapes
with numbers (:class:`~nfncompile.frontend.fx.ShapeSpecialisingTracer`, which the front end
falls back to) gets through; einops' layers (``Rearrange``, ``Reduce``) are read the same way.

Examples
--------
>>> import torch
>>> from einops import rearrange
>>> class Flatten(torch.nn.Module):
...     def forward(self, x):
...         return rearrange(x, "b c h w -> b (h w) c")
>>> from nfncompile.frontend.fx import trace_module
>>> gm = trace_module(Flatten(), torch.randn(2, 3, 4, 4))
>>> [n.target for n in gm.graph.nodes if n.op == "call_method"]
['permute', 'reshape']
"""

from __future__ import annotations

import sys

import torch.fx

__all__ = ["register"]

#: the backend class once made (einops finds it among its backends' subclasses, which
#: ``__subclasses__`` holds weakly: this reference keeps it alive)
_backend: type | None = None


def register() -> None:
    """Make einops accept fx proxies, once, if einops is imported (else nothing)."""
    global _backend
    if _backend is not None or "einops" not in sys.modules:
        return
    try:
        from einops._backends import TorchBackend
    except ImportError:  # another einops layout: its calls fail as they did
        return

    class ProxyBackend(TorchBackend):
        """einops' torch backend for fx proxies (found by einops among its backends'
        subclasses; ``framework_name`` must name an imported module)."""

        framework_name = "torch.fx"

        def is_appropriate_type(self, tensor: object) -> bool:
            return isinstance(tensor, torch.fx.Proxy)

    _backend = ProxyBackend
