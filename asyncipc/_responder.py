"""What a request handler's outcome means to its requester: a reply, or a ServiceError.

:meth:`Bus.serve <asyncipc.Bus.serve>` wraps a handler with :func:`responder`; the
requester's side reads the answer with :func:`reply_error`. Both ends of the contract sit
in this one module, so the status a service sends and the exception a requester raises
cannot drift apart (the names are ``protocol/system.py``'s; ``docs/guide.md``, "When a
handler fails", is the user's view).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

from .errors import (
    AsyncIPCError,
    FrameTooLarge,
    InvalidBody,
    NoResponders,
    PermissionDenied,
    ServiceError,
)
from .message import Message
from .protocol import Headers
from .protocol.system import (
    ERROR_HEADER,
    NO_RESPONDERS_STATUS,
    PERMISSION_REASON,
    REASON_HEADER,
    REFUSED_STATUS,
    SERVICE_ERROR_STATUS,
    STATUS_HEADER,
)

__all__ = ["Callback", "EndpointStats", "Handler", "reply_error", "responder"]

log = logging.getLogger("asyncipc.client")

Handler = Callable[[Message], Awaitable[bytes | None]]
"""``async def f(msg) -> bytes | None``: a service's answer to one request."""
Callback = Callable[[Message], Awaitable[None]]
"""``async def f(msg) -> None``: what a subscription's ``callback=`` runs per message."""

_BYTES_LIKE = (bytes, bytearray, memoryview)


class EndpointStats:
    """What a :class:`~asyncipc.Service` endpoint counts (``$SRV.STATS``, docs/services.md).

    ``processing_time`` is in nanoseconds, summed over every request, as NATS micro
    reports it."""

    __slots__ = ("last_error", "num_errors", "num_requests", "processing_time")

    def __init__(self) -> None:
        self.num_requests = 0
        self.num_errors = 0
        self.processing_time = 0
        self.last_error = ""

    def record(self, started_ns: int, error: str | None) -> None:
        self.num_requests += 1
        self.processing_time += time.perf_counter_ns() - started_ns
        if error is not None:
            self.num_errors += 1
            self.last_error = error

    def reset(self) -> None:
        self.__init__()  # type: ignore[misc]


def responder(
    subject: str,
    fn: Callable[..., Awaitable[Any]],
    *,
    expose_errors: bool = False,
    stats: EndpointStats | None = None,
) -> Callback:
    """The subscription callback that runs ``fn`` for each request on ``subject`` and
    answers it: with ``fn``'s bytes, or with a failure status the requester raises as
    :class:`~asyncipc.ServiceError` at once (see :meth:`asyncipc.Bus.handler`).

    A ``fn`` whose first parameter is annotated with a model (``async def f(q: Quote) ->
    Price``) gets the decoded body and its result is encoded (docs/services.md); one
    annotated :class:`~asyncipc.Message`, or not annotated, is today's bytes handler,
    served by exactly the code it always was unless ``stats`` are kept or its return
    annotation is a model (``-> Price``, ``-> dict[str, float]``): then what it returns is
    encoded as a typed handler's is."""
    from .client import Bus as client_bus  # here: the client imports this module
    from .typed import signature_of

    sig = signature_of(fn)
    if sig.request is not None or sig.response is not None or stats is not None:
        encodes = sig.request is not None or sig.response is not None
        return _measured(subject, fn, sig.request, sig.with_message, encodes, expose_errors, stats)

    async def serve(msg: Message) -> None:
        try:
            result: object = await fn(msg)
        except ServiceError as exc:
            # Raised on purpose: its text was written for the requester.
            log.info("handler for %r answered with an error: %s", subject, exc)
            await _fail(msg, str(exc))
            return
        except Exception as exc:
            error_id = os.urandom(4).hex()
            # The traceback stays here; the id lets whoever saw the error find it.
            log.exception("handler for %r raised (error %s)", subject, error_id)
            text = (
                f"{type(exc).__name__}: {exc}"
                if expose_errors
                else f"internal error (the service logged it as error {error_id})"
            )
            await _fail(msg, text)
            return
        if result is None:
            result = b""
        elif not isinstance(result, _BYTES_LIKE):
            # Sending it would raise TypeError in publish(), far from the handler,
            # and leave the requester waiting out its whole time-out.
            kind = type(result).__name__
            log.error(
                "handler for %r returned %s, not bytes (encode it, for example with "
                ".encode() or json.dumps(...).encode()); the requester gets a ServiceError",
                subject,
                kind,
            )
            await _fail(msg, f"the handler returned {kind}, not bytes")
            return
        reply, bus = msg.reply_to, msg._bus
        if reply is None:
            return
        body = bytes(result) if type(result) is not bytes else result
        try:
            if bus is not None:  # always, from a subscription: one coroutine less
                if type(bus) is client_bus:
                    bus._unchecked = reply  # its broker checked it: not validated again
                await bus.publish(reply, body)
            else:
                await msg.respond(body)  # which says what is wrong
        except FrameTooLarge as exc:
            log.error("handler for %r: its reply cannot be sent: %s", subject, exc)
            await _fail(msg, f"the reply is too large to send: {exc}")

    return serve


