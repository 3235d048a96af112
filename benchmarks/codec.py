"""The codec's hot calls alone, in ns per frame: decode and encode, no I/O (issue 12).

``python -m benchmarks.codec`` times what a stream link does per message: the decoder
reading PUB and MSG frames of 64 B and 16 KiB the way a ``BufferedProtocol`` hands them
over (``get_buffer``, then ``buffer_updated``, a batch of frames per read), and the heads
``pub_head`` and ``msg_head`` a link writes before each payload. It prints which build ran
(``asyncipc.compiled``): compare the pure and the compiled one in the same session.
"""

from __future__ import annotations

import functools
import sys
import timeit

import asyncipc
from asyncipc.protocol import Msg, Pub, encode
from asyncipc.protocol.decoder import FrameDecoder
from asyncipc.protocol.frames import msg_head, pub_head

MAX = 8 * 1024 * 1024


def _decode_case(frame: bytes, per_read: int) -> tuple[FrameDecoder, bytes, int]:
    chunk = frame * per_read
    return FrameDecoder(max_frame=MAX, msg_extra=4), chunk, per_read


def _read(dec: FrameDecoder, chunk: bytes) -> None:
    done = 0
    while done < len(chunk):
        view = dec.get_buffer(-1)
        n = min(len(view), len(chunk) - done)
        view[:n] = chunk[done : done + n]
        view.release()
        dec.buffer_updated(n)
        done += n


def main() -> None:
    number = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    print(f"asyncipc.compiled = {asyncipc.compiled}")
    headers = {"asyncipc-timeout": "5"}
    cases: list[tuple[str, bytes, int]] = [
        ("decode PUB 64 B", encode(Pub("bench.sub", b"x" * 64)), 64),
        ("decode MSG 64 B", encode(Msg(7, "bench.sub", b"x" * 64)), 64),
        ("decode MSG 64 B reply+hdr", encode(Msg(7, "a.b", b"x" * 64, "_INBOX.x.1", headers)), 64),
        ("decode PUB 16 KiB", encode(Pub("bench.sub", b"x" * 16384)), 8),
        ("decode MSG 16 KiB", encode(Msg(7, "bench.sub", b"x" * 16384)), 8),
    ]
    for name, frame, per_read in cases:
        dec, chunk, n = _decode_case(frame, per_read)
        read = functools.partial(_read, dec, chunk)
        best = min(timeit.repeat(read, number=number // 4, repeat=15))
        print(f"{name:28} {best / (number // 4) / n * 1e9:8.0f} ns/frame")
    pub = Pub("bench.sub", b"x" * 64)
    _ = pub.raw
    encoders = [
        ("pub_head", lambda: pub_head("bench.sub", None, None, 64, MAX)),
        ("pub_head reply+hdr", lambda: pub_head("bench.sub", "_INBOX.x.1", headers, 64, MAX)),
        ("msg_head", lambda: msg_head(7, pub, MAX)),
    ]
    for name, fn in encoders:
        best = min(timeit.repeat(fn, number=number * 50, repeat=15))
        print(f"{name:28} {best / (number * 50) * 1e9:8.0f} ns/call")


if __name__ == "__main__":
    main()
