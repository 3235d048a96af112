"""The :class:`Message` a subscriber receives."""

from __future__ import annotations

from typing import Protocol

from ._native import mypyc_attr
from .errors import AsyncIPCError

__all__ = ["Message", "Publisher", "TypedMessage"]


class Publisher(Protocol):
    """What a :class:`Message` needs of the bus it came from: a way to publish its answer.

    :class:`~asyncipc.Bus` is one; a message depends on this small interface rather than
    on the client, so that the client can import messages and not the other way round.
    """

    async def publish(
        self,
        subject: str,
        data: bytes = b"",
        headers: dict[str, str] | None = None,
        reply_to: str | None = None,
    ) -> None:
        """Send ``data`` to ``subject``."""
        ...


@mypyc_attr(allow_interpreted_subclasses=True)
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
        bus: Publisher | None = None,
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


@mypyc_attr(allow_interpreted_subclasses=True)
class TypedMessage(Message):
    """A message of a subscription with ``model=``: :attr:`body` is the payload decoded
    to that model; :attr:`data` stays the exact bytes received."""

    __slots__ = ("body",)

    def __init__(self, msg: Message, body: object) -> None:
        super().__init__(msg.subject, msg.data, msg.headers, msg.reply_to, msg._bus)
        self.body = body

    def __repr__(self) -> str:
        return f"TypedMessage({self.subject!r}, {self.body!r})"
