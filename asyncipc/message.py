"""The :class:`Message` a subscriber receives."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .errors import AsyncIPCError

if TYPE_CHECKING:
    from .client import Bus

__all__ = ["Message"]


class Message:
    """A message as delivered to a subscription.

    Attributes:
        subject: the literal subject it was published on.
        data: the payload, exactly the bytes published.
        headers: a ``dict[str, str]`` or ``None`` when the publisher sent none.
        reply_to: where an answer should go (set by ``Bus.request``), else ``None``.
    """

    __slots__ = ("_bus", "data", "headers", "reply_to", "subject")

    def __init__(
        self,
        subject: str,
        data: bytes,
        headers: dict[str, str] | None = None,
        reply_to: str | None = None,
        bus: Bus | None = None,
    ) -> None:
        self.subject = subject
        self.data = data
        self.headers = headers
        self.reply_to = reply_to
        self._bus = bus

    async def respond(self, data: bytes, headers: dict[str, str] | None = None) -> None:
        """Publish ``data`` to this message's ``reply_to`` (answer a request)."""
        if self.reply_to is None:
            raise AsyncIPCError(f"message on {self.subject!r} has no reply subject to respond to")
        if self._bus is None:
            raise AsyncIPCError("message is not attached to a bus")
        await self._bus.publish(self.reply_to, data, headers=headers)

    def __repr__(self) -> str:
        extra = f", reply_to={self.reply_to!r}" if self.reply_to else ""
        shown = self.data if len(self.data) <= 32 else self.data[:32] + b"..."
        return f"Message({self.subject!r}, {shown!r}{extra})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Message):
            return NotImplemented
        return (self.subject, self.data, self.headers, self.reply_to) == (
            other.subject,
            other.data,
            other.headers,
            other.reply_to,
        )

    __hash__ = None  # type: ignore[assignment]
