"""Reading an HTTP request for the REST adapter: subjects, parameters, the peer.

Each helper raises :class:`~asyncipc.adapters.rest._envelope.HttpError` with the status and
JSON error of docs/rest.md when the request is not acceptable.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote_to_bytes

from aiohttp import web

from ...errors import InvalidSubject
from ...link import PeerInfo
from ...subjects import validate_subject
from ._envelope import REPLY_TO_HEADER, HttpError

__all__ = [
    "DEFAULT_REQUEST_TIMEOUT",
    "MAX_REQUEST_TIMEOUT",
    "peer_of",
    "positive_int",
    "raw_subject",
    "reply_to_of",
    "subject_of",
    "timeout_of",
    "unauthorized",
    "wants_json",
    "where",
]

DEFAULT_REQUEST_TIMEOUT = 1.0
"""Seconds ``POST /v1/request`` waits without ``?timeout=`` (as ``Bus.request``)."""
MAX_REQUEST_TIMEOUT = 300.0
"""The longest ``?timeout=`` accepted."""

_JSON = "application/json"


def unauthorized(message: str) -> HttpError:
    exc = HttpError(401, "unauthorized", message)
    exc.headers = {"WWW-Authenticate": 'Bearer realm="asyncipc"'}
    return exc


def raw_subject(request: web.Request) -> str:
    """The ``{subject}`` of a route whose last path segment it is, percent-decoded as
    UTF-8; HttpError 400 when the bytes are not UTF-8. ``match_info`` cannot tell: yarl
    leaves an undecodable ``%FF`` as the three characters ``%FF``, the same text that
    ``%25FF`` decodes to, so a subject the client never sent would be published."""
    segment = request.rel_url.raw_parts[-1]
    try:
        return unquote_to_bytes(segment).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise HttpError(
            400,
            "invalid_subject",
            f"subject {segment!r} is not valid UTF-8 once percent-decoded "
            f"(byte 0x{exc.object[exc.start]:02X} at {exc.start})",
        ) from None


def subject_of(request: web.Request) -> str:
    subject = raw_subject(request)
    try:
        return validate_subject(subject)
    except InvalidSubject as exc:
        raise HttpError(400, "invalid_subject", str(exc)) from None


def reply_to_of(request: web.Request) -> str | None:
    reply = request.headers.get(REPLY_TO_HEADER)
    if reply is None:
        return None
    try:
        return validate_subject(reply)
    except InvalidSubject as exc:
        raise HttpError(400, "invalid_subject", f"{REPLY_TO_HEADER}: {exc}") from None


def timeout_of(text: str | None) -> float:
    if text is None:
        return DEFAULT_REQUEST_TIMEOUT
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value <= MAX_REQUEST_TIMEOUT:
        raise HttpError(
            400,
            "bad_request",
            f"timeout must be a number of seconds above 0 and at most "
            f"{MAX_REQUEST_TIMEOUT:g}, not {text!r}",
        )
    return value


def positive_int(query: Any, name: str, default: int) -> int:
    text = query.get(name)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise HttpError(400, "bad_request", f"{name} must be a positive integer, not {text!r}")
    return value


def wants_json(request: web.Request) -> bool:
    accept = request.headers.get("Accept", "")
    return _JSON in accept and "application/octet-stream" not in accept


def peer_of(request: web.Request, route: str) -> PeerInfo:
    peername = request.transport.get_extra_info("peername") if request.transport else None
    address = tuple(peername[:2]) if isinstance(peername, tuple) else request.remote
    return PeerInfo("http", address, extra={"route": route})


def where(peer: PeerInfo) -> str:
    address = peer.address
    if isinstance(address, tuple) and len(address) == 2:
        return f"{address[0]}:{address[1]}"
    return "" if address is None else str(address)
