"""The sans-I/O codec alone: ``encode`` and ``FrameDecoder``, no sockets, no event loop.

Round trips are property-based (hypothesis); malformed input is built byte by byte with
``struct`` so that each case breaks exactly one rule of ``docs/protocol.md``. The worked
example of the spec is checked by ``tests/test_wire_raw.py`` and not repeated here.
"""

from __future__ import annotations

import json
import struct
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import asyncipc
from asyncipc.errors import (
    FrameTooLarge,
    LocalProtocolError,
    ProtocolError,
    RemoteProtocolError,
)
from asyncipc.protocol import (
    DEFAULT_MAX_FRAME,
    MSG_EXTRA,
    PING,
    PREAMBLE,
    Err,
    Frame,
    FrameDecoder,
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
    decode_headers,
    encode,
    encode_headers,
    encode_msg_from_pub,
    parse_frame,
)
from asyncipc.protocol.frames import msg_head, pub_head
from asyncipc.subjects import validate_pattern, validate_subject

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --- strategies -----------------------------------------------------------------------

# A token: any non-surrogate character except '.', '*', '>' and whitespace (§11).
token_chars = st.characters(
    codec="utf-8", exclude_categories=("Cs",), exclude_characters=".*>"
).filter(lambda c: not c.isspace())
tokens = st.text(token_chars, min_size=1, max_size=8)
subjects = st.lists(tokens, min_size=1, max_size=5).map(".".join)
patterns = st.lists(st.one_of(tokens, st.just("*")), min_size=1, max_size=5).flatmap(
    lambda toks: st.sampled_from([".".join(toks), ".".join([*toks, ">"])])
) | st.just(">")
queues = st.text(
    st.characters(codec="utf-8", exclude_categories=("Cs",), exclude_characters="*>").filter(
        lambda c: not c.isspace()
    ),
    min_size=1,
    max_size=12,
)
header_maps = st.dictionaries(st.text(max_size=12), st.text(max_size=30), min_size=1, max_size=5)
payloads = st.binary(max_size=300)
u32 = st.integers(0, 2**32 - 1)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)
json_objects = st.dictionaries(st.text(max_size=10), json_values, max_size=5)

pubs = st.builds(
    Pub,
    subject=subjects,
    data=payloads,
    reply=st.none() | subjects,
    headers=st.none() | header_maps,
)
msgs = st.builds(
    Msg,
    sid=u32,
    subject=subjects,
    data=payloads,
    reply=st.none() | subjects,
    headers=st.none() | header_maps,
)
subs = st.builds(
    Sub,
    sid=u32,
    subject=patterns,
    queue=st.none() | queues,
    overflow=st.sampled_from(Overflow),
    max_msgs=u32,
    max_bytes=st.integers(0, 2**64 - 1),
)
unsubs = st.builds(Unsub, u32)
errs = st.builds(Err, code=st.integers(0, 0xFFFF), message=st.text(max_size=60), sid=u32)
hellos = st.builds(Hello, json_objects)
welcomes = st.builds(Welcome, json_objects)
any_frame = st.one_of(
    pubs, msgs, subs, unsubs, errs, hellos, welcomes, st.just(Ping()), st.just(Pong())
)


def canon(frame: Frame) -> tuple[Any, ...]:
    """A comparable view of a frame's fields."""
    if isinstance(frame, Pub):
        return ("PUB", frame.subject, frame.reply, frame.headers, frame.data)
    if isinstance(frame, Msg):
        return ("MSG", frame.sid, frame.subject, frame.reply, frame.headers, frame.data)
    if isinstance(frame, Sub):
        f = frame
        return ("SUB", f.sid, f.subject, f.queue, f.overflow, f.max_msgs, f.max_bytes)
    if isinstance(frame, Unsub):
        return ("UNSUB", frame.sid)
    if isinstance(frame, Ping):
        return ("PING",)
    if isinstance(frame, Pong):
        return ("PONG",)
    if isinstance(frame, Hello):
        return ("HELLO", frame.fields)
    if isinstance(frame, Welcome):
        return ("WELCOME", frame.fields)
    assert isinstance(frame, Err)
    return ("ERR", frame.code, frame.message, frame.sid)


def decode_all(data: bytes, **kw: Any) -> list[Frame]:
    dec = FrameDecoder(**kw)
    out = dec.feed(data)
    dec.eof()
    assert dec.buffered == 0
    return out


# --- raw builders for malformed input -------------------------------------------------


def raw(op: int, body: bytes = b"") -> bytes:
    return struct.pack(">IB", len(body) + 1, op) + body


def s16(b: bytes) -> bytes:
    return struct.pack(">H", len(b)) + b


def hblock(entries: list[tuple[bytes, bytes]]) -> bytes:
    block = struct.pack(">H", len(entries))
    for k, v in entries:
        block += s16(k) + struct.pack(">I", len(v)) + v
    return struct.pack(">I", len(block)) + block


NO_HDR = b"\x00\x00\x00\x00"
SUB_FIXED = struct.pack(">IIQB", 1, 0, 0, 0)


# --- round trips ----------------------------------------------------------------------


def test_strategies_produce_valid_subjects() -> None:
    """The generators below really produce what the subject rules accept."""

    @given(subjects, patterns)
    @SETTINGS
    def check(subject: str, pattern: str) -> None:
        assert validate_subject(subject) == subject
        assert validate_pattern(pattern) == pattern

    check()


@pytest.mark.parametrize(
    "strategy",
    [pubs, msgs, subs, unsubs, errs, hellos, welcomes, st.just(Ping()), st.just(Pong())],
    ids=["pub", "msg", "sub", "unsub", "err", "hello", "welcome", "ping", "pong"],
)
def test_round_trip_every_frame_type(strategy: st.SearchStrategy[Frame]) -> None:
    @given(strategy)
    @SETTINGS
    def check(frame: Frame) -> None:
        wire = encode(frame)
        (length, op) = struct.unpack_from(">IB", wire)
        assert length == len(wire) - 4
        assert type(frame).__name__.upper() == Op(op).name
        (back,) = decode_all(wire)
        assert type(back) is type(frame)
        assert canon(back) == canon(frame)
        assert encode(back) == wire

    check()


