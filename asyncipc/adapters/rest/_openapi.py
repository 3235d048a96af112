"""``GET /v1/openapi.json``: the OpenAPI 3 document of the REST adapter.

Written here by hand, next to nothing else, so that it reads as the contract it is;
``tests/test_rest.py`` checks it against the server both ways: every route, method and
status in it is exercised and answers as documented, and every route served is in it.
"""

from __future__ import annotations

from typing import Any

from ... import __version__
from ..._monitor import CONNZ_SORTS, DEFAULT_LIMIT, ENDPOINTS, MAX_LIMIT, METER_MAX_SUBJECTS
from ...streams.config import MAX_COUNT, MAX_SECONDS
from ._envelope import HEADER_PREFIX, REPLY_TO_HEADER
from ._monitor import DASHBOARD_FILES, DEFAULT_INTERVAL, MAX_INTERVAL, MIN_INTERVAL
from ._streams import (
    ACK_KINDS,
    DEFAULT_FETCH_TIMEOUT,
    MAX_FETCH_BATCH,
    MAX_FETCH_TIMEOUT,
    MSG_ID_HEADER,
)

__all__ = [
    "NAME_PATTERN",
    "PATTERN_PATTERN",
    "QUEUE_PATTERN",
    "STREAM_SUBJECT_PATTERN",
    "SUBJECT_PATTERN",
    "document",
]

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

NAME_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
"""Stream and consumer names (``asyncipc.streams.config.check_name``)."""

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
_STREAM = {
    "name": "stream",
    "in": "path",
    "required": True,
    "description": "A stream name: 1 to 64 letters, digits, `_` or `-`.",
    "schema": {"type": "string", "pattern": NAME_PATTERN},
}
_CONSUMER = {
    **_STREAM,
    "name": "consumer",
    "description": "A consumer name: 1 to 64 letters, digits, `_` or `-`.",
}
_HEADERS_NOTE = (
    f"Message headers travel as HTTP headers `{HEADER_PREFIX}<name>: <value>`; the "
    "message header name is `<name>` in lower case."
)
_UNAUTHORIZED = _error("The broker has a token and the request's is missing or wrong.")
_RESERVED = _error(
    "A `$sys.stream.` subject: the streams API is reached through `/v1/streams` (`reserved`)."
)
_RESERVED_PUBLISH = _error(
    "A `$sys.` subject or reply subject: those are the broker's (`reserved`; a "
    "`$sys.stream.` one is reached through `/v1/streams`)."
)
_REFUSED_REQUEST = _error(
    "A `$sys.stream.` subject (`reserved`: the streams API is reached through "
    "`/v1/streams`), or a request the broker refused (`forbidden`, with `reason`: the "
    "broker's code, e.g. `remote-sender` for `$sys.kill.` from an HTTP client)."
)
_SHUTTING_DOWN = "the broker shut down while the request waited (`unavailable`)."


