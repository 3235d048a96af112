"""``/v1/streams``: durable streams and their consumers over HTTP (docs/rest.md).

Each route calls the streams client API (:mod:`asyncipc.streams`) on the adapter's shared
in-process bus, the one ``POST /v1/publish`` uses, so the broker sees the same
``$sys.stream.`` requests a Python client would send and answers them the same way.
HTTP clients cannot send those requests themselves through the generic routes (the
server refuses ``$sys.stream.`` subjects there): that would let them create consumers
owned by the shared bus, which no disconnect would ever remove, and pull batches without
the bounds below.

What an HTTP client cannot have here:

* an ephemeral consumer (no name, or ``durable: false``): the broker removes those when
  the connection that made it goes, and an HTTP client has no such connection;
* a fetch larger than :data:`MAX_FETCH_BATCH` messages or longer than
  :data:`MAX_FETCH_TIMEOUT` seconds (400): the adapter holds what it fetched until it
  answers. Within a fetch it asks the broker in chunks, so that what it holds for one
  request stays near :data:`MAX_FETCH_BYTES` of payload whatever the messages' size.
"""

from __future__ import annotations

import base64
import json
import math
from typing import Any, Protocol

from aiohttp import web

from ...client import Bus
from ...errors import (
    AsyncIPCError,
    ConfigurationError,
    ConnectionClosed,
    FrameTooLarge,
    InvalidSubject,
    PermissionDenied,
    RequestTimeout,
    StreamError,
)
from ...streams import (
    Consumer,
    ConsumerConfig,
    Stream,
    StreamConfig,
    StreamMessage,
)
from ...streams.client import ACK_BODIES
from ...streams.config import check_name
from ...subjects import validate_pattern, validate_subject
from ...users import User
from ._envelope import HttpError, headers_from_http

__all__ = [
    "ACK_KINDS",
    "MAX_FETCH_BATCH",
    "MAX_FETCH_BYTES",
    "MAX_FETCH_TIMEOUT",
    "MSG_ID_HEADER",
    "StreamRoutes",
]

MAX_FETCH_BATCH = 1000
"""The most messages one ``fetch`` may ask for (``?batch=``)."""
MAX_FETCH_TIMEOUT = 30.0
"""The longest ``?timeout=`` of a ``fetch``, in seconds."""
DEFAULT_FETCH_TIMEOUT = 1.0
"""Seconds a ``fetch`` waits for a first message without ``?timeout=`` (as
``Consumer.fetch``)."""
MAX_FETCH_BYTES = 64 << 20
"""Payload bytes one ``fetch`` gathers at most before it answers (at least one message,
whatever its size): past it, the answer holds fewer than ``batch`` messages."""
API_TIMEOUT = 5.0
"""Seconds the adapter waits for the broker to answer a stream request."""
MSG_ID_HEADER = "X-Asyncipc-Msg-Id"
"""The HTTP header of a stream publish that names the message for deduplication."""

ACK_KINDS = ACK_BODIES
"""The ``kind`` of an acknowledgement, and what it sends to the broker."""

# How the broker's refusals (StreamError.reason) answer over HTTP: the statuses the
# broker itself gives them in its replies (asyncipc/streams/manager.py).
_REASON_STATUS = {
    "stream-not-found": 404,
    "consumer-not-found": 404,
    "not-found": 404,
    "exists": 409,
    "overlap": 409,
    "limit": 409,
    "too-large": 409,
    "not-pending": 409,
    "closed": 503,
    "store": 500,
    "internal": 500,
}


class StreamServer(Protocol):
    """What the stream routes need of the REST server (``RestServer``): a Protocol, so
    that this module does not import the one that imports it."""

    async def authorize(self, request: web.Request, *, required: bool = True) -> User | None: ...

    async def bus_for(self, user: User | None) -> Bus: ...

    def unary_bus(self) -> Bus: ...

    async def read_body(self, request: web.Request) -> bytes: ...


