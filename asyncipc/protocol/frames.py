"""Frame types of the asyncipc wire protocol and their encoders.

The byte layout is specified in ``docs/protocol.md``; this module is its executable form.
Every frame on a stream is ``u32 length | u8 op | body`` (big-endian; ``length`` counts
the op byte and the body). Frames are plain slotted objects: the memory transport hands
them across without encoding, the stream transports encode them with :func:`encode`.
"""

from __future__ import annotations

import json
import struct
from enum import IntEnum
from types import FunctionType
from typing import Any, Final

from ..errors import FrameTooLarge, LocalProtocolError

__all__ = [
    "DEFAULT_MAX_FRAME",
    "MSG_EXTRA",
    "PREAMBLE",
    "PROTOCOL_VERSION",
    "Err",
    "ErrorCode",
    "Frame",
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
    "encode",
    "encode_delivery",
    "encode_headers",
    "encode_msg_from_pub",
    "msg_head",
    "pub_head",
]

PROTOCOL_VERSION: Final = 1
PREAMBLE: Final = b"AIPC/1\r\n"
"""Sent by the client before its first frame. Readable on purpose: it tells a human with
``tcpdump`` what they are looking at, and an HTTP request line can never match it."""

DEFAULT_MAX_FRAME: Final = 8 * 1024 * 1024

MSG_EXTRA: Final = 4
"""A MSG may exceed the maximum frame by this much: it is a PUB plus the 4-byte sid, and
a PUB that fitted must stay deliverable."""

_HEAD: Final = struct.Struct(">IB")  # length, op
_HEAD_SID: Final = struct.Struct(">IBI")  # length, op, sid
_HEAD_PUB: Final = struct.Struct(">IBH")  # length, op, subject length
_NO_REPLY_NO_HEADERS: Final = b"\x00\x00\x00\x00\x00\x00"  # reply length 0, header block length 0
_U16: Final = struct.Struct(">H")
_U32: Final = struct.Struct(">I")
_SUB: Final = struct.Struct(">IIQB")  # sid, max_msgs, max_bytes, overflow
_ERR: Final = struct.Struct(">HI")  # code, sid
_EMPTY_HDR: Final = b"\x00\x00\x00\x00"


class Op(IntEnum):
    """The op byte that follows every frame's length."""

    HELLO = 1
    WELCOME = 2
    PUB = 3
    MSG = 4
    SUB = 5
    UNSUB = 6
    PING = 7
    PONG = 8
    ERR = 9


class Overflow(IntEnum):
    """What happens when a subscription's pending bound is reached (DESIGN.md §4)."""

    BLOCK = 0
    DROP_OLDEST = 1
    DROP_NEW = 2
    ERROR = 3


_OVERFLOWS: Final = frozenset(Overflow)


class ErrorCode(IntEnum):
    """Codes carried by ERR frames. Below 100: the connection is closed after the frame."""

    PROTOCOL = 1  # malformed frame, unknown op, bad preamble
    FRAME_TOO_LARGE = 2
    VERSION = 3  # no protocol version in common
    AUTH = 4  # token missing or wrong
    HANDSHAKE_TIMEOUT = 5
    PEER_TIMEOUT = 6  # no PONG or other traffic within the dead-peer time-out
    SHUTDOWN = 7  # the broker is going away
    LIMIT = 8  # a broker limit refused the connection (connections, per peer, handshakes)
    INVALID_SUBJECT = 100  # the frame is refused, the connection stays
    SLOW_CONSUMER = 101  # ``sid`` names the subscription cut off
    PERMISSION = 102
    SID_IN_USE = 103  # a SUB reused a live subscription id; refused
    NOT_DELIVERED = 104  # one message too large for ``sid``'s client; skipped, sub kept
    TOO_MANY_SUBSCRIPTIONS = 105  # a SUB beyond max_subscriptions; refused, link kept


Headers = dict[str, str]


