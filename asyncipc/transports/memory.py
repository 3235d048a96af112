"""``memory://[name]``: links inside one event loop, frames handed over as objects.

Nothing is encoded or copied: a published ``bytes`` object is the very object every
in-process subscriber receives. Delivery is a direct call into the peer's receiver while
the peer reads; once it pauses, frames wait in a deque whose size is what
``write_blocked`` measures, so backpressure works exactly as on a socket.

Names are scoped to the running event loop: ``memory://a`` in two loops (or two
processes) are two different brokers.
"""

from __future__ import annotations

import asyncio
import weakref
from collections import deque

from ..errors import BrokenLinkError, ClosedError, ConfigurationError, ConnectError
from ..link import Accept, Link, LinkReceiver, Listener, PeerInfo
from ..protocol import Frame, Headers, Msg, Pub
from . import URL, TransportOptions, register

__all__ = ["MemoryLink", "MemoryTransport", "has_listener", "memory_pair"]

# Per event loop: name -> accept callback of the broker listening on memory://name.
_listeners: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, Accept]] = (
    weakref.WeakKeyDictionary()
)


_OVERHEAD = 64  # what a queued message is counted for beyond its payload

_QueuedPub = tuple[str, bytes, "str | None", "Headers | None"]
_QueuedMsg = tuple[int, str, bytes, "str | None", "Headers | None"]
_Queued = Frame | _QueuedPub | _QueuedMsg


def _frame_size(frame: Frame) -> int:
    if isinstance(frame, (Msg, Pub)):
        return len(frame.data) + _OVERHEAD
    return _OVERHEAD


class MemoryLink(Link):
    """One end of an in-process link; see :func:`memory_pair`."""

    in_process = True
    _forwards = True  # publish() and deliver() are this class's: see __init_subclass__

    def __init__(self, name: str, options: TransportOptions) -> None:
        self.transport = "memory"
        self.peer = PeerInfo("memory", name)
        self.max_frame = options.max_frame
        self._high_water = options.high_water
        self._low_water = options.high_water // 4
        self._other: MemoryLink | None = None
        self._receiver: LinkReceiver | None = None
        # What waits for *this* end while it is paused: frames, or, on the two hot paths,
        # plain tuples of fields (a tuple costs a tenth of a frame object).
        self._inbox: deque[_Queued] = deque()
        self._inbox_bytes = 0
        self._paused = False
        self._closing = False
        self._lost = False
        self._exc: BaseException | None = None
        self._drain_waiters: list[asyncio.Future[None]] = []
        self._blocked_reported = False
        # An instance attribute, not Link's class default: Python 3.11 caches the lookup
        # of an instance attribute, not of a class one, and the broker and the bus read
        # it on every message.
        self.write_blocked = False
        self._loop = asyncio.get_running_loop()
        self._closed_fut: asyncio.Future[None] = self._loop.create_future()
        # The peer's receiver while a frame we send may be handed to it at once (it is
        # set, reading, its inbox empty, neither end closing): then send/publish/deliver
        # cost one check, not five. _sync() recomputes it at every change of that state.
        self._direct: LinkReceiver | None = None
        # What Link.direct offers callers: _direct, unless a subclass does more than
        # forward in publish() or deliver() (then they must be called).
        self.direct: LinkReceiver | None = None

    def _sync(self) -> None:
        """Recompute :attr:`_direct` and :attr:`direct` for both ends (after a change of
        either's state)."""
        for end in (self, self._other):
            if end is None:
                continue
            other = end._other
            direct = None
            if other is not None and not (
                end._closing or end._lost or other._lost or other._paused or other._inbox
            ):
                direct = other._receiver
            end._direct = direct
            end.direct = direct if end._forwards else None

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        cls._forwards = cls.publish is MemoryLink.publish and cls.deliver is MemoryLink.deliver

    def set_receiver(self, receiver: LinkReceiver) -> None:
        self._receiver = receiver
        self._deliver_inbox()
        self._sync()

    def send(self, frame: Frame) -> None:
        direct = self._direct
        if direct is not None:
            direct.frame_received(frame)
            return
        other = self._other
        if self._closing or other is None or other._lost:
            raise self._send_error()
        receiver = other._receiver
        if receiver is not None and not other._paused and not other._inbox:
            receiver.frame_received(frame)
            return
        self._enqueue(other, frame, _frame_size(frame))

    def _enqueue(self, other: MemoryLink, entry: _Queued, size: int) -> None:
        other._inbox.append(entry)
        other._inbox_bytes += size
        # The inbox is not empty: what follows must queue behind it.
        self._direct = self.direct = None
        if other._inbox_bytes > self._high_water:
            # Whoever sees this (a drain() or the broker) must hear writing_resumed().
            self.write_blocked = self._blocked_reported = True

    # The two hot paths hand fields straight to the peer's receiver: no frame object is
    # built unless the peer is paused and the message has to wait in its inbox.

    def publish(
        self, subject: str, data: bytes, reply: str | None, headers: Headers | None
    ) -> None:
        direct = self._direct
        if direct is not None:
            direct.pub_received(subject, data, reply, headers)
            return
        other = self._other
        if self._closing or other is None or other._lost:
            raise self._send_error()
        receiver = other._receiver
        if receiver is not None and not other._paused and not other._inbox:
            receiver.pub_received(subject, data, reply, headers)
        else:
            self._enqueue(other, (subject, data, reply, headers), len(data) + _OVERHEAD)

    def deliver(
        self,
        sid: int,
        subject: str,
        data: bytes | None,
        reply: str | None,
        headers: Headers | None,
        pub: Pub | None,
    ) -> None:
        if data is None:  # not from the broker, which slices it out for in_process links
            assert pub is not None
            data = pub.data
        direct = self._direct
        if direct is not None:
            direct.msg_received(sid, subject, data, reply, headers)
            return
        other = self._other
        if self._closing or other is None or other._lost:
            raise self._send_error()
        receiver = other._receiver
        if receiver is not None and not other._paused and not other._inbox:
            receiver.msg_received(sid, subject, data, reply, headers)
        else:
            self._enqueue(other, (sid, subject, data, reply, headers), len(data) + _OVERHEAD)

    def _send_error(self) -> Exception:
        if self._closing and not isinstance(self._exc, BrokenLinkError):
            return ClosedError("memory link is closed")
        return BrokenLinkError("the other end of the memory link went away")

    @property
    def buffered(self) -> int:
        other = self._other
        return other._inbox_bytes if other is not None else 0

    async def drain(self) -> None:
        while self.write_blocked:
            if self._closing or self._lost:
                raise self._send_error()
            fut = self._loop.create_future()
            self._drain_waiters.append(fut)
            self._blocked_reported = True
            await fut

    def pause_reading(self) -> None:
        self._paused = True
        self._sync()

    def resume_reading(self) -> None:
        if self._paused:
            self._paused = False
            self._deliver_inbox()
            self._sync()

    def _deliver_inbox(self) -> None:
        receiver = self._receiver
        inbox = self._inbox
        while inbox and not self._paused and receiver is not None and not self._lost:
            entry = inbox.popleft()
            if not isinstance(entry, tuple):
                self._inbox_bytes -= _frame_size(entry)
                receiver.frame_received(entry)
            elif len(entry) == 5:
                self._inbox_bytes -= len(entry[2]) + _OVERHEAD
                receiver.msg_received(*entry)
            else:
                self._inbox_bytes -= len(entry[1]) + _OVERHEAD
                receiver.pub_received(*entry)
        if not inbox:
            self._inbox_bytes = 0
            if self._other is not None and self._other._closing:
                self._finish(None)  # the writer closed gracefully and all is delivered
        self._sync()
        other = self._other
        if other is not None and self._inbox_bytes <= self._low_water:
            other._unblocked()

    def _unblocked(self) -> None:
        self.write_blocked = False
        waiters, self._drain_waiters = self._drain_waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)
        if self._blocked_reported:
            self._blocked_reported = False
            if self._receiver is not None and not self._closing:
                self._receiver.writing_resumed()

    @property
    def closed(self) -> bool:
        return self._closing or self._lost

    def close(self) -> None:
        if self._closing or self._lost:
            return
        self._closing = True
        self._exc = ClosedError("memory link is closed")
        self._sync()
        other = self._other
        # The peer learns of the close after it has read what we sent before it.
        if other is not None and not other._inbox:
            self._loop.call_soon(other._finish, None)
        self._loop.call_soon(self._finish, None)

    def abort(self) -> None:
        if self._lost:
            return
        self._closing = True
        self._exc = ClosedError("memory link was aborted")
        self._sync()
        other = self._other
        if other is not None:
            other._inbox.clear()
            self._loop.call_soon(other._finish, BrokenLinkError("memory link peer aborted"))
        self._loop.call_soon(self._finish, None)

    def _finish(self, exc: BaseException | None) -> None:
        if self._lost:
            return
        self._lost = True
        self._inbox.clear()
        self._inbox_bytes = 0
        self._sync()
        self.write_blocked = False
        if self._other is not None:
            self._other.write_blocked = False
        for fut in self._drain_waiters:
            if not fut.done():
                fut.set_result(None)
        self._drain_waiters.clear()
        if not self._closed_fut.done():
            self._closed_fut.set_result(None)
        if self._receiver is not None:
            if exc is None and not self._closing:
                exc = BrokenLinkError("the other end closed the memory link")
            self._receiver.link_lost(exc)

    async def wait_closed(self) -> None:
        await asyncio.shield(self._closed_fut)


