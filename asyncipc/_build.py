"""Which build of the hot modules runs: the pure-Python sources or their mypyc-compiled form.

``setup.py`` compiles :data:`COMPILABLE` with mypyc when asked (``ASYNCIPC_COMPILE=1``,
``make accel``); without that, and wherever the compiled files are missing, the same
sources run interpreted. ``docs/architecture.md`` ("The accelerated build") says how to build it.
"""

from __future__ import annotations

import sys
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path

__all__ = ["COMPILABLE", "compiled_modules"]

COMPILABLE = (
    "asyncipc.protocol.decoder",
    "asyncipc.protocol.frames",
    "asyncipc.protocol.timeout",
    "asyncipc.router",
    "asyncipc.subjects",
    "asyncipc._session",
    "asyncipc._stats",
    "asyncipc.broker",
    "asyncipc._inflight",
    "asyncipc.client",
    "asyncipc._workers",
    "asyncipc._responder",
    "asyncipc.message",
    "asyncipc.subscription",
    "asyncipc.transports._stream.link",
    "asyncipc.transports._ring.ring",
    "asyncipc.transports._ring.record",
    "asyncipc.transports._ring.port",
    "asyncipc.transports._ring.channel",
    "asyncipc.transports._ring.link",
)
"""The modules ``setup.py`` compiles (the hot path's pure code: docs/decisions.md, mypyc)."""


def compiled_modules() -> list[str]:
    """Those of :data:`COMPILABLE` that run from a compiled extension, not a ``.py`` file.

    A module already imported says where it came from; one not imported yet is not
    imported for this (``import asyncipc`` must not load the stream transport): it is
    compiled if its extension file is next to its source, which the import system then
    prefers to the ``.py`` file."""
    out = []
    root = Path(__file__).resolve().parent
    for name in COMPILABLE:
        module = sys.modules.get(name)
        if module is not None:
            path = getattr(module, "__file__", None) or ""
            if path.endswith(tuple(EXTENSION_SUFFIXES)):
                out.append(name)
            continue
        base = root.joinpath(*name.split(".")[1:])
        if any(base.with_name(base.name + suffix).is_file() for suffix in EXTENSION_SUFFIXES):
            out.append(name)
    return out
