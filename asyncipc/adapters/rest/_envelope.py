"""What the HTTP adapter says in JSON: message envelopes, error bodies, header mapping.

Pure functions, shared by the unary routes, Server-Sent Events and the JSON WebSocket,
so that a message or an error looks the same whichever way it travels (docs/rest.md).
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from ...errors import AsyncIPCError, BrokerError
from ...message import Message
from ...protocol import ErrorCode
from ...protocol.system import (
    ERROR_HEADER,
    REASON_HEADER,
    REFUSED_STATUS,
    RESERVED_PREFIX,
    STATUS_HEADER,
)

if TYPE_CHECKING:
    from ...subscription import Subscription

__all__ = [
    "HEADER_PREFIX",
    "REPLY_TO_HEADER",
    "HttpError",
    "check_not_reserved",
    "data_field",
    "error_body",
    "forbidden",
    "headers_field",
    "headers_from_http",
    "headers_to_http",
    "message_json",
    "refusal_of",
    "refusal_of_subscription",
]

HEADER_PREFIX = "X-Asyncipc-Header-"
"""An HTTP header ``X-Asyncipc-Header-Trace: abc`` is the message header ``trace: abc``."""
REPLY_TO_HEADER = "X-Asyncipc-Reply-To"
"""The reply subject of a published message, as an HTTP header."""

# RFC 9110 §5.1 token characters, and a field value we can send back unchanged.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_FIELD_VALUE = re.compile(r"[\x20-\x7e]*")


class HttpError(Exception):
    """An answer other than success, with the JSON body every route uses for it.

    ``error`` is a short machine-readable code (``invalid_subject``, ``no_responders``,
    ...: the table in docs/rest.md), ``message`` says what was wrong and with which value.
    """

    def __init__(self, status: int, error: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.error = error
        self.message = message
        self.headers: dict[str, str] = {}
        """Extra response headers (``WWW-Authenticate`` for a 401)."""
        self.reason: str | None = None
        """A refusal's machine-readable code (:func:`forbidden`), sent as ``reason``."""

    def body(self) -> dict[str, Any]:
        body = error_body(self.error, self.message)
        if self.reason is not None:
            body["reason"] = self.reason
        return body


def forbidden(reason: str, message: str) -> HttpError:
    """The one way the HTTP adapter refuses what a caller may not do: ``403`` with a JSON
    body, on every route, Server-Sent Events and the JSON WebSocket (there an ``error``
    operation with the same fields) — never a success that hides the refusal.

    ``reason`` is machine-readable: ``reserved`` (a ``$sys.`` subject, the broker's own;
    also the body's ``error``), ``permission`` (the caller's user may not: ``error`` is
    ``permission_denied``, docs/security.md), or the ``asyncipc-reason`` of a refusal the
    broker sent (``remote-sender``, ``not-allowed``, ...; ``error`` is then ``forbidden``).
    A permission check refuses through here too."""
    error = {"reserved": "reserved", "permission": "permission_denied"}.get(reason, "forbidden")
    exc = HttpError(403, error, message)
    exc.reason = reason
    return exc


def check_not_reserved(subject: str, reply_to: str | None = None) -> None:
    """:func:`forbidden` (``reserved``) for a publish, or a subscription, on a ``$sys.``
    subject or with a ``$sys.`` reply subject. Those belong to the broker: a publish
    there is refused by the broker with an ERR the adapter's shared bus could only log
    (the caller would have heard ``202``), and the broker delivers ``$sys.`` messages
    only to the connection that published them, so an HTTP subscription there would
    wait for ever. ``$sys.kill.`` is a request: ``POST /v1/request`` carries it to the
    broker, whose refusal :func:`refusal_of` maps."""
    if subject.startswith(RESERVED_PREFIX):
        raise forbidden("reserved", f"subject {subject!r} is reserved for the broker")
    if reply_to is not None and reply_to.startswith(RESERVED_PREFIX):
        raise forbidden("reserved", f"reply subject {reply_to!r} is reserved for the broker")


