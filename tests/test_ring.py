"""The pure ring (asyncipc/transports/_ring/ring.py) on plain buffers: no processes, no loop."""

from __future__ import annotations

import mmap
import pickle
import struct
from collections import deque

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from asyncipc.errors import CorruptRing, FrameTooLarge, RecordReleased
from asyncipc.transports._ring.ring import (
    DATA_OFFSET,
    FLAG_MORE,
    HEAD,
    RECORD,
    RECORD_HEADER,
    TAIL,
    RingReader,
    RingWriter,
    format_ring,
    header_check,
    record_size,
    ring_size,
)

CAP = 4096


def make(capacity: int = CAP, *, checksum: bool = True) -> tuple[bytearray, RingWriter, RingReader]:
    buf = bytearray(ring_size(capacity))
    format_ring(buf, capacity, checksum=checksum)
    return buf, RingWriter(buf), RingReader(buf)


def test_records_come_out_in_order_with_their_flags() -> None:
    _, w, r = make()
    assert r.read() is None
    assert w.try_write(b"one")
    assert w.try_write(b"", FLAG_MORE)
    assert w.try_write_parts([b"th", bytearray(b"r"), memoryview(b"ee")], 5)
    with r.read() as rec:  # type: ignore[union-attr]
        assert rec.tobytes() == b"one"
        assert rec.flags == 0
    rec = r.read()
    assert rec is not None
    assert len(rec) == 0
    assert rec.flags == FLAG_MORE
    rec.release()
    assert r.read_bytes() == b"three"
    assert r.read() is None
    assert w.free == CAP


def test_parts_must_add_up() -> None:
    _, w, _ = make()
    with pytest.raises(ValueError, match="parts hold 3 bytes, not 4"):
        w.try_write_parts([b"abc"], 4)


def test_a_full_ring_says_no_until_the_reader_frees_space() -> None:
    _, w, r = make()
    record = b"x" * 1000  # 1008 bytes + 16 header = 1024 each: four fill the ring
    for _ in range(4):
        assert w.try_write(record)
    assert not w.try_write(b"")
    assert w.free == 0
    assert r.read_bytes() == record
    assert w.try_write(record)
    assert not w.try_write(b"")


def test_wrap_around_pads_the_end_so_every_record_is_contiguous() -> None:
    buf, w, r = make()
    assert w.try_write(b"a" * 3000)  # 3024 bytes: 1072 left before the end
    assert r.read_bytes() == b"a" * 3000
    assert w.try_write(b"b" * 2000)  # does not fit the end: pad, then at offset 0
    assert RECORD.unpack_from(buf, DATA_OFFSET + 3024)[3] == 2  # KIND_PAD
    assert RECORD.unpack_from(buf, DATA_OFFSET)[0] == 2000
    with r.read() as rec:  # type: ignore[union-attr]
        assert rec.view == b"b" * 2000  # one slice, no seam
    assert struct.unpack_from("<Q", buf, HEAD)[0] == 4096 + 2016


def test_a_pad_commits_alone_so_a_big_record_never_waits_forever() -> None:
    _, w, r = make()
    assert w.try_write(b"a" * 2000)  # 0..2016
    assert r.read_bytes() is not None
    assert w.try_write(b"b" * 1000)  # 2016..3040
    # 3500 bytes fit nowhere yet: the pad (1056 bytes to the end) is committed anyway.
    assert not w.try_write(b"c" * 3500)
    assert r.read_bytes() == b"b" * 1000
    assert r.read() is None  # looking for more consumes the pad
    assert w.try_write(b"c" * 3500)
    assert r.read_bytes() == b"c" * 3500


def test_a_record_larger_than_the_ring_is_refused() -> None:
    _, w, r = make()
    assert w.max_payload == CAP - RECORD_HEADER
    with pytest.raises(FrameTooLarge, match=r"record of 4081 bytes does not fit a ring of 4096"):
        w.try_write(b"\0" * 4081)
    assert w.try_write(b"\1" * 4080)  # exactly the largest
    assert r.read_bytes() == b"\1" * 4080


def test_a_released_record_and_its_views_raise() -> None:
    _, w, r = make()
    w.try_write(b"hello world")
    rec = r.read()
    assert rec is not None
    view = rec.view
    word = view[6:]
    assert isinstance(word, type(view))
    assert word == b"world"
    assert word.decode() == "world"
    assert view[0] == ord("h")
    assert view[-1] == ord("d")
    assert view.unpack_from("<5s") == (b"hello",)
    raw = view.memoryview()
    assert raw.readonly
    assert bytes(raw[:5]) == b"hello"
    with pytest.raises(RuntimeError, match="release the record you hold"):
        r.read()
    rec.release()
    rec.release()  # idempotent
    for use in (view.tobytes, word.tobytes, lambda: len(word), lambda: view[0], rec.tobytes):
        with pytest.raises(RecordReleased, match="released"):
            use()
    with pytest.raises(ValueError, match="released memoryview"):
        bytes(raw)
    with pytest.raises(RecordReleased):
        _ = rec.view
    assert "released" in repr(view)


