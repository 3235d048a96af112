"""What every ``asyncipc`` command shares: exit codes, limits, argument types."""

from __future__ import annotations

import argparse
import logging
import os

from ..errors import AsyncIPCError

log = logging.getLogger("asyncipc.cli")


EXIT_OK = 0
"""Success; also what ``sub`` and ``broker`` return when stopped by SIGINT or SIGTERM."""
EXIT_FAILED = 1
"""The request failed: no responders, no reply in time, or the service raised."""
EXIT_USAGE = 2
"""Bad arguments, a bad URL, no broker at the URL, a refused token, a lost connection."""

FLUSH_TIMEOUT = 10.0
"""Seconds ``pub`` waits for the broker to confirm it has the message."""

WAIT_TIMEOUT = 10.0
"""Seconds ``wait`` gives a broker to answer, unless ``--timeout`` says otherwise."""
WAIT_RETRY = 0.05
"""Seconds between ``wait``'s attempts: short, because a broker binds in milliseconds."""

MIN_FRAME = 1024
MAX_FRAME = 1 << 31
MIN_HIGH_WATER = 1024
MAX_HIGH_WATER = 1 << 40


class CommandError(Exception):
    """An expected failure: printed as one line on stderr, then exit with ``code``."""

    def __init__(self, message: str, code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.code = code


# --- argument types -------------------------------------------------------------------


def _header(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, not {text}")
    return value


def _int_at_least(text: str, least: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < least:
        raise argparse.ArgumentTypeError(f"must be at least {least}, not {value}")
    return value


def _positive_int(text: str) -> int:
    return _int_at_least(text, 1)


def _nonnegative_int(text: str) -> int:
    return _int_at_least(text, 0)


_SIZE_SUFFIXES = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


def _size(text: str) -> int:
    """Bytes, optionally with a binary suffix: ``65536``, ``64K``, ``8M``, ``1G``."""
    raw = text.strip().lower().removesuffix("ib").removesuffix("b")
    factor = 1
    if raw and raw[-1] in _SIZE_SUFFIXES:
        factor = _SIZE_SUFFIXES[raw[-1]]
        raw = raw[:-1]
    try:
        return int(raw) * factor
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size in bytes: {text!r} (e.g. 8M)") from None


def _size_text(value: int) -> str:
    """The shortest exact spelling of a size that ``_size`` reads back: ``8M``, ``1536K``."""
    for suffix, factor in sorted(_SIZE_SUFFIXES.items(), key=lambda kv: -kv[1]):
        if value and value % factor == 0:
            return f"{value // factor}{suffix.upper()}"
    return str(value)


def _frame_size(text: str) -> int:
    """``--max-frame``: a size from 1K to 2G."""
    value = _size(text)
    if not MIN_FRAME <= value <= MAX_FRAME:
        raise argparse.ArgumentTypeError(
            f"must be between {MIN_FRAME} bytes and 2G, not {value} bytes"
        )
    return value


def _high_water(text: str) -> int:
    """``--high-water``: a size from 1K to 1024G."""
    value = _size(text)
    if not MIN_HIGH_WATER <= value <= MAX_HIGH_WATER:
        raise argparse.ArgumentTypeError(
            f"must be between {MIN_HIGH_WATER} bytes and 1024G, not {value} bytes"
        )
    return value


def _hello_size(text: str) -> int:
    """``--max-hello``: a size from 256 bytes (a HELLO with a token and a name) to 2G."""
    value = _size(text)
    if not 256 <= value <= MAX_FRAME:
        raise argparse.ArgumentTypeError(f"must be between 256 bytes and 2G, not {value} bytes")
    return value


def _rate(text: str) -> int:
    """``--frame-min-rate``: bytes per second, at least 1."""
    value = _size(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1 byte per second, not {value}")
    return value


def _seconds_or_zero(text: str) -> float:
    """Seconds, or 0 for "no limit"."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be 0 or a positive number of seconds, not {text}")
    return value


def _env(name: str) -> str | None:
    return os.environ.get(name) or None


def _oserror_text(exc: BaseException) -> str:
    if isinstance(exc, OSError) and not isinstance(exc, AsyncIPCError):
        return exc.strerror or str(exc)
    return str(exc)
