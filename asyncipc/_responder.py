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
from collections.abc import Awaitable, Callable

from .errors import AsyncIPCError, FrameTooLarge, NoResponders, PermissionDenied, ServiceError
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

__all__ = ["Callback", "Handler", "reply_error", "responder"]

log = logging.getLogger("asyncipc.client")

Handler = Callable[[Message], Awaitable[bytes | None]]
"""``async def f(msg) -> bytes | None``: a service's answer to one request."""
Callback = Callable[[Message], Awaitable[None]]
"""``async def f(msg) -> None``: what a subscription's ``callback=`` runs per message."""

_BYTES_LIKE = (bytes, bytearray, memoryview)


def responder(subject: str, fn: Handler, *, expose_errors: bool = False) -> Callback:
    """The subscription callback that runs ``fn`` for each request on ``subject`` and
    answers it: with ``fn``'s bytes, or with a failure status the requester raises as
    :class:`~asyncipc.ServiceError` at once (see :meth:`asyncipc.Bus.handler`)."""

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
        if msg.reply_to is None:
            return
        try:
            await msg.respond(bytes(result) if type(result) is not bytes else result)
        except FrameTooLarge as exc:
            log.error("handler for %r: its reply cannot be sent: %s", subject, exc)
            await _fail(msg, f"the reply is too large to send: {exc}")

    return serve


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