@given(pubs)
@SETTINGS
def test_decoded_pub_forwards_its_bytes_unchanged(pub: Pub) -> None:
    """§7.4: a MSG body is the sid followed by the PUB body byte for byte."""
    wire = encode(pub)
    (back,) = decode_all(wire)
    assert isinstance(back, Pub)
    assert back.raw == wire[5:]
    msg_wire = encode_msg_from_pub(7, back, DEFAULT_MAX_FRAME)
    assert msg_wire == encode(Msg(7, pub.subject, pub.data, pub.reply, pub.headers))
    assert struct.unpack_from(">I", msg_wire)[0] == struct.unpack_from(">I", wire)[0] + 4
    assert msg_wire[9:] == wire[5:]
    (m,) = decode_all(msg_wire)
    assert canon(m) == ("MSG", 7, pub.subject, pub.reply, pub.headers, pub.data)


@given(any_frame)
@SETTINGS
def test_parse_frame_alone_reads_what_encode_wrote(frame: Frame) -> None:
    """The ring link and the datagram codec parse whole frames with ``parse_frame``,
    without a ``FrameDecoder``: it must agree with the encoder on every frame type."""
    wire = encode(frame)
    back = parse_frame(wire[4], wire[5:])
    assert type(back) is type(frame)
    assert canon(back) == canon(frame)


@given(header_maps, st.binary(max_size=8), st.binary(max_size=8))
@SETTINGS
def test_decode_headers_inverts_encode_headers_within_a_larger_buffer(
    headers: dict[str, str], before: bytes, after: bytes
) -> None:
    block = encode_headers(headers)[4:]  # the block without its u32 length
    assert decode_headers(block) == headers
    framed = before + block + after
    assert decode_headers(framed, len(before), len(before) + len(block)) == headers


def test_decode_headers_names_a_block_that_does_not_end_where_it_should() -> None:
    block = encode_headers({"k": "v"})[4:]
    with pytest.raises(RemoteProtocolError, match="1 trailing bytes"):
        decode_headers(block + b"x")
    for cut in range(2, len(block)):  # inside a length field or inside the text
        with pytest.raises(RemoteProtocolError, match="runs past the header block"):
            decode_headers(block[:cut])
    with pytest.raises(RemoteProtocolError, match="unknown frame op 99"):
        parse_frame(99, b"")


def test_a_header_block_seen_again_decodes_to_a_map_of_its_own() -> None:
    """Small blocks are remembered (every request carries the same time-out block), but
    each decode hands out a dict of its own: a receiver may change a message's headers,
    and the next message with the same block must not see it."""
    block = encode_headers({"asyncipc-timeout": "5"})[4:]
    first = decode_headers(block)
    first["added"] = "by the first receiver"
    second = decode_headers(bytearray(block))  # the receive path decodes from a bytearray
    assert second == {"asyncipc-timeout": "5"}
    assert second is not first
    second.clear()
    framed = b"xy" + block
    assert decode_headers(framed, 2, len(framed)) == {"asyncipc-timeout": "5"}


def test_remembered_header_blocks_stay_few_and_small() -> None:
    """A stream of unique headers cannot grow the memory of encoded and decoded blocks,
    and a large block is never kept."""
    from asyncipc.protocol import decoder, frames

    for i in range(1000):
        block = encode_headers({"trace": f"{i:08d}"})
        assert decode_headers(block[4:]) == {"trace": f"{i:08d}"}
    assert 0 < len(frames._encoded) <= 64
    assert 0 < len(decoder._decoded) <= 64
    big = {"big": "v" * 300}
    block = encode_headers(big)
    assert decode_headers(block[4:]) == big
    assert ("big", "v" * 300) not in frames._encoded
    assert block[4:] not in decoder._decoded
    # The same one-header map encodes to the same bytes, remembered or not.
    assert encode_headers({"k": "v"}) == encode_headers({"k": "v"}) == hblock([(b"k", b"v")])


def test_pub_with_and_without_headers_and_reply() -> None:
    plain = encode(Pub("a.b", b"xyz"))
    assert plain == raw(Op.PUB, s16(b"a.b") + b"\x00\x00" + NO_HDR + b"xyz")
    full = encode(Pub("a.b", b"", reply="r.1", headers={"k": "v\u00e9"}))
    assert full == raw(Op.PUB, s16(b"a.b") + s16(b"r.1") + hblock([(b"k", "v\u00e9".encode())]))
    (p,) = decode_all(full)
    assert isinstance(p, Pub)
    assert (p.subject, p.reply, p.headers, p.data) == ("a.b", "r.1", {"k": "v\u00e9"}, b"")


def test_absent_and_empty_are_the_same_on_the_wire() -> None:
    """§6: an empty reply, queue or header map travels as 'absent' and comes back None."""
    assert encode(Pub("a", b"", reply="", headers={})) == encode(Pub("a", b""))
    assert encode_headers({}) == encode_headers(None) == NO_HDR
    (p,) = decode_all(encode(Pub("a", b"d", reply="", headers={})))
    assert isinstance(p, Pub)
    assert (p.reply, p.headers) == (None, None)
    (s,) = decode_all(encode(Sub(3, "a.*", queue="")))
    assert isinstance(s, Sub)
    assert s.queue is None


def test_sub_with_and_without_queue() -> None:
    for queue in (None, "workers"):
        sub = Sub(9, "orders.*.>", queue, Overflow.DROP_NEW, 10, 2**40)
        (back,) = decode_all(encode(sub))
        assert canon(back) == canon(sub)
        assert isinstance(back, Sub)
        assert isinstance(back.overflow, Overflow)


def test_header_block_of_only_a_zero_count_is_an_empty_map() -> None:
    """§6.2: the reference decoder accepts ``00 00 00 02 00 00`` as no headers."""
    body = s16(b"a") + b"\x00\x00" + b"\x00\x00\x00\x02\x00\x00" + b"data"
    (p,) = decode_all(raw(Op.PUB, body))
    assert isinstance(p, Pub)
    assert not p.headers
    assert p.data == b"data"


def test_ping_and_pong_ignore_body_bytes() -> None:
    """§7.7: a receiver ignores any body bytes of PING and PONG."""
    out = decode_all(raw(Op.PING, b"junk") + raw(Op.PONG, b"\x00"))
    assert [type(f) for f in out] == [Ping, Pong]


def test_err_message_is_decoded_leniently() -> None:
    """§7.8: invalid UTF-8 in an ERR message is replaced, not an error."""
    (e,) = decode_all(raw(Op.ERR, struct.pack(">HI", 100, 5) + b"bad \xff byte"))
    assert isinstance(e, Err)
    assert (e.code, e.sid) == (100, 5)
    assert e.message == "bad \ufffd byte"


