"""Op rules of the symmetry analysis, one module per op family, and the tables they register in.

Importing this package registers every rule: :mod:`.elementwise`, :mod:`.inplace`, :mod:`.linear`,
:mod:`.attention`, :mod:`.conv`, :mod:`.norm`, :mod:`.pooling`, :mod:`.recurrent`, :mod:`.reorder`, :mod:`.shape`, :mod:`.reduce`, :mod:`.scatter`
(and :mod:`.chunks`, which :mod:`.shape` uses). The tables and
the decorators to add a rule live in :mod:`.registry`.
"""

from . import (  # noqa: F401  (register)
    attention,
    conv,
    elementwise,
    inplace,
    linear,
    norm,
    pooling,
    recurrent,
    reduce,
    reorder,
    scatter,
    shape,
)
from .registry import (
    FUNCTION_RULES,
    METHOD_RULES,
    MODULE_RULES,
    Unsupported,
    register_function,
    register_method,
    register_module,
)

__all__ = [
    "FUNCTION_RULES",
    "METHOD_RULES",
    "MODULE_RULES",
    "Unsupported",
    "register_function",
    "register_method",
    "register_module",
]
