"""asyncipc: one async API to publish, subscribe and request over every IPC channel.

::

    import asyncipc

    async with asyncipc.connect() as bus:               # $ASYNCIPC_URL, else embedded
        async with bus.subscribe("orders.*") as sub:
            await bus.publish("orders.created", b'{"id": 7}')
            msg = await sub.next_msg(timeout=1)

With no URL, ``connect()`` follows ``$ASYNCIPC_URL`` when it is set and otherwise uses a
broker embedded in this event loop (no process needed). Give a URL
(``unix:///tmp/asyncipc.sock``, ``tcp://host:4222``, ``tls://...``) to reach a broker in
another process; nothing else changes. See ``docs/`` for the guide.
"""

from . import signals as signals
from ._build import COMPILABLE as _COMPILABLE
from ._build import compiled_modules as _compiled_modules
from ._connect import Connector, connect, default_socket_url
from ._events import ConnectionEvent, EventStream
from ._peer import PipePeer, spawn_peer
from .broker import Broker, BrokerStats
from .client import Bus
from .errors import (
    AsyncIPCError,
    AuthenticationError,
    BrokenLinkError,
    BrokerError,
    ClosedError,
    ConfigurationError,
    ConnectError,
    ConnectionClosed,
    ConsumerNotFound,
    CorruptRing,
    CorruptStore,
    Disconnected,
    FrameTooLarge,
    HandshakeError,
    InvalidBody,
    InvalidSubject,
    LocalProtocolError,
    NoResponders,
    PermissionDenied,
    ProtocolError,
    RecordReleased,
    RemoteProtocolError,
    RequestTimeout,
    ServiceError,
    SignalInUse,
    SignalRefused,
    SlowConsumer,
    StoreError,
    StreamError,
    StreamNotFound,
)
from .link import Link, Listener, PeerInfo
from .message import Message, TypedMessage
from .options import BrokerOptions, ConnectOptions
from .permissions import Permissions
from .service import Service
from .streams import Consumer, PubAck, Stream, StreamInfo, StreamMessage
from .subscription import Subscription, TypedSubscription
from .users import User, hash_password

__version__ = "0.1.0"

compiled: bool = len(_compiled_modules()) == len(_COMPILABLE)
"""True when the hot modules run compiled by mypyc (``make accel``, docs/architecture.md),
False when they run as the pure-Python sources (the default build, and the fallback)."""

__all__ = [
    "AsyncIPCError",
    "AuthenticationError",
    "BrokenLinkError",
    "Broker",
    "BrokerError",
    "BrokerOptions",
    "BrokerStats",
    "Bus",
    "ClosedError",
    "ConfigurationError",
    "ConnectError",
    "ConnectOptions",
    "ConnectionClosed",
    "ConnectionEvent",
    "Connector",
    "Consumer",
    "ConsumerNotFound",
    "CorruptRing",
    "CorruptStore",
    "Disconnected",
    "EventStream",
    "FrameTooLarge",
    "HandshakeError",
    "InvalidBody",
    "InvalidSubject",
    "Link",
    "Listener",
    "LocalProtocolError",
    "Message",
    "NoResponders",
    "PeerInfo",
    "PermissionDenied",
    "Permissions",
    "PipePeer",
    "ProtocolError",
    "PubAck",
    "RecordReleased",
    "RemoteProtocolError",
    "RequestTimeout",
    "Service",
    "ServiceError",
    "SignalInUse",
    "SignalRefused",
    "SlowConsumer",
    "StoreError",
    "Stream",
    "StreamError",
    "StreamInfo",
    "StreamMessage",
    "StreamNotFound",
    "Subscription",
    "TypedMessage",
    "TypedSubscription",
    "User",
    "__version__",
    "connect",
    "default_socket_url",
    "hash_password",
    "spawn_peer",
]
