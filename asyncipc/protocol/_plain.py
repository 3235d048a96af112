"""``plain_class``: what keeps a class a plain Python class under mypyc (``setup.py``).

Part of the pure core (the codec and the router use it), so it imports nothing.
"""

from __future__ import annotations

from typing import TypeVar

__all__ = ["plain_class"]

_C = TypeVar("_C", bound=type)


def plain_class(cls: _C) -> _C:
    """Returns ``cls`` unchanged: a no-op when interpreted.

    Under mypyc, a class with a decorator it does not know stays a plain Python class
    (slotted, as written) instead of becoming a native one. The frames and routes that
    interpreted code reads field by field are marked so: a native class's attributes are
    C getters, which the interpreter reads about twice as slowly as the slots of a plain
    class, and a native class checks the type of every argument of its constructor
    (``Sub(overflow=7)`` would raise TypeError where the pure build lets :func:`encode`
    name the problem). docs/decisions.md, mypyc, has the figures.
    """
    return cls
