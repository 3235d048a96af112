"""``GET /v1/ws`` in JSON: the operations of gRPC's ``Connect`` for any WebSocket client.

One JSON object per text message, ``"op"`` naming what it is (the table is in
docs/rest.md): ``publish``, ``subscribe``, ``unsubscribe``, ``request`` and ``ping`` from
the client; ``welcome``, ``subscribed``, ``unsubscribed``, ``message``, ``reply``,
``pong`` and ``error`` from the server. The client picks the ``id`` of a subscription or
a request; the server's answers and messages carry it back. Answering a request is
publishing to the ``reply_to`` of the message that carried it.

Behind it is an in-process :class:`~asyncipc.Bus` attached to the broker, so each
subscription has its bounds and overflow policy like any other subscriber's, and the
socket is read one operation at a time: a publish that has to wait (backpressure) holds
back the reading of the next one.

What a session starts (a task per subscription forwarding its messages, a task per
request waiting for its reply) runs in a task group of :meth:`JsonSession.run`: nothing
outlives the session, and an error none of them expected ends it instead of being lost.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import TYPE_CHECKING, Any, Protocol

import aiohttp
from aiohttp import web

from ..._access import publish_refusal, subscribe_refusal
from ...client import DEFAULT_MAX_BYTES, DEFAULT_MAX_PENDING, Bus
from ...errors import (
    ConnectionClosed,
    FrameTooLarge,
    InvalidSubject,
    NoResponders,
    PermissionDenied,
    RequestTimeout,
    ServiceError,
    SlowConsumer,
)
from ...link import PeerInfo
from ...protocol import PROTOCOL_VERSION
from ...subscription import OVERFLOW_POLICIES, Subscription
from ...users import User
from ._envelope import (
    HttpError,
    check_not_reserved,
    data_field,
    forbidden,
    headers_field,
    message_json,
    refusal_of,
    refusal_of_subscription,
)

if TYPE_CHECKING:
    from ...broker import Broker

__all__ = ["JSON_SUBPROTOCOL", "JsonSession", "SessionServer"]

log = logging.getLogger("asyncipc.http")

JSON_SUBPROTOCOL = "asyncipc.v1.json"
"""``Sec-WebSocket-Protocol`` for JSON text messages (also what no subprotocol means)."""

_UNSUPPORTED_DATA = 1003  # RFC 6455 close code: a binary message on the JSON protocol


class SessionServer(Protocol):
    """What a :class:`JsonSession` needs of the REST server that accepted it (the
    ``RestServer`` of this package): a Protocol, so that this module does not import the
    one that imports it."""

    broker: Broker

    async def attach_bus(self, peer: PeerInfo) -> Bus:
        """A new in-process Bus attached to the broker for this client."""
        ...

    def track(self, sub: Subscription) -> None:
        """Count ``sub``'s drops in ``/metrics`` while it lives."""
        ...

    def untrack(self, sub: Subscription) -> None:
        """``sub`` ended: keep its drops, forget it."""
        ...