def test_release_refuses_while_a_buffer_export_is_alive() -> None:
    _, w, r = make()
    w.try_write(b"pinned")
    rec = r.read()
    assert rec is not None
    export = pickle.PickleBuffer(rec.view.memoryview())  # holds a buffer export
    with pytest.raises(BufferError, match="still in use"):
        rec.release()
    assert not w.try_write(b"y" * 4070), "nothing was consumed"
    export.release()
    rec.release()
    assert r.read() is None  # (and the pad that refused write left behind)
    assert w.try_write(b"y" * 4070)


def test_restarted_ends_resume_where_the_counters_say() -> None:
    buf, w, r = make()
    for i in range(5):
        assert w.try_write(bytes([i]) * 100)
    assert r.read_bytes() == bytes([0]) * 100
    rec = r.read()  # held, not consumed, when the reader "dies"
    assert rec is not None
    r2 = RingReader(buf)
    assert [r2.read_bytes() for _ in range(4)] == [bytes([i]) * 100 for i in range(1, 5)]
    w2 = RingWriter(buf)  # a restarted writer continues after the last record
    assert w2.try_write(b"after")
    assert r2.read_bytes() == b"after"


def test_the_links_read_in_place_with_next_record_and_consume() -> None:
    """The package-internal hooks the links read with (no Record per record), and why
    ``head`` and ``tail`` are visible: a pad moves them with no record to show for it."""
    _, w, r = make()
    assert w.try_write(b"x" * 4000, FLAG_MORE)
    assert w.tail == record_size(4000)
    assert not w.try_write(b"y" * 100)  # no room at offset 0 yet...
    assert w.tail == CAP  # ...but the pad before the ring's end was committed alone
    got = r.next_record()
    assert got is not None
    start, length, flags = got
    assert (bytes(r.buffer[start : start + length]), flags) == (b"x" * 4000, FLAG_MORE)
    assert r.next_record() == got, "not consumed yet: the same record again"
    assert r.head == 0
    r.consume()
    assert r.head == record_size(4000)
    assert r.next_record() is None
    assert r.head == CAP, "the pad was consumed on the way, freeing its bytes"
    assert w.try_write(b"y" * 100)


def test_closing_the_reader_invalidates_the_record_it_holds_without_consuming_it() -> None:
    buf, w, r = make()
    assert w.try_write(b"kept")
    rec = r.read()
    assert rec is not None
    view = rec.view
    r.close()
    assert rec.released
    with pytest.raises(RecordReleased):
        view.tobytes()
    assert RingReader(buf).read_bytes() == b"kept"


def test_it_runs_on_shared_memory_too() -> None:
    mm = mmap.mmap(-1, ring_size(CAP))
    format_ring(mm, CAP)
    w, r = RingWriter(mm), RingReader(mm)
    for i in range(200):
        assert w.try_write(i.to_bytes(4, "big") * (i % 50))
        assert r.read_bytes() == i.to_bytes(4, "big") * (i % 50)
    w.close()
    r.close()
    mm.close()


def test_sleep_and_wait_flags() -> None:
    _, w, r = make()
    assert not w.reader_sleeping
    r.set_sleeping(True)
    assert w.reader_sleeping
    assert not r.writer_waiting
    w.set_waiting(True)
    assert r.writer_waiting
    assert not r.has_data()
    w.try_write(b"x")
    assert r.has_data()


# --- corrupt headers and records ----------------------------------------------------------


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        (lambda b: b.__setitem__(slice(0, 8), b"NOTARING"), "bad magic b'NOTARING'"),
        (lambda b: struct.pack_into("<I", b, 8, 9), "layout version 9"),
        (lambda b: struct.pack_into("<I", b, 12, 0x80), "unknown flags 0x80"),
        (lambda b: struct.pack_into("<Q", b, 16, 100), "bad capacity 100"),
        (lambda b: struct.pack_into("<Q", b, 16, 8192), "claims 8192 data bytes"),
        (lambda b: struct.pack_into("<Q", b, TAIL, 5000), "counters out of range"),
        (lambda b: struct.pack_into("<Q", b, HEAD, 16), "counters out of range"),
    ],
)
def test_a_corrupt_ring_header_is_named(patch: object, message: str) -> None:
    buf = bytearray(ring_size(CAP))
    format_ring(buf, CAP)
    patch(buf)  # type: ignore[operator]
    for end in (RingReader, RingWriter):
        with pytest.raises(CorruptRing, match=message):
            end(buf)


def test_bad_buffers_and_capacities() -> None:
    with pytest.raises(ValueError, match="multiple of 16"):
        format_ring(bytearray(10000), 5000)
    with pytest.raises(ValueError, match="needs 4608 bytes"):
        format_ring(bytearray(100), CAP)
    with pytest.raises(ValueError, match="writable"):
        RingReader(b"\0" * 10000)
    with pytest.raises(CorruptRing, match="no room for a ring header"):
        RingReader(bytearray(100))


