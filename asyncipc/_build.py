"""Which build of the hot modules runs: the pure-Python sources or their mypyc-compiled form.

``setup.py`` compiles :data:`COMPILABLE` with mypyc when asked (``ASYNCIPC_COMPILE=1``,
``make accel``); without that, and wherever the compiled files are missing, the same
sources run interpreted. ``docs/architecture.md`` ("The accelerated build") says how to build it.
"""

from __future__ import annotations

from importlib import import_module
from importlib.machinery import EXTENSION_SUFFIXES

__all__ = ["COMPILABLE", "compiled_modules"]

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