class JsonSession:
    """One JSON WebSocket client. :meth:`run` serves it until the socket closes."""

    def __init__(self, server: SessionServer, ws: web.WebSocketResponse, peer: PeerInfo) -> None:
        self._server = server
        self._ws = ws
        self._peer = peer
        self._subs: dict[int, tuple[Subscription, asyncio.Task[None]]] = {}
        self._tasks: set[asyncio.Task[None]] = set()  # requests in flight
        self._bus: Bus | None = None
        self._group: asyncio.TaskGroup | None = None  # run()'s: it owns those tasks
        user = peer.extra.get("user") if peer.extra else None
        self._user: User | None = user if isinstance(user, User) else None
        """Whom the adapter authenticated; its bus is that user's at the broker too."""

    @staticmethod
    def _check(why: str | None) -> None:
        """Refused by the user's permissions: an error op ``permission_denied`` (403)."""
        if why is not None:
            raise forbidden("permission", why)

    async def run(self) -> None:
        """Serve until the client closes (or breaks) the WebSocket."""
        bus = self._bus = await self._server.attach_bus(self._peer)
        try:
            async with asyncio.TaskGroup() as group:
                self._group = group
                try:
                    await self._serve(bus)
                finally:
                    # The client is gone (or we are cancelled): what it started stops,
                    # and the group waits until it has.
                    for _, task in self._subs.values():
                        task.cancel()
                    for task in self._tasks:
                        task.cancel()
        finally:
            for sub, _ in self._subs.values():
                self._server.untrack(sub)
            self._subs.clear()
            await bus.close()

    async def _serve(self, bus: Bus) -> None:
        try:
            await self._send(
                {
                    "op": "welcome",
                    "version": PROTOCOL_VERSION,
                    "server_id": self._server.broker.server_id,
                    "max_payload": bus.max_payload,
                }
            )
            async for msg in self._ws:
                if msg.type is aiohttp.WSMsgType.TEXT:
                    await self._received(msg.data)
                elif msg.type is aiohttp.WSMsgType.BINARY:
                    await self._error(None, "bad_request", "binary messages need the "
                                      "asyncipc.v1 subprotocol; this one is JSON text")  # fmt: skip
                    await self._ws.close(code=_UNSUPPORTED_DATA)
                    break
        except (ConnectionResetError, ConnectionClosed):
            pass  # the client went away, or the broker closed us: nothing to tell

    async def _received(self, text: str) -> None:
        ident: Any = None
        try:
            try:
                obj = json.loads(text)
            except ValueError:
                raise HttpError(400, "bad_request", "not a JSON text") from None
            if not isinstance(obj, dict):
                raise HttpError(400, "bad_request", "expected a JSON object")
            ident = obj.get("id")
            op = obj.get("op")
            handler = _OPS.get(op) if isinstance(op, str) else None
            if handler is None:
                raise HttpError(400, "bad_request", f"unknown op {op!r}; see docs/rest.md")
            await handler(self, obj)
        except HttpError as exc:
            await self._error(ident, exc.error, exc.message, exc.reason)

    # --- the operations -----------------------------------------------------------------

    async def _publish(self, obj: dict[str, Any]) -> None:
        assert self._bus is not None
        subject, reply_to = _str(obj, "subject"), _str(obj, "reply_to", required=False)
        data, headers = data_field(obj), headers_field(obj)
        check_not_reserved(subject, reply_to)
        self._check(publish_refusal(self._user, subject, reply_to))
        try:
            await self._bus.publish(subject, data, headers, reply_to)
        except InvalidSubject as exc:
            raise HttpError(400, "invalid_subject", str(exc)) from None
        except FrameTooLarge as exc:
            raise HttpError(413, "payload_too_large", str(exc)) from None

    async def _subscribe(self, obj: dict[str, Any]) -> None:
        bus = self._bus
        assert bus is not None
        ident = _id(obj)
        if ident in self._subs:
            raise HttpError(409, "id_in_use", f"subscription id {ident} is in use")
        overflow = obj.get("overflow", "block")
        if overflow not in OVERFLOW_POLICIES:
            raise HttpError(
                400, "bad_request", f"overflow must be one of {sorted(OVERFLOW_POLICIES)}"
            )
        subject = _str(obj, "subject")
        check_not_reserved(subject)
        self._check(subscribe_refusal(self._user, subject))
        max_pending, max_bytes = self._server.broker.options.subscription_bounds(
            _count(obj, "max_pending", DEFAULT_MAX_PENDING),
            _count(obj, "max_bytes", DEFAULT_MAX_BYTES),
        )
        try:
            sub = bus.subscribe(
                subject,
                _str(obj, "queue", required=False),
                max_pending=max_pending,
                max_bytes=max_bytes,
                overflow=overflow,
            )
        except InvalidSubject as exc:
            raise HttpError(400, "invalid_subject", str(exc)) from None
        self._server.track(sub)
        await bus.flush()  # in effect before the client hears so
        refused = await refusal_of_subscription(sub)
        if refused is not None:
            self._server.untrack(sub)
            raise refused
        await self._send(
            {"op": "subscribed", "id": ident, "max_pending": max_pending, "max_bytes": max_bytes}
        )
        assert self._group is not None
        task = self._group.create_task(self._pump(ident, sub))
        self._subs[ident] = (sub, task)

    async def _pump(self, ident: int, sub: Subscription) -> None:
        """Forward ``sub``'s messages; a slow reader makes ``send`` wait, the queue fill,
        and the subscription's overflow policy act."""
        try:
            try:
                async for msg in sub:
                    await self._send({"op": "message", "id": ident, **message_json(msg)})
            except SlowConsumer as exc:
                await self._error(ident, "slow_consumer", str(exc))
            except ConnectionClosed as exc:
                await self._error(ident, "unavailable", str(exc))
        except ConnectionError:
            pass  # the client went away: the session ends, nobody to tell
        finally:
            if self._subs.get(ident, (None,))[0] is sub:
                del self._subs[ident]
                self._server.untrack(sub)

    async def _unsubscribe(self, obj: dict[str, Any]) -> None:
        ident = _id(obj)
        entry = self._subs.pop(ident, None)
        if entry is None:
            raise HttpError(404, "not_found", f"no subscription with id {ident}")
        sub, task = entry
        await sub.unsubscribe()
        task.cancel()
        await asyncio.wait({task})
        self._server.untrack(sub)
        await self._send({"op": "unsubscribed", "id": ident})

    async def _request(self, obj: dict[str, Any]) -> None:
        ident = _id(obj)
        subject, data, headers = _str(obj, "subject"), data_field(obj), headers_field(obj)
        timeout = obj.get("timeout", 1.0)
        if not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or timeout <= 0:
            raise HttpError(400, "bad_request", "timeout must be a positive number of seconds")
        self._check(publish_refusal(self._user, subject))
        assert self._group is not None
        task = self._group.create_task(self._ask(ident, subject, data, headers, float(timeout)))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _ask(
        self, ident: int, subject: str, data: bytes, headers: dict[str, str] | None, timeout: float
    ) -> None:
        assert self._bus is not None
        try:
            try:
                reply = await self._bus.request(subject, data, headers=headers, timeout=timeout)
            except PermissionDenied as exc:
                await self._error(ident, "permission_denied", str(exc))
            except NoResponders as exc:
                await self._error(ident, "no_responders", str(exc))
            except RequestTimeout as exc:
                await self._error(ident, "timeout", str(exc))
            except ServiceError as exc:
                await self._error(ident, "service_error", str(exc))
            except InvalidSubject as exc:
                await self._error(ident, "invalid_subject", str(exc))
            except FrameTooLarge as exc:
                await self._error(ident, "payload_too_large", str(exc))
            except ConnectionClosed as exc:
                await self._error(ident, "unavailable", str(exc))
            else:
                refused = refusal_of(reply)
                if refused is not None:
                    await self._error(ident, refused.error, refused.message, refused.reason)
                else:
                    await self._send({"op": "reply", "id": ident, **message_json(reply)})
        except ConnectionError:
            pass  # the client went away before its answer: the session ends

    async def _ping(self, obj: dict[str, Any]) -> None:
        assert self._bus is not None
        await self._bus.flush()  # every operation before it has been processed
        await self._send({"op": "pong", "id": obj.get("id")})

    # --- sending --------------------------------------------------------------------

    async def _send(self, obj: dict[str, Any]) -> None:
        await self._ws.send_str(json.dumps(obj, separators=(",", ":")))

    async def _error(self, ident: Any, error: str, message: str, reason: str | None = None) -> None:
        obj = {"op": "error", "id": ident, "error": error, "message": message}
        if reason is not None:  # a refusal (403 on the HTTP routes): why, for machines
            obj["reason"] = reason
        await self._send(obj)


_OPS = {
    "publish": JsonSession._publish,
    "subscribe": JsonSession._subscribe,
    "unsubscribe": JsonSession._unsubscribe,
    "request": JsonSession._request,
    "ping": JsonSession._ping,
}


def _str(obj: dict[str, Any], key: str, *, required: bool = True) -> Any:
    value = obj.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str):
        raise HttpError(400, "bad_request", f"{key!r} must be a string")
    return value


def _id(obj: dict[str, Any]) -> int:
    value = obj.get("id")
    if not isinstance(value, int) or isinstance(value, bool):
        raise HttpError(400, "bad_request", "'id' must be an integer")
    return value


def _count(obj: dict[str, Any], key: str, default: int) -> int:
    value = obj.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise HttpError(400, "bad_request", f"{key!r} must be a positive integer")
    return value
