"""Where a bus connects, and again after its link drops: the URLs in turn, with backoff.

:class:`Dialer` holds the broker URLs of one bus (``connect(["unix://...", "tcp://..."])``)
and opens a link to the next one; :func:`backoff` is the waiting between attempts. The
bus (``client.py``) decides when to dial and what to restore; this module only knows how
to reach a broker, so that the reconnect policy is testable without one.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence

from .errors import ConfigurationError
from .link import Link
from .transports import URL, TransportOptions, lookup, parse_url

__all__ = ["NOT_REDIALLED", "Dialer", "backoff"]

NOT_REDIALLED = frozenset({"memory", "pipe", "file", "nats"})
"""Schemes a bus never redials: an embedded broker (``memory://``, ``file://``) lives and
dies with the event loop, and a child's inherited pipes cannot be opened again. A
``nats://`` link reconnects by itself: nats-py has the list of servers."""


def backoff(first: float, cap: float, rng: random.Random | None = None) -> Iterator[float]:
    """Seconds to wait before each attempt: 0 for the first, then ``first`` doubling up to
    ``cap``, each drawn between half and all of it (jitter: clients that lost the same
    broker do not all redial in the same instant)."""
    draw = (rng or random.Random()).uniform
    yield 0.0
    delay = max(first, 0.0)
    while True:
        ceiling = min(delay, cap)
        yield draw(ceiling / 2, ceiling)
        delay = delay * 2 if delay > 0 else cap


class Dialer:
    """The URLs one bus may use, tried in order at first and then in turn."""

    __slots__ = ("_next", "options", "urls")

    def __init__(self, urls: Sequence[str], options: TransportOptions) -> None:
        if not urls:
            raise ConfigurationError("connect() needs at least one URL in the list")
        self.urls: list[URL] = [parse_url(u) for u in urls]
        self.options = options
        self._next = 0

    @property
    def redials(self) -> bool:
        """Whether a dropped link can be replaced (every URL reaches a broker process)."""
        return not any(u.scheme in NOT_REDIALLED for u in self.urls)

    async def dial(self) -> tuple[Link, str]:
        """A link to the next URL in turn, and that URL. Raises what the transport raised
        (``ConnectError``, ``ConfigurationError``...); the next call tries the next URL."""
        url = self.urls[self._next % len(self.urls)]
        self._next += 1
        link = await lookup(url.scheme).connect(url, self.options)
        return link, url.raw

    def again_from(self, raw: str) -> None:
        """Make ``raw`` the next URL dialled: after a drop, the broker that was there is
        the likeliest to come back (a restart), so it is tried first."""
        for i, url in enumerate(self.urls):
            if url.raw == raw:
                self._next = i
                return