def http_error(exc: AsyncIPCError | HttpError) -> HttpError:
    """The HTTP answer for what a stream operation raised (docs/rest.md, Streams)."""
    if isinstance(exc, HttpError):
        return exc
    if isinstance(exc, InvalidSubject):
        return HttpError(400, "invalid_subject", str(exc))
    if isinstance(exc, PermissionDenied):
        return HttpError(403, "permission_denied", str(exc))
    if isinstance(exc, StreamError):
        status = _REASON_STATUS.get(exc.reason, 400)
        return HttpError(status, exc.reason.replace("-", "_"), str(exc))
    if isinstance(exc, ConfigurationError):
        return HttpError(400, "bad_config", str(exc))
    if isinstance(exc, RequestTimeout):
        return HttpError(504, "timeout", str(exc))
    if isinstance(exc, FrameTooLarge):
        return HttpError(413, "payload_too_large", str(exc))
    if isinstance(exc, ConnectionClosed):
        return HttpError(503, "unavailable", "the broker is shutting down")
    # ServiceError: the broker failed to carry the request out (its store, say).
    return HttpError(500, "stream_error", str(exc))


def stream_config(body: Any) -> tuple[str, dict[str, Any]]:
    """The stream name and options of a create request's JSON (ConfigurationError if
    the broker would refuse them): checked here, so that a bad type is a 400 with the
    field's name rather than whatever the broker's comparison makes of it."""
    if not isinstance(body, dict):
        raise ConfigurationError("a stream configuration is a JSON object")
    given = dict(body)
    name = given.pop("name", None)
    if not isinstance(name, str):
        raise ConfigurationError("a stream configuration needs a 'name' (a string)")
    check_name("stream", name)
    StreamConfig.from_json({**given, "name": name})  # refused here, with the broker's words
    return name, given


def consumer_config(body: Any) -> ConsumerConfig:
    """A consumer's configuration from a create request: named and durable (docstring
    of the module)."""
    config = ConsumerConfig.from_json(body)
    if config.name is None:
        raise ConfigurationError(
            "a consumer made over the adapter needs a 'name': an ephemeral consumer would "
            "belong to the adapter's shared connection and never be removed"
        )
    if not config.durable:
        raise ConfigurationError(
            "'durable': false is for consumers that go with their connection; over the "
            "adapter there is none: make it durable, and delete it when done"
        )
    return config


def ack_message(bus: Bus, token: Any, stream: str | None, consumer: str | None) -> StreamMessage:
    """The delivered message an ack token (its ack subject) stands for; ConfigurationError
    unless it is one, of ``stream``/``consumer`` when given."""
    if not isinstance(token, str):
        raise ConfigurationError("'token' must be the ack_token of a fetched message")
    msg = StreamMessage.from_token(bus, token)
    if stream is not None and (msg.stream, msg.consumer) != (stream, consumer):
        raise ConfigurationError(
            f"the token is for {msg.stream}/{msg.consumer}, not for {stream}/{consumer}"
        )
    return msg


def ack_delay(value: Any, kind: str) -> float | None:
    """``delay`` of an acknowledgement: seconds (finite, >= 0) before a NAKed message is
    delivered again; only for ``nak``."""
    if value is None:
        return None
    if kind != "nak":
        raise ConfigurationError("'delay' goes with kind 'nak' only")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigurationError(f"'delay' must be a number of seconds, not {value!r}")
    if value < 0:
        raise ConfigurationError(f"'delay' must be >= 0, not {value!r}")
    return float(value)


def message_json(msg: StreamMessage) -> dict[str, Any]:
    """A fetched message as JSON: the message envelope's fields and the stream's."""
    return {
        "subject": msg.subject,
        "data": base64.b64encode(msg.data).decode("ascii"),
        "headers": msg.headers or {},
        "stream": msg.stream,
        "consumer": msg.consumer,
        "seq": msg.seq,
        "num_delivered": msg.num_delivered,
        "time_ns": msg.time_ns,
        "ack_token": msg.reply_to,
    }


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _json_body(data: bytes) -> Any:
    """The request's JSON (``None`` for an empty body). NaN and Infinity, which Python's
    parser would take, are not JSON: no limit or time-out may be one."""
    try:
        return json.loads(data, parse_constant=_no_constant) if data.strip() else None
    except (ValueError, UnicodeDecodeError) as exc:
        raise HttpError(400, "bad_request", f"the body is not JSON: {exc}") from None


