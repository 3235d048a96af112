"""The sans-I/O wire protocol: frames, their encoders and the incremental decoder.

Nothing here touches a socket or an event loop; every stream transport wraps it in a thin
shell. The byte layout is specified in ``docs/protocol.md``.
"""

from .decoder import FrameDecoder, decode_headers, parse_frame
from .frames import (
    DEFAULT_MAX_FRAME,
    MSG_EXTRA,
    PING,
    PONG,
    PREAMBLE,
    PROTOCOL_VERSION,
    Err,
    ErrorCode,
    Frame,
    Headers,
    Hello,
    Msg,
    Op,
    Overflow,
    Ping,
    Pong,
    Pub,
    Sub,
    Unsub,
    Welcome,
    encode,
    encode_headers,
    encode_msg_from_pub,
)
from .timeout import format_timeout, parse_timeout

__all__ = [
    "DEFAULT_MAX_FRAME",
    "MSG_EXTRA",
    "PING",
    "PONG",
    "PREAMBLE",
    "PROTOCOL_VERSION",
    "Err",
    "ErrorCode",
    "Frame",
    "FrameDecoder",
    "Headers",
    "Hello",
    "Msg",
    "Op",
    "Overflow",
    "Ping",
    "Pong",
    "Pub",
    "Sub",
    "Unsub",
    "Welcome",
    "decode_headers",
    "encode",
    "encode_headers",
    "encode_msg_from_pub",
    "format_timeout",
    "parse_frame",
    "parse_timeout",
]