async def refusal_of_subscription(sub: Subscription) -> HttpError | None:
    """:func:`forbidden` if the broker refused ``sub`` (ERR 102, ``PERMISSION``, naming
    its id: the subscription ended at once), else ``None``. Call it after the flush that
    puts the subscription in effect, before telling the caller it is subscribed."""
    if sub.active or sub.pending:
        return None
    try:
        await sub.next_msg(timeout=0)
    except BrokerError as exc:
        if exc.code == ErrorCode.PERMISSION:
            return forbidden("permission", exc.message)
    except (AsyncIPCError, TimeoutError):
        pass
    return None


def refusal_of(reply: Message) -> HttpError | None:
    """:func:`forbidden` for a reply that is the broker's refusal (``asyncipc-status:
    403``, ``docs/protocol.md`` §12), else ``None``: a request the broker refused must
    not reach the caller as a ``200`` with the status hidden in a header."""
    headers = reply.headers
    if not headers or headers.get(STATUS_HEADER) != REFUSED_STATUS:
        return None
    return forbidden(
        headers.get(REASON_HEADER, "forbidden"), headers.get(ERROR_HEADER, "refused by the broker")
    )


def error_body(error: str, message: str) -> dict[str, Any]:
    """``{"error": code, "message": text}``: every error, on every route."""
    return {"error": error, "message": message}


def message_json(msg: Message) -> dict[str, Any]:
    """A delivered message as JSON, its payload in standard base64."""
    return {
        "subject": msg.subject,
        "data": base64.b64encode(msg.data).decode("ascii"),
        "headers": msg.headers or {},
        "reply_to": msg.reply_to,
    }


def data_field(obj: Mapping[str, Any], key: str = "data") -> bytes:
    """The base64 payload ``obj[key]`` (absent: empty); HttpError 400 if it is not."""
    value = obj.get(key)
    if value is None:
        return b""
    if not isinstance(value, str):
        raise HttpError(400, "bad_request", f"{key!r} must be a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise HttpError(400, "bad_request", f"{key!r} is not valid base64") from None


def headers_field(obj: Mapping[str, Any]) -> dict[str, str] | None:
    """``obj["headers"]``: an object of strings, or absent/null; HttpError 400 if not."""
    value = obj.get("headers")
    if value is None:
        return None
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise HttpError(400, "bad_request", "'headers' must be an object of strings")
    _check_utf8(value)
    return value or None


def _check_utf8(headers: Mapping[str, str]) -> None:
    """HttpError 400 for a header name or value with no UTF-8 form (a lone surrogate:
    JSON's ``"\udcff"``, or aiohttp's ``surrogateescape`` reading of a byte that is not
    UTF-8). The wire carries UTF-8; such a header would fail in the middle of the broker
    delivering the message, after some subscribers had it and before others did."""
    for name, value in headers.items():
        for text in (name, value):
            if not text.isascii():
                try:
                    text.encode()
                except UnicodeEncodeError:
                    raise HttpError(
                        400,
                        "bad_request",
                        f"header {name!r} is not valid UTF-8 (a byte or escape with no UTF-8 form)",
                    ) from None


def headers_from_http(items: Iterable[tuple[str, str]]) -> dict[str, str] | None:
    """Message headers from ``X-Asyncipc-Header-*`` request headers.

    HTTP header names are case-insensitive and proxies may change their case, so the
    message header name is the rest of the HTTP name in lower case. A name sent twice
    keeps its last value.
    """
    prefix = HEADER_PREFIX.lower()
    headers = {
        name[len(prefix) :].lower(): value
        for name, value in items
        if name.lower().startswith(prefix) and len(name) > len(prefix)
    }
    _check_utf8(headers)
    return headers or None


def headers_to_http(headers: Mapping[str, str] | None) -> dict[str, str]:
    """``X-Asyncipc-Header-*`` response headers for a reply's message headers.

    Only a header whose name is an HTTP token and whose value is printable ASCII can
    travel this way unchanged; the others are left out here and are complete in the JSON
    form of the reply (``Accept: application/json``).
    """
    if not headers:
        return {}
    return {
        HEADER_PREFIX + name: value
        for name, value in headers.items()
        if _TOKEN.fullmatch(name) and _FIELD_VALUE.fullmatch(value)
    }
