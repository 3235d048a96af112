"""The one exception tree of asyncipc.

::

    AsyncIPCError
    ├── ConfigurationError (ValueError)     a bad URL, option or argument
    │   └── InvalidSubject                  a subject or queue name that is not valid
    ├── ConnectError (OSError)              nothing answered at the URL
    ├── ConnectionClosed                    the link is gone
    │   ├── ClosedError                     ... because *we* closed it
    │   └── BrokenLinkError (OSError)       ... because the peer or the world did
    │       └── Disconnected                ... while this waited; the bus reconnects
    ├── ProtocolError                       the wire was misused
    │   ├── LocalProtocolError              ... by us (a frame we refuse to send)
    │   ├── RemoteProtocolError             ... by the peer (garbage, truncated)
    │   │   └── CorruptRing                 shared memory or a ring file breaks the ring layout
    │   └── FrameTooLarge                   a frame over the agreed maximum
    ├── HandshakeError                      the hello/welcome exchange failed
    │   └── AuthenticationError             the broker refused our token
    ├── BrokerError                         the broker sent an error frame (``code``)
    ├── PermissionDenied                    the user may not publish/subscribe there
    ├── NoResponders                        a request found nobody subscribed
    ├── RequestTimeout (TimeoutError)       a request got no answer in time
    ├── ServiceError                        the responder's handler failed
    ├── SlowConsumer                        a subscription overflowed (overflow="error")
    ├── SignalRefused                       the broker would not signal that client (``reason``)
    ├── SignalInUse (RuntimeError)          another event-loop handler owns that signal
    ├── RecordReleased (ValueError)         a ring record was read after it was released
    ├── StreamError                         a stream operation was refused (``reason``)
    │   ├── StreamNotFound (LookupError)    no stream by that name
    │   └── ConsumerNotFound (LookupError)  no consumer by that name on the stream
    └── StoreError (OSError)                the store could not write or read (disk full,
        └── CorruptStore                    a file that breaks the store format)

ClosedError/BrokenLinkError follow anyio's ClosedResourceError/BrokenResourceError split.
``except TimeoutError`` catches request time-outs and ``except OSError`` catches broken
links, as with aiohttp and the standard library; ``except ValueError`` catches bad
subjects before anything is sent.
"""

from __future__ import annotations

__all__ = [
    "AsyncIPCError",
    "AuthenticationError",
    "BrokenLinkError",
    "BrokerError",
    "ClosedError",
    "ConfigurationError",
    "ConnectError",
    "ConnectionClosed",
    "ConsumerNotFound",
    "CorruptRing",
    "CorruptStore",
    "Disconnected",
    "FrameTooLarge",
    "HandshakeError",
    "InvalidSubject",
    "LocalProtocolError",
    "NoResponders",
    "PermissionDenied",
    "ProtocolError",
    "RecordReleased",
    "RemoteProtocolError",
    "RequestTimeout",
    "ServiceError",
    "SignalInUse",
    "SignalRefused",
    "SlowConsumer",
    "StoreError",
    "StreamError",
    "StreamNotFound",
]


class AsyncIPCError(Exception):
    """Root of every exception asyncipc raises on purpose."""


class ConfigurationError(AsyncIPCError, ValueError):
    """A URL, option or argument that cannot be used."""


class InvalidSubject(ConfigurationError):
    """A subject, wildcard pattern or queue name that breaks the subject rules."""


class ConnectError(AsyncIPCError, OSError):
    """Nothing answered at the URL (no socket file, connection refused, time-out)."""


class ConnectionClosed(AsyncIPCError):
    """The link to the peer is closed; nothing more can be sent or received on it."""


class ClosedError(ConnectionClosed):
    """The link, subscription or broker was closed by this side (``close()`` was called)."""


class BrokenLinkError(ConnectionClosed, OSError):
    """The peer vanished or the channel failed under us."""


class Disconnected(BrokenLinkError):
    """The link to the broker dropped while this waited: a request in flight when it
    dropped (raised at once, not at its time-out), or a ``publish`` or ``flush`` that
    waited for a reconnect that gave up. The bus itself reconnects unless told not to."""


class ProtocolError(AsyncIPCError):
    """The wire protocol was violated."""


class LocalProtocolError(ProtocolError):
    """We were asked to send something the protocol does not allow."""


