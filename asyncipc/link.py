"""The Link: the one seam between channels (transports) and the bus and broker above.

A :class:`Link` is a two-way channel of *frames* (``asyncipc.protocol``). Every transport
turns its channel into Links; the broker and the client never know which channel they
are on. A link pushes what it receives into a :class:`LinkReceiver` (callbacks, like
asyncio's ``Protocol``: the hot path must not pay a task switch per frame) and accepts
frames through :meth:`Link.send`, which buffers and returns at once. Backpressure is
explicit: :attr:`Link.write_blocked` says the peer is not keeping up, :meth:`Link.drain`
waits until it is, and :meth:`Link.pause_reading` is how a receiver pushes back.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from ._logsafe import printable
from .protocol import DEFAULT_MAX_FRAME, Frame, Headers, Msg, Pub

__all__ = [
    "DEFAULT_HIGH_WATER",
    "Accept",
    "Link",
    "LinkReceiver",
    "Listener",
    "PeerInfo",
    "SelfHealingReceiver",
]

DEFAULT_HIGH_WATER = 1024 * 1024
"""Bytes a link may hold for its peer before :attr:`Link.write_blocked` turns true."""


@dataclass(frozen=True)
class PeerInfo:
    """What is known of the other end of a link (anyio's typed attributes, simplified).

    ``address`` is transport-specific (a path, ``(host, port)``, a name); ``pid``, ``uid``
    and ``gid`` come from the kernel where the channel can tell (Unix sockets: SO_PEERCRED).
    """

    transport: str
    address: Any = None
    pid: int | None = None
    uid: int | None = None
    gid: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        """A short human description for log lines."""
        parts = [self.transport]
        if self.address not in (None, "", b""):
            parts.append(printable(self.address))  # a peer may choose what it looks like
        if self.pid is not None:
            parts.append(f"pid={self.pid}")
        if self.uid is not None:
            parts.append(f"uid={self.uid}")
        return " ".join(parts)


class LinkReceiver(Protocol):
    """What a link calls as things happen. Implemented by the broker's sessions and the Bus."""

    def frame_received(self, frame: Frame) -> None:
        """A complete frame arrived. Must not block; may call ``pause_reading``."""

    def link_lost(self, exc: BaseException | None) -> None:
        """The link closed: ``None`` for an orderly close, else what broke it."""

    def writing_resumed(self) -> None:
        """:attr:`Link.write_blocked` went from true to false."""

    def pub_received(
        self, subject: str, data: bytes, reply: str | None, headers: Headers | None
    ) -> None:
        """A PUB arrived as fields, without a frame object (in-process links)."""

    def msg_received(
        self, sid: int, subject: str, data: bytes, reply: str | None, headers: Headers | None
    ) -> None:
        """A MSG arrived as fields, without a frame object (in-process links)."""


@runtime_checkable
class SelfHealingReceiver(Protocol):
    """What a link whose own client reconnects (``nats://``: nats-py does) tells its
    receiver, which checks for these methods with ``isinstance``. The Bus implements them;
    the broker never meets such a link."""

    def link_interrupted(self, cause: BaseException, address: str) -> None:
        """The channel lost its server, at ``address``, and is reconnecting; frames sent
        meanwhile wait."""

    def link_resumed(self, address: str) -> None:
        """The channel is up again, at ``address``, with every subscription restored."""

    def link_error(self, exc: BaseException) -> None:
        """The server reported an error that does not end the channel (a refusal)."""


class Link(abc.ABC):
    """A two-way channel of frames. See the module docstring for the contract."""

    transport: str = ""
    peer: PeerInfo
    max_frame: int = DEFAULT_MAX_FRAME
    """The largest frame this side will *send*: the smaller of ours and the peer's."""
    in_process: bool = False
    """True when frames cross without encoding (memory); no keep-alive pings are needed."""
    reached: str | None = None
    """For a URL that names several servers (``nats://h1,h2``): the one this link reached,
    which the Bus reports as its ``connected_url``. ``None``: the URL dialled."""

    @abc.abstractmethod
    def set_receiver(self, receiver: LinkReceiver) -> None:
        """Attach the receiver. Frames that arrived before are delivered now."""

    @abc.abstractmethod
    def send(self, frame: Frame) -> None:
        """Queue ``frame`` for the peer and return at once.

        Raises :class:`~asyncipc.ClosedError` after :meth:`close`,
        :class:`~asyncipc.BrokenLinkError` once the channel broke, and
        :class:`~asyncipc.FrameTooLarge` for a frame over :attr:`max_frame`.
        """

    def publish(
        self, subject: str, data: bytes, reply: str | None, headers: Headers | None
    ) -> None:
        """Send a PUB: the client's hot path. In-process links skip the frame object."""
        self.send(Pub(subject, data, reply, headers))

    def deliver(
        self,
        sid: int,
        subject: str,
        data: bytes | None,
        reply: str | None,
        headers: Headers | None,
        pub: Pub | None,
    ) -> None:
        """Send a MSG for subscription ``sid``: the broker's fan-out path.

        ``pub`` is the frame the message arrived in, when it arrived in one: stream links
        reuse its encoded bytes instead of encoding the message again. ``data`` is then
        ``None`` (the broker slices the payload out of the frame only for a link that
        needs it: an in-process one, :attr:`in_process`, always gets the bytes).
        """
        if data is None:
            assert pub is not None
            data = pub.data
        self.send(Msg(sid, subject, data, reply, headers))

    write_blocked: bool = False
    """True while more than the high-water mark is queued for the peer. A plain
    attribute, kept current by the link: it is read once per message per subscriber."""

    direct: LinkReceiver | None = None
    """In-process links only: the peer's receiver while whatever is sent would be handed
    to it at once (it reads, nothing waits before, neither end is closing); ``None``
    otherwise, and always for other links. Then ``direct.pub_received(...)`` and
    ``direct.msg_received(...)`` are exactly :meth:`publish` and :meth:`deliver`, minus
    a call: the Bus and the broker use it on their per-message paths. Kept current by
    the link, like :attr:`write_blocked`."""

    @abc.abstractmethod
    async def drain(self) -> None:
        """Wait until :attr:`write_blocked` is false (raises if the link breaks meanwhile)."""

    @property
    @abc.abstractmethod
    def buffered(self) -> int:
        """Bytes queued for the peer and not yet handed to the channel."""

    @abc.abstractmethod
    def pause_reading(self) -> None:
        """Stop delivering frames until :meth:`resume_reading`; the channel backs up."""

    @abc.abstractmethod
    def resume_reading(self) -> None:
        """Undo :meth:`pause_reading`."""

    def hold(self) -> None:
        """Stop reading for good, and keep small what the peer can still make the
        channel buffer meanwhile: a refused peer the broker keeps a while before it
        closes the link (``max_failed_handshakes``). :meth:`close` or :meth:`abort` ends it.
        """
        self.pause_reading()

    @property
    @abc.abstractmethod
    def closed(self) -> bool:
        """True once :meth:`close` or :meth:`abort` was called or the peer went away."""

    @property
    def last_received(self) -> float:
        """Event-loop time of the last bytes from the peer (for dead-peer detection)."""
        return 0.0

    @abc.abstractmethod
    def close(self) -> None:
        """Close gracefully: what was sent is still delivered, then the channel closes."""

    @abc.abstractmethod
    def abort(self) -> None:
        """Close at once, dropping anything unsent."""

    @abc.abstractmethod
    async def wait_closed(self) -> None:
        """Wait until the channel is fully closed."""


Accept = Callable[[Link], None]
"""What a listener calls with each new link (the broker's ``attach``)."""


class Listener(abc.ABC):
    """A bound endpoint that turns incoming connections into links."""

    url: str
    """The URL clients connect to, with any port the system chose filled in."""

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Stop accepting and release the endpoint (remove socket files, ...).

        Links already accepted are not touched: the broker closes those.
        """

    async def wait_closed(self) -> None:  # noqa: B027 - a no-op default, not abstract
        """Wait until the endpoint has let go of everything it serves.

        The broker calls this after it has closed the links this listener accepted (as
        ``asyncio.Server.wait_closed`` waits for its connections). A listener whose
        server runs a task per connection (gRPC, HTTP) finishes its shutdown here, once
        those connections are gone; it must return within a bounded time. Default:
        nothing to wait for.
        """
