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
from typing import Final

__all__ = ["format_timeout", "parse_timeout"]

_DECIMAL: Final = re.compile(r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
"""What a reader accepts: ASCII digits, an optional fraction, leniently an exponent. No
sign, no spaces, no ``inf``/``nan``, no ``_`` or non-ASCII digits (all of which Python's
``float()`` would take and other languages' parsers would not)."""


_MEMO_MAX: Final = 64
"""Entries kept per memo below. A program uses a handful of time-outs, each thousands of
times a second; a peer that sends a fresh value per request only empties the memo."""

_formatted: Final[dict[float, str | None]] = {}
_parsed: Final[dict[str, float | None]] = {}


def format_timeout(seconds: float) -> str | None:
    """``seconds`` as the header value: the shortest decimal that reads back as the same
    float, never in exponent form (``1e-05`` -> ``"0.00001"``, ``30.0`` -> ``"30"``).

    ``None`` when ``seconds`` is not a finite number from 0 up (a request that waits
    forever, say): then the header is left out, which is what the spec says such a
    requester sends.
    """
    text = _formatted.get(seconds, "")  # every request asks: remembered, ~10x faster
    if text != "":
        return text
    text = _format(seconds)
    if len(_formatted) >= _MEMO_MAX:
        _formatted.clear()
    _formatted[seconds] = text
    return text


def _format(seconds: float) -> str | None:
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
    seconds = _parsed.get(text, -1.0)  # the broker reads one per request: remembered
    if seconds != -1.0:
        return seconds
    seconds = _parse(text)
    if len(_parsed) >= _MEMO_MAX:
        _parsed.clear()
    _parsed[text] = seconds
    return seconds


def _parse(text: str) -> float | None:
    if _DECIMAL.fullmatch(text) is None:
        return None
    seconds = float(text)
    return seconds if math.isfinite(seconds) else None  # "1e999" overflows to inf
