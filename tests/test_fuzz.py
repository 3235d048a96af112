"""Fuzzing the frame decoder and the handshake (issue 13's robustness figures).

Hypothesis stands in for a coverage-guided fuzzer here (no compiled harness to install):
valid streams are mutated (bytes flipped, inserted, deleted, cut, length fields made to
lie) and fed to the decoder split at every byte, in random chunks and read into its own
buffer as a ``BufferedProtocol`` does. The only exceptions allowed out are the protocol's
own (:class:`~asyncipc.RemoteProtocolError`, :class:`~asyncipc.FrameTooLarge`); anything
else (an ``IndexError``, a ``struct.error``, a ``MemoryError``) is a bug. Lying length
fields, up to the largest each can hold, must be refused before anything of their size
is allocated (measured with tracemalloc). The handshake is fuzzed against a real broker
over a Unix socket: any HELLO gets a WELCOME or an ERR, and the broker goes on.

``ASYNCIPC_FUZZ_EXAMPLES=N`` runs N examples per property instead of the quick default
(150); ``make fuzz`` runs 3,000 with no per-test time-out.
"""

from __future__ import annotations

import asyncio
import json
import os
import struct
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import asyncipc
from asyncipc.errors import FrameTooLarge, RemoteProtocolError
from asyncipc.protocol import (
    MSG_EXTRA,
    PREAMBLE,
    Err,
    ErrorCode,
    Frame,
    FrameDecoder,
    Hello,
    Pub,
    Sub,
    Welcome,
    encode,
)
from tests.test_protocol import any_frame, json_values, read_into