# --- splitting and concatenation ------------------------------------------------------


@given(st.lists(any_frame, min_size=1, max_size=8), st.data())
@SETTINGS
def test_any_split_of_a_stream_gives_the_same_frames(
    frames: list[Frame], data: st.DataObject
) -> None:
    stream = b"".join(encode(f) for f in frames)
    expected = [canon(f) for f in frames]

    # all at once
    assert [canon(f) for f in decode_all(stream)] == expected

    # one byte at a time: each frame comes out exactly when its last byte arrives
    dec = FrameDecoder()
    ends = set()
    pos = 0
    for f in frames:
        pos += len(encode(f))
        ends.add(pos)
    got: list[Frame] = []
    for i in range(len(stream)):
        out = dec.feed(stream[i : i + 1])
        assert len(out) == (1 if i + 1 in ends else 0)
        got += out
    dec.eof()
    assert [canon(f) for f in got] == expected

    # random chunks
    cuts = sorted(data.draw(st.sets(st.integers(0, len(stream)), max_size=12)))
    dec = FrameDecoder()
    got = []
    prev = 0
    for cut in [*cuts, len(stream)]:
        got += dec.feed(stream[prev:cut])
        prev = cut
    dec.eof()
    assert dec.buffered == 0
    assert [canon(f) for f in got] == expected


@given(st.lists(any_frame, max_size=6), st.integers(1, 9))
@SETTINGS
def test_preamble_then_frames_in_any_chunking(frames: list[Frame], step: int) -> None:
    stream = PREAMBLE + b"".join(encode(f) for f in frames)
    dec = FrameDecoder(expect_preamble=True)
    got: list[Frame] = []
    for i in range(0, len(stream), step):
        got += dec.feed(stream[i : i + step])
    dec.eof()
    assert [canon(f) for f in got] == [canon(f) for f in frames]


def read_into(dec: FrameDecoder, data: bytes) -> list[Frame]:
    """What a BufferedProtocol's transport does: read into get_buffer's view, at most as
    much as it offers, then call buffer_updated (the view still held, as uvloop holds it:
    a buffer export, released after; the view itself may be the decoder's own)."""
    got: list[Frame] = []
    pos = 0
    while pos < len(data):
        with memoryview(dec.get_buffer(-1)) as view:
            n = min(len(view), len(data) - pos)
            view[:n] = data[pos : pos + n]
            got += dec.buffer_updated(n)
        pos += n
    return got


def read_in_pieces(
    dec: FrameDecoder, stream: bytes, data: st.DataObject, max_cuts: int
) -> list[Frame]:
    """``stream`` read into ``dec`` in pieces cut where hypothesis draws (read_into)."""
    cuts = sorted(data.draw(st.sets(st.integers(0, len(stream)), max_size=max_cuts)))
    got: list[Frame] = []
    prev = 0
    for cut in [*cuts, len(stream)]:
        got += read_into(dec, stream[prev:cut])
        prev = cut
    return got


@given(st.lists(any_frame, min_size=1, max_size=8), st.data())
@SETTINGS
def test_reading_into_the_decoder_buffer_gives_the_same_frames(
    frames: list[Frame], data: st.DataObject
) -> None:
    dec = FrameDecoder(expect_preamble=True)
    got = read_in_pieces(dec, PREAMBLE + b"".join(encode(f) for f in frames), data, 12)
    dec.eof()
    assert dec.buffered == 0
    assert [canon(f) for f in got] == [canon(f) for f in frames]


def test_receive_buffer_grows_for_a_large_frame_and_shrinks_after_it() -> None:
    """Issue 13: the buffer must not keep the size of the largest frame it ever held."""
    big = encode(Pub("big", b"x" * (7 << 20)))
    small = encode(Pub("small", b"y" * 64))
    dec = FrameDecoder()
    got = read_into(dec, big[: 3 << 20])
    assert got == []
    assert dec.capacity < len(big) + (1 << 20)
    got = read_into(dec, big[3 << 20 :] + small)
    assert [f.subject for f in got if isinstance(f, Pub)] == ["big", "small"]
    assert dec.buffered == 0
    dec.get_buffer(-1)  # a read offered: the buffer is sized for it
    assert dec.capacity <= 256 * 1024
    for _ in range(6):  # idle reads of a PING each: halves down to 64 KiB
        read_into(dec, encode(PING))
    assert dec.capacity == 64 * 1024


def test_a_trickled_large_frame_is_not_allocated_up_front() -> None:
    dec = FrameDecoder()
    head = encode(Pub("big", b"x" * (7 << 20)))[: 300 * 1024]
    assert read_into(dec, head) == []
    dec.get_buffer(-1)  # a read offered: the buffer is sized for it
    assert dec.capacity <= 2 * len(head) + 256 * 1024


def test_feed_lets_a_large_buffer_go_once_empty() -> None:
    """At once, not at the next read: a client that goes quiet after a large frame must
    not keep its size in the broker (issue 13, path 10)."""
    dec = FrameDecoder()
    assert len(dec.feed(encode(Pub("big", b"x" * (4 << 20))))) == 1
    assert dec.capacity <= 256 * 1024
    assert dec.feed(encode(PING)) == [PING]
    assert dec.capacity <= 256 * 1024


@given(st.lists(any_frame, max_size=20))
@SETTINGS
def test_a_record_of_whole_frames_gives_them_all(frames: list[Frame]) -> None:
    """FrameDecoder.record: a shared-memory ring record, parsed as a stream's read is."""
    dec = FrameDecoder(msg_extra=MSG_EXTRA)
    for _ in range(2):  # and again: nothing is left from the record before
        got = dec.record(memoryview(b"".join(encode(f) for f in frames)))
        assert [canon(f) for f in got] == [canon(f) for f in frames]
        assert dec.buffered == 0
        assert dec.error is None


def test_a_record_larger_than_a_read_is_parsed_whole_and_its_buffer_let_go() -> None:
    many = [Pub(f"s.{i}", b"z" * 1000) for i in range(400)]  # 400 KiB of frames
    dec = FrameDecoder()
    got = dec.record(memoryview(b"".join(encode(f) for f in many)))
    assert [f.subject for f in got if isinstance(f, Pub)] == [f.subject for f in many]
    assert dec.record(memoryview(encode(PING))) == [PING]
    assert dec.capacity <= 256 * 1024


