"""How the monitor measures (``asyncipc/_monitor.py``, ``docs/monitoring.md``): rates
from the samples its readers' looks leave, a subject meter that costs nothing while
nobody looks, and the broker process's memory. Pure bookkeeping: no I/O but ``/proc``.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Mapping
from typing import Any

from .protocol import Headers

__all__ = ["METER_MAX_SUBJECTS", "RATE_INTERVAL", "Samples", "SubjectMeter", "rss"]

RATE_INTERVAL = 1.0
"""Rates are measured over at least this many seconds when the samples allow."""
METER_MAX_SUBJECTS = 1000
"""Distinct subjects the meter keeps; messages on others are counted under ``"..."``."""

_INBOX = "_INBOX."


def rss() -> int:
    """Resident memory of this process in bytes (Linux ``/proc``; elsewhere the peak)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# --- the subject meter --------------------------------------------------------------------


class SubjectMeter:
    """Counts messages per subject while registered as one of the broker's relays.

    A relay is asked :meth:`wants` for every message published, and only when the broker
    has relays at all: the one place the broker already looks at every subject off its
    plain path. The meter answers "no" (it takes nothing) and counts, so that metering
    costs the broker nothing while nobody looks, and the monitor registers it only then.
    Reply inboxes are counted as one subject, ``_INBOX.>``, and past
    :data:`METER_MAX_SUBJECTS` distinct subjects the rest as ``...``: memory stays bounded
    whatever subjects clients invent. The broker also asks relays about a reply inbox
    nobody here subscribes to (a stream delivery to a pull request that went away): such
    a look is counted as a message on ``_INBOX.>``, which is rare and harmless.
    """

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.since = time.time()

    def wants(self, subject: str) -> bool:
        """Count ``subject``; take nothing."""
        counts = self.counts
        if subject.startswith(_INBOX):
            subject = "_INBOX.>"
        elif subject not in counts and len(counts) >= METER_MAX_SUBJECTS:
            subject = "..."
        counts[subject] = counts.get(subject, 0) + 1
        return False

    def outbound(
        self, subject: str, data: bytes, reply: str | None, headers: Headers | None
    ) -> None:
        """Never called: :meth:`wants` takes nothing."""


# --- rates -------------------------------------------------------------------------------


class Samples:
    """Counter values as readers saw them, to turn totals into rates.

    Each look records a sample (at most one per quarter second) and measures against the
    newest sample at least :data:`RATE_INTERVAL` old, else the oldest one there is. A
    counter the base sample does not have was zero then, or did not exist until ``born``
    (a connection that started since), whichever is later. So the first look ever gives
    averages since the start, and a dashboard looking every second gets rates over the
    last second or so.
    """

    def __init__(self) -> None:
        self._kept: deque[tuple[float, dict[Any, float]]] = deque()

    def rates(
        self, now: float, values: dict[Any, float], born: Mapping[Any, float], floor: float
    ) -> dict[Any, float]:
        kept = self._kept
        base_t, base = floor, {}
        for t, sample in reversed(kept):
            if now - t >= RATE_INTERVAL:
                base_t, base = t, sample
                break
        else:
            if kept:
                base_t, base = kept[0]
        out: dict[Any, float] = {}
        for key, value in values.items():
            if key in base:
                start, before = base_t, base[key]
            else:
                # Zero at the base sample, or it did not exist yet (a newer connection).
                start, before = max(born.get(key, floor), base_t), 0.0
            span = now - start
            out[key] = max(0.0, (value - before) / span) if span > 0.05 else 0.0
        if not kept or now - kept[-1][0] >= 0.25:
            kept.append((now, values))
        # Keep the base we used and what is newer: older samples are never a base again.
        while len(kept) > 1 and now - kept[1][0] >= RATE_INTERVAL:
            kept.popleft()
        while len(kept) > 32:
            kept.popleft()
        return out
