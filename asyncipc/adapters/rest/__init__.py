"""The REST adapter: ``http://host:port``, a broker listener (aiohttp) and a client transport.

``Broker.listen("http://127.0.0.1:8080")`` (or ``asyncipc broker --http HOST:PORT``)
serves the HTTP API of ``docs/rest.md``. Whoever comes in through it is an ordinary
participant of the bus, both ways:

* ``GET /v1/ws`` with the subprotocol ``asyncipc.v1`` is a
  :class:`~asyncipc.adapters.rest._ws.WebSocketLink` attached with ``Broker.attach``: the wire
  protocol itself, a client like one on a Unix socket. ``asyncipc.connect("http://...")``
  is its other end, so the ordinary :class:`~asyncipc.Bus` runs over HTTP.
* ``GET /v1/ws`` without it speaks JSON (``_ws_json.py``), and each
  ``GET /v1/subscribe/{subject}`` (Server-Sent Events) is served by an in-process
  :class:`~asyncipc.Bus` of its own, attached to the broker like any client: its
  subscription has the bounds and overflow policy the caller asked for, so a slow
  reader meets them exactly as a slow Unix-socket subscriber would.
* ``POST /v1/publish/{subject}`` and ``POST /v1/request/{subject}`` share one
  in-process Bus, and so do the ``/v1/streams`` routes (``_streams.py``), which call the
  streams client API on it. The generic routes refuse ``$sys.stream.`` subjects: the
  streams API is reached through ``/v1/streams`` only.

The adapter's links say ``transport="http"``: the broker counts them under that name, and
never mistakes them for in-process clients of its own (``$sys.`` subjects, signals).
``GET /v1/openapi.json`` describes every route (``_openapi.py``), ``GET /metrics`` is the
broker's counters in the Prometheus text format (``_metrics.py``), ``GET /healthz`` says
whether it is serving. ``GET /varz``, ``/connz``, ``/subsz``, ``/streamz``, ``/subjectz``
and the live page ``GET /dashboard`` show the broker as nats-server's monitoring does
(``_monitor.py``, docs/monitoring.md).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import logging
import ssl as _ssl
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import TYPE_CHECKING

from .. import missing_extra

try:
    # The package of the `http` extra: a plain `pip install asyncipc` has no aiohttp, and
    # an http:// URL must then say which extra to add, not fail deep in an import.
    import aiohttp
    from aiohttp import web
except ModuleNotFoundError as exc:
    raise missing_extra("http:// (or https://)", "REST adapter", "http", exc) from exc

from ... import _metrics
from ..._access import find_user, publish_refusal, subscribe_refusal
from ...client import DEFAULT_MAX_BYTES, DEFAULT_MAX_PENDING, Bus
from ...errors import (
    ConfigurationError,
    ConnectError,
    ConnectionClosed,
    FrameTooLarge,
    InvalidSubject,
    NoResponders,
    PermissionDenied,
    RequestTimeout,
    ServiceError,
)
from ...link import Accept, Link, Listener, PeerInfo
from ...options import ConnectOptions
from ...protocol.system import MONITOR_PREFIX, STREAM_PREFIX
from ...subjects import validate_pattern, validate_queue
from ...subscription import OVERFLOW_POLICIES, Subscription
from ...transports import URL, TransportOptions, register
from ...transports.memory import memory_pair
from ...users import User
from . import _openapi
from ._envelope import (
    HttpError,
    check_not_reserved,
    error_body,
    forbidden,
    headers_from_http,
    headers_to_http,
    message_json,
    refusal_of,
    refusal_of_subscription,
)
from ._monitor import MonitorRoutes
from ._params import (
    DEFAULT_REQUEST_TIMEOUT,
    MAX_REQUEST_TIMEOUT,
    peer_of,
    positive_int,
    raw_subject,
    reply_to_of,
    subject_of,
    timeout_of,
    unauthorized,
    wants_json,
    where,
)
from ._sse import HEARTBEAT, stream_events
from ._streams import StreamRoutes
from ._ws import SUBPROTOCOL, WebSocketLink, max_message
from ._ws_json import JSON_SUBPROTOCOL, JsonSession

if TYPE_CHECKING:
    from ...broker import Broker

__all__ = [
    "DEFAULT_REQUEST_TIMEOUT",
    "HEARTBEAT",
    "MAX_REQUEST_TIMEOUT",
    "SHUTDOWN_GRACE",
    "HttpTransport",
    "RestServer",
]

log = logging.getLogger("asyncipc.http")

SHUTDOWN_GRACE = 2.0
"""Seconds the HTTP handlers still running get, once the broker has closed every link, to
write their last bytes (an event stream's final error event, a 503); then they are
cancelled."""

_ERROR_NAMES = {
    400: "bad_request",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
}


class _ParticipantBus(Bus):
    """The adapter's side of one HTTP participant. Its link ends when the broker closes
    it, which is how every HTTP session ends at shutdown: not worth the warning a client
    of a vanished broker logs."""

    def link_lost(self, exc: BaseException | None) -> None:
        quiet = not self._closing
        self._closing = True
        try:
            super().link_lost(exc)
        finally:
            self._closing = not quiet


class RestServer(Listener):
    """The aiohttp server in front of one broker. See the module docstring."""

    def __init__(self, broker: Broker, scheme: str, ssl: _ssl.SSLContext | None) -> None:
        self.broker = broker
        self.url = ""
        self._scheme = scheme
        self._ssl = ssl
        self._closing = False
        self._unary: Bus | None = None
        self._user_buses: dict[str, Bus] = {}  # unary buses of restricted users, by name
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self._live: set[Subscription] = set()  # the adapter's SSE and JSON subscriptions
        self.dropped = 0
        """Messages the adapter's own subscription queues dropped (drop policies), for
        the subscriptions that have ended; ``/metrics`` adds the live ones."""
        self.responses: Counter[tuple[str, int]] = Counter()
        """HTTP responses by route and status."""
        self._monitoring = MonitorRoutes(broker.monitor, self._may_monitor)

    # --- lifecycle ------------------------------------------------------------------

    async def start(self, url: URL) -> None:
        """Bind ``url``'s host and port (``0``: any free one) and start serving."""
        broker = self.broker
        self._unary = await self.attach_bus(PeerInfo("http", None, extra={"route": "unary"}))
        app = web.Application(
            middlewares=[self._errors],
            # Bodies over the payload limit are refused with 413 while being read.
            client_max_size=self._unary.max_payload,
        )
        app.router.add_post("/v1/publish/{subject}", self._publish)
        app.router.add_post("/v1/request/{subject}", self._request)
        app.router.add_get("/v1/subscribe/{subject}", self._subscribe, allow_head=False)
        app.router.add_get("/v1/ws", self._websocket, allow_head=False)
        StreamRoutes(self).add_to(app.router)
        app.router.add_get("/v1/openapi.json", self._openapi, allow_head=False)
        app.router.add_get("/healthz", self._health, allow_head=False)
        app.router.add_get("/metrics", self._metrics, allow_head=False)
        self._monitoring.add_to(app.router)
        # handler_cancellation: a client that hangs up cancels its request's handler, so
        # a waiting request or a stalled event stream does not outlive its reader.
        # lingering_time: after refusing a body (413) aiohttp reads and discards what
        # the client still sends, so that it reads our answer before the connection
        # closes; briefly, since a client announcing gigabytes may never stop.
        self._runner = web.AppRunner(
            app,
            handler_cancellation=True,
            access_log=None,
            lingering_time=2.0,
            shutdown_timeout=SHUTDOWN_GRACE,
        )
        await self._runner.setup()
        host = url.host or "127.0.0.1"
        self._site = web.TCPSite(
            self._runner, host, url.port or 0, ssl_context=self._ssl, reuse_address=True
        )
        try:
            await self._site.start()
        except OSError:
            await self._runner.cleanup()
            await self._unary.close()
            raise
        port = self._runner.addresses[-1][1]
        shown = f"[{host}]" if ":" in host else host
        self.url = f"{self._scheme}://{shown}:{port}"
        self._unary.url = self.url
        log.debug("%s: serving, max body %d bytes", self.url, broker.options.max_frame)

    async def aclose(self) -> None:
        """Stop accepting connections; idle keep-alive connections close now, busy ones
        after their current request. Streams and WebSockets are clients of the broker:
        they end when it closes their links, as any client's (Listener's contract)."""
        if self._closing:
            return
        self._closing = True
        self._monitoring.close()  # its event streams are no broker clients: end them here
        if self._site is not None:
            await self._site.stop()
        if self._runner is not None and self._runner.server is not None:
            # Not runner.cleanup() yet: it would wait for those streams, which end only
            # once the broker, after this returns, closes their links (wait_closed).
            self._runner.server.pre_shutdown()

    async def wait_closed(self) -> None:
        """The broker has closed the links: let their handlers finish (for at most
        ``SHUTDOWN_GRACE`` seconds, then they are cancelled) and release the server."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def attach_bus(self, peer: PeerInfo) -> Bus:
        """A new in-process Bus attached to the broker as a client whose link says
        ``transport="http"`` and ``peer``: the adapter's side of one participant."""
        broker = self.broker
        opts = broker.options
        topts = TransportOptions(high_water=opts.high_water, max_frame=opts.max_frame)
        ours, theirs = memory_pair("http", topts)
        # Not "memory": the broker must count these as HTTP clients and must not take
        # them for in-process ones of its own, which may signal local processes.
        ours.transport = theirs.transport = "http"
        theirs.peer = peer
        broker.attach(theirs)
        return await _ParticipantBus.open(
            ours,
            ConnectOptions(
                name=f"http {peer.extra.get('route', '')} {where(peer)}".strip(),
                token=opts.token,
                max_frame=opts.max_frame,
                high_water=opts.high_water,
                drain_timeout=opts.drain_timeout,
            ),
            self.url,
        )

    def track(self, sub: Subscription) -> None:
        """Count ``sub``'s drops in ``/metrics`` while it lives."""
        self._live.add(sub)

    @property
    def queued(self) -> int:
        """Payload bytes the adapter's own subscription queues hold for HTTP readers that
        have not taken them yet (``/metrics`` adds them to ``transport="http"``)."""
        return sum(s.pending_bytes for s in self._live)

    def untrack(self, sub: Subscription) -> None:
        """``sub`` ended: keep its drops, forget it."""
        if sub in self._live:
            self._live.discard(sub)
            self.dropped += sub.dropped

    # --- helpers ----------------------------------------------------------------------

    async def authorize(self, request: web.Request, *, required: bool = True) -> User | None:
        """Who the caller is; HttpError 401 unless the request carries the broker's token
        (when it has one) or, on a broker with users, a user's name and password:
        ``Authorization: Bearer <token>``, or ``?access_token=`` (RFC 6750 §2.3) for
        clients that cannot set headers (browsers' EventSource and WebSocket), or
        ``Authorization: Basic <base64 user:password>`` (docs/security.md). ``None``: the
        token, or no credentials needed: the caller may do everything."""
        opts = self.broker.options
        expected, users = opts.token, opts.users
        if expected is None and not users:
            return None
        token = request.query.get("access_token")
        header = request.headers.get("Authorization")
        accepted = "'Bearer <token>'" + (" or 'Basic <user:password>'" if users else "")
        if header is not None:
            scheme, _, value = header.partition(" ")
            if users and scheme.lower() == "basic":
                return await self._basic(value.strip())
            token = value.strip() if scheme.lower() == "bearer" else None
            if token is None:
                raise unauthorized(f"the Authorization header must be {accepted}")
        elif token is None:
            if not required:
                return None
            what = "credentials" if users else "token"
            raise unauthorized(f"{what} required: send 'Authorization: {accepted[1:-1]}'")
        if expected is None or not hmac.compare_digest(token.encode(), expected.encode()):
            raise unauthorized("invalid token")
        return None

    async def _may_monitor(self, request: web.Request, what: str) -> None:
        """The monitoring endpoints: whoever may ask ``$sys.monitor.<what>`` on the bus
        (the token, or a user allowed to publish there; docs/monitoring.md)."""
        user = await self.authorize(request)
        why = publish_refusal(user, MONITOR_PREFIX + what)
        if why is not None:
            raise forbidden("permission", why)

    async def _basic(self, value: str) -> User:
        try:
            name, sep, password = base64.b64decode(value, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            name, sep, password = "", "", ""
        if not sep:
            raise unauthorized("the Basic credentials must be base64 of 'user:password'")
        user = await find_user(self.broker.options.users, name, password)
        if user is None:
            raise unauthorized("unknown user or wrong password")
        return user

    async def bus_for(self, user: User | None) -> Bus:
        """The in-process Bus that acts for ``user`` on the unary routes: the shared one
        for a caller who may do everything, else one per user that the broker knows as
        that user, so that it enforces the user's permissions (the same check as on every
        transport; a reload re-applies them)."""
        if user is None or user.permissions.unrestricted:
            return self._bus()
        bus = self._user_buses.get(user.name)
        if bus is None or bus.is_closed:
            self._bus()  # 503 while closing
            peer = PeerInfo("http", None, extra={"route": "unary", "user": user})
            bus = self._user_buses[user.name] = await self.attach_bus(peer)
        return bus

    def _bus(self) -> Bus:
        bus = self._unary
        if bus is None or bus.is_closed or self._closing:
            raise HttpError(503, "unavailable", "the broker is shutting down")
        return bus

    def unary_bus(self) -> Bus:
        """The in-process Bus the unary routes share (HttpError 503 while closing)."""
        return self._bus()

    async def read_body(self, request: web.Request) -> bytes:
        """The request's body, refused with 413 over the broker's payload limit."""
        return await self._body(request)

    async def _body(self, request: web.Request) -> bytes:
        limit = self._unary_max()  # what the app was given as client_max_size
        if request.content_length is not None and request.content_length > limit:
            # Refused before reading a byte of it; the connection closes after the answer.
            raise HttpError(
                413,
                "payload_too_large",
                f"body of {request.content_length} bytes exceeds the maximum of {limit} bytes",
            )
        return await request.read()

    # --- middleware -----------------------------------------------------------------

    @web.middleware
    async def _errors(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        """Every error is JSON ``{"error", "message"}`` with its status (docs/rest.md)."""
        route = request.match_info.route.resource
        name = route.canonical if route is not None else "unmatched"
        try:
            response = await handler(request)
        except HttpError as exc:
            response = web.json_response(exc.body(), status=exc.status, headers=exc.headers)
            if exc.status == 413:
                response.force_close()
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            error = _ERROR_NAMES.get(exc.status, "http_error")
            text = exc.text or exc.reason
            if exc.status == 404:
                text = f"no route for {request.method} {request.path}"
            response = web.json_response(error_body(error, (text or "").strip()), status=exc.status)
            for key in ("Allow", "WWW-Authenticate"):
                if key in exc.headers:
                    response.headers[key] = exc.headers[key]
            if exc.status == 413:
                response.force_close()
        self.responses[name, response.status] += 1
        return response

    # --- routes ---------------------------------------------------------------------

    async def _publish(self, request: web.Request) -> web.StreamResponse:
        user = await self.authorize(request)
        subject, reply_to = _generic(subject_of(request)), reply_to_of(request)
        check_not_reserved(subject, reply_to)  # 403, not a 202 for what the broker drops
        why = publish_refusal(user, subject, reply_to)
        if why is not None:
            raise forbidden("permission", why)
        headers = headers_from_http(request.headers.items())
        data = await self._body(request)
        try:
            await (await self.bus_for(user)).publish(subject, data, headers, reply_to)
        except FrameTooLarge as exc:
            raise HttpError(413, "payload_too_large", str(exc)) from None
        except ConnectionClosed:
            raise HttpError(503, "unavailable", "the broker is shutting down") from None
        return web.Response(status=202)

    async def _request(self, request: web.Request) -> web.StreamResponse:
        user = await self.authorize(request)
        subject = _generic(subject_of(request))
        why = publish_refusal(user, subject)
        if why is not None:
            raise forbidden("permission", why)
        timeout = timeout_of(request.query.get("timeout"))
        headers = headers_from_http(request.headers.items())
        data = await self._body(request)
        bus = await self.bus_for(user)
        try:
            reply = await bus.request(subject, data, headers=headers, timeout=timeout)
        except PermissionDenied as exc:
            raise forbidden("permission", str(exc)) from None
        except NoResponders as exc:
            raise HttpError(503, "no_responders", str(exc)) from None
        except RequestTimeout as exc:
            raise HttpError(504, "timeout", str(exc)) from None
        except ServiceError as exc:
            raise HttpError(502, "service_error", str(exc)) from None
        except FrameTooLarge as exc:
            raise HttpError(413, "payload_too_large", str(exc)) from None
        except ConnectionClosed:
            raise HttpError(503, "unavailable", "the broker is shutting down") from None
        refused = refusal_of(reply)
        if refused is not None:
            raise refused
        if wants_json(request):
            return web.json_response(message_json(reply))
        return web.Response(
            body=reply.data,
            content_type="application/octet-stream",
            headers=headers_to_http(reply.headers),
        )

    async def _subscribe(self, request: web.Request) -> web.StreamResponse:
        user = await self.authorize(request)
        q = request.query
        subject = raw_subject(request)
        try:
            validate_pattern(subject)
            if "queue" in q:
                validate_queue(q["queue"])
        except InvalidSubject as exc:
            raise HttpError(400, "invalid_subject", str(exc)) from None
        check_not_reserved(subject)
        overflow = q.get("overflow", "block")
        if overflow not in OVERFLOW_POLICIES:
            raise HttpError(
                400, "bad_request", f"overflow must be one of {sorted(OVERFLOW_POLICIES)}"
            )
        max_pending, max_bytes = self.broker.options.subscription_bounds(
            positive_int(q, "max_pending", DEFAULT_MAX_PENDING),
            positive_int(q, "max_bytes", DEFAULT_MAX_BYTES),
        )
        count = positive_int(q, "count", 0)
        why = subscribe_refusal(user, subject)
        if why is not None:
            raise forbidden("permission", why)
        if self._closing:
            raise HttpError(503, "unavailable", "the broker is shutting down")
        bus = await self.attach_bus(_as(peer_of(request, "sse"), user))
        try:
            sub = bus.subscribe(
                subject, q.get("queue"), max_pending=max_pending, max_bytes=max_bytes,
                overflow=overflow,
            )  # fmt: skip
            self.track(sub)
            try:
                await bus.flush()  # in effect at the broker before "subscribed" is said
                refused = await refusal_of_subscription(sub)
                if refused is not None:
                    raise refused
                response = web.StreamResponse(
                    headers={
                        "Content-Type": "text/event-stream",
                        "Cache-Control": "no-cache",
                        "X-Accel-Buffering": "no",  # nginx: do not hold events back
                    }
                )
                response.force_close()  # a stream ends its connection (no keep-alive)
                await response.prepare(request)
                await stream_events(response, sub, count)
                return response
            finally:
                self.untrack(sub)
        finally:
            await bus.close()

    async def _websocket(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(
            protocols=(SUBPROTOCOL, JSON_SUBPROTOCOL),
            compress=False,
            # Binary: a frame or a batch. JSON: a payload in base64 (4/3) and its envelope.
            max_msg_size=max_message(self.broker.options.max_frame) * 4 // 3 + 65536,
        )
        ready = ws.can_prepare(request)
        if not ready.ok:
            raise HttpError(400, "bad_request", "expected a WebSocket upgrade request")
        binary = ready.protocol == SUBPROTOCOL
        # The wire protocol authenticates in its HELLO, as on every transport: a header
        # is then optional (checked if sent). JSON has no HELLO: the header is the check.
        user = await self.authorize(request, required=not binary)
        if self._closing:
            raise HttpError(503, "unavailable", "the broker is shutting down")
        await ws.prepare(request)
        opts = self.broker.options
        if binary:
            transport = request.transport

            def abort() -> None:
                if transport is not None:
                    transport.abort()

            link = WebSocketLink(
                ws,
                TransportOptions(high_water=opts.high_water, max_frame=opts.max_frame),
                server_side=True,
                peer=peer_of(request, "ws"),
                abort_transport=abort,
            )
            self.broker.attach(link)
            await link.run()
        else:
            await JsonSession(self, ws, _as(peer_of(request, "ws-json"), user)).run()
        return ws

    async def _openapi(self, request: web.Request) -> web.StreamResponse:
        # Users authenticate too (Basic): the document then lists the 401 answers as well.
        token = self.broker.options.token is not None or bool(self.broker.options.users)
        store = self.broker.options.store is not None
        return web.json_response(_openapi.document(self._unary_max(), token=token, store=store))

    async def _health(self, request: web.Request) -> web.StreamResponse:
        if self._closing or self._unary is None or self._unary.is_closed:
            return web.json_response({"status": "closing"}, status=503)
        return web.json_response(
            {"status": "ok", "server_id": self.broker.server_id, "clients": self.broker.sessions}
        )

    async def _metrics(self, request: web.Request) -> web.StreamResponse:
        await self.authorize(request)
        adapter_drops = self.dropped + sum(s.dropped for s in self._live)
        text = _metrics.render(self.broker, adapter_drops, self.queued, self.responses)
        return web.Response(body=text.encode(), headers={"Content-Type": _metrics.CONTENT_TYPE})

    def _unary_max(self) -> int:
        return self._unary.max_payload if self._unary is not None else 0


# --- the transport -----------------------------------------------------------------------


class HttpTransport:
    """The ``http`` and ``https`` schemes: a broker serves the REST API with
    ``Broker.listen``; ``asyncipc.connect`` opens a Link over ``GET /v1/ws``."""

    async def serve_broker(self, url: URL, broker: Broker, options: TransportOptions) -> Listener:
        """Serve ``broker``'s HTTP API at ``url`` (``Broker.listen`` calls this)."""
        ssl = options.ssl
        if url.scheme == "https" and ssl is None:
            from ...transports.tcp import server_ssl_context

            ssl = server_ssl_context(url)
        if url.path not in ("", "/"):
            raise ConfigurationError(f"{url.raw!r}: an http listener has no path")
        server = RestServer(broker, url.scheme, ssl)
        await server.start(url)
        return server

    async def listen(self, url: URL, accept: Accept, options: TransportOptions) -> Listener:
        """Not for bare links: the HTTP API needs the broker (``Broker.listen``)."""
        raise ConfigurationError(f"{url.raw!r} is served by a Broker: use Broker.listen")

    async def connect(self, url: URL, options: TransportOptions) -> Link:
        """A :class:`~asyncipc.adapters.rest._ws.WebSocketLink` to ``url``'s ``/v1/ws``."""
        ssl: _ssl.SSLContext | bool = False
        if url.scheme == "https":
            from ...transports.tcp import client_ssl_context

            ssl = options.ssl or client_ssl_context(url)
        host = f"[{url.host}]" if ":" in url.host else url.host
        port = f":{url.port}" if url.port is not None else ""
        ws_url = f"{'wss' if url.scheme == 'https' else 'ws'}://{host}{port}"
        ws_url += url.path.rstrip("/") + "/v1/ws"
        headers = {}
        if "token" in url.query:  # else the token travels in HELLO only
            headers["Authorization"] = f"Bearer {url.query['token']}"
        session = aiohttp.ClientSession()
        try:
            ws = await session.ws_connect(
                ws_url,
                protocols=(SUBPROTOCOL,),
                headers=headers,
                ssl=ssl,
                max_msg_size=max_message(options.max_frame),
                timeout=aiohttp.ClientWSTimeout(ws_close=options.connect_timeout),
                autoping=True,
            )
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            await session.close()
            raise ConnectError(f"cannot connect to {url.raw}: {_client_error(exc)}") from None
        if ws.protocol != SUBPROTOCOL:
            await ws.close()
            await session.close()
            raise ConnectError(f"{url.raw} did not accept the {SUBPROTOCOL} subprotocol")

        link = WebSocketLink(
            ws,
            options,
            server_side=False,
            peer=PeerInfo("http", (url.host, url.port), extra={"url": ws_url}),
            abort_transport=None,  # abort() cancels the reader, which closes the session
        )
        link.run_in_task(session.close)
        return link


def _generic(subject: str) -> str:
    """``subject``, unless it is the streams API's: ``/v1/streams`` is the way to it.

    The generic routes share one in-process bus; ``$sys.stream.`` requests made through
    it would create consumers that bus owns (never removed: it never disconnects) and
    pull batches past the bounds of ``/v1/streams/.../fetch``.
    """
    if subject.startswith(STREAM_PREFIX):
        raise forbidden(
            "reserved", f"{subject!r} is the broker's streams API: use the /v1/streams routes"
        )
    return subject


def _client_error(exc: BaseException) -> str:
    if isinstance(exc, aiohttp.WSServerHandshakeError):
        return f"HTTP {exc.status} {exc.message}"
    return str(exc) or type(exc).__name__


register("http", HttpTransport())
register("https", HttpTransport())


def _as(peer: PeerInfo, user: User | None) -> PeerInfo:
    """``peer`` carrying the user the adapter authenticated: the broker then knows the
    in-process bus attached for this caller as that user (``users.identify``)."""
    return peer if user is None else replace(peer, extra={**peer.extra, "user": user})
