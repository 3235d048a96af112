"""Which build of the hot modules runs: the pure-Python sources or their mypyc-compiled form.

``setup.py`` compiles :data:`COMPILABLE` with mypyc when asked (``ASYNCIPC_COMPILE=1``,
``make accel``); without that, and wherever the compiled files are missing, the same
sources run interpreted. ``docs/architecture.md`` (Accelerated build) says how to build it.
"""

from __future__ import annotations

from importlib import import_module
from importlib.machinery import EXTENSION_SUFFIXES
from typing import TypeVar

__all__ = ["COMPILABLE", "compiled_modules", "plain_class"]

_C = TypeVar("_C", bound=type)

COMPILABLE = (
    "asyncipc.protocol.decoder",
    "asyncipc.protocol.frames",
    "asyncipc.protocol.timeout",
    "asyncipc.router",
    "asyncipc.subjects",
)
"""The modules ``setup.py`` compiles (the hot path's pure code: docs/decisions.md, mypyc)."""


def compiled_modules() -> list[str]:
    """Those of :data:`COMPILABLE` imported from a compiled extension, not a ``.py`` file."""
    out = []
    for name in COMPILABLE:
        path = getattr(import_module(name), "__file__", None) or ""
        if path.endswith(tuple(EXTENSION_SUFFIXES)):
            out.append(name)
    return out


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
