"""The ``asyncipc.v1.Streams`` service: durable streams and their consumers over gRPC.

Each RPC calls the streams client API (:mod:`asyncipc.streams`) on the in-process bus the
unary ``Bus`` calls share (``BusService``), so the broker sees the same ``$sys.stream.``
requests a Python client sends and answers them the same way. ``Publish`` and ``Request``
refuse ``$sys.stream.`` subjects: the streams API is reached through this service, with
its checks and bounds (docs/grpc.md, "Streams"):

* a consumer is named and durable: an ephemeral one would belong to the shared bus,
  which never disconnects, and so would never be removed;
* a ``Fetch`` asks for at most :data:`MAX_FETCH_BATCH` messages and waits at most
  :data:`MAX_FETCH_TIMEOUT` seconds (and never past the call's deadline). It streams the
  messages, one gRPC message each (a batch of them could be over gRPC's message size
  limit), and asks the broker for them in chunks, so that what the adapter holds for a
  call stays near :data:`MAX_FETCH_BYTES` of payload, whatever the size of the messages.

The REST adapter has the same helpers in ``asyncipc/adapters/rest/_streams.py``: neither
adapter may import the other (each needs its own extra). Status codes: ``status_of``
(``_server.py``) maps a refusal's ``StreamError.reason``.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from ...client import Bus
from ...errors import (
    AsyncIPCError,
    ConfigurationError,
)
from ...streams import (
    Consumer,
    ConsumerConfig,
    ConsumerInfo,
    Stream,
    StreamConfig,
    StreamInfo,
    StreamMessage,
)
from ...streams.config import check_name
from ...subjects import validate_pattern
from ._server import BusService, _abort, _check, _parser, _Refused
from .proto import bus_pb2 as pb

__all__ = [
    "MAX_FETCH_BATCH",
    "MAX_FETCH_BYTES",
    "MAX_FETCH_TIMEOUT",
    "STREAMS_SERVICE",
    "StreamsService",
    "add_streams_service",
]

STREAMS_SERVICE = "asyncipc.v1.Streams"
"""The full name of the service, as health checks and reflection know it."""

MAX_FETCH_BATCH = 1000
"""The most messages one ``Fetch`` may ask for."""
MAX_FETCH_TIMEOUT = 30.0
"""The longest ``FetchRequest.timeout``, in seconds."""
DEFAULT_FETCH_TIMEOUT = 1.0
"""Seconds a ``Fetch`` without a timeout waits for a first message (as ``Consumer.fetch``)."""
MAX_FETCH_BYTES = 64 << 20
"""Payload bytes the adapter asks the broker for at a time during a ``Fetch`` (at least
one message, whatever its size)."""
API_TIMEOUT = 5.0
"""Seconds the adapter waits for the broker to answer a stream request."""

_DISCARD = {pb.DISCARD_OLD: "old", pb.DISCARD_NEW: "new"}
_STORAGE = {pb.STORAGE_DEFAULT: None, pb.STORAGE_FILE: "file", pb.STORAGE_MEMORY: "memory"}
_FSYNC = {pb.FSYNC_ALWAYS: "always", pb.FSYNC_INTERVAL: "interval", pb.FSYNC_NEVER: "never"}
_DELIVER = {
    pb.DELIVER_ALL: "all",
    pb.DELIVER_NEW: "new",
    pb.DELIVER_LAST: "last",
    pb.DELIVER_LAST_PER_SUBJECT: "last_per_subject",
    pb.DELIVER_BY_START_SEQ: "by_start_seq",
    pb.DELIVER_BY_START_TIME: "by_start_time",
}
_ACK_KINDS = {
    pb.ACK_KIND_ACK: "ack",
    pb.ACK_KIND_NAK: "nak",
    pb.ACK_KIND_TERM: "term",
    pb.ACK_KIND_IN_PROGRESS: "in_progress",
}


# --- configuration: protobuf to the client API and back ----------------------------------


def _finite(name: str, value: float) -> float:
    if not math.isfinite(value):
        raise ConfigurationError(f"{name} must be a finite number of seconds, not {value}")
    return value


def _enum(name: str, table: dict[Any, Any], value: int) -> Any:
    if value not in table:
        raise ConfigurationError(f"unknown {name} {value}")
    return table[value]


def stream_options(config: Any) -> tuple[str, dict[str, Any]]:
    """The name and the options set in a ``StreamConfig`` (ConfigurationError if the
    broker would refuse them). Unset fields are left out: they take their defaults, and
    an existing stream is compared on the fields given only."""
    name = config.name
    check_name("stream", name)
    options: dict[str, Any] = {}
    if config.subjects:
        options["subjects"] = list(config.subjects)
    for key in ("max_msgs", "max_bytes", "max_msgs_per_subject", "max_msg_size"):
        if config.HasField(key):
            options[key] = getattr(config, key)
    for key in ("max_age", "duplicate_window", "sync_interval"):
        if config.HasField(key):
            options[key] = _finite(key, getattr(config, key))
    if config.HasField("discard"):
        options["discard"] = _enum("discard", _DISCARD, config.discard)
    if config.HasField("storage"):
        options["storage"] = _enum("storage", _STORAGE, config.storage)
    if config.HasField("fsync"):
        options["fsync"] = _enum("fsync", _FSYNC, config.fsync)
    StreamConfig.from_json({**options, "name": name})  # refused here, as the broker would
    return name, options


def _stream_config_pb(config: StreamConfig) -> Any:
    out = pb.StreamConfig(
        name=config.name,
        subjects=list(config.subjects),
        max_msgs=config.max_msgs,
        max_bytes=config.max_bytes,
        max_age=config.max_age,
        max_msgs_per_subject=config.max_msgs_per_subject,
        max_msg_size=config.max_msg_size,
        discard=pb.DISCARD_NEW if config.discard == "new" else pb.DISCARD_OLD,
        duplicate_window=config.duplicate_window,
        fsync={v: k for k, v in _FSYNC.items()}[config.fsync],
        sync_interval=config.sync_interval,
    )
    if config.storage is not None:
        out.storage = pb.STORAGE_FILE if config.storage == "file" else pb.STORAGE_MEMORY
    return out


def stream_info_pb(info: StreamInfo) -> Any:
    return pb.StreamInfo(
        config=_stream_config_pb(info.config),
        storage=pb.STORAGE_FILE if info.storage == "file" else pb.STORAGE_MEMORY,
        messages=info.messages,
        bytes=info.bytes,
        first_seq=info.first_seq,
        last_seq=info.last_seq,
        first_time_ns=info.first_time_ns,
        last_time_ns=info.last_time_ns,
        consumers=info.consumers,
        subjects=info.subjects,
        refused=info.refused,
        lost=info.lost,
        torn_bytes=info.torn_bytes,
        created=info.created,
    )


def consumer_config(config: Any) -> tuple[ConsumerConfig, dict[str, Any]]:
    """A ``ConsumerConfig`` message as the client API's, named and durable (module
    docstring), and the options it sets (those an existing consumer is compared on)."""
    if not config.name:
        raise ConfigurationError(
            "a consumer made over gRPC needs a name: an ephemeral consumer would belong "
            "to the adapter's shared connection and never be removed"
        )
    if config.HasField("durable") and not config.durable:
        raise ConfigurationError(
            "durable=false is for consumers that go with their connection; over gRPC "
            "there is none: make it durable, and delete it when done"
        )
    given: dict[str, Any] = {"name": config.name}
    if config.HasField("durable"):
        given["durable"] = True
    if config.HasField("deliver"):
        given["deliver"] = _enum("deliver policy", _DELIVER, config.deliver)
    for key in ("start_seq", "max_deliver", "max_ack_pending"):
        if config.HasField(key):
            given[key] = getattr(config, key)
    for key in ("start_time", "ack_wait"):
        if config.HasField(key):
            given[key] = _finite(key, getattr(config, key))
    for key in ("filter_subject", "dead_letter"):
        if config.HasField(key):
            given[key] = getattr(config, key) or None
    checked = ConsumerConfig.from_json(given)
    return checked, given


def _consumer_config_pb(config: ConsumerConfig) -> Any:
    return pb.ConsumerConfig(
        name=config.name or "",
        durable=config.durable,
        deliver={v: k for k, v in _DELIVER.items()}[config.deliver],
        start_seq=config.start_seq,
        start_time=config.start_time,
        filter_subject=config.filter_subject or "",
        ack_wait=config.ack_wait,
        max_deliver=config.max_deliver,
        dead_letter=config.dead_letter or "",
        max_ack_pending=config.max_ack_pending,
    )


def consumer_info_pb(info: ConsumerInfo) -> Any:
    return pb.ConsumerInfo(
        stream=info.stream,
        config=_consumer_config_pb(info.config),
        num_pending=info.num_pending,
        num_ack_pending=info.num_ack_pending,
        num_redelivered=info.num_redelivered,
        num_waiting=info.num_waiting,
        delivered=info.delivered,
        ack_floor=info.ack_floor,
        dead_lettered=info.dead_lettered,
    )


# --- the client API, as the adapter uses it --------------------------------------------------


async def acknowledge(bus: Bus, token: str, kind: int, delay: float) -> None:
    """Send the acknowledgement ``token`` names and wait until the broker has recorded it."""
    msg = StreamMessage.from_token(bus, token)
    name = _enum("ack kind", _ACK_KINDS, kind)
    if delay and (not math.isfinite(delay) or delay < 0):
        raise ConfigurationError(f"delay must be a number of seconds >= 0, not {delay}")
    if delay and kind != pb.ACK_KIND_NAK:
        raise ConfigurationError("delay goes with ACK_KIND_NAK only")
    await msg.settle(name, delay=delay or None, timeout=API_TIMEOUT)


def stream_msg_pb(msg: StreamMessage) -> Any:
    return pb.StreamMsg(
        subject=msg.subject,
        data=msg.data,
        headers=msg.headers or {},
        stream=msg.stream,
        consumer=msg.consumer,
        seq=msg.seq,
        num_delivered=msg.num_delivered,
        time_ns=msg.time_ns,
        ack_token=msg.reply_to or "",
    )


# --- the service -----------------------------------------------------------------------------


class StreamsService:
    """The ``asyncipc.v1.Streams`` service of one broker (see the module docstring): its
    calls are checked against the broker's token and served on the bus that ``Bus``'s
    unary calls share."""

    def __init__(self, buses: BusService) -> None:
        self._buses = buses

    async def _run(self, request: Any, context: Any, call: Callable[[Bus], Awaitable[Any]]) -> Any:
        """Check the request and the token, then ``call`` with the shared bus; what it
        raises ends the call with its status (``status_of``)."""
        try:
            _check(request)
            bus = await self._buses._unary_bus(context)
            return await call(bus)
        except (AsyncIPCError, _Refused) as exc:
            await _abort(context, exc)

    async def StreamCreate(self, request: Any, context: Any) -> Any:
        async def call(bus: Bus) -> Any:
            name, options = stream_options(request)
            stream = await bus.stream(name, **options)
            return stream_info_pb(await stream.info())

        return await self._run(request, context, call)

    async def StreamGet(self, request: Any, context: Any) -> Any:
        async def call(bus: Bus) -> Any:
            return stream_info_pb(await Stream.named(bus, request.stream).info())

        return await self._run(request, context, call)

    async def StreamDelete(self, request: Any, context: Any) -> Any:
        async def call(bus: Bus) -> Any:
            await Stream.named(bus, request.stream).delete()
            return pb.StreamDeleteResponse()

        return await self._run(request, context, call)

    async def StreamList(self, request: Any, context: Any) -> Any:
        async def call(bus: Bus) -> Any:
            infos = await bus.streams()
            return pb.StreamListResponse(streams=[stream_info_pb(i) for i in infos])

        return await self._run(request, context, call)

    async def StreamPurge(self, request: Any, context: Any) -> Any:
        async def call(bus: Bus) -> Any:
            stream = Stream.named(bus, request.stream)
            subject = request.subject or None
            if subject is not None:
                validate_pattern(subject)
            return pb.StreamPurgeResponse(purged=await stream.purge(subject))

        return await self._run(request, context, call)

    async def StreamPublish(self, request: Any, context: Any) -> Any:
        async def call(bus: Bus) -> Any:
            stream = Stream.named(bus, request.stream)
            ack = await stream.publish(
                request.subject,
                request.data,
                headers=dict(request.headers) or None,
                msg_id=request.msg_id or None,
            )
            return pb.PubAck(stream=ack.stream, seq=ack.seq, duplicate=ack.duplicate)

        return await self._run(request, context, call)

    async def ConsumerCreate(self, request: Any, context: Any) -> Any:
        async def call(bus: Bus) -> Any:
            stream = Stream.named(bus, request.stream)
            config, given = consumer_config(request.config)
            consumer = await stream.consumer_from({**given, "name": config.name})
            return consumer_info_pb(await consumer.info())

        return await self._run(request, context, call)

    async def ConsumerGet(self, request: Any, context: Any) -> Any:
        async def call(bus: Bus) -> Any:
            consumer = Consumer.named(bus, request.stream, request.consumer)
            return consumer_info_pb(await consumer.info())

        return await self._run(request, context, call)

    async def ConsumerDelete(self, request: Any, context: Any) -> Any:
        async def call(bus: Bus) -> Any:
            await Consumer.named(bus, request.stream, request.consumer).delete()
            return pb.ConsumerDeleteResponse()

        return await self._run(request, context, call)

    async def ConsumerList(self, request: Any, context: Any) -> Any:
        async def call(bus: Bus) -> Any:
            infos = await Stream.named(bus, request.stream).consumers()
            return pb.ConsumerListResponse(consumers=[consumer_info_pb(i) for i in infos])

        return await self._run(request, context, call)

    async def Fetch(self, request: Any, context: Any) -> None:
        """Stream the messages as they come from the broker, a chunk at a time: one gRPC
        message each (a batch could be over gRPC's message size limit), and never more
        than a chunk held here."""

        async def call(bus: Bus) -> None:
            batch = request.batch or 1
            if batch > MAX_FETCH_BATCH:
                raise ConfigurationError(
                    f"batch must be from 1 to {MAX_FETCH_BATCH}, not {request.batch}"
                )
            timeout = request.timeout if request.HasField("timeout") else DEFAULT_FETCH_TIMEOUT
            if not 0 <= timeout <= MAX_FETCH_TIMEOUT:  # NaN fails too
                raise ConfigurationError(
                    f"timeout must be from 0 to {MAX_FETCH_TIMEOUT:g} seconds, not {timeout}"
                )
            remaining = context.time_remaining()
            if remaining is not None:  # answer before the caller stops listening
                timeout = min(timeout, max(0.0, remaining * 0.9 - 0.05))
            consumer = Consumer.named(bus, request.stream, request.consumer)
            try:
                # A few at a time, so that what is held here stays near MAX_FETCH_BYTES
                # whatever the messages' size; the first fetch waits, the rest take only
                # what is at hand.
                left, wait = batch, timeout
                while left > 0:
                    got = await consumer.fetch(left, wait, max_bytes=MAX_FETCH_BYTES)
                    for msg in got:
                        await context.write(stream_msg_pb(msg))
                    if not got:
                        break
                    left -= len(got)
                    wait = 0.0
            finally:
                # What it fetched and could not send (the call was cancelled) is
                # delivered again after ack_wait.
                await consumer.close()

        await self._run(request, context, call)

    async def Ack(self, request: Any, context: Any) -> Any:
        async def call(bus: Bus) -> Any:
            await acknowledge(bus, request.token, request.kind, request.delay)
            return pb.AckResponse()

        return await self._run(request, context, call)


_RPCS: dict[str, tuple[Any, Any]] = {
    "StreamCreate": (pb.StreamConfig, pb.StreamInfo),
    "StreamGet": (pb.StreamRequest, pb.StreamInfo),
    "StreamDelete": (pb.StreamRequest, pb.StreamDeleteResponse),
    "StreamList": (pb.StreamListRequest, pb.StreamListResponse),
    "StreamPurge": (pb.StreamPurgeRequest, pb.StreamPurgeResponse),
    "StreamPublish": (pb.StreamPublishRequest, pb.PubAck),
    "ConsumerCreate": (pb.ConsumerCreateRequest, pb.ConsumerInfo),
    "ConsumerGet": (pb.ConsumerRequest, pb.ConsumerInfo),
    "ConsumerDelete": (pb.ConsumerRequest, pb.ConsumerDeleteResponse),
    "ConsumerList": (pb.StreamRequest, pb.ConsumerListResponse),
    "Fetch": (pb.FetchRequest, pb.StreamMsg),
    "Ack": (pb.AckRequest, pb.AckResponse),
}


_STREAMING = {"Fetch"}


def add_streams_service(server: grpc.aio.Server, service: StreamsService) -> None:
    """Register ``service`` on ``server``, with deserializers that let bad bytes reach
    the handler as ``Malformed`` (INVALID_ARGUMENT), as ``add_bus_service`` does."""
    handlers = {
        name: (
            grpc.unary_stream_rpc_method_handler
            if name in _STREAMING
            else grpc.unary_unary_rpc_method_handler
        )(
            getattr(service, name),
            request_deserializer=_parser(request),
            response_serializer=response.SerializeToString,
        )
        for name, (request, response) in _RPCS.items()
    }
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(STREAMS_SERVICE, handlers),)
    )
    server.add_registered_method_handlers(STREAMS_SERVICE, handlers)