@pytest.mark.parametrize(
    ("tail", "problem"),
    [
        (b"\x00\x00\x00", "3 stray bytes at the end of a ring record"),
        (struct.pack(">IB", 100, Op.PUB) + b"abc", "frame of 100 bytes runs past its ring record"),
    ],
)
def test_a_record_that_ends_inside_a_frame_is_named_after_its_good_frames(
    tail: bytes, problem: str
) -> None:
    dec = FrameDecoder()
    good = [Pub("a", b"1"), PING]
    got = dec.record(memoryview(b"".join(encode(f) for f in good) + tail))
    assert [canon(f) for f in got] == [canon(f) for f in good]
    assert isinstance(dec.error, RemoteProtocolError)
    assert problem in str(dec.error)
    with pytest.raises(RemoteProtocolError, match=problem):
        dec.record(memoryview(encode(PING)))
    # Alone, the bad tail raises at once.
    with pytest.raises(RemoteProtocolError, match=problem):
        FrameDecoder().record(memoryview(tail))


@given(msgs, st.data())
@SETTINGS
def test_a_msg_read_in_place_is_what_parse_frame_reads(msg: Msg, data: st.DataObject) -> None:
    """A MSG's fields are read where they lie in the receive buffer, which goes on past
    the frame: a cut or altered body must fail (with parse_frame's message) or decode as
    parse_frame decodes it, never read into the frame that follows. Padded past 1 KiB
    too: the compiled build reads a smaller MSG from a copy of its body instead
    (decoder._IN_PLACE_MIN), so both readers meet every case there."""
    pad = data.draw(st.sampled_from([0, 1100]))
    if pad:
        msg = Msg(msg.sid, msg.subject, msg.data + b"p" * pad, msg.reply, msg.headers)
    body = bytearray(encode(msg)[5:])
    cut = data.draw(st.integers(0, len(body)))
    del body[cut:]
    if body:
        at = data.draw(st.integers(0, len(body) - 1))
        body[at] = data.draw(st.integers(0, 255))
    stream = struct.pack(">IB", len(body) + 1, Op.MSG) + body + encode(PING)
    dec = FrameDecoder(msg_extra=MSG_EXTRA)
    problem = None
    try:
        want = [canon(parse_frame(Op.MSG, bytes(body))), canon(PING)]
    except RemoteProtocolError as exc:
        problem = str(exc)
    if problem is None:
        assert [canon(f) for f in dec.feed(stream)] == want
    else:
        with pytest.raises(RemoteProtocolError) as got:
            dec.feed(stream)
        assert str(got.value) == problem


@given(
    st.lists(st.sampled_from([0, 10, 1000, 1030, 5000]), min_size=1, max_size=100),
    st.data(),
)
@SETTINGS
def test_small_and_large_frames_in_one_read_come_out_once_each_in_order(
    sizes: list[int], data: st.DataObject
) -> None:
    """Compiled, the small frames of a read are parsed from one copy of up to 64 KiB of it
    and a large one where it lies (decoder._copied_frames): reads that mix them, run past
    the copy's end or stop inside a frame must give every frame once, in order."""
    frames: list[Frame] = [
        Msg(i, f"s.{i}", bytes([i % 256]) * size) if i % 3 else Pub(f"p.{i}", b"z" * size)
        for i, size in enumerate(sizes)
    ]
    dec = FrameDecoder(msg_extra=MSG_EXTRA)
    got = read_in_pieces(dec, b"".join(encode(f) for f in frames), data, 6)
    dec.eof()
    assert [canon(f) for f in got] == [canon(f) for f in frames]


@pytest.mark.parametrize("field", [0, 200, 500, 509, 510, 2000])
def test_a_large_msg_whose_fields_lie_past_its_first_512_bytes_reads_whole(field: int) -> None:
    """Compiled, a MSG over 1 KiB has its fields read from a copy of its first 512 bytes
    (decoder._msg_from_head); a header block, reply or subject that runs past them must
    be read where it lies instead, not cut or refused."""
    frames: list[Frame] = [
        Msg(1, "s" * (field or 1), b"p" * 3000),
        Msg(2, "a", b"q" * 3000, "r" * (field or 1)),
        Msg(3, "a", b"t" * 3000, None, {"k": "v" * field}),
        Msg(4, "a", b"u" * 3000, "r", {"k": "v" * field, "x": "y"}),
    ]
    dec = FrameDecoder(msg_extra=MSG_EXTRA)
    assert [canon(f) for f in dec.feed(b"".join(encode(f) for f in frames))] == [
        canon(f) for f in frames
    ]


def test_a_frame_over_a_small_max_frame_after_good_ones_in_the_same_read() -> None:
    """max_frame under 1 KiB: the copied frames' reader stops before the large one, and
    the decoder refuses it after handing out the good frames."""
    dec = FrameDecoder(max_frame=300)
    stream = (
        encode(Pub("a", b"x" * 100)) + encode(Pub("b", b"y" * 200)) + encode(Pub("c", b"z" * 400))
    )
    got = read_into(dec, stream)
    assert [p.subject for p in got if isinstance(p, Pub)] == ["a", "b"]
    assert isinstance(dec.error, FrameTooLarge)
    assert "exceeds the maximum frame size 300" in str(dec.error)


def test_partial_frame_is_held_not_returned() -> None:
    wire = encode(Pub("a.b", b"x" * 50))
    dec = FrameDecoder()
    assert dec.feed(wire[:-1]) == []
    assert dec.buffered == len(wire) - 1
    (p,) = dec.feed(wire[-1:])
    assert isinstance(p, Pub)
    assert dec.buffered == 0


# --- the preamble ---------------------------------------------------------------------


def test_preamble_alone_yields_nothing_and_is_consumed() -> None:
    dec = FrameDecoder(expect_preamble=True)
    for b in PREAMBLE:
        assert dec.feed(bytes([b])) == []
    assert dec.buffered == 0
    dec.eof()


@pytest.mark.parametrize("at", range(len(PREAMBLE)))
def test_wrong_preamble_byte_is_rejected_as_soon_as_it_arrives(at: int) -> None:
    """§4: rejected at the first mismatching byte, without waiting for 8 bytes."""
    dec = FrameDecoder(expect_preamble=True)
    assert dec.feed(PREAMBLE[:at]) == []
    wrong = bytes([PREAMBLE[at] ^ 0x20])
    expected = "unsupported protocol version" if at >= 5 else "bad preamble"
    with pytest.raises(RemoteProtocolError, match=expected):
        dec.feed(wrong)


