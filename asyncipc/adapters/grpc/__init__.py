"""The gRPC adapter: ``grpc://host:port``, a broker listener and a client transport.

``Broker.listen("grpc://127.0.0.1:50051")`` (or ``asyncipc broker --grpc HOST:PORT``)
serves the ``asyncipc.v1.Bus`` service of ``protos/asyncipc/v1/bus.proto`` on grpc.aio,
with the standard health-checking (``grpc.health.v1.Health``) and reflection services
beside it. What comes in is an ordinary participant of the bus, both ways:

* each ``Connect`` stream is a link attached with ``Broker.attach``, a client like one on
  a Unix socket, speaking the wire protocol's frames as protobuf messages;
* each ``Subscribe`` call is an in-process :class:`~asyncipc.Bus` of its own (so that one
  slow gRPC subscriber slows nobody else's stream), and ``Publish``/``Request`` calls
  share one in-process Bus; the adapter checks their token against the broker's.
* the ``asyncipc.v1.Streams`` service (``_streams.py``: durable streams, consumers,
  fetch and ack) calls the streams client API on that same shared Bus; ``Publish`` and
  ``Request`` refuse ``$sys.stream.`` subjects, which are reached through it only.

``asyncipc.connect("grpc://host:port")`` is the client side: a link over a ``Connect``
stream, under the same Bus every other transport has.

``docs/grpc.md`` has the status codes (:func:`status_of`, :func:`grpc_status`),
authentication, and what flow control means over gRPC. The pieces: ``_link.py``
(what both ends of a stream share), ``_server.py`` (the service),
``_server_link.py`` and ``_client.py`` (the broker's and the client's end of a
``Connect`` stream).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .. import missing_extra

try:
    # The packages of the `grpc` extra (health_pb2 imports protobuf): a plain
    # `pip install asyncipc` has none of them, and a grpc:// URL must then say which
    # extra to add, not fail deep in an import.
    import grpc
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection
except ModuleNotFoundError as exc:
    raise missing_extra("grpc://", "gRPC adapter", "grpc", exc) from exc

from ..._stats import BrokerStats
from ...errors import ConfigurationError
from ...link import Accept, Link, Listener
from ...options import BrokerOptions
from ...protocol import MSG_EXTRA
from ...transports import URL, TransportOptions, register
from ...users import User
from . import _client
from ._link import SLACK
from ._server import (
    DEFAULT_REQUEST_TIMEOUT,
    SERVICE,
    BusService,
    add_bus_service,
    status_of,
)
from ._server_link import grpc_status
from ._streams import STREAMS_SERVICE, StreamsService, add_streams_service

if TYPE_CHECKING:
    from ...broker import Broker

__all__ = [
    "DEFAULT_REQUEST_TIMEOUT",
    "SERVICE",
    "STREAMS_SERVICE",
    "GrpcListener",
    "GrpcTransport",
    "grpc_status",
    "status_of",
]

DRAIN_GRACE = 60.0
"""Seconds the server lets calls run after the broker began closing, at most. The broker
closes its links well within that and then calls :meth:`GrpcListener.wait_closed`."""

STOP_GRACE = 1.0
"""Seconds the server then gives what still runs (a health ``Watch``, a call caught
mid-way) before cancelling it."""


class GrpcListener(Listener):
    """A grpc.aio server serving one broker. See the module docstring."""

    def __init__(self, url: str, server: grpc.aio.Server, health: Any, service: BusService) -> None:
        self.url = url
        self._server = server
        self._health = health
        self._service = service
        self._stopping: asyncio.Future[None] | None = None

    async def aclose(self) -> None:
        """Report NOT_SERVING, close the port and refuse new calls; the streams already
        open go on until the broker has drained and closed them."""
        if self._stopping is None:
            await self._health.enter_graceful_shutdown()
            self._stopping = asyncio.ensure_future(self._server.stop(DRAIN_GRACE))
            await asyncio.sleep(0)  # the server's shutdown has begun: new calls refused

    async def wait_closed(self) -> None:
        """Once the broker has closed every link: stop the server for good."""
        if self._stopping is None:
            await self.aclose()
        assert self._stopping is not None
        await self._service.close()
        await self._server.stop(STOP_GRACE)  # a second stop() shortens the grace
        await self._stopping


class GrpcTransport:
    """The ``grpc`` scheme: :meth:`serve_broker` serves a broker (``Broker.listen``),
    :meth:`connect` a Bus."""

    async def serve_broker(self, url: URL, broker: Broker, options: TransportOptions) -> Listener:
        """Start a grpc.aio server at ``url`` whose calls become clients of ``broker``
        (``Broker.listen`` calls this). gRPC's message size limits follow
        ``options.max_frame``; unary and ``Subscribe`` calls must carry the broker's token."""
        return await _serve(
            url,
            broker.attach,
            options,
            broker.options,
            broker.stats,
            lambda: broker.options.users,
        )

    async def listen(self, url: URL, accept: Accept, options: TransportOptions) -> Listener:
        """Not for bare links: the gRPC service needs the broker (``Broker.listen``)."""
        raise ConfigurationError(f"{url.raw!r} is served by a Broker: use Broker.listen")

    async def connect(self, url: URL, options: TransportOptions) -> Link:
        """A link over a new ``Connect`` stream to the broker at ``url``."""
        return await _client.connect(url, options)


async def _serve(
    url: URL,
    accept: Accept,
    options: TransportOptions,
    limits: BrokerOptions,
    stats: BrokerStats | None = None,
    users: Callable[[], tuple[User, ...]] = tuple,
) -> GrpcListener:
    """Start a grpc.aio server at ``url`` serving the broker behind ``accept``, whose
    options (``limits``) give the token and the caps on what callers may ask for."""
    address = _client.host_port(url)
    limit = options.max_frame + MSG_EXTRA + SLACK
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", limit),
            # Without this a second broker could bind the same port and share it.
            ("grpc.so_reuseport", 0),
        ]
    )
    service = BusService(accept, options, url.raw, limits.token, users, limits, stats)
    add_bus_service(server, service)
    add_streams_service(server, StreamsService(service))
    health_service = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_service, server)
    reflection.enable_server_reflection(
        [SERVICE, STREAMS_SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME], server
    )
    error: Exception | None = None
    try:
        port = server.add_insecure_port(address)
    except RuntimeError as exc:
        port, error = 0, exc
    if not port:
        await server.stop(None)
        raise OSError(f"cannot listen on {url.raw}: {error or 'bind failed'}")
    await server.start()
    serving = health_pb2.HealthCheckResponse.SERVING
    await health_service.set("", serving)
    await health_service.set(SERVICE, serving)
    await health_service.set(STREAMS_SERVICE, serving)
    bound = f"grpc://{address.rsplit(':', 1)[0]}:{port}"
    return GrpcListener(bound, server, health_service, service)


register("grpc", GrpcTransport())
