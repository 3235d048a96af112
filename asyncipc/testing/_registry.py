"""What a conformance check is, and what a transport may not promise (its traits). The
checks are in ``_checks_messages.py`` and ``_checks_flow.py``; ``_conformance.py`` lists
them all (``CHECKS``) and runs them."""

from __future__ import annotations

import functools
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from ..message import Message
from ..subscription import Subscription

__all__ = [
    "UDP_MAX_PAYLOAD",
    "ConformanceCheck",
    "TransportTraits",
    "drain",
    "registrar",
    "traits_for",
]


UDP_MAX_PAYLOAD = 65419
"""The largest payload over udp:// with the default max_datagram (docs/transports.md)."""


@dataclass(frozen=True)
class TransportTraits:
    """What a transport does not promise, so the checks that need it skip (with ``why``)
    rather than fail. The defaults are a stream transport's: every check applies."""

    max_payload: int | None = None
    """The largest message body it carries (None: up to the broker's frame limit, 8 MiB
    by default); the size checks above it skip."""
    holds_back_publishers: bool = True
    """Whether a subscriber that stops reading slows the publisher down (the ``block``
    policy end to end); False skips that check."""
    why: str = ""
    """Where the reader learns why (a docs reference), quoted in each skip."""


def traits_for(url: str) -> TransportTraits:
    """The traits of a built-in transport, by the URL's scheme."""
    scheme = url.split(":", 1)[0]
    if scheme == "udp":
        return TransportTraits(
            max_payload=UDP_MAX_PAYLOAD,
            why="udp carries one frame per datagram: see docs/transports.md, UDP",
        )
    if scheme == "nats":
        return TransportTraits(
            holds_back_publishers=False,
            why="a NATS server never holds a publisher back for a slow subscriber: "
            "docs/transports.md, NATS (tests/test_nats.py checks what block keeps there)",
        )
    return TransportTraits()


CheckFn = Callable[[str, str, TransportTraits], Awaitable[None]]


@dataclass(frozen=True)
class ConformanceCheck:
    """One check: ``await check(url)``; its ``name`` is a stable id for test reports."""

    name: str
    fn: CheckFn
    doc: str

    async def __call__(
        self, url: str, prefix: str | None = None, traits: TransportTraits | None = None
    ) -> None:
        """Run against the broker at ``url``, under ``prefix`` (default: a random one).
        Raises AssertionError (or the library's exception) if the transport misbehaves,
        and ``pytest.skip.Exception`` if ``traits`` say the check does not apply."""
        await self.fn(url, prefix or f"t{os.urandom(4).hex()}", traits or traits_for(url))

    def __repr__(self) -> str:
        return f"<ConformanceCheck {self.name}>"


def registrar(
    into: dict[str, ConformanceCheck],
) -> Callable[..., Callable[[Any], Any]]:
    """A decorator that adds checks to ``into``: ``@check()`` once, or ``@check(*variants)``
    once per ``(suffix, keyword arguments)`` variant, named ``<function>_<suffix>``."""

    def check(*variants: tuple[str, dict[str, Any]]) -> Callable[[Any], Any]:
        def register(fn: Any) -> Any:
            base = fn.__name__.lstrip("_")
            for suffix, kwargs in variants or (("", {}),):
                name = f"{base}_{suffix}" if suffix else base
                bound = functools.partial(fn, **kwargs) if kwargs else fn
                into[name] = ConformanceCheck(name, bound, (fn.__doc__ or "").strip())
            return fn

        return register

    return check


def drain(sub: Subscription) -> list[Message]:
    """What the subscription holds now, without waiting (after a flush of both sides)."""
    return sub._take(sub.pending)