def _measured(
    subject: str,
    fn: Callable[..., Awaitable[Any]],
    model: Any,
    with_message: bool,
    encodes: bool,
    expose_errors: bool,
    stats: EndpointStats | None,
) -> Callback:
    """The responder of a typed handler (a request ``model`` to decode, or replies to
    encode), or of any handler whose stats are kept."""
    from .typed import CONTENT_TYPE_HEADER, JSON, MSGPACK, codec_for, content_type_of, encode

    codec = codec_for(model) if model is not None else None

    async def answer(msg: Message) -> str | None:
        """Run ``fn`` on ``msg`` and reply; the error sent to the requester, or None."""
        ctype = content_type_of(msg.headers)
        try:
            if codec is not None:
                try:
                    arg = codec.decode(msg.data, ctype)
                except InvalidBody as exc:
                    text = f"invalid request body ({codec.name}): {exc}"
                    log.info("handler for %r: %s", subject, text)
                    await _fail(msg, text)
                    return text
                result: object = await (fn(arg, msg) if with_message else fn(arg))
            else:
                result = await fn(msg)
        except ServiceError as exc:
            log.info("handler for %r answered with an error: %s", subject, exc)
            await _fail(msg, str(exc))
            return str(exc)
        except Exception as exc:
            error_id = os.urandom(4).hex()
            log.exception("handler for %r raised (error %s)", subject, error_id)
            text = (
                f"{type(exc).__name__}: {exc}"
                if expose_errors
                else f"internal error (the service logged it as error {error_id})"
            )
            await _fail(msg, text)
            return text
        headers: dict[str, str] | None = None
        if result is None:
            body = b""
        elif isinstance(result, _BYTES_LIKE):
            body = bytes(result)
        elif not encodes:
            kind = type(result).__name__
            log.error("handler for %r returned %s, not bytes", subject, kind)
            text = f"the handler returned {kind}, not bytes"
            await _fail(msg, text)
            return text
        else:
            # The reply speaks the request's format; JSON for one it could not read.
            reply_type = ctype if ctype in (JSON, MSGPACK) else JSON
            try:
                body = encode(result, reply_type)
            except (TypeError, ValueError, AsyncIPCError) as exc:
                log.error("handler for %r: its result cannot be encoded: %s", subject, exc)
                text = f"the handler's result cannot be encoded: {exc}"
                await _fail(msg, text)
                return text
            headers = {CONTENT_TYPE_HEADER: reply_type}
        if msg.reply_to is None:
            return None
        try:
            await msg.respond(body, headers=headers)
        except FrameTooLarge as exc:
            log.error("handler for %r: its reply cannot be sent: %s", subject, exc)
            text = f"the reply is too large to send: {exc}"
            await _fail(msg, text)
            return text
        return None

    if stats is None:

        async def serve(msg: Message) -> None:
            await answer(msg)

        return serve

    counted = stats

    async def serve_counted(msg: Message) -> None:
        started = time.perf_counter_ns()
        error: str | None = "cancelled"
        try:
            error = await answer(msg)
        finally:
            counted.record(started, error)

    return serve_counted


async def _fail(msg: Message, text: str) -> None:
    """Answer ``msg`` with a failure status; the requester raises ServiceError."""
    if msg.reply_to is not None:
        headers = {STATUS_HEADER: SERVICE_ERROR_STATUS, ERROR_HEADER: text[:1000]}
        await msg.respond(b"", headers=headers)


def reply_error(asked: str, headers: Headers | None) -> AsyncIPCError | None:
    """The exception a requester raises for a reply with these headers, or ``None`` when
    the reply is the responder's payload. ``asked``: the subject of the request."""
    status = headers.get(STATUS_HEADER) if headers else None
    if status is None:
        return None
    if status == NO_RESPONDERS_STATUS:
        return NoResponders(f"no responders for request on {asked!r}")
    assert headers is not None
    if status == REFUSED_STATUS and headers.get(REASON_HEADER) == PERMISSION_REASON:
        return PermissionDenied(headers.get(ERROR_HEADER, f"request on {asked!r} refused"))
    if status == SERVICE_ERROR_STATUS:
        return ServiceError(f"handler for {asked!r} failed: {headers.get(ERROR_HEADER, '')}")
    return None