class Pub:
    """PUB: a message from a client to the broker.

    ``raw`` is the encoded body. A frame decoded from a stream keeps the bytes it arrived
    in, so the broker forwards them to stream subscribers without re-encoding; ``data`` is
    then sliced out only if an in-process subscriber asks for it.
    """

    __slots__ = ("_data", "_off", "_raw", "headers", "reply", "subject")

    def __init__(
        self,
        subject: str,
        data: bytes,
        reply: str | None = None,
        headers: Headers | None = None,
        _raw: bytes | None = None,
        _off: int = 0,
    ) -> None:
        # _raw and _off are the decoder's (parse_frame): the body a PUB arrived in and
        # where its payload starts in it; ``data`` is then ignored, sliced out when asked.
        # Plain arguments, not a classmethod on cls.__new__: mypyc cannot compile that,
        # and interpreted this is the faster of the two (docs/decisions.md, mypyc).
        self.subject = subject
        self.reply = reply
        self.headers = headers
        self._data: bytes | None = data if _raw is None else None
        self._raw = _raw
        self._off = _off

    @property
    def data(self) -> bytes:
        if self._data is None:
            assert self._raw is not None
            self._data = self._raw[self._off :]
        return self._data

    @property
    def size(self) -> int:
        """The payload's length, without slicing it out of ``raw`` (the broker counts
        every PUB's bytes; a slice would copy the payload only to measure it)."""
        if self._data is not None:
            return len(self._data)
        assert self._raw is not None
        return len(self._raw) - self._off

    @property
    def raw(self) -> bytes:
        """The PUB body as it goes on the wire (also the tail of a MSG body)."""
        if self._raw is None:
            assert self._data is not None
            self._raw = _pub_body(self.subject, self.reply, self.headers, self._data)
        return self._raw

    def __repr__(self) -> str:
        return f"Pub({self.subject!r}, {len(self.data)} bytes, reply={self.reply!r})"


class Msg:
    """MSG: a message from the broker to one subscription (``sid``) of a client."""

    __slots__ = ("data", "headers", "reply", "sid", "subject")

    def __init__(
        self,
        sid: int,
        subject: str,
        data: bytes,
        reply: str | None = None,
        headers: Headers | None = None,
    ) -> None:
        self.sid = sid
        self.subject = subject
        self.data = data
        self.reply = reply
        self.headers = headers

    def __repr__(self) -> str:
        return f"Msg(sid={self.sid}, {self.subject!r}, {len(self.data)} bytes)"


class Sub:
    """SUB: register subscription ``sid`` on ``subject`` (a pattern), optionally in a queue.

    The bounds and overflow policy travel with it so that the broker can apply the same
    policy to its own outbound buffer when the client stops reading.
    """

    __slots__ = ("max_bytes", "max_msgs", "overflow", "queue", "sid", "subject")

    def __init__(
        self,
        sid: int,
        subject: str,
        queue: str | None = None,
        overflow: Overflow = Overflow.BLOCK,
        max_msgs: int = 0,
        max_bytes: int = 0,
    ) -> None:
        self.sid = sid
        self.subject = subject
        self.queue = queue
        self.overflow = overflow
        self.max_msgs = max_msgs
        self.max_bytes = max_bytes

    def __repr__(self) -> str:
        return f"Sub(sid={self.sid}, {self.subject!r}, queue={self.queue!r})"


class Unsub:
    """UNSUB: remove subscription ``sid``."""

    __slots__ = ("sid",)

    def __init__(self, sid: int) -> None:
        self.sid = sid

    def __repr__(self) -> str:
        return f"Unsub(sid={self.sid})"


class Ping:
    """PING: the peer must answer PONG. Also proves liveness."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "Ping()"


class Pong:
    """PONG: the answer to PING."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "Pong()"


class Hello:
    """HELLO: the client's first frame, a JSON object (``version``, ``token``, ``name``...)."""

    __slots__ = ("fields",)

    def __init__(self, fields: dict[str, Any]) -> None:
        self.fields = fields

    def __repr__(self) -> str:
        shown = {k: ("***" if k == "token" else v) for k, v in self.fields.items()}
        return f"Hello({shown})"


class Welcome:
    """WELCOME: the broker's answer to HELLO, a JSON object (``max_frame``...)."""

    __slots__ = ("fields",)

    def __init__(self, fields: dict[str, Any]) -> None:
        self.fields = fields

    def __repr__(self) -> str:
        return f"Welcome({self.fields})"