def test_a_torn_payload_is_caught_and_skipped_alone() -> None:
    buf, w, r = make()
    for i in range(3):
        w.try_write(bytes([65 + i]) * 100)
    second = DATA_OFFSET + record_size(100) + RECORD_HEADER
    buf[second + 50 : second + 100] = bytes(50)  # half of B's payload never arrived
    assert r.read_bytes() == b"A" * 100
    with pytest.raises(CorruptRing, match="payload of 100 bytes fails its CRC-32") as exc:
        r.read_bytes()
    assert exc.value.position == record_size(100)
    assert r.skip_corrupt() == record_size(100)
    assert r.read_bytes() == b"C" * 100
    assert (r.skipped_records, r.skipped_bytes) == (1, record_size(100))


def test_a_garbage_header_skips_to_the_tail() -> None:
    buf, w, r = make()
    for i in range(3):
        w.try_write(bytes([65 + i]) * 100)
    at = DATA_OFFSET + record_size(100)
    buf[at + 4 : at + 8] = b"\xff\xff\xff\xff"  # the crc field: header check fails
    assert r.read_bytes() == b"A" * 100
    with pytest.raises(CorruptRing, match="header check does not match"):
        r.read()
    assert r.skip_corrupt() == 2 * record_size(100)  # its length cannot be trusted
    assert r.read() is None
    assert w.try_write(b"later")
    assert r.read_bytes() == b"later"


def _forge(buf: bytearray, pos: int, length: int, kind: int = 1, flags: int = 0) -> None:
    tag = (pos >> 4) & 0xFFFFFFFF
    check = header_check(length, 0, tag, kind, flags)
    RECORD.pack_into(buf, DATA_OFFSET + pos % CAP, length, 0, tag, kind, flags, check)


@pytest.mark.parametrize(
    ("length", "kind", "message"),
    [
        (5000, 1, "length 5000 runs past the ring end"),
        (200, 1, "length 200 runs past the writer's tail 128"),
        (10, 7, "unknown record kind 7"),
        (10, 2, "pad of 10 bytes does not reach the ring end"),
    ],
)
def test_forged_headers_are_named(length: int, kind: int, message: str) -> None:
    buf, _, r = make(checksum=False)
    struct.pack_into("<Q", buf, TAIL, 128)
    _forge(buf, 0, length, kind)
    with pytest.raises(CorruptRing, match=message):
        r.read()


def test_a_stale_header_from_an_earlier_lap_is_not_taken() -> None:
    buf, w, r = make(checksum=False)
    w.try_write(b"old")
    assert r.read_bytes() == b"old"
    # The tail moves on a whole lap but the header at that slot is the old one.
    struct.pack_into("<Q", buf, TAIL, CAP + record_size(3))
    struct.pack_into("<Q", buf, HEAD, CAP)
    r2 = RingReader(buf)
    with pytest.raises(CorruptRing, match="stale or garbage"):
        r2.read()


def test_a_tail_out_of_range_is_named() -> None:
    buf, w, r = make()
    w.try_write(b"x")
    struct.pack_into("<Q", buf, TAIL, 10 * CAP)
    with pytest.raises(CorruptRing, match="the writer's tail 40960 is out of range"):
        r.read()
    _, w2, r2 = make()
    w2.try_write(b"y" * 4000)
    struct.pack_into("<Q", r2.buffer, HEAD, 8 * CAP)  # the reader's word, scribbled on
    with pytest.raises(CorruptRing, match="the reader's head 32768 is out of range"):
        w2.try_write(b"z" * 100)


# --- property: any sequence of sizes, against a reference queue ------------------------------

ops = st.lists(
    st.one_of(
        st.tuples(st.just("write"), st.integers(0, 200) | st.integers(0, CAP - RECORD_HEADER)),
        st.tuples(st.just("read"), st.integers(1, 5)),
        st.tuples(st.just("view"), st.just(0)),
        st.tuples(st.just("restart"), st.sampled_from(["reader", "writer"])),
    ),
    max_size=120,
)


@settings(max_examples=150, deadline=None)
@given(ops=ops, checksum=st.booleans())
def test_random_records_match_a_reference_queue(
    ops: list[tuple[str, object]], checksum: bool
) -> None:
    buf, w, r = make(checksum=checksum)
    model: deque[bytes] = deque()
    counter = 0
    for op, arg in ops:
        if op == "write":
            assert isinstance(arg, int)
            counter += 1
            payload = (counter.to_bytes(4, "big") * (arg // 4 + 1))[:arg]
            if w.try_write(payload, counter & 1):
                model.append(payload)
            else:
                # Refused only when it really does not fit (a pad may have gone in).
                assert w.free < record_size(arg) + (CAP - w.tail % CAP)
        elif op == "read":
            assert isinstance(arg, int)
            for _ in range(arg):
                got = r.read_bytes()
                if not model:
                    assert got is None
                    break
                assert got == model.popleft()
        elif op == "view":
            rec = r.read()
            if not model:
                assert rec is None
                continue
            assert rec is not None
            expected = model.popleft()
            assert rec.view == expected
            assert rec.view[1:3] == expected[1:3]
            rec.release()
        elif arg == "reader":
            r = RingReader(buf)
        else:
            w = RingWriter(buf)
        assert 0 <= r.used <= CAP
    assert [r.read_bytes() for _ in range(len(model))] == list(model)
    assert r.read() is None
