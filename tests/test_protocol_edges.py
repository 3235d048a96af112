"""Edges of the spec a client in another language meets (issue 8), on the codec alone.

The decoder's two-step length check (docs/protocol.md §5) and an unknown op (§7). The same
rules are checked from raw sockets against a real broker and a real Python client in
``tests/test_wire_raw.py``.
"""

from __future__ import annotations

import struct

import pytest

from asyncipc.errors import FrameTooLarge, RemoteProtocolError
from asyncipc.protocol import (
    MSG_EXTRA,
    FrameDecoder,
    Msg,
    Op,
    encode,
)

MAX = 100


def head(length: int, op: Op | int) -> bytes:
    return struct.pack(">IB", length, op)


def client_decoder() -> FrameDecoder:
    return FrameDecoder(max_frame=MAX, msg_extra=MSG_EXTRA)


# --- §5: the length, checked twice -------------------------------------------------------


def test_a_msg_may_be_max_plus_msg_extra() -> None:
    wire = encode(Msg(1, "a", b"d" * (MAX + MSG_EXTRA - 1 - 4 - 3 - 2 - 4)), MAX)
    assert struct.unpack_from(">I", wire)[0] == MAX + MSG_EXTRA
    dec = client_decoder()
    assert dec.feed(wire[:-1]) == []  # a long MSG is buffered like any frame
    (m,) = dec.feed(wire[-1:])
    assert isinstance(m, Msg)


def test_over_max_plus_msg_extra_is_refused_from_the_length_alone() -> None:
    dec = client_decoder()
    prefix = struct.pack(">I", MAX + MSG_EXTRA + 1)
    assert dec.feed(prefix[:3]) == []
    with pytest.raises(FrameTooLarge, match="frame length 105 exceeds the maximum frame size 100"):
        dec.feed(prefix[3:])  # the op byte is not needed, nor waited for


@pytest.mark.parametrize("op", [Op.PUB, Op.WELCOME, Op.PING, Op.PONG, Op.ERR, 42])
@pytest.mark.parametrize("extra", [1, MSG_EXTRA])
def test_another_op_over_max_is_refused_once_its_op_byte_is_in(op: int, extra: int) -> None:
    dec = client_decoder()
    assert dec.feed(struct.pack(">I", MAX + extra)) == []  # could still be a MSG: wait
    assert dec.buffered == 4
    with pytest.raises(FrameTooLarge, match="only a MSG may exceed it, by 4"):
        dec.feed(bytes([op]))  # one byte more is enough: no body is read


def test_the_second_check_applies_to_frames_after_good_ones() -> None:
    """Within one chunk, the good frames come out first and the error waits (§8)."""
    dec = client_decoder()
    good = encode(Msg(1, "a", b"x"), MAX)
    frames = dec.feed(good + head(MAX + 1, Op.ERR))
    assert len(frames) == 1
    assert isinstance(dec.error, FrameTooLarge)
    with pytest.raises(FrameTooLarge):
        dec.feed(b"")


def test_the_broker_side_allows_nothing_extra() -> None:
    """The broker never accepts a MSG, so its bound is the plain one (msg_extra 0)."""
    dec = FrameDecoder(max_frame=MAX)
    with pytest.raises(
        FrameTooLarge, match=r"frame length 101 exceeds the maximum frame size 100$"
    ):
        dec.feed(head(MAX + 1, Op.MSG))


# --- §7: an unknown op is fatal -------------------------------------------------------------


def test_an_unknown_op_is_a_protocol_error_not_skipped() -> None:
    dec = client_decoder()
    unknown = struct.pack(">IB", 3, 42) + b"??"
    pong = struct.pack(">IB", 1, Op.PONG)
    with pytest.raises(RemoteProtocolError, match="unknown frame op 42"):
        dec.feed(unknown + pong)
    with pytest.raises(RemoteProtocolError):  # and the stream stays broken
        dec.feed(pong)