def document(max_payload: int, *, token: bool, store: bool = False) -> dict[str, Any]:
    """The document as this server behaves: its payload limit written in, the security
    requirements and 401 answers only if the broker has a token, and file storage for
    streams only if it has a store."""
    too_large = _error(f"The body is over the broker's limit of {max_payload} bytes.")
    doc = _document(too_large)
    doc["paths"].update(_stream_paths(too_large))
    doc["paths"].update(_monitor_paths())
    doc["components"]["schemas"].update(_stream_schemas(store))
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
            "description": "Publish, request and subscribe on an asyncipc broker over HTTP, "
            "and use its durable streams. docs/rest.md has the JSON formats and the WebSocket "
            "protocol. While the broker shuts down, any route may answer 503 with the error "
            "`unavailable`; a `/v1/streams` route answers 504 `timeout` if the broker does "
            "not carry the operation out within 5 s.",
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
                        "400": _error(
                            "Invalid subject or reply subject, or one whose percent-encoded "
                            "bytes are not UTF-8 (`invalid_subject`)."
                        ),
                        "401": _UNAUTHORIZED,
                        "403": _RESERVED_PUBLISH,
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
                        "400": _error("Invalid subject (or not UTF-8) or timeout."),
                        "401": _UNAUTHORIZED,
                        "403": _REFUSED_REQUEST,
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
                    "effect, saying the `max_pending` and `max_bytes` in effect (those asked "
                    "for, capped by the broker's limits); then one event per message, its "
                    "data a Message; an event `error` (an Error) if the subscription is cut "
                    "off. A slow reader meets the subscription's bounds and overflow policy.",
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
                            "Messages queued for the reader before `overflow` applies; "
                            "lowered to the broker's `subscription_max_pending`.",
                        ),
                        _query(
                            "max_bytes",
                            {"type": "integer", "minimum": 1, "default": 67108864},
                            "Payload bytes queued for the reader before `overflow` applies; "
                            "lowered to the broker's `high_water`.",
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
                        "400": _error(
                            "Invalid subject pattern (or not UTF-8), queue name or parameter."
                        ),
                        "401": _UNAUTHORIZED,
                        "403": _error("A `$sys.` pattern: the broker's own (`reserved`)."),
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
                        "reason": {
                            "type": "string",
                            "description": "On a 403: why, as a machine-readable code.",
                        },
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


# --- /v1/streams ---------------------------------------------------------------------------


def _json(ref: str) -> dict[str, Any]:
    return {"application/json": {"schema": {"$ref": f"#/components/schemas/{ref}"}}}


def _ok(description: str, ref: str) -> dict[str, Any]:
    return {"description": description, "content": _json(ref)}


_NO_CONTENT = {"description": "Done."}
_BAD_NAME = "a stream or consumer name in the path that is not valid (`bad_request`)"
_INVALID_NAME = _error("A stream or consumer name in the path that is not valid (`bad_request`).")
_NO_STREAM = _error("No such stream (`stream_not_found`).")
_NO_CONSUMER = _error("No such stream (`stream_not_found`) or consumer (`consumer_not_found`).")


def _op(
    summary: str,
    operation: str,
    parameters: list[dict[str, Any]],
    responses: dict[str, Any],
    *,
    description: str | None = None,
    body: dict[str, Any] | None = None,
) -> dict[str, Any]:
    op: dict[str, Any] = {
        "summary": summary,
        "operationId": operation,
        "security": _SECURED,
        "parameters": parameters,
        "responses": {**responses, "401": _UNAUTHORIZED},
    }
    if description is not None:
        op["description"] = description
    if body is not None:
        op["requestBody"] = body
    return op


def _json_body(ref: str, description: str, *, required: bool = True) -> dict[str, Any]:
    return {"description": description, "required": required, "content": _json(ref)}


def _stream_paths(too_large: dict[str, Any]) -> dict[str, Any]:
    stream, consumer = [_STREAM], [_STREAM, _CONSUMER]
    return {
        "/v1/streams": {
            "post": _op(
                "Create a stream, or get it if it exists with the options given",
                "createStream",
                [],
                {
                    "200": _ok("The stream, new or as it was.", "StreamInfo"),
                    "400": _error(
                        "Not JSON (`bad_request`), an invalid subject (`invalid_subject`) "
                        "or a configuration the broker refuses (`bad_config`)."
                    ),
                    "404": _error(
                        "Only a name was given (a look-up) and there is no such stream "
                        "(`stream_not_found`)."
                    ),
                    "409": _error(
                        "It exists with other values of the options given (`exists`), or its "
                        "subjects overlap another stream's (`overlap`)."
                    ),
                    "413": too_large,
                },
                description="Unset options take their defaults, and only the options given "
                "are compared with an existing stream's. With only a name it is a look-up.",
                body=_json_body("StreamConfig", "The stream's configuration."),
            ),
            "get": _op(
                "Every stream, with its counts",
                "listStreams",
                [],
                {"200": _ok("The streams.", "StreamList")},
            ),
        },
        "/v1/streams/{stream}": {
            "get": _op(
                "A stream's configuration and counts",
                "getStream",
                stream,
                {
                    "200": _ok("The stream.", "StreamInfo"),
                    "400": _INVALID_NAME,
                    "404": _NO_STREAM,
                },
            ),
            "delete": _op(
                "Remove a stream, its messages and its consumers",
                "deleteStream",
                stream,
                {
                    "204": _NO_CONTENT,
                    "400": _INVALID_NAME,
                    "404": _NO_STREAM,
                },
            ),
        },
        "/v1/streams/{stream}/purge": {
            "post": _op(
                "Remove every message of a stream, or those on a subject",
                "purgeStream",
                stream,
                {
                    "200": _ok("How many went.", "Purged"),
                    "400": _error(f"Not JSON, an invalid subject or {_BAD_NAME}."),
                    "404": _NO_STREAM,
                    "413": too_large,
                },
                body=_json_body("PurgeRequest", "What to purge; no body: all.", required=False),
            ),
        },
        "/v1/streams/{stream}/publish/{subject}": {
            "post": _op(
                "Store the body in a stream and answer with its acknowledgement",
                "publishToStream",
                [
                    _STREAM,
                    _SUBJECT,
                    {
                        "name": MSG_ID_HEADER,
                        "in": "header",
                        "required": False,
                        "description": "Deduplication: a message with the id of one stored "
                        "within the stream's `duplicate_window` is not stored again "
                        "(`duplicate: true`).",
                        "schema": {"type": "string", "minLength": 1, "maxLength": 1024},
                    },
                ],
                {
                    "200": _ok("Stored (durable under the stream's fsync policy).", "PubAck"),
                    "400": _error(
                        "An invalid subject (`invalid_subject`), one the stream does not "
                        f"capture (`wrong_subject`), an empty {MSG_ID_HEADER} (`bad_request`) "
                        f"or {_BAD_NAME}."
                    ),
                    "404": _NO_STREAM,
                    "409": _error(
                        "The stream is full and discards new messages (`limit`), or the body "
                        "is over its `max_msg_size` (`too_large`)."
                    ),
                    "413": too_large,
                },
                description=_HEADERS_NOTE,
                body=_BODY,
            ),
        },
        "/v1/streams/{stream}/consumers": {
            "post": _op(
                "Create a durable consumer, or get it if it exists with the options given",
                "createConsumer",
                stream,
                {
                    "200": _ok("The consumer, new or as it was.", "ConsumerInfo"),
                    "400": _error(
                        "Not JSON (`bad_request`), no name or `durable: false`, or a "
                        "configuration the broker refuses (`bad_config`)."
                    ),
                    "404": _NO_STREAM,
                    "409": _error("It exists with other values of the options given (`exists`)."),
                    "413": too_large,
                },
                description="Unset options take their defaults, and only the options given "
                "are compared with an existing consumer's.",
                body=_json_body("ConsumerConfig", "The consumer's configuration."),
            ),
            "get": _op(
                "Every consumer of a stream",
                "listConsumers",
                stream,
                {
                    "200": _ok("The consumers.", "ConsumerList"),
                    "400": _INVALID_NAME,
                    "404": _NO_STREAM,
                },
            ),
        },
        "/v1/streams/{stream}/consumers/{consumer}": {
            "get": _op(
                "A consumer's configuration and counts",
                "getConsumer",
                consumer,
                {
                    "200": _ok("The consumer.", "ConsumerInfo"),
                    "400": _INVALID_NAME,
                    "404": _NO_CONSUMER,
                },
            ),
            "delete": _op(
                "Remove a consumer",
                "deleteConsumer",
                consumer,
                {
                    "204": _NO_CONTENT,
                    "400": _INVALID_NAME,
                    "404": _NO_CONSUMER,
                },
            ),
        },
        "/v1/streams/{stream}/consumers/{consumer}/fetch": {
            "post": _op(
                "Take up to `batch` messages from a consumer",
                "fetch",
                [
                    *consumer,
                    _query(
                        "batch",
                        {
                            "type": "integer",
                            "minimum": 1,
                            "maximum": MAX_FETCH_BATCH,
                            "default": 1,
                        },
                        "Messages at most.",
                    ),
                    _query(
                        "timeout",
                        {
                            "type": "number",
                            "minimum": 0,
                            "maximum": MAX_FETCH_TIMEOUT,
                            "default": DEFAULT_FETCH_TIMEOUT,
                        },
                        "Seconds to wait for a first message when none is at hand (0: "
                        "answer at once).",
                    ),
                ],
                {
                    "200": {
                        "description": "What the consumer had at hand, or the first to come "
                        "within `timeout`; `[]` if nothing came. Acknowledge each before its "
                        "`ack_wait` runs out, or it is delivered again.",
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "array",
                                    "items": {"$ref": "#/components/schemas/StreamMessage"},
                                }
                            }
                        },
                    },
                    "400": _error(f"`batch` or `timeout` out of bounds, or {_BAD_NAME}."),
                    "404": _NO_CONSUMER,
                },
            ),
        },
        "/v1/streams/{stream}/consumers/{consumer}/ack": {
            "post": _op(
                "Acknowledge a fetched message",
                "ack",
                consumer,
                {
                    "204": {"description": "The broker has recorded it."},
                    "400": _error(
                        "Not JSON or an unknown `kind` (`bad_request`); a token that is not "
                        "one of this consumer's, or a `delay` not with `nak` (`bad_config`)."
                    ),
                    "404": _NO_CONSUMER,
                    "409": _error(
                        "The message is not awaiting an acknowledgement (`not_pending`): "
                        "acknowledged already, or its `ack_wait` ran out and it went to "
                        "another fetch."
                    ),
                    "413": too_large,
                },
                body=_json_body("Ack", "Which message, and what became of it."),
            ),
        },
    }


