"""Edges of the spec a client in another language meets (issue 8), on the codec alone.

The decoder's two-step length check (docs/protocol.md §5), an unknown op (§7), and the
``asyncipc-timeout`` value (§12). The same rules are checked from raw sockets against a
real broker and a real Python client in ``tests/test_wire_raw.py``.
"""

from __future__ import annotations

import math
import re
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from asyncipc.errors import FrameTooLarge, RemoteProtocolError
from asyncipc.protocol import (
    MSG_EXTRA,
    FrameDecoder,
    Msg,
    Op,
    encode,
    format_timeout,
    parse_timeout,
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


# --- §12: the time-out header ------------------------------------------------------------------

PLAIN = re.compile(r"[0-9]+(\.[0-9]+)?")


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.5, "0.5"),
        (1, "1"),
        (30.0, "30"),
        (0.1, "0.1"),
        (1e-05, "0.00001"),
        (1234567.125, "1234567.125"),  # ":g" would round it to 1.23457e+06
        (1e16, "10000000000000000"),
        (0.0, "0"),
        (-0.0, "0"),
    ],
)
def test_format_timeout_writes_a_plain_decimal(seconds: float, text: str) -> None:
    assert format_timeout(seconds) == text


@pytest.mark.parametrize("seconds", [-1.0, -1e-9, math.inf, -math.inf, math.nan])
def test_format_timeout_has_no_value_for_a_wait_without_limit(seconds: float) -> None:
    assert format_timeout(seconds) is None  # the header is left out


@given(st.floats(min_value=0, allow_infinity=False, allow_nan=False))
def test_format_timeout_round_trips_without_an_exponent(seconds: float) -> None:
    text = format_timeout(seconds)
    assert text is not None
    assert PLAIN.fullmatch(text), text
    assert parse_timeout(text) == seconds


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("0.5", 0.5),
        ("30", 30.0),
        ("0.00001", 1e-05),
        (".5", 0.5),
        ("5.", 5.0),
        ("1e-05", 1e-05),  # what asyncipc 0.1.0 wrote: accepted, leniently
        ("1E+06", 1e6),
        ("2.5e3", 2500.0),
    ],
)
def test_parse_timeout_reads_decimals_and_leniently_exponents(text: str, seconds: float) -> None:
    assert parse_timeout(text) == seconds


@pytest.mark.parametrize(
    "text",
    ["", ".", "-1", "+1", " 1", "1 ", "1_0", "inf", "nan", "0x10", "1e", "e5", "\u0661", "1e999"],
)
def test_parse_timeout_refuses_what_the_spec_does_not_write(text: str) -> None:
    """float() takes most of these; a reader in another language would not."""
    assert parse_timeout(text) is None
