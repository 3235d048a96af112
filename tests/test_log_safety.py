"""Log lines a peer cannot forge or flood (issue 13, items 6 and 7).

Raw sockets speak the wire protocol: a client that names itself with a newline, an ANSI
escape and a NUL, and reports an ERR whose text carries the same, must produce single-line
records; 2,000 connections that send garbage must produce a handful of WARNING lines plus
summaries that account for every one of them.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from pathlib import Path

import pytest

import asyncipc
from asyncipc._logsafe import RateLimitedLog, peer_log, printable
from asyncipc.protocol import (
    PREAMBLE,
    Err,
    ErrorCode,
    FrameDecoder,
    Hello,
    Ping,
    Pong,
    Sub,
    Welcome,
    encode,
)

EVIL = "x\nFAKE LINE\x1b[31m\x00"
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def test_printable_escapes_what_forges_lines() -> None:
    assert printable(EVIL) == "x\\nFAKE LINE\\x1b[31m\\x00"
    assert printable("a\\nb") == "a\\\\nb"  # a typed backslash-n stays told apart
    assert printable("plain.subject") == "plain.subject"
    assert printable("caf\u00e9 \u2028 \u202e") == "caf\u00e9 \\u2028 \\u202e"
    assert not _CONTROL.search(printable("".join(map(chr, range(0x2100)))))


@pytest.mark.parametrize("transport", ["unix", "tcp"])
async def test_a_hostile_name_and_err_text_stay_one_line(
    tmp_path: Path, transport: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="asyncipc")
    async with asyncipc.Broker() as broker:
        where = f"unix://{tmp_path}/b.sock" if transport == "unix" else "tcp://127.0.0.1:0"
        url = (await broker.listen(where)).url
        if transport == "unix":
            reader, writer = await asyncio.open_unix_connection(url.removeprefix("unix://"))
        else:
            host, port = url.removeprefix("tcp://").rsplit(":", 1)
            reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(PREAMBLE + encode(Hello({"version": 1, "name": EVIL})))
        decoder = FrameDecoder(expect_preamble=False)
        frames = decoder.feed(await asyncio.wait_for(reader.read(65536), 5))
        assert isinstance(frames[0], Welcome)
        writer.write(encode(Err(ErrorCode.PROTOCOL, "oops " + EVIL)))
        # A frame a client may not send: the broker closes it, with a WARNING naming it.
        writer.write(encode(Welcome({"version": 1})))
        await asyncio.wait_for(reader.read(), 5)
        writer.close()
    about = [r for r in caplog.records if "FAKE LINE" in r.getMessage()]
    reported = [r for r in about if "reported error" in r.getMessage()]
    closing = [r for r in about if r.levelno == logging.WARNING]
    assert len(reported) == 1, [r.getMessage() for r in about]
    assert len(closing) == 1, [r.getMessage() for r in about]
    for record in about:
        text = record.getMessage()
        assert not _CONTROL.search(text), repr(text)
        assert "x\\nFAKE LINE\\x1b[31m\\x00" in text


@pytest.mark.parametrize("transport", ["unix", "tcp"])
async def test_2000_bad_connections_give_a_few_lines_and_summaries(
    tmp_path: Path, transport: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="asyncipc")
    limiter = peer_log()
    limiter.interval = 1.0  # this test's loop only: a short interval, to see summaries
    n = 2000
    # max_failed_handshakes 0: every one of the 2,000 gets its full session and its line
    # (with it, the address would soon be refused at once: tests/test_limits.py).
    async with asyncipc.Broker(handshake_timeout=2.0, max_failed_handshakes=0) as broker:
        where = f"unix://{tmp_path}/b.sock" if transport == "unix" else "tcp://127.0.0.1:0"
        url = (await broker.listen(where)).url

        async def offend(i: int) -> None:
            if transport == "unix":
                r, w = await asyncio.open_unix_connection(url.removeprefix("unix://"))
            else:
                host, port = url.removeprefix("tcp://").rsplit(":", 1)
                r, w = await asyncio.open_connection(host, int(port))
            if i % 2:
                w.write(b"GARBAGE!" * 4)  # refused by the stream link: bad preamble
            else:
                w.write(PREAMBLE + encode(Hello({"version": 99})))  # refused by the session
            await asyncio.wait_for(r.read(), 10)
            w.close()

        started = time.monotonic()
        gate = asyncio.Semaphore(64)

        async def bounded(i: int) -> None:
            async with gate:
                await offend(i)

        await asyncio.gather(*(bounded(i) for i in range(n)))
        elapsed = time.monotonic() - started
        await asyncio.sleep(limiter.interval + 0.3)  # the last summaries are due
        # The broker still serves a healthy client.
        async with asyncipc.connect(url) as a, a.subscribe("ok") as sub:
            await a.publish("ok", b"yes")
            assert (await sub.next_msg(timeout=5)).data == b"yes"
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    told = 0
    for line in lines:
        if m := re.match(r"(\d+) more \S+ lines not logged", line):
            told += int(m[1])  # a summary
        else:
            told += 1  # a line about one connection, perhaps with a count of others
            if m := re.search(r"\((\d+) more like it not logged", line):
                told += int(m[1])
    print(
        f"\n{transport}: {n} bad connections in {elapsed:.2f} s gave {len(lines)} WARNING "
        f"lines (interval {limiter.interval:g} s), accounting for {told}"
    )
    assert told == n
    # Two kinds (bad preamble, bad version): at most one line and one summary per kind
    # per interval, plus the ones of the interval in progress.
    bound = 2 * 2 * (int(elapsed / limiter.interval) + 2)
    assert len(lines) <= bound, lines[:20]


async def test_a_summary_comes_without_a_next_line(caplog: pytest.LogCaptureFixture) -> None:
    limiter = RateLimitedLog(interval=0.2, logger=logging.getLogger("asyncipc.test"))
    with caplog.at_level(logging.WARNING, logger="asyncipc.test"):
        for i in range(5):
            limiter.warning("kind", "line %d", i)
        assert limiter.suppressed == 4
        await asyncio.sleep(0.4)
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["line 0", "4 more kind lines not logged in the last 0.2 s"]
    assert limiter.suppressed == 0


async def test_one_client_cannot_flood_the_info_log(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """1,000 refused frames and 1,000 ERR frames on one connection: one INFO line of each
    kind, then summaries that count the rest; the connection is still served."""
    caplog.set_level(logging.INFO, logger="asyncipc")
    limiter = peer_log()
    limiter.interval = 0.5
    n = 1000
    async with asyncipc.Broker() as broker:
        path = f"{tmp_path}/b.sock"
        await broker.listen(f"unix://{path}")
        reader, writer = await asyncio.open_unix_connection(path)
        writer.write(PREAMBLE + encode(Hello({"version": 1, "name": "chatty"})))
        for i in range(n):
            writer.write(encode(Sub(i + 1, "bad subject")))  # refused: INVALID_SUBJECT
            writer.write(encode(Err(ErrorCode.PROTOCOL, f"noise {i}")))
        writer.write(encode(Ping()))
        decoder = FrameDecoder()
        frames: list[object] = []
        while not any(isinstance(f, Pong) for f in frames):
            frames += decoder.feed(await asyncio.wait_for(reader.read(1 << 16), 5))
        refusals = [f for f in frames if isinstance(f, Err)]
        assert len(refusals) == n, "every refusal still reaches the client"
        await asyncio.sleep(limiter.interval + 0.2)
        writer.close()
    lines = [r.getMessage() for r in caplog.records if r.name == "asyncipc.broker"]
    for kind, first in (("refused", "refused a frame from"), ("reported-error", "reported error")):
        direct = [x for x in lines if first in x]
        summaries = [x for x in lines if re.match(rf"\d+ more {kind} lines not logged", x)]
        told = len(direct) + sum(int(x.split()[0]) for x in summaries)
        assert told == n, (kind, direct[:3], summaries)
        assert len(direct) + len(summaries) <= 6, (kind, len(direct), len(summaries))