_INT = {"type": "integer", "minimum": 0, "maximum": MAX_COUNT}
_SECONDS = {"type": "number", "minimum": 0, "maximum": MAX_SECONDS}
_NAME = {"type": "string", "pattern": NAME_PATTERN}


def _object(properties: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    return {
        "type": "object",
        "required": list(properties) if required is None else required,
        "properties": properties,
        "additionalProperties": False,
    }


# A stream captures no subject of the broker's ($sys.) nor replies (_INBOX.).
STREAM_SUBJECT_PATTERN = r"^(?!\$sys\.|_INBOX\.)" + PATTERN_PATTERN[1:]


def _stream_schemas(store: bool) -> dict[str, Any]:
    storage = ["file", "memory"] if store else ["memory"]
    return {
        "StreamConfig": _stream_config(storage),
        **_STREAM_SCHEMAS,
        "StreamInfo": {
            **_STREAM_SCHEMAS["StreamInfo"],
            "properties": {
                **_STREAM_SCHEMAS["StreamInfo"]["properties"],
                "storage": {"type": "string", "enum": storage},
            },
        },
    }


def _stream_config(storage: list[str]) -> dict[str, Any]:
    return _object(
        {
            "name": _NAME,
            "subjects": {
                "type": "array",
                "items": {"type": "string", "pattern": STREAM_SUBJECT_PATTERN, "maxLength": 1024},
                "description": "What it captures (wildcards allowed); none: its name.",
            },
            "max_msgs": _INT,
            "max_bytes": _INT,
            "max_age": _SECONDS,
            "max_msgs_per_subject": _INT,
            "max_msg_size": _INT,
            "discard": {"type": "string", "enum": ["old", "new"]},
            "duplicate_window": _SECONDS,
            "storage": {"type": "string", "enum": storage, "nullable": True},
            "fsync": {"type": "string", "enum": ["always", "interval", "never"]},
            "sync_interval": {**_SECONDS, "exclusiveMinimum": True},
            # One broker keeps one copy; replicas are JetStream's (nats://, not REST).
            "replicas": {**_INT, "minimum": 1, "maximum": 1},
        },
        required=["name"],
    )


_STREAM_SCHEMAS: dict[str, Any] = {
    "StreamInfo": _object(
        {
            "config": {"$ref": "#/components/schemas/StreamConfig"},
            "storage": {"type": "string", "enum": ["file", "memory"]},
            "messages": _INT,
            "bytes": _INT,
            "first_seq": _INT,
            "last_seq": _INT,
            "first_time_ns": _INT,
            "last_time_ns": _INT,
            "consumers": _INT,
            "subjects": _INT,
            "refused": _INT,
            "lost": _INT,
            "torn_bytes": _INT,
            "created": {"type": "number"},
        }
    ),
    "StreamList": _object(
        {"streams": {"type": "array", "items": {"$ref": "#/components/schemas/StreamInfo"}}}
    ),
    "PurgeRequest": _object(
        {"subject": {"type": "string", "pattern": PATTERN_PATTERN, "maxLength": 1024}},
        required=[],
    ),
    "Purged": _object({"purged": _INT}),
    "PubAck": _object(
        {
            "stream": {"type": "string"},
            "seq": {"type": "integer", "minimum": 1},
            "duplicate": {"type": "boolean"},
        }
    ),
    "ConsumerConfig": _object(
        {
            "name": _NAME,
            "durable": {
                "type": "boolean",
                "default": True,
                "description": "Always true "
                "over HTTP: an ephemeral consumer would never be removed.",
            },
            "deliver": {
                "type": "string",
                "enum": [
                    "all",
                    "new",
                    "last",
                    "last_per_subject",
                    "by_start_seq",
                    "by_start_time",
                ],
            },
            "start_seq": _INT,
            "start_time": _SECONDS,
            "filter_subject": {
                "type": "string",
                "pattern": PATTERN_PATTERN,
                "maxLength": 1024,
                "nullable": True,
            },
            "ack_wait": {**_SECONDS, "exclusiveMinimum": True},
            "max_deliver": _INT,
            "dead_letter": {
                "type": "string",
                "pattern": SUBJECT_PATTERN,
                "maxLength": 1024,
                "nullable": True,
            },
            "max_ack_pending": {"type": "integer", "minimum": 1, "maximum": MAX_COUNT},
        },
        required=["name"],
    ),
    "ConsumerInfo": _object(
        {
            "stream": {"type": "string"},
            "config": {"$ref": "#/components/schemas/ConsumerConfig"},
            "num_pending": _INT,
            "num_ack_pending": _INT,
            "num_redelivered": _INT,
            "num_waiting": _INT,
            "delivered": _INT,
            "ack_floor": _INT,
            "dead_lettered": _INT,
        }
    ),
    "ConsumerList": _object(
        {"consumers": {"type": "array", "items": {"$ref": "#/components/schemas/ConsumerInfo"}}}
    ),
    "StreamMessage": _object(
        {
            "subject": {"type": "string"},
            "data": {"type": "string", "format": "byte"},
            "headers": {"type": "object", "additionalProperties": {"type": "string"}},
            "stream": {"type": "string"},
            "consumer": {"type": "string"},
            "seq": {"type": "integer", "minimum": 1},
            "num_delivered": {"type": "integer", "minimum": 1},
            "time_ns": _INT,
            "ack_token": {"type": "string", "description": "Opaque: what `ack` needs."},
        }
    ),
    "Ack": _object(
        {
            "token": {"type": "string", "description": "The message's `ack_token`."},
            "kind": {"type": "string", "enum": list(ACK_KINDS), "default": "ack"},
            "delay": {
                "type": "number",
                "minimum": 0,
                "description": "With `nak`: seconds before it is delivered again.",
            },
        },
        required=["token"],
    ),
}


# --- monitoring (docs/monitoring.md) -------------------------------------------------------

_MONITOR_REQUIRED = {
    "varz": ["server_id", "version", "now", "uptime", "connections", "in_msgs", "out_msgs"],
    "connz": ["server_id", "now", "num_connections", "total", "offset", "limit", "connections"],
    "subsz": ["server_id", "now", "num_subscriptions", "total", "offset", "limit"],
    "streamz": ["server_id", "now", "streams", "consumers", "streams_list"],
    "subjectz": ["server_id", "now", "metering_since", "total", "subjects"],
}
_MONITOR_SUMMARY = {
    "varz": "The broker: version, uptime, totals and rates, memory, CPU, limits",
    "connz": "The connections, with their traffic, rates and pending bytes",
    "subsz": "The subscriptions, with their policies, drops and slow consumers",
    "streamz": "The durable streams and their consumers",
    "subjectz": "Messages per subject and their rates (metered while someone looks)",
}


def _monitor_paths() -> dict[str, Any]:
    flag = {"type": "string", "enum": ["0", "1", "false", "true"]}
    offset = _query(
        "offset", {"type": "integer", "minimum": 0, "maximum": 1 << 62}, "Entries to skip."
    )
    limit = _query(
        "limit",
        {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": DEFAULT_LIMIT},
        "Entries per page.",
    )
    params: dict[str, list[dict[str, Any]]] = {
        "varz": [],
        "connz": [
            _query(
                "subs",
                {"type": "string", "enum": ["0", "1", "false", "true", "detail"]},
                "List each connection's subscriptions: subjects, or `detail` objects.",
            ),
            offset,
            limit,
            _query("sort", {"type": "string", "enum": list(CONNZ_SORTS)}, "The order (`cid`)."),
        ],
        "subsz": [
            _query("subs", flag, "List the subscriptions."),
            offset,
            limit,
            _query(
                "test",
                {"type": "string", "pattern": SUBJECT_PATTERN, "maxLength": 1024},
                "Only the subscriptions a message on this subject would reach.",
            ),
        ],
        "streamz": [_query("consumers", flag, "List each stream's consumers.")],
        "subjectz": [
            _query(
                "limit",
                {"type": "integer", "minimum": 1, "maximum": METER_MAX_SUBJECTS},
                "The busiest subjects to list (100).",
            )
        ],
    }
    paths: dict[str, Any] = {}
    for name in ENDPOINTS:
        responses: dict[str, Any] = {
            "200": {
                "description": "The figures (docs/monitoring.md).",
                "content": {
                    "application/json": {
                        "schema": {"type": "object", "required": _MONITOR_REQUIRED[name]}
                    }
                },
            },
        }
        if params[name]:
            responses["400"] = _error("An option that is not valid (`bad_request`).")
        responses["401"] = _UNAUTHORIZED
        paths[f"/{name}"] = {
            "get": {
                "summary": _MONITOR_SUMMARY[name],
                "operationId": name,
                "security": _SECURED,
                "parameters": params[name],
                "responses": responses,
            }
        }
    paths["/dashboard"] = {
        "get": {
            "summary": "The live dashboard page (HTML; `?access_token=` is passed on)",
            "operationId": "dashboard",
            "responses": {
                "200": {
                    "description": "The page.",
                    "content": {"text/html": {"schema": {"type": "string"}}},
                }
            },
        }
    }
    for file, kind in DASHBOARD_FILES.items():
        paths[f"/dashboard/{file}"] = {
            "get": {
                "summary": f"The dashboard's {file}",
                "operationId": "dashboard_" + file.replace(".", "_"),
                "responses": {
                    "200": {
                        "description": "The file.",
                        "content": {kind: {"schema": {"type": "string"}}},
                    }
                },
            }
        }
    paths["/dashboard/events"] = {
        "get": {
            "summary": "The dashboard's figures as Server-Sent Events",
            "description": "One event `snapshot` every `interval` seconds, its data an object "
            "with `varz`, `connz`, `subsz`, `subjectz` and `streamz`; an event `error` when "
            "the broker shuts down.",
            "operationId": "dashboard_events",
            "security": _SECURED,
            "parameters": [
                _query(
                    "interval",
                    {"type": "number", "minimum": MIN_INTERVAL, "maximum": MAX_INTERVAL},
                    f"Seconds between snapshots ({DEFAULT_INTERVAL:g}).",
                ),
                _query("count", {"type": "integer", "minimum": 1}, "End after this many."),
            ],
            "responses": {
                "200": {
                    "description": "The event stream.",
                    "content": {"text/event-stream": {"schema": {"type": "string"}}},
                },
                "400": _error("An interval or count that is not valid (`bad_request`)."),
                "401": _UNAUTHORIZED,
            },
        }
    }
    return paths