def test_other_protocol_version_in_preamble() -> None:
    with pytest.raises(RemoteProtocolError, match=r"unsupported protocol version.*AIPC/2"):
        FrameDecoder(expect_preamble=True).feed(b"AIPC/2\r\n")


def test_frames_without_preamble_rejected_by_server_side() -> None:
    with pytest.raises(RemoteProtocolError, match="bad preamble"):
        FrameDecoder(expect_preamble=True).feed(encode(Hello({"version": 1})))


@pytest.mark.parametrize(
    "request_line", [b"GET / HTTP/1.1\r\n", b"POST /x HTTP/1.1\r\n", b"PRI * HTTP/2.0\r\n"]
)
def test_http_request_on_the_port_is_named(request_line: bytes) -> None:
    with pytest.raises(RemoteProtocolError, match="HTTP request"):
        FrameDecoder(expect_preamble=True).feed(request_line)


def test_http_request_split_across_reads_is_still_named() -> None:
    dec = FrameDecoder(expect_preamble=True)
    for b in b"GET":
        assert dec.feed(bytes([b])) == []
    with pytest.raises(RemoteProtocolError, match="HTTP request"):
        dec.feed(b" / HTTP/1.1\r\n")


def test_http_request_is_flagged_as_http_not_only_named() -> None:
    dec = FrameDecoder(expect_preamble=True)
    with pytest.raises(RemoteProtocolError):
        dec.feed(b"GET / HTTP/1.1\r\n")
    assert dec.foreign_protocol == "http"


def test_other_bad_preambles_are_not_flagged_as_http() -> None:
    dec = FrameDecoder(expect_preamble=True)
    with pytest.raises(RemoteProtocolError, match="bad preamble"):
        dec.feed(b"SSH-2.0-OpenSSH_9.6\r\n")
    assert dec.foreign_protocol is None


HTTP_REPLY = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n"


@pytest.mark.parametrize("chunk", [len(HTTP_REPLY), 1, 5])
def test_http_response_at_the_client_side_is_named(chunk: int) -> None:
    """Whole, one byte at a time, and split inside "HTTP/1.": never "a 1.2 GB frame"."""
    dec = FrameDecoder()

    def feed_in_chunks() -> None:
        for i in range(0, len(HTTP_REPLY), chunk):
            assert dec.feed(HTTP_REPLY[i : i + chunk]) == []

    with pytest.raises(RemoteProtocolError, match=r"HTTP response.*'HTTP/1\.") as raised:
        feed_in_chunks()
    assert dec.foreign_protocol == "http"
    if chunk == len(HTTP_REPLY):
        assert "'HTTP/1.1 400 Bad Request'" in str(raised.value)  # the status line, no more


def test_frames_at_the_client_side_are_not_taken_for_http() -> None:
    dec = FrameDecoder()
    assert [type(f) for f in dec.feed(encode(PING) + encode(PING))] == [Ping, Ping]
    # Only the start of the stream is checked: later bytes are frames or errors as ever.
    with pytest.raises(FrameTooLarge):
        dec.feed(b"HTTP/1.1 200 OK\r\n")
    assert dec.foreign_protocol is None


def test_client_side_decoder_does_not_expect_a_preamble() -> None:
    assert [type(f) for f in decode_all(encode(PING))] == [Ping]


def test_eof_during_preamble_is_an_error() -> None:
    dec = FrameDecoder(expect_preamble=True)
    dec.feed(PREAMBLE[:3])
    with pytest.raises(RemoteProtocolError, match="during the preamble after 3 bytes"):
        dec.eof()


def test_eof_before_anything_is_clean() -> None:
    FrameDecoder(expect_preamble=True).eof()
    FrameDecoder().eof()


# --- the maximum frame size -----------------------------------------------------------


def test_oversized_length_rejected_from_the_prefix_alone() -> None:
    """§5: checked as soon as the 4 length bytes arrive, before any body byte."""
    dec = FrameDecoder(max_frame=100)
    prefix = struct.pack(">I", 101)
    assert dec.feed(prefix[:3]) == []
    with pytest.raises(FrameTooLarge, match="frame length 101 exceeds the maximum frame size 100"):
        dec.feed(prefix[3:])


def test_oversized_length_rejected_after_preamble() -> None:
    dec = FrameDecoder(max_frame=1024, expect_preamble=True)
    with pytest.raises(FrameTooLarge, match="4294967295"):
        dec.feed(PREAMBLE + b"\xff\xff\xff\xff")


def test_frame_of_exactly_max_frame_is_accepted() -> None:
    max_frame = 100
    body = s16(b"a") + b"\x00\x00" + NO_HDR
    body += b"d" * (max_frame - 1 - len(body))
    wire = raw(Op.PUB, body)
    assert struct.unpack_from(">I", wire)[0] == max_frame
    (p,) = decode_all(wire, max_frame=max_frame)
    assert isinstance(p, Pub)
    assert encode(p, max_frame) == wire


def _pub_of_length(length: int) -> Pub:
    overhead = 1 + 3 + 2 + 4  # op, subject "a", no reply, no headers
    return Pub("a", b"d" * (length - overhead))


def test_encoding_over_max_frame_raises_frame_too_large() -> None:
    assert len(encode(_pub_of_length(100), 100)) == 104
    with pytest.raises(FrameTooLarge, match="PUB frame of 101 bytes exceeds the maximum frame"):
        encode(_pub_of_length(101), 100)
    with pytest.raises(FrameTooLarge, match="HELLO frame"):
        encode(Hello({"pad": "x" * 200}), 100)
    with pytest.raises(FrameTooLarge, match="ERR frame"):
        encode(Err(1, "x" * 200), 100)
    with pytest.raises(FrameTooLarge):
        encode(Sub(1, "a." * 60 + "b"), 100)