def memory_pair(
    name: str = "",
    options: TransportOptions | None = None,
    client: type[MemoryLink] = MemoryLink,
) -> tuple[MemoryLink, MemoryLink]:
    """Two connected in-process link ends, the first of class ``client`` (a transport
    built on this one may refuse some frames there: ``file://``). Must be called with an
    event loop running."""
    options = options or TransportOptions()
    a, b = client(name, options), MemoryLink(name, options)
    a._other, b._other = b, a
    a._sync()
    return a, b


def has_listener(name: str) -> bool:
    """True if a broker in the running loop listens on ``memory://name``."""
    return name in _listeners.get(asyncio.get_running_loop(), {})


class _MemoryListener(Listener):
    def __init__(self, name: str, loop: asyncio.AbstractEventLoop) -> None:
        self.url = f"memory://{name}"
        self._name = name
        self._loop = loop

    async def aclose(self) -> None:
        _listeners.get(self._loop, {}).pop(self._name, None)


class MemoryTransport:
    """The ``memory`` scheme."""

    async def connect(self, url: URL, options: TransportOptions) -> Link:
        accept = _listeners.get(asyncio.get_running_loop(), {}).get(url.name)
        if accept is None:
            raise ConnectError(f"no broker listens on memory://{url.name} in this event loop")
        client, server = memory_pair(url.name, options)
        accept(server)
        return client

    async def listen(self, url: URL, accept: Accept, options: TransportOptions) -> Listener:
        loop = asyncio.get_running_loop()
        names = _listeners.setdefault(loop, {})
        if url.name in names:
            raise ConfigurationError(f"memory://{url.name} already has a broker in this loop")
        names[url.name] = accept
        return _MemoryListener(url.name, loop)


register("memory", MemoryTransport())