class Err:
    """ERR: an error with a code; ``sid`` is 0 unless it concerns one subscription."""

    __slots__ = ("code", "message", "sid")

    def __init__(self, code: int, message: str, sid: int = 0) -> None:
        self.code = code
        self.message = message
        self.sid = sid

    def __repr__(self) -> str:
        return f"Err({self.code}, {self.message!r}, sid={self.sid})"


Frame = Pub | Msg | Sub | Unsub | Ping | Pong | Hello | Welcome | Err

PING: Final = Ping()
PONG: Final = Pong()


def encode_headers(headers: Headers | None) -> bytes:
    """The header block *with* its u32 length prefix (``00000000`` when empty)."""
    if not headers:
        return _EMPTY_HDR
    if len(headers) == 1:
        for item in headers.items():
            try:
                block = _encoded.get(item)
            except TypeError:  # not a str (unhashable): _encode_headers says so, as before
                break
            if block is None:
                block = _encode_headers(headers)
                if len(block) <= _ENCODED_BLOCK_MAX:
                    if len(_encoded) >= _ENCODED_MAX:
                        _encoded.clear()
                    _encoded[item] = block
            return block
    return _encode_headers(headers)


_ENCODED_MAX: Final = 64
_ENCODED_BLOCK_MAX: Final = 256
_encoded: Final[dict[tuple[str, str], bytes]] = {}
"""Blocks of one header encoded lately, by their one (name, value): the most common header
map is a request's time-out alone, with the same few values over and over. Small blocks
only, at most 64: a stream of unique values clears it."""


def _encode_headers(headers: Headers) -> bytes:
    parts = [_U16.pack(len(headers))]
    for key, value in headers.items():
        k = key.encode()
        v = value.encode()
        if len(k) > 0xFFFF:
            raise LocalProtocolError(f"header name longer than 65535 bytes: {key[:40]!r}...")
        parts += (_U16.pack(len(k)), k, _U32.pack(len(v)), v)
    block = b"".join(parts)
    return _U32.pack(len(block)) + block


def _short(text: str | None, what: str) -> bytes:
    if text is None:
        return b"\x00\x00"
    b = text.encode()
    n = len(b)
    if n > 0xFFFF:
        raise LocalProtocolError(f"{what} longer than 65535 bytes")
    return n.to_bytes(2, "big") + b  # compiled, a primitive (a pack is a call); as fast else


# Compiled, int.to_bytes is a mypyc primitive and a struct's pack a generic method call
# with its arguments boxed: a frame head costs about 500 instructions fewer as one integer
# turned to bytes. Interpreted, the pack is faster (a MSG head 0.10 against 0.25 us), so
# the pure build keeps it. Either way an integer too large for its field (a length past
# 4 GiB, a sid past u32) goes to the pack, which refuses it as before.
_BY_INT: Final = not isinstance(_short, FunctionType)
_PUB_OP: Final = Op.PUB.value << 16  # (length << 24) | _PUB_OP | subject length: 7 bytes
_MSG_OP: Final = Op.MSG.value << 32  # (length << 40) | _MSG_OP | sid: 9 bytes


def _pub_body(subject: str, reply: str | None, headers: Headers | None, data: bytes) -> bytes:
    return b"".join(
        (_short(subject, "subject"), _short(reply, "reply subject"), encode_headers(headers), data)
    )


def pub_head(
    subject: str, reply: str | None, headers: Headers | None, size: int, max_frame: int
) -> bytes:
    """A PUB frame up to its payload of ``size`` bytes: ``pub_head(...) + data`` is
    ``encode(Pub(subject, data, reply, headers))``. A stream link queues the two apart and
    joins them once with the rest of its batch: the payload is copied once, not three
    times (body, frame, batch)."""
    s = subject.encode()
    n = len(s)
    if n > 0xFFFF:
        raise LocalProtocolError("subject longer than 65535 bytes")
    if reply is None and not headers:
        tail = _NO_REPLY_NO_HEADERS
    else:
        tail = _short(reply, "reply subject") + encode_headers(headers)
    length = n + size + 3 + len(tail)  # op, subject length, subject, tail, payload
    if length > max_frame:
        raise FrameTooLarge(
            f"PUB frame of {length} bytes exceeds the maximum frame size {max_frame}"
        )
    if _BY_INT and length <= 0xFFFFFFFF:
        return ((length << 24) | _PUB_OP | n).to_bytes(7, "big") + s + tail
    return _HEAD_PUB.pack(length, Op.PUB, n) + s + tail