def test_msg_may_exceed_max_frame_by_msg_extra() -> None:
    """A PUB that fitted stays deliverable: its MSG is MSG_EXTRA (4) bytes longer."""
    assert MSG_EXTRA == 4
    pub = _pub_of_length(100)
    wire = encode_msg_from_pub(1, pub, 100)
    assert struct.unpack_from(">I", wire)[0] == 100 + MSG_EXTRA
    assert encode(Msg(1, "a", pub.data), 100) == wire
    # the client side reads with msg_extra=MSG_EXTRA (transports/_stream/link.py)
    (m,) = decode_all(wire, max_frame=100, msg_extra=MSG_EXTRA)
    assert canon(m) == ("MSG", 1, "a", None, None, pub.data)
    bigger = _pub_of_length(101)
    with pytest.raises(FrameTooLarge, match="105 bytes"):
        encode_msg_from_pub(1, bigger, 100)
    with pytest.raises(FrameTooLarge, match="MSG frame of 105 bytes"):
        encode(Msg(1, "a", bigger.data), 100)
    # the allowance is for MSG only
    with pytest.raises(FrameTooLarge):
        encode(Hello({"p": "x" * 100}), 100)


def test_encoder_refuses_strings_the_wire_cannot_carry() -> None:
    with pytest.raises(LocalProtocolError, match="subject longer than 65535"):
        encode(Pub("a" * 70000, b""))
    with pytest.raises(LocalProtocolError, match="reply subject longer than 65535"):
        encode(Pub("a", b"", reply="r" * 70000))
    with pytest.raises(LocalProtocolError, match="header name longer than 65535"):
        encode(Pub("a", b"", headers={"k" * 70000: "v"}))
    with pytest.raises(LocalProtocolError, match="queue longer than 65535"):
        encode(Sub(1, "a", queue="q" * 70000))


# --- malformed frames -----------------------------------------------------------------

MALFORMED: dict[str, tuple[bytes, type[Exception], str]] = {
    "zero length": (b"\x00\x00\x00\x00", RemoteProtocolError, "frame of length 0"),
    "unknown op 0": (raw(0), RemoteProtocolError, "unknown frame op 0"),
    "unknown op 10": (raw(10, b"abc"), RemoteProtocolError, "unknown frame op 10"),
    "unknown op 255": (raw(255), RemoteProtocolError, "unknown frame op 255"),
    "PUB empty body": (raw(Op.PUB), RemoteProtocolError, "PUB frame truncated"),
    "PUB no reply field": (raw(Op.PUB, s16(b"a")), RemoteProtocolError, "PUB frame truncated"),
    "PUB no header block": (
        raw(Op.PUB, s16(b"a") + b"\x00\x00"),
        RemoteProtocolError,
        "PUB frame truncated",
    ),
    "PUB subject past end": (
        raw(Op.PUB, b"\x00\x09abc"),
        RemoteProtocolError,
        "subject of 9 bytes runs past the frame end",
    ),
    "PUB reply past end": (
        raw(Op.PUB, s16(b"a") + b"\x00\x20r"),
        RemoteProtocolError,
        "reply subject of 32 bytes runs past the frame end",
    ),
    "PUB header block past end": (
        raw(Op.PUB, s16(b"a") + b"\x00\x00" + b"\x00\x00\x01\x00" + b"\x00\x01"),
        RemoteProtocolError,
        "header block of 256 bytes runs past the frame end",
    ),
    "PUB header entry past block": (
        # block of 5 bytes claims one entry whose value (4 bytes) lies outside it
        raw(
            Op.PUB,
            s16(b"a")
            + b"\x00\x00"
            + b"\x00\x00\x00\x05"
            + b"\x00\x01\x00\x01k"
            + b"\x00\x00\x00\x04data",
        ),
        RemoteProtocolError,
        "header entry runs past the header block",
    ),
    "PUB header block shorter than its count": (
        # a 1-byte block cannot even hold its u16 count
        raw(Op.PUB, s16(b"a") + b"\x00\x00" + b"\x00\x00\x00\x01" + b"\x00" + b"\x00data"),
        RemoteProtocolError,
        "header block",
    ),
    "PUB header block trailing bytes": (
        raw(
            Op.PUB,
            s16(b"a") + b"\x00\x00" + b"\x00\x00\x00\x04" + b"\x00\x00" + b"zz" + b"data",
        ),
        RemoteProtocolError,
        "header block has 2 trailing bytes",
    ),
    "PUB empty subject": (
        raw(Op.PUB, b"\x00\x00\x00\x00" + NO_HDR + b"data"),
        RemoteProtocolError,
        "empty subject",
    ),
    "PUB subject invalid UTF-8": (
        raw(Op.PUB, s16(b"a\xff") + b"\x00\x00" + NO_HDR),
        RemoteProtocolError,
        "subject is not valid UTF-8",
    ),
    "PUB reply invalid UTF-8": (
        raw(Op.PUB, s16(b"a") + s16(b"\xc3(") + NO_HDR),
        RemoteProtocolError,
        "reply subject is not valid UTF-8",
    ),
    "PUB header name invalid UTF-8": (
        raw(Op.PUB, s16(b"a") + b"\x00\x00" + hblock([(b"\xfe", b"v")])),
        RemoteProtocolError,
        "header name or value is not valid UTF-8",
    ),
    "PUB header value invalid UTF-8": (
        raw(Op.PUB, s16(b"a") + b"\x00\x00" + hblock([(b"k", b"\xed\xa0\x80")])),
        RemoteProtocolError,
        "header name or value is not valid UTF-8",
    ),
    "MSG shorter than sid": (raw(Op.MSG, b"\x00\x01"), RemoteProtocolError, "MSG frame truncated"),
    "MSG subject past end": (
        raw(Op.MSG, b"\x00\x00\x00\x01" + b"\x00\x05ab"),
        RemoteProtocolError,
        "subject of 5 bytes runs past the frame end",
    ),
    "SUB truncated fixed part": (
        raw(Op.SUB, SUB_FIXED[:10]),
        RemoteProtocolError,
        "SUB frame truncated",
    ),
    "SUB subject past end": (
        raw(Op.SUB, SUB_FIXED + b"\x00\x10a.b"),
        RemoteProtocolError,
        "subject of 16 bytes runs past the frame end",
    ),
    "SUB queue past end": (
        raw(Op.SUB, SUB_FIXED + s16(b"a") + b"\x00\x03q"),
        RemoteProtocolError,
        "queue of 3 bytes runs past the frame end",
    ),
    "SUB queue missing": (
        raw(Op.SUB, SUB_FIXED + s16(b"a")),
        RemoteProtocolError,
        "SUB frame truncated",
    ),
    "SUB trailing bytes": (
        raw(Op.SUB, SUB_FIXED + s16(b"a") + s16(b"q") + b"!!"),
        RemoteProtocolError,
        "SUB frame has 2 unexpected trailing bytes",
    ),
    "SUB subject invalid UTF-8": (
        raw(Op.SUB, SUB_FIXED + s16(b"\x80") + b"\x00\x00"),
        RemoteProtocolError,
        "subject is not valid UTF-8",
    ),
    "SUB queue invalid UTF-8": (
        raw(Op.SUB, SUB_FIXED + s16(b"a") + s16(b"\xff\xff")),
        RemoteProtocolError,
        "queue is not valid UTF-8",
    ),
    "SUB unknown overflow": (
        raw(Op.SUB, struct.pack(">IIQB", 1, 0, 0, 4) + s16(b"a") + b"\x00\x00"),
        RemoteProtocolError,
        "unknown overflow policy 4",
    ),
    "UNSUB trailing bytes": (
        raw(Op.UNSUB, b"\x00\x00\x00\x01\x00"),
        RemoteProtocolError,
        "UNSUB frame has 1 unexpected trailing bytes",
    ),
    "UNSUB too short": (raw(Op.UNSUB, b"\x00\x01"), RemoteProtocolError, "UNSUB"),
    "ERR shorter than code and sid": (
        raw(Op.ERR, b"\x00\x01\x00"),
        RemoteProtocolError,
        "ERR frame truncated",
    ),
    "HELLO not JSON": (
        raw(Op.HELLO, b"{nope"),
        RemoteProtocolError,
        "HELLO body is not valid JSON",
    ),
    "HELLO invalid UTF-8": (
        raw(Op.HELLO, b'{"a":"\xff"}'),
        RemoteProtocolError,
        "HELLO body is not valid JSON",
    ),
    "HELLO trailing garbage": (
        raw(Op.HELLO, b'{"version":1}xx'),
        RemoteProtocolError,
        "HELLO body is not valid JSON",
    ),
    "HELLO not an object": (
        raw(Op.HELLO, b"[1]"),
        RemoteProtocolError,
        "HELLO body must be a JSON object",
    ),
    "WELCOME not an object": (
        raw(Op.WELCOME, b'"x"'),
        RemoteProtocolError,
        "WELCOME body must be a JSON object",
    ),
}


