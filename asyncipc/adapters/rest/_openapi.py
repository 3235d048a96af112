"""``GET /v1/openapi.json``: the OpenAPI 3 document of the REST adapter.

Written here by hand, next to nothing else, so that it reads as the contract it is;
``tests/test_rest.py`` checks it against the server both ways: every route, method and
status in it is exercised and answers as documented, and every route served is in it.
"""

from __future__ import annotations

from typing import Any

from ... import __version__
from ._envelope import HEADER_PREFIX, REPLY_TO_HEADER

__all__ = ["PATTERN_PATTERN", "QUEUE_PATTERN", "SUBJECT_PATTERN", "document"]

_REF_ERROR = {"$ref": "#/components/schemas/Error"}
_SECURED: list[dict[str, list[str]]] = [{"bearer": []}, {"access_token": []}]


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _REF_ERROR}}}


# The patterns describe the subjects every client can send in a URL: visible ASCII, no
# '/' and no '%'. The broker accepts more (any non-space Unicode, docs/guide.md),
# percent-encoded. A '%' of the subject itself travels as '%25', but clients that quote a
# path parameter "idempotently" (unquote, then quote; schemathesis does) send a subject
# 'a%09b' as 'a%09b', which the server rightly reads as 'a<TAB>b': a pattern admitting
# '%' would call subjects valid that such clients cannot send.
_T = r"[!-$&-)+-\-0-=?-~]+"
SUBJECT_PATTERN = rf"^{_T}(\.{_T})*$"
PATTERN_PATTERN = rf"^(({_T}|\*)(\.({_T}|\*))*(\.>)?|>)$"
QUEUE_PATTERN = r"^[!-)+-=?-~]+$"

_SUBJECT = {
    "name": "subject",
    "in": "path",
    "required": True,
    "description": "A literal subject: dot-separated tokens, no wildcards (docs/guide.md).",
    "schema": {"type": "string", "pattern": SUBJECT_PATTERN, "maxLength": 1024},
}
_PATTERN = {
    **_SUBJECT,
    "description": "A subject pattern: `*` matches one token, `>` the trailing ones.",
    "schema": {"type": "string", "pattern": PATTERN_PATTERN, "maxLength": 1024},
}
_BODY = {
    "description": "The payload, raw (any Content-Type is taken as bytes).",
    "required": False,
    "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
}
_HEADERS_NOTE = (
    f"Message headers travel as HTTP headers `{HEADER_PREFIX}<name>: <value>`; the "
    "message header name is `<name>` in lower case."
)
_UNAUTHORIZED = _error("The broker has a token and the request's is missing or wrong.")
_SHUTTING_DOWN = "the broker shut down while the request waited (`unavailable`)."


def document(max_payload: int, *, token: bool) -> dict[str, Any]:
    """The document as this server behaves: its payload limit written in, and the
    security requirements and 401 answers only if the broker has a token."""
    too_large = _error(f"The body is over the broker's limit of {max_payload} bytes.")
    doc = _document(too_large)
    if not token:
        del doc["components"]["securitySchemes"]
        for operations in doc["paths"].values():
            for operation in operations.values():
                operation.pop("security", None)
                operation["responses"].pop("401", None)
    return doc