def _query_number(
    request: web.Request, name: str, default: float, low: float, high: float, *, integer: bool
) -> float:
    text = request.query.get(name)
    if text is None:
        return default
    try:
        value = float(int(text)) if integer else float(text)
    except ValueError:
        value = math.nan
    if not (low <= value <= high):  # NaN fails too
        kind = "an integer" if integer else "a number of seconds"
        raise HttpError(
            400, "bad_request", f"{name} must be {kind} from {low:g} to {high:g}, not {text!r}"
        )
    return value


def _path_name(request: web.Request, key: str) -> str:
    try:
        return check_name(key, request.match_info[key])
    except ConfigurationError as exc:
        raise HttpError(400, "bad_request", str(exc)) from None


class StreamRoutes:
    """The ``/v1/streams`` routes of one REST server."""

    def __init__(self, server: StreamServer) -> None:
        self._server = server

    def add_to(self, router: web.UrlDispatcher) -> None:
        base = "/v1/streams"
        one = base + "/{stream}"
        consumers = one + "/consumers"
        consumer = consumers + "/{consumer}"
        router.add_post(base, self._create_stream)
        router.add_get(base, self._list_streams, allow_head=False)
        router.add_get(one, self._stream_info, allow_head=False)
        router.add_delete(one, self._delete_stream)
        router.add_post(one + "/purge", self._purge)
        router.add_post(one + "/publish/{subject}", self._publish)
        router.add_post(consumers, self._create_consumer)
        router.add_get(consumers, self._list_consumers, allow_head=False)
        router.add_get(consumer, self._consumer_info, allow_head=False)
        router.add_delete(consumer, self._delete_consumer)
        router.add_post(consumer + "/fetch", self._fetch)
        router.add_post(consumer + "/ack", self._ack)

    @staticmethod
    def _stream(request: web.Request) -> str:
        """The stream named in the path (HttpError 400 if it is no name)."""
        return _path_name(request, "stream")

    @staticmethod
    def _consumer_name(request: web.Request) -> str:
        return _path_name(request, "consumer")

    async def _json(self, request: web.Request) -> Any:
        return _json_body(await self._server.read_body(request))

    async def _bus(self, request: web.Request) -> Bus:
        # A restricted user's own bus: the broker checks its stream API requests
        # ($sys.stream.<op>.<stream>) against its permissions, PermissionDenied -> 403.
        return await self._server.bus_for(await self._server.authorize(request))

    # --- streams ----------------------------------------------------------------------

    async def _create_stream(self, request: web.Request) -> web.StreamResponse:
        bus = await self._bus(request)
        body = await self._json(request)
        try:
            name, options = stream_config(body)
            stream = await bus.stream(name, **options)
            info = await stream.info()
        except (AsyncIPCError, HttpError) as exc:
            raise http_error(exc) from None
        return web.json_response(info.to_json())

    async def _list_streams(self, request: web.Request) -> web.StreamResponse:
        bus = await self._bus(request)
        try:
            infos = await bus.streams()
        except (AsyncIPCError, HttpError) as exc:
            raise http_error(exc) from None
        return web.json_response({"streams": [i.to_json() for i in infos]})

    async def _stream_info(self, request: web.Request) -> web.StreamResponse:
        bus = await self._bus(request)
        try:
            info = await Stream.named(bus, self._stream(request)).info()
        except (AsyncIPCError, HttpError) as exc:
            raise http_error(exc) from None
        return web.json_response(info.to_json())

    async def _delete_stream(self, request: web.Request) -> web.StreamResponse:
        bus = await self._bus(request)
        try:
            await Stream.named(bus, self._stream(request)).delete()
        except (AsyncIPCError, HttpError) as exc:
            raise http_error(exc) from None
        return web.Response(status=204)

    async def _purge(self, request: web.Request) -> web.StreamResponse:
        bus = await self._bus(request)
        body = await self._json(request)
        try:
            if body is not None and not isinstance(body, dict):
                raise ConfigurationError("a purge request is a JSON object (or no body)")
            subject = (body or {}).get("subject")
            unknown = set(body or {}) - {"subject"}
            if unknown:
                raise ConfigurationError(f"unknown purge option(s): {', '.join(sorted(unknown))}")
            if subject is not None:
                validate_pattern(subject)
            purged = await Stream.named(bus, self._stream(request)).purge(subject)
        except (AsyncIPCError, HttpError) as exc:
            raise http_error(exc) from None
        return web.json_response({"purged": purged})

    async def _publish(self, request: web.Request) -> web.StreamResponse:
        bus = await self._bus(request)
        data = await self._server.read_body(request)
        msg_id = request.headers.get(MSG_ID_HEADER)
        try:
            if msg_id == "":
                raise HttpError(400, "bad_request", f"{MSG_ID_HEADER} must not be empty")
            stream = Stream.named(bus, self._stream(request))
            ack = await stream.publish(
                validate_subject(request.match_info["subject"]),
                data,
                headers=headers_from_http(request.headers.items()),
                msg_id=msg_id,
            )
        except (AsyncIPCError, HttpError) as exc:
            raise http_error(exc) from None
        return web.json_response({"stream": ack.stream, "seq": ack.seq, "duplicate": ack.duplicate})

    # --- consumers --------------------------------------------------------------------

    async def _create_consumer(self, request: web.Request) -> web.StreamResponse:
        bus = await self._bus(request)
        body = await self._json(request)
        try:
            stream = Stream.named(bus, self._stream(request))
            consumer = await stream.consumer_from({**body, "name": consumer_config(body).name})
            info = await consumer.info()
        except (AsyncIPCError, HttpError) as exc:
            raise http_error(exc) from None
        return web.json_response(info.to_json())

    async def _list_consumers(self, request: web.Request) -> web.StreamResponse:
        bus = await self._bus(request)
        try:
            infos = await Stream.named(bus, self._stream(request)).consumers()
        except (AsyncIPCError, HttpError) as exc:
            raise http_error(exc) from None
        return web.json_response({"consumers": [i.to_json() for i in infos]})

    def _consumer(self, request: web.Request, bus: Bus) -> Consumer:
        return Consumer.named(bus, self._stream(request), self._consumer_name(request))

    async def _consumer_info(self, request: web.Request) -> web.StreamResponse:
        bus = await self._bus(request)
        try:
            info = await self._consumer(request, bus).info()
        except (AsyncIPCError, HttpError) as exc:
            raise http_error(exc) from None
        return web.json_response(info.to_json())

    async def _delete_consumer(self, request: web.Request) -> web.StreamResponse:
        bus = await self._bus(request)
        try:
            await self._consumer(request, bus).delete()
        except (AsyncIPCError, HttpError) as exc:
            raise http_error(exc) from None
        return web.Response(status=204)

    async def _fetch(self, request: web.Request) -> web.StreamResponse:
        bus = await self._bus(request)
        batch = int(_query_number(request, "batch", 1, 1, MAX_FETCH_BATCH, integer=True))
        timeout = _query_number(
            request, "timeout", DEFAULT_FETCH_TIMEOUT, 0, MAX_FETCH_TIMEOUT, integer=False
        )
        try:
            consumer = self._consumer(request, bus)
        except (AsyncIPCError, HttpError) as exc:
            raise http_error(exc) from None
        try:
            got = await consumer.fetch(batch, timeout, max_bytes=MAX_FETCH_BYTES)
        except (AsyncIPCError, HttpError) as exc:
            raise http_error(exc) from None
        finally:
            # Its inbox goes; what it fetched and we did not answer with (the client
            # hung up) is delivered again after ack_wait.
            await consumer.close()
        return web.json_response([message_json(m) for m in got])

    async def _ack(self, request: web.Request) -> web.StreamResponse:
        bus = await self._bus(request)
        body = await self._json(request)
        try:
            if not isinstance(body, dict):
                raise HttpError(400, "bad_request", "an acknowledgement is a JSON object")
            unknown = set(body) - {"token", "kind", "delay"}
            if unknown:
                raise HttpError(
                    400, "bad_request", f"unknown field(s): {', '.join(sorted(unknown))}"
                )
            kind = body.get("kind", "ack")
            if kind not in ACK_KINDS:
                raise HttpError(
                    400, "bad_request", f"kind must be one of {', '.join(ACK_KINDS)}, not {kind!r}"
                )
            stream, name = self._stream(request), self._consumer_name(request)
            msg = ack_message(bus, body.get("token"), stream, name)
            await msg.settle(kind, delay=ack_delay(body.get("delay"), kind))
        except (AsyncIPCError, HttpError) as exc:
            raise http_error(exc) from None
        return web.Response(status=204)