@pytest.mark.parametrize("case", MALFORMED, ids=list(MALFORMED))
def test_malformed_frame_raises_a_specific_error(case: str) -> None:
    wire, exc, message = MALFORMED[case]
    with pytest.raises(exc, match=message):
        FrameDecoder().feed(wire)
    # the same bytes after the preamble, one at a time: same error, at the last byte
    dec = FrameDecoder(expect_preamble=True)
    dec.feed(PREAMBLE)
    for b in wire[:-1]:
        assert dec.feed(bytes([b])) == []
    with pytest.raises(exc, match=message):
        dec.feed(wire[-1:])


def test_errors_are_protocol_errors() -> None:
    for _, exc, _ in MALFORMED.values():
        assert issubclass(exc, ProtocolError)
    assert issubclass(FrameTooLarge, ProtocolError)


def test_decoder_stays_failed_after_an_error() -> None:
    """Module docstring: once it has raised, every later feed raises the same error."""
    dec = FrameDecoder()
    with pytest.raises(RemoteProtocolError) as first:
        dec.feed(raw(77))
    with pytest.raises(RemoteProtocolError) as again:
        dec.feed(encode(PING))
    assert again.value is first.value
    assert dec.buffered == 0


# --- end of stream --------------------------------------------------------------------


def test_eof_mid_frame_reports_truncation() -> None:
    wire = encode(Pub("a.b", b"0123456789"))
    dec = FrameDecoder()
    dec.feed(encode(PING) + wire[:9])
    with pytest.raises(RemoteProtocolError, match=f"closed mid-frame: got 9 of {len(wire)} bytes"):
        dec.eof()


def test_eof_inside_the_length_prefix_reports_truncation() -> None:
    dec = FrameDecoder()
    dec.feed(b"\x00\x00")
    with pytest.raises(RemoteProtocolError, match="closed mid-frame: got 2 of 4 length bytes"):
        dec.eof()


@given(any_frame, st.data())
@SETTINGS
def test_eof_at_any_cut_inside_a_frame_is_an_error(frame: Frame, data: st.DataObject) -> None:
    wire = encode(frame)
    cut = data.draw(st.integers(1, len(wire) - 1))
    dec = FrameDecoder()
    assert dec.feed(wire[:cut]) == []
    with pytest.raises(RemoteProtocolError, match="closed mid-frame"):
        dec.eof()


# --- good frames before a bad one --------------------------------------------------
# The decoder returns the frames that preceded a malformed one and raises on the next
# call, so that a broker acts on a HELLO or PUB that arrived in the same read as garbage.

GOOD = [Hello({"version": 1}), Sub(1, "a.*"), Pub("a.b", b"payload", reply="r.1")]
BAD_TAILS = {
    "zero length": (b"\x00\x00\x00\x00", RemoteProtocolError),
    "unknown op": (raw(42, b"x"), RemoteProtocolError),
    "truncated field": (raw(Op.PUB, b"\x00\x09abc"), RemoteProtocolError),
    "oversized prefix": (struct.pack(">I", DEFAULT_MAX_FRAME + 1), FrameTooLarge),
}


@pytest.mark.parametrize("bad", BAD_TAILS, ids=list(BAD_TAILS))
def test_good_frames_before_a_malformed_one_are_returned_then_next_feed_raises(bad: str) -> None:
    tail, exc = BAD_TAILS[bad]
    dec = FrameDecoder(expect_preamble=True)
    out = dec.feed(PREAMBLE + b"".join(encode(f) for f in GOOD) + tail)
    assert [canon(f) for f in out] == [canon(f) for f in GOOD]
    with pytest.raises(exc):
        dec.feed(b"")
    with pytest.raises(exc):
        dec.feed(encode(PING))


@pytest.mark.parametrize("bad", BAD_TAILS, ids=list(BAD_TAILS))
def test_good_frames_before_a_malformed_one_are_returned_then_eof_raises(bad: str) -> None:
    tail, exc = BAD_TAILS[bad]
    dec = FrameDecoder()
    out = dec.feed(b"".join(encode(f) for f in GOOD[1:]) + tail)
    assert [canon(f) for f in out] == [canon(f) for f in GOOD[1:]]
    with pytest.raises(exc):
        dec.eof()