EXAMPLES = int(os.environ.get("ASYNCIPC_FUZZ_EXAMPLES", "150"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
PROTOCOL_ERRORS = (RemoteProtocolError, FrameTooLarge)


def mutate(draw: st.DrawFn, data: bytearray, times: int) -> None:
    """Flip, insert, delete, cut, or overwrite with a u32 or u16 (a lying length field,
    wherever it lands) at random places of ``data``, in place."""
    for _ in range(times):
        kind = draw(st.sampled_from(["flip", "insert", "delete", "cut", "u32", "u16"]))
        at = draw(st.integers(0, max(0, len(data) - 1)))
        if kind == "flip" and data:
            data[at] = draw(st.integers(0, 255))
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif kind == "delete" and data:
            del data[at : at + draw(st.integers(1, 8))]
        elif kind == "cut":
            del data[at:]
        elif kind == "u32" and len(data) >= at + 4:
            data[at : at + 4] = struct.pack(">I", draw(st.integers(0, 2**32 - 1)))
        elif kind == "u16" and len(data) >= at + 2:
            data[at : at + 2] = struct.pack(">H", draw(st.integers(0, 2**16 - 1)))


@st.composite
def mutated_streams(draw: st.DrawFn) -> bytes:
    """Valid frames, some with their body mutated behind a true length prefix (so that
    the body parser meets the damage, not only the framing), then the stream itself
    mutated a little."""
    parts = []
    for frame in draw(st.lists(any_frame, min_size=1, max_size=4)):
        raw = encode(frame)
        if draw(st.booleans()):
            op = raw[4] if draw(st.booleans()) else draw(st.integers(0, 255))
            body = bytearray(raw[5:])
            mutate(draw, body, draw(st.integers(1, 3)))
            raw = struct.pack(">IB", len(body) + 1, op) + body
        parts.append(raw)
    data = bytearray(b"".join(parts))
    mutate(draw, data, draw(st.integers(0, 2)))
    return bytes(data)


def only_protocol_errors(feed: Callable[[bytes], list[Frame]], chunks: list[bytes]) -> None:
    """Feed every chunk; stop at the first protocol error, which must then stay."""
    for chunk in chunks:
        try:
            feed(chunk)
        except PROTOCOL_ERRORS as exc:
            with pytest.raises(type(exc)):
                feed(b"x")  # a failed stream stays failed, with the same error
            return


@given(mutated_streams())
@FUZZ
def test_mutated_stream_split_at_every_byte_raises_only_protocol_errors(data: bytes) -> None:
    for dec, stream in (
        (FrameDecoder(max_frame=4096), data),  # a client's, small
        (FrameDecoder(max_frame=4096, msg_extra=MSG_EXTRA), data),
        (FrameDecoder(max_frame=4096, expect_preamble=True, first_frame_max=512), PREAMBLE + data),
    ):
        only_protocol_errors(dec.feed, [stream[i : i + 1] for i in range(len(stream))])
    # ... and at every point split in two, read into the decoder's own buffer
    for cut in range(len(data) + 1):
        dec = FrameDecoder(max_frame=4096, msg_extra=MSG_EXTRA)
        only_protocol_errors(lambda b, d=dec: read_into(d, b), [data[:cut], data[cut:]])


@given(mutated_streams(), st.lists(st.integers(1, 64), min_size=1, max_size=30))
@FUZZ
def test_mutated_stream_in_random_chunks_raises_only_protocol_errors(
    data: bytes, sizes: list[int]
) -> None:
    chunks, pos = [], 0
    for n in sizes * (len(data) // max(1, sum(sizes)) + 1):
        chunks.append(data[pos : pos + n])
        pos += n
        if pos >= len(data):
            break
    chunks.append(data[pos:])
    dec = FrameDecoder(max_frame=4096, msg_extra=MSG_EXTRA)
    only_protocol_errors(lambda b: read_into(dec, b), chunks)
    if dec.error is None:
        try:
            dec.eof()
        except PROTOCOL_ERRORS:
            pass


@given(st.binary(max_size=200))
@FUZZ
def test_random_bytes_at_a_broker_decoder_raise_only_protocol_errors(data: bytes) -> None:
    for stream in (data, PREAMBLE + data):
        dec = FrameDecoder(expect_preamble=True, first_frame_max=64 * 1024)
        only_protocol_errors(dec.feed, [stream[i : i + 1] for i in range(len(stream))])


# --- lying length fields -------------------------------------------------------------------


def lying_streams() -> list[tuple[str, bytes]]:
    """A frame for each length field of the wire format, that field set to lie (beyond
    what follows it), with its largest values; SUB's u64 max_bytes up to 2^64 - 1 (the
    broker does not keep it: docs/protocol.md §7.5)."""
    out: list[tuple[str, bytes]] = []
    for n in (2**31, 2**32 - 1):
        out.append((f"frame length {n}", struct.pack(">IB", n, 3) + b"x" * 16))
    pub = encode(Pub("a.b", b"payload", headers={"k": "v"}))
    body = bytearray(pub[5:])
    for n in (0x8000, 0xFFFF):  # subject length (u16)
        lie = bytearray(body)
        lie[0:2] = struct.pack(">H", n)
        out.append((f"subject length {n}", struct.pack(">IB", len(lie) + 1, 3) + lie))
    hl = 2 + 3 + 2  # subject "a.b", empty reply
    for n in (2**31, 2**32 - 1):  # header block length (u32)
        lie = bytearray(body)
        lie[hl : hl + 4] = struct.pack(">I", n)
        out.append((f"header block length {n}", struct.pack(">IB", len(lie) + 1, 3) + lie))
    for n in (2**31, 2**32 - 1):  # a header value's length (u32), inside a true block
        lie = bytearray(body)
        vlen_at = hl + 4 + 2 + 2 + 1
        lie[vlen_at : vlen_at + 4] = struct.pack(">I", n)
        out.append((f"header value length {n}", struct.pack(">IB", len(lie) + 1, 3) + lie))
    lie = bytearray(body)
    lie[hl + 4 : hl + 6] = struct.pack(">H", 0xFFFF)  # header count
    out.append(("header count 65535", struct.pack(">IB", len(lie) + 1, 3) + lie))
    sub = bytearray(encode(Sub(1, "a")))
    struct.pack_into(">Q", sub, 5 + 8, 2**64 - 1)  # max_bytes: a bound, not an allocation
    out.append(("SUB max_bytes 2^64-1", bytes(sub)))
    return out


@pytest.mark.parametrize(("field", "stream"), lying_streams(), ids=lambda v: str(v)[:30])
def test_a_lying_length_is_refused_before_any_allocation(field: str, stream: bytes) -> None:
    for dec in (FrameDecoder(), FrameDecoder(msg_extra=MSG_EXTRA)):
        tracemalloc.start()
        try:
            try:
                dec.feed(stream)
            except PROTOCOL_ERRORS:
                pass
            else:
                assert field.startswith("SUB"), f"{field}: accepted"
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak < 256 * 1024, f"{field}: {peak} bytes allocated"


@pytest.mark.parametrize("length", [2**31, 2**32 - 1, 8 * 1024 * 1024 + 1])
async def test_a_lying_length_on_a_raw_socket(tmp_path: Path, length: int) -> None:
    """Before the handshake (the HELLO's length prefix) and after it: refused with an
    ERR naming the limit, and the broker serves on."""
    async with asyncipc.Broker() as broker:
        url = (await broker.listen(f"unix://{tmp_path}/b.sock")).url
        for before in (True, False):
            reader, writer = await asyncio.open_unix_connection(url.removeprefix("unix://"))
            hello = b"" if before else encode(Hello({"version": 1}))
            writer.write(PREAMBLE + hello + struct.pack(">IB", length, 3))
            answer = await asyncio.wait_for(reader.read(), 5)
            writer.close()
            frames = FrameDecoder(msg_extra=MSG_EXTRA).feed(answer)
            [err] = [f for f in frames if isinstance(f, Err)]
            assert err.code == ErrorCode.FRAME_TOO_LARGE
            assert ("maximum HELLO size" if before else "maximum frame size") in err.message
        async with asyncipc.connect(url) as bus, bus.subscribe("s") as sub:
            await bus.publish("s", b"ok")
            assert (await sub.next_msg(timeout=5)).data == b"ok"


# --- the handshake against a real broker ------------------------------------------------------

hello_fields = st.fixed_dictionaries(
    {},
    optional={
        "version": st.one_of(st.just(1), json_values),
        "token": st.one_of(st.just("s3cret"), json_values),
        "name": st.one_of(st.text(max_size=40), json_values),
        "max_frame": st.one_of(st.integers(-(2**63), 2**63), json_values),
        "signals": st.one_of(st.lists(st.text(max_size=6), max_size=3), json_values),
    },
).flatmap(
    lambda d: st.dictionaries(st.text(max_size=8), json_values, max_size=3).map(
        lambda extra: {**extra, **d}
    )
)


@st.composite
def handshakes(draw: st.DrawFn) -> bytes:
    """A HELLO (a JSON object, or not: any bytes), possibly mutated, and what follows."""
    if draw(st.booleans()):
        body = json.dumps(draw(hello_fields)).encode()
    else:
        body = draw(st.binary(max_size=64))
    data = bytearray(struct.pack(">IB", len(body) + 1, 1) + body)
    if draw(st.booleans()) and data:
        at = draw(st.integers(0, len(data) - 1))
        data[at] = draw(st.integers(0, 255))
    follow = draw(st.lists(any_frame, max_size=2))
    return PREAMBLE + bytes(data) + b"".join(encode(f) for f in follow)


def test_fuzzed_handshakes_get_a_welcome_or_an_error(tmp_path: Path) -> None:
    """Each fuzzed opening gets WELCOME or ERR (then possibly more), never a silent
    hang; the broker's event loop reports no unhandled exception; a normal client is
    served after all of them."""
    loop = asyncio.new_event_loop()
    problems: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _, ctx: problems.append(ctx))
    broker = asyncipc.Broker(token="s3cret", handshake_timeout=0.5, max_hello=1024)
    url = loop.run_until_complete(broker.listen(f"unix://{tmp_path}/b.sock")).url
    path = url.removeprefix("unix://")

    async def one(opening: bytes) -> None:
        reader, writer = await asyncio.open_unix_connection(path)
        writer.write(opening)
        data = b""
        dec = FrameDecoder(msg_extra=MSG_EXTRA)
        first: Frame | None = None
        try:
            async with asyncio.timeout(5):
                while first is None and (chunk := await reader.read(65536)):
                    data += chunk
                    frames = dec.feed(chunk)
                    first = frames[0] if frames else None
        finally:
            writer.close()
        assert isinstance(first, Welcome | Err), (opening[:80], data[:80])

    @given(handshakes())
    @settings(FUZZ, max_examples=max(20, EXAMPLES // 3))
    def check(opening: bytes) -> None:
        loop.run_until_complete(one(opening))

    try:
        check()

        async def healthy() -> None:
            async with asyncipc.connect(url, token="s3cret") as bus, bus.subscribe("s") as sub:
                await bus.publish("s", b"ok")
                assert (await sub.next_msg(timeout=5)).data == b"ok"

        loop.run_until_complete(healthy())
        assert problems == []
    finally:
        loop.run_until_complete(broker.close())
        loop.close()
