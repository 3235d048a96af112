"""The value of the ``asyncipc-timeout`` request header: how it is written and read.

``docs/protocol.md`` §12: the seconds a requester will wait, as a plain decimal number
(``0.5``, ``30``, ``0.00001``). Writers never use exponent form: a strict decimal reader
in another language would refuse ``1e-05``, and Python's ``:g`` also rounds to six
significant digits (``1.23457e+06``). Readers still accept exponent form, because
asyncipc 0.1.0 wrote the header with ``:g``.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal

__all__ = ["format_timeout", "parse_timeout"]

_DECIMAL = re.compile(r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
"""What a reader accepts: ASCII digits, an optional fraction, leniently an exponent. No
sign, no spaces, no ``inf``/``nan``, no ``_`` or non-ASCII digits (all of which Python's
``float()`` would take and other languages' parsers would not)."""


def format_timeout(seconds: float) -> str | None:
    """``seconds`` as the header value: the shortest decimal that reads back as the same
    float, never in exponent form (``1e-05`` -> ``"0.00001"``, ``30.0`` -> ``"30"``).

    ``None`` when ``seconds`` is not a finite number from 0 up (a request that waits
    forever, say): then the header is left out, which is what the spec says such a
    requester sends.
    """
    if not math.isfinite(seconds) or seconds < 0:
        return None
    # repr() is the shortest round-trip form; Decimal only moves its point.
    text = format(Decimal(repr(abs(float(seconds)))), "f")  # abs: -0.0 is 0
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text


def parse_timeout(text: str) -> float | None:
    """The seconds an ``asyncipc-timeout`` value says, or ``None`` if it is not a
    number from 0 up in the form :data:`_DECIMAL` describes (then it counts as absent)."""
    if _DECIMAL.fullmatch(text) is None:
        return None
    seconds = float(text)
    return seconds if math.isfinite(seconds) else None  # "1e999" overflows to inf