class RemoteProtocolError(ProtocolError):
    """The peer sent bytes that are not a valid frame sequence."""


class CorruptRing(RemoteProtocolError):
    """A shared-memory ring or ring file breaks the ring layout (``docs/shm.md``).

    The message names what was wrong and where: a bad magic number, a counter out of
    range, a record whose length runs past the ring end, a checksum that does not match.
    ``position`` is the ring position of the offending record, when there is one.
    """

    def __init__(self, message: str, position: int | None = None) -> None:
        super().__init__(message)
        self.position = position


class FrameTooLarge(ProtocolError):
    """A frame is larger than the maximum the two sides agreed on."""


class HandshakeError(AsyncIPCError):
    """The version handshake did not complete."""


class AuthenticationError(HandshakeError):
    """The broker refused the token (or its absence)."""


class BrokerError(AsyncIPCError):
    """The broker reported an error in an error frame.

    ``code`` is the numeric error code of ``docs/protocol.md``.
    """

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"broker error {code}: {message}")
        self.code = code
        self.message = message


class PermissionDenied(AsyncIPCError):
    """The broker refused a publish, request or subscription: the user's permissions do
    not allow it (``docs/security.md``). The message names the subject and the rule.

    Raised from :meth:`Bus.request` and from a confirmed ``async with bus.subscribe(...)``
    (and from iterating a refused subscription); a refused plain ``publish`` cannot raise
    (it returned already) and is reported as a ``ConnectionEvent`` of kind ``"error"``
    carrying this exception, and counted in ``Bus.refused``.
    """


class NoResponders(AsyncIPCError):
    """A request was published to a subject nobody is subscribed to."""


class RequestTimeout(AsyncIPCError, TimeoutError):
    """A request was delivered but no reply arrived before the time-out."""


class ServiceError(AsyncIPCError):
    """The handler that served a request failed; ``str()`` names the subject and carries
    what the service chose to send (by default only ``internal error`` and an id from its
    log). A handler raises it itself to send the requester a message written for it."""


class SlowConsumer(AsyncIPCError):
    """A subscription with ``overflow="error"`` fell behind and was cut off."""


class SignalRefused(AsyncIPCError):
    """The broker refused to signal another client (``asyncipc.signals.send``).

    ``reason`` is the machine-readable code of ``docs/signals.md`` (``not-allowed``,
    ``no-pid``, ``remote-sender``, ``uid-mismatch``, ``unknown-client``, ...); ``str()``
    says the same for humans, naming the client and the signal.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class SignalInUse(AsyncIPCError, RuntimeError):
    """``asyncipc.signals`` will not take over a signal that another event-loop handler
    (``loop.add_signal_handler``) already handles: that handler would be replaced
    silently. Remove it first, or register through ``asyncipc.signals.on_signal``."""


class RecordReleased(AsyncIPCError, ValueError):
    """A ring record (or a view of it) was used after it was released.

    Its bytes live in shared memory that the writer reuses once the record is released:
    reading them then would return someone else's data, so it raises instead.
    """


class StreamError(AsyncIPCError):
    """The broker refused a stream or consumer operation.

    ``reason`` is a short machine-readable code (``bad-config``, ``limit``,
    ``not-found``, ``exists``, ``store``, ...); ``str()`` says the same for humans.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class StreamNotFound(StreamError, LookupError):
    """No stream by that name (create it with ``bus.stream(name, subjects=[...])``)."""

    def __init__(self, message: str) -> None:
        super().__init__("stream-not-found", message)


class ConsumerNotFound(StreamError, LookupError):
    """No consumer by that name on the stream."""

    def __init__(self, message: str) -> None:
        super().__init__("consumer-not-found", message)


class StoreError(AsyncIPCError, OSError):
    """The store could not write or read: the disk is full, a file vanished, the log was
    closed. What was acknowledged before stays acknowledged; what raised was not stored."""


class CorruptStore(StoreError):
    """A store file breaks the record format (``docs/streams.md``): a bad magic number, a
    checksum that does not match, a length past the end. ``path`` names the file and
    ``offset`` where the damage starts, when known."""

    def __init__(self, message: str, path: str | None = None, offset: int | None = None) -> None:
        super().__init__(message)
        self.path = path
        self.offset = offset