def msg_head(sid: int, pub: Pub, max_frame: int) -> bytes:
    """A MSG frame for subscription ``sid`` up to the PUB body it carries:
    ``msg_head(sid, pub, m) + pub.raw`` is the frame (the broker's fan-out queues the two
    apart, so each subscriber costs no copy of the body beyond its batch's join)."""
    length = len(pub.raw) + 5
    if length > max_frame + MSG_EXTRA:
        raise FrameTooLarge(f"message of {length} bytes exceeds the maximum frame {max_frame}")
    if _BY_INT and length <= 0xFFFFFFFF and 0 <= sid <= 0xFFFFFFFF:
        return ((length << 40) | _MSG_OP | sid).to_bytes(9, "big")
    return _HEAD_SID.pack(length, Op.MSG, sid)


def encode_msg_from_pub(sid: int, pub: Pub, max_frame: int) -> bytes:
    """A MSG frame for subscription ``sid`` carrying ``pub``, reusing its encoded body."""
    return msg_head(sid, pub, max_frame) + pub.raw


def encode_delivery(
    sid: int,
    subject: str,
    data: bytes | None,
    reply: str | None,
    headers: Headers | None,
    pub: Pub | None,
    max_frame: int,
) -> bytes:
    """The MSG frame a stream-like link writes for :meth:`Link.deliver`: the PUB's body
    reused when the message arrived as one, else encoded from the fields.

    ``data`` is None when ``pub`` is given (``Broker.publish`` does not slice it out for
    a link that forwards the frame's bytes): said in the type, since the compiled build
    checks it."""
    if pub is None:
        assert data is not None
        return encode(Msg(sid, subject, data, reply, headers), max_frame)
    return encode_msg_from_pub(sid, pub, max_frame)


def encode(frame: Frame, max_frame: int = DEFAULT_MAX_FRAME) -> bytes:
    """Encode one frame, length prefix included.

    Raises :class:`FrameTooLarge` if the result would exceed ``max_frame`` (the frame is
    refused here, at the sender, instead of being cut off by the receiver).
    """
    body: bytes
    try:
        if isinstance(frame, Pub):
            op, body = Op.PUB, frame.raw
        elif isinstance(frame, Msg):
            op = Op.MSG
            body = _U32.pack(frame.sid) + _pub_body(
                frame.subject, frame.reply, frame.headers, frame.data
            )
        elif isinstance(frame, Sub):
            op = Op.SUB
            if frame.overflow not in _OVERFLOWS:
                raise LocalProtocolError(f"SUB with unknown overflow policy {frame.overflow!r}")
            body = b"".join(
                (
                    _SUB.pack(frame.sid, frame.max_msgs, frame.max_bytes, frame.overflow),
                    _short(frame.subject, "subject"),
                    _short(frame.queue, "queue"),
                )
            )
        elif isinstance(frame, Unsub):
            op, body = Op.UNSUB, _U32.pack(frame.sid)
        elif isinstance(frame, Ping):
            op, body = Op.PING, b""
        elif isinstance(frame, Pong):
            op, body = Op.PONG, b""
        elif isinstance(frame, Hello):
            op, body = Op.HELLO, json.dumps(frame.fields, separators=(",", ":")).encode()
        elif isinstance(frame, Welcome):
            op, body = Op.WELCOME, json.dumps(frame.fields, separators=(",", ":")).encode()
        elif isinstance(frame, Err):
            op, body = Op.ERR, _ERR.pack(frame.code, frame.sid) + frame.message.encode()
        else:  # pragma: no cover - the union above is exhaustive
            raise LocalProtocolError(f"not a frame: {frame!r}")
    except struct.error as exc:
        # A sid, count or code outside its field (a u32 sid of 2**32, say).
        raise LocalProtocolError(
            f"{type(frame).__name__} has a field out of range: {exc}"
        ) from None
    length = len(body) + 1
    if length > max_frame + (MSG_EXTRA if op is Op.MSG else 0):
        raise FrameTooLarge(
            f"{op.name} frame of {length} bytes exceeds the maximum frame size {max_frame}"
        )
    return _HEAD.pack(length, op) + body