def test_pending_error_is_visible_before_it_is_raised() -> None:
    dec = FrameDecoder()
    assert dec.error is None
    out = dec.feed(encode(PING) + raw(42))
    assert [type(f) for f in out] == [Ping]
    pending = dec.error
    assert isinstance(pending, RemoteProtocolError)
    assert "unknown frame op 42" in str(pending)
    with pytest.raises(RemoteProtocolError) as raised:
        dec.feed(b"")
    assert raised.value is pending


def test_malformed_first_frame_still_raises_at_once() -> None:
    """Whatever the change above does, a chunk with nothing good in it raises on feed."""
    for tail, exc in BAD_TAILS.values():
        with pytest.raises(exc):
            FrameDecoder().feed(tail)


def test_json_handshake_bodies_are_compact() -> None:
    """HELLO/WELCOME bodies are the JSON object itself, nothing around it (§7.1)."""
    wire = encode(Hello({"version": 1, "name": "n"}))
    assert json.loads(wire[5:]) == {"version": 1, "name": "n"}
    assert wire[5:] == b'{"version":1,"name":"n"}'


# --- messages that name the problem -----------------------------------------------------


@pytest.mark.parametrize(
    ("frame", "text"),
    [
        (Unsub(2**32), "Unsub has a field out of range"),
        (Err(70000, "x"), "Err has a field out of range"),
    ],
)
def test_encoding_out_of_range_fields_is_a_local_protocol_error(frame: Any, text: str) -> None:
    with pytest.raises(LocalProtocolError, match=text):
        encode(frame)


def test_encoding_an_unknown_overflow_policy_is_a_local_protocol_error() -> None:
    overflow: Any = 7  # what mypy refuses: Sub's overflow is an Overflow
    if asyncipc.compiled:
        # The one difference of the compiled build (docs/decisions.md, mypyc): a compiled
        # class checks its arguments' types, so the frame is refused as it is made.
        with pytest.raises(TypeError, match="Overflow"):
            Sub(1, "a", overflow=overflow)
        return
    with pytest.raises(LocalProtocolError, match="unknown overflow policy 7"):
        encode(Sub(1, "a", overflow=overflow))


def test_short_unsub_is_reported_as_truncated() -> None:
    with pytest.raises(RemoteProtocolError, match="UNSUB frame truncated"):
        FrameDecoder().feed(raw(Op.UNSUB, b"\x00"))


def test_one_byte_header_block_is_named() -> None:
    body = b"\x00\x01a\x00\x00" + b"\x00\x00\x00\x01" + b"\x00" + b"data"
    with pytest.raises(RemoteProtocolError, match="no room for its count"):
        FrameDecoder().feed(raw(Op.PUB, body))


@pytest.mark.parametrize(
    "pub",
    [
        Pub("a.b", b""),
        Pub("a.b", b"x" * 70_000),
        Pub("a.b", b"xyz", reply="r.1"),
        Pub("a.b", b"payload", reply="r.1", headers={"k": "v\u00e9", "k2": ""}),
    ],
)
def test_pub_size_is_the_payload_length_decoded_or_not(pub: Pub) -> None:
    """The broker counts each PUB's bytes with ``size``: it must be the payload's length
    both for a frame built here and for one decoded from the wire (data not sliced yet)."""
    assert pub.size == len(pub.data)
    (decoded,) = decode_all(encode(pub))
    assert isinstance(decoded, Pub)
    assert decoded.size == len(pub.data)
    assert decoded.data == pub.data


@given(
    subject=st.text(min_size=1, max_size=40),
    reply=st.none() | st.text(max_size=40),
    headers=st.none() | st.dictionaries(st.text(max_size=10), st.text(max_size=10), max_size=3),
    data=st.binary(max_size=300),
)
def test_pub_head_and_payload_are_the_pub_frame(
    subject: str, reply: str | None, headers: dict[str, str] | None, data: bytes
) -> None:
    """The stream link queues a PUB as its head and its payload apart (pub_head): joined,
    they must be exactly the frame encode() writes, which every decoder reads."""
    assert pub_head(subject, reply, headers, len(data), 1 << 20) + data == encode(
        Pub(subject, data, reply, headers)
    )


def test_pub_head_refuses_what_encode_refuses() -> None:
    with pytest.raises(FrameTooLarge):
        pub_head("a", None, None, 100, 50)
    with pytest.raises(FrameTooLarge):
        encode(Pub("a", b"x" * 100), 50)
    pub = Pub("a.b", b"x" * 100)
    with pytest.raises(FrameTooLarge):
        msg_head(7, pub, 50)
    assert msg_head(7, pub, 1 << 20) + pub.raw == encode(Msg(7, "a.b", b"x" * 100))


@given(sid=st.integers(0, 0xFFFFFFFF), size=st.integers(0, 70_000))
def test_msg_head_is_the_msg_frame_for_every_u32_sid(sid: int, size: int) -> None:
    """Compiled, a MSG head is one integer turned to bytes, its fields shifted into place:
    a sid or length that spilled into its neighbour would still be 9 bytes. Read back,
    the head must say what encode() says."""
    pub = Pub("a.b", b"x" * size)
    assert msg_head(sid, pub, 1 << 20) + pub.raw == encode(Msg(sid, "a.b", pub.data))


def test_a_sid_past_u32_is_refused_not_folded_into_the_head() -> None:
    pub = Pub("a.b", b"x")
    with pytest.raises(LocalProtocolError, match="out of range"):
        encode(Msg(1 << 32, "a.b", b"x"))
    with pytest.raises(struct.error):  # not a 9-byte head with the op byte changed
        msg_head(1 << 32, pub, 1 << 20)
    with pytest.raises(struct.error):
        msg_head(-1, pub, 1 << 20)


def test_a_pub_head_s_length_field_holds_to_u32_and_no_further() -> None:
    """The head alone, for a payload that is never made: its length field at the u32
    limit, then one byte past it (refused, not wrapped into the op byte)."""
    size = 0xFFFFFFFF - 3 - 1 - 6  # op, subject length, "a", no reply, no headers
    head = pub_head("a", None, None, size, 1 << 40)
    assert head[:7] == bytes.fromhex("ffffffff030001")
    with pytest.raises(struct.error):
        pub_head("a", None, None, size + 1, 1 << 40)
