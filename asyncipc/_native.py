"""``mypyc_attr``, for the classes of the accelerated build that applications may subclass.

mypyc compiles a class into a native one, which interpreted code cannot subclass unless
the class says ``@mypyc_attr(allow_interpreted_subclasses=True)`` (docs/architecture.md,
"The accelerated build"). The decorator comes from ``mypy_extensions``, installed with
mypy, which the compiled build needs anyway; a pure-Python install has no mypy, and then
the stand-in below, which changes nothing, takes its place: no dependency for a no-op.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

__all__ = ["mypyc_attr"]

T = TypeVar("T")

try:
    from mypy_extensions import mypyc_attr
except ImportError:  # pragma: no cover - the pure build without mypy installed

    def mypyc_attr(*attrs: str, **kwattrs: object) -> Callable[[T], T]:
        """The stand-in: returns the class as it is."""

        def keep(cls: T) -> T:
            return cls

        return keep