def _document(too_large: dict[str, Any]) -> dict[str, Any]:
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "asyncipc REST adapter",
            "version": __version__,
            "description": "Publish, request and subscribe on an asyncipc broker over HTTP. "
            "docs/rest.md has the JSON formats and the WebSocket protocol. While the broker "
            "shuts down, any route may answer 503 with the error `unavailable`.",
        },
        "paths": {
            "/v1/publish/{subject}": {
                "post": {
                    "summary": "Publish the body on a subject",
                    "description": _HEADERS_NOTE,
                    "operationId": "publish",
                    "security": _SECURED,
                    "parameters": [
                        _SUBJECT,
                        {
                            "name": REPLY_TO_HEADER,
                            "in": "header",
                            "required": False,
                            "description": "The reply subject to publish with.",
                            "schema": {
                                "type": "string",
                                "pattern": SUBJECT_PATTERN,
                                "maxLength": 1024,
                            },
                        },
                    ],
                    "requestBody": _BODY,
                    "responses": {
                        "202": {"description": "The broker has the message."},
                        "400": _error("Invalid subject or reply subject (`invalid_subject`)."),
                        "401": _UNAUTHORIZED,
                        "413": too_large,
                    },
                }
            },
            "/v1/request/{subject}": {
                "post": {
                    "summary": "Send the body as a request and answer with the reply",
                    "description": _HEADERS_NOTE + " The reply's headers come back the same "
                    "way (those that are valid HTTP fields); `Accept: application/json` "
                    "gives the whole reply as a Message instead.",
                    "operationId": "request",
                    "security": _SECURED,
                    "parameters": [
                        _SUBJECT,
                        {
                            "name": "timeout",
                            "in": "query",
                            "required": False,
                            "description": "Seconds to wait for the reply (default 1).",
                            "schema": {
                                "type": "number",
                                "minimum": 0,
                                "exclusiveMinimum": True,
                                "maximum": 300,
                            },
                        },
                    ],
                    "requestBody": _BODY,
                    "responses": {
                        "200": {
                            "description": "The reply.",
                            "content": {
                                "application/octet-stream": {
                                    "schema": {"type": "string", "format": "binary"}
                                },
                                "application/json": {
                                    "schema": {"$ref": "#/components/schemas/Message"}
                                },
                            },
                        },
                        "400": _error("Invalid subject or timeout."),
                        "401": _UNAUTHORIZED,
                        "413": too_large,
                        "502": _error("The responder's handler failed (`service_error`)."),
                        "503": _error(
                            "Nobody is subscribed to the subject (`no_responders`), or "
                            + _SHUTTING_DOWN
                        ),
                        "504": _error("No reply within the time-out (`timeout`)."),
                    },
                }
            },
            "/v1/subscribe/{subject}": {
                "get": {
                    "summary": "Subscribe: messages as Server-Sent Events",
                    "description": "First an event `subscribed` once the subscription is in "
                    "effect; then one event per message, its data a Message; an event "
                    "`error` (an Error) if the subscription is cut off. A slow reader meets "
                    "the subscription's bounds and overflow policy.",
                    "operationId": "subscribe",
                    "security": _SECURED,
                    "parameters": [
                        _PATTERN,
                        _query(
                            "queue",
                            {"type": "string", "pattern": QUEUE_PATTERN, "maxLength": 1024},
                            "Queue group name.",
                        ),
                        _query(
                            "overflow",
                            {
                                "type": "string",
                                "enum": ["block", "drop_oldest", "drop_new", "error"],
                                "default": "block",
                            },
                            "What happens when the reader falls behind.",
                        ),
                        _query(
                            "max_pending",
                            {"type": "integer", "minimum": 1, "default": 65536},
                            "Messages queued for the reader before `overflow` applies.",
                        ),
                        _query(
                            "max_bytes",
                            {"type": "integer", "minimum": 1, "default": 67108864},
                            "Payload bytes queued for the reader before `overflow` applies.",
                        ),
                        _query(
                            "count",
                            {"type": "integer", "minimum": 1},
                            "End the stream after this many messages.",
                        ),
                    ],
                    "responses": {
                        "200": {
                            "description": "The event stream.",
                            "content": {"text/event-stream": {"schema": {"type": "string"}}},
                        },
                        "400": _error("Invalid subject pattern, queue name or parameter."),
                        "401": _UNAUTHORIZED,
                    },
                }
            },
            "/v1/ws": {
                "get": {
                    "summary": "WebSocket: publish, subscribe, request and answer on one "
                    "connection",
                    "description": "Subprotocol `asyncipc.v1`: binary messages of wire "
                    "protocol frames (docs/protocol.md), authenticated by HELLO. "
                    "`asyncipc.v1.json` (or none): JSON text messages (docs/rest.md).",
                    "operationId": "websocket",
                    "security": _SECURED,
                    "responses": {
                        "101": {"description": "Switching to the WebSocket protocol."},
                        "400": _error("Not a WebSocket upgrade request."),
                        "401": _UNAUTHORIZED,
                    },
                }
            },
            "/v1/openapi.json": {
                "get": {
                    "summary": "This document",
                    "operationId": "openapi",
                    "responses": {
                        "200": {
                            "description": "The OpenAPI document.",
                            "content": {"application/json": {"schema": {"type": "object"}}},
                        }
                    },
                }
            },
            "/healthz": {
                "get": {
                    "summary": "Whether the broker is serving",
                    "operationId": "health",
                    "responses": {
                        "200": _health("Serving."),
                    },
                }
            },
            "/metrics": {
                "get": {
                    "summary": "The broker's counters, Prometheus text format",
                    "operationId": "metrics",
                    "security": _SECURED,
                    "responses": {
                        "200": {
                            "description": "Metrics by transport.",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        },
                        "401": _UNAUTHORIZED,
                    },
                }
            },
        },
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "access_token": {"type": "apiKey", "in": "query", "name": "access_token"},
            },
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error", "message"],
                    "properties": {
                        "error": {"type": "string", "description": "A code, e.g. `timeout`."},
                        "message": {"type": "string", "description": "What was wrong."},
                    },
                },
                "Message": {
                    "type": "object",
                    "required": ["subject", "data", "headers", "reply_to"],
                    "properties": {
                        "subject": {"type": "string"},
                        "data": {"type": "string", "format": "byte"},
                        "headers": {
                            "type": "object",
                            "additionalProperties": {"type": "string"},
                        },
                        "reply_to": {"type": "string", "nullable": True},
                    },
                },
                "Health": {
                    "type": "object",
                    "required": ["status"],
                    "properties": {
                        "status": {"type": "string", "enum": ["ok", "closing"]},
                        "server_id": {"type": "string"},
                        "clients": {"type": "integer"},
                    },
                },
            },
        },
    }


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": schema,
    }


def _health(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Health"}}},
    }
