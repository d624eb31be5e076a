"""Checks a forward makes on traced values: which way a condition must go for the forward not
to raise.

A forward can test a value it computes and raise when the test fails: demucs' ``pad1d``
asserts ``(out[..., left:left + length] == x).all()``, other code writes ``if
torch.isnan(x).any(): raise ValueError(...)``. Tracing cannot answer such a test (the value is
a proxy). Where one side of the branch raises and the other goes on, the model run on the
example took the side that goes on (verification runs the real model on the example, and
reports a model that raises there), so the trace takes it too: the check changes no value.

:func:`passing_truth` reads this from the bytecode of the frame that asks for the truth of a
traced value, without running it: the conditional jump there, and whether the code at each of
its two successors raises before it jumps or returns. Python 3.10 to 3.13 compile
``assert c`` and ``if c: raise`` to such a jump (3.13 with ``TO_BOOL`` before it). The
shape-fixing trace (:class:`~nfncompile.frontend.fx.ShapeSpecialisingTracer`) asks it, and its
shape propagation then checks that the example passes each condition so taken.

Examples
--------
>>> import sys
>>> class Traced:
...     def __bool__(self):
...         return passing_truth(sys._getframe(1))
>>> def checked(x):
...     if not x:
...         raise ValueError("x must hold")
...     return "went on"
>>> checked(Traced())
'went on'
"""

from __future__ import annotations

import dis
import functools
import types

#: instructions between the truth test and its jump that change nothing
_BETWEEN = frozenset({"NOP", "CACHE", "EXTENDED_ARG", "TO_BOOL", "NOT_TAKEN"})
#: instructions that leave a straight run of code without raising (besides jumps)
_LEAVES = ("RETURN", "YIELD", "FOR_ITER", "SEND", "SETUP", "POP_EXCEPT")
#: how far a raising block is looked for: a message built with a call or two
_RAISE_WITHIN = 64


def passing_truth(frame: types.FrameType) -> bool | None:
    """The truth that a condition tested in ``frame`` (at its current instruction) must have
    for the code not to raise: ``True`` for ``assert c`` and ``if not c: raise``, ``False`` for
    ``if c: raise``; ``None`` where neither or both sides raise, or the truth is not asked
    by a conditional jump (``bool(c)`` stored, ``c and d`` as a value)."""
    instrs, at = _instructions(frame.f_code)
    k = at.get(frame.f_lasti)
    if k is None:
        return None
    while k < len(instrs) and instrs[k].opname in _BETWEEN:
        k += 1
    jump = instrs[k] if k < len(instrs) else None
    if jump is None or not _conditional(jump.opname):
        return None
    target = at.get(jump.argval)
    if target is None:
        return None
    taken, falls = _raises(instrs, target), _raises(instrs, k + 1)
    if taken == falls:
        return None
    jumps_when = "_IF_TRUE" in jump.opname
    return (not jumps_when) if taken else jumps_when


def _conditional(opname: str) -> bool:
    """A jump on a truth (not on ``None``, not ``JUMP_IF_*_OR_POP``, which keeps the value)."""
    return (
        "JUMP" in opname
        and ("_IF_TRUE" in opname or "_IF_FALSE" in opname)
        and ("OR_POP" not in opname)
    )


@functools.lru_cache(maxsize=256)
def _instructions(code: types.CodeType) -> tuple[list[dis.Instruction], dict[int, int]]:
    instrs = list(dis.get_instructions(code))
    return instrs, {ins.offset: k for k, ins in enumerate(instrs)}


def _raises(instrs: list[dis.Instruction], start: int) -> bool:
    """Whether the straight run of code from instruction ``start`` raises before it jumps or
    returns (storing the message in a name on the way, as pytest's rewritten asserts do)."""
    for ins in instrs[start : start + _RAISE_WITHIN]:
        name = ins.opname
        if name in ("RAISE_VARARGS", "RERAISE"):
            return True
        if "JUMP" in name or name.startswith(_LEAVES):
            return False
    return False
