"""Bad input: the offender gets a clear error and is cut off; everybody else carries on.

Each test runs a healthy publisher/subscriber pair beside the offender and checks that a
message still flows between them afterwards, over unix and tcp. The offender is a raw
socket, so it can send exactly the bytes we want.
"""

from __future__ import annotations

import asyncio
import logging
import os
import struct
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import asyncipc
from asyncipc.protocol import PREAMBLE, ErrorCode, FrameDecoder, Hello, encode

pytestmark = pytest.mark.parametrize("transport", ["unix", "tcp"])


@pytest.fixture
async def broker(tmp_path: Path, transport: str) -> AsyncIterator[tuple[asyncipc.Broker, str]]:
    async with asyncipc.Broker(handshake_timeout=0.3, ping_interval=0.2, dead_peer_factor=2) as b:
        where = f"unix://{tmp_path}/b.sock" if transport == "unix" else "tcp://127.0.0.1:0"
        listener = await b.listen(where)
        yield b, listener.url


async def open_raw(url: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    if url.startswith("unix://"):
        return await asyncio.open_unix_connection(url.removeprefix("unix://"))
    host, port = url.removeprefix("tcp://").rsplit(":", 1)
    return await asyncio.open_connection(host, int(port))


async def read_until_closed(reader: asyncio.StreamReader) -> bytes:
    return await asyncio.wait_for(reader.read(), 5)


def errors_in(data: bytes) -> list[tuple[int, str]]:
    frames = FrameDecoder().feed(data)
    return [(f.code, f.message) for f in frames if isinstance(f, asyncipc.protocol.Err)]


async def wait_sessions(b: asyncipc.Broker, n: int) -> None:
    """Wait (bounded) until the broker has seen the EOF of clients that left."""
    for _ in range(500):
        if b.sessions == n:
            return
        await asyncio.sleep(0.01)
    assert b.sessions == n


async def assert_others_carry_on(url: str) -> None:
    async with asyncipc.connect(url) as a, asyncipc.connect(url) as b, b.subscribe("health") as sub:
        await a.publish("health", b"still here")
        assert (await sub.next_msg(timeout=5)).data == b"still here"


async def test_random_bytes(
    broker: tuple[asyncipc.Broker, str], caplog: pytest.LogCaptureFixture
) -> None:
    _, url = broker
    reader, writer = await open_raw(url)
    writer.write(os.urandom(64))
    answer = await read_until_closed(reader)
    writer.close()
    [(code, message)] = errors_in(answer)
    assert code == ErrorCode.PROTOCOL
    assert "bad preamble" in message
    assert any("bad preamble" in r.getMessage() for r in caplog.records)
    await assert_others_carry_on(url)


async def test_garbage_after_a_good_handshake(broker: tuple[asyncipc.Broker, str]) -> None:
    _, url = broker
    reader, writer = await open_raw(url)
    writer.write(PREAMBLE + encode(Hello({"version": 1})) + struct.pack(">IB", 5, 0xEE) + b"junk")
    answer = await read_until_closed(reader)
    writer.close()
    assert (ErrorCode.PROTOCOL, "unknown frame op 238") in errors_in(answer)
    await assert_others_carry_on(url)


async def test_a_peer_that_wrote_on_still_reads_its_error(
    broker: tuple[asyncipc.Broker, str],
) -> None:
    """The offender sent more after its bad frame (a client streaming publishes would),
    and reads a moment later. A socket closed with unread input resets the connection,
    and an asyncio reader that met the reset raises it before what it had buffered (the
    ERR): so the broker shuts its side after the ERR and drops what still comes, for a
    moment, instead of closing, and the ERR is read."""
    _, url = broker
    reader, writer = await open_raw(url)
    bad = struct.pack(">IB", 5, 0xEE)
    writer.write(PREAMBLE + encode(Hello({"version": 1})) + bad + bytes(128 * 1024))
    await asyncio.sleep(0.2)  # the loop reads the answer meanwhile (and a reset, if one came)
    answer = await read_until_closed(reader)
    writer.close()
    assert (ErrorCode.PROTOCOL, "unknown frame op 238") in errors_in(answer)
    await assert_others_carry_on(url)


async def test_length_prefix_over_the_maximum(broker: tuple[asyncipc.Broker, str]) -> None:
    _, url = broker
    reader, writer = await open_raw(url)
    writer.write(PREAMBLE + encode(Hello({"version": 1})) + struct.pack(">I", 512 * 1024 * 1024))
    answer = await read_until_closed(reader)
    writer.close()
    codes = errors_in(answer)
    assert codes[-1][0] == ErrorCode.FRAME_TOO_LARGE
    assert "exceeds the maximum frame size" in codes[-1][1]
    await assert_others_carry_on(url)


async def test_http_request_gets_an_http_answer(broker: tuple[asyncipc.Broker, str]) -> None:
    _, url = broker
    reader, writer = await open_raw(url)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    answer = await read_until_closed(reader)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert b"not an HTTP server" in answer
    await assert_others_carry_on(url)


async def test_client_that_never_says_hello_times_out(broker: tuple[asyncipc.Broker, str]) -> None:
    b, url = broker
    reader, writer = await open_raw(url)
    writer.write(PREAMBLE)
    answer = await read_until_closed(reader)  # the broker hangs up by itself
    writer.close()
    [(code, message)] = errors_in(answer)
    assert code == ErrorCode.HANDSHAKE_TIMEOUT
    assert "no HELLO within 0.3 s" in message
    await assert_others_carry_on(url)
    await wait_sessions(b, 0)


async def test_first_frame_must_be_hello(broker: tuple[asyncipc.Broker, str]) -> None:
    _, url = broker
    reader, writer = await open_raw(url)
    writer.write(PREAMBLE + encode(asyncipc.protocol.Pub("a", b"x")))
    answer = await read_until_closed(reader)
    writer.close()
    assert errors_in(answer)[0][1] == "expected HELLO as the first frame, got PUB"


async def test_wrong_protocol_version(broker: tuple[asyncipc.Broker, str]) -> None:
    _, url = broker
    reader, writer = await open_raw(url)
    writer.write(PREAMBLE + encode(Hello({"version": 99})))
    answer = await read_until_closed(reader)
    writer.close()
    assert errors_in(answer) == [
        (ErrorCode.VERSION, "unsupported protocol version 99; this broker speaks 1")
    ]


async def test_peer_vanishing_mid_frame(
    broker: tuple[asyncipc.Broker, str], caplog: pytest.LogCaptureFixture
) -> None:
    b, url = broker
    async with asyncipc.connect(url) as watcher, watcher.subscribe("partial.>") as sub:
        _, writer = await open_raw(url)
        writer.write(PREAMBLE + encode(Hello({"version": 1})))
        pub = encode(asyncipc.protocol.Pub("partial.x", b"y" * 1000))
        writer.write(pub[: len(pub) // 2])  # half a frame, then gone
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.transport.abort()
        await wait_sessions(b, 1)  # the vanished client's session is gone, the watcher's stays
        assert sub.pending == 0, "half a message is never delivered"
    assert any("mid-frame" in r.getMessage() for r in caplog.records)
    await assert_others_carry_on(url)


async def test_silent_peer_is_disconnected_by_keepalive(
    broker: tuple[asyncipc.Broker, str],
) -> None:
    """A client that completes the handshake and then never answers a PING is dropped."""
    _, url = broker
    reader, writer = await open_raw(url)
    writer.write(PREAMBLE + encode(Hello({"version": 1})))
    answer = await read_until_closed(reader)  # ping_interval 0.2 s, dead after 0.4 s
    writer.close()
    frames = FrameDecoder().feed(answer)
    kinds = [type(f).__name__ for f in frames]
    assert kinds[0] == "Welcome"
    assert "Ping" in kinds
    assert errors_in(answer)[-1][0] == ErrorCode.PEER_TIMEOUT
    await assert_others_carry_on(url)


async def test_bad_subject_in_pub_is_refused_but_connection_stays(
    broker: tuple[asyncipc.Broker, str],
) -> None:
    _, url = broker
    reader, writer = await open_raw(url)
    writer.write(PREAMBLE + encode(Hello({"version": 1})))
    writer.write(encode(asyncipc.protocol.Pub("bad subject", b"")))
    writer.write(encode(asyncipc.protocol.Ping()))
    data = b""
    frames: list[object] = []
    decoder = FrameDecoder()
    while not any(isinstance(f, asyncipc.protocol.Pong) for f in frames):
        chunk = await asyncio.wait_for(reader.read(4096), 5)
        assert chunk, "connection closed"
        data += chunk
        frames += decoder.feed(chunk)
    writer.close()
    [err] = [f for f in frames if isinstance(f, asyncipc.protocol.Err)]
    assert err.code == ErrorCode.INVALID_SUBJECT
    assert "whitespace" in err.message


async def test_client_sees_broker_vanish(broker: tuple[asyncipc.Broker, str]) -> None:
    b, url = broker
    # Without reconnecting, the bus ends with its link (tests/test_reconnect.py: with).
    bus = await asyncipc.connect(url, options=asyncipc.ConnectOptions(reconnect=False))
    sub = bus.subscribe("x")
    await bus.flush()
    await b.close()
    with pytest.raises(asyncipc.BrokenLinkError):
        await sub.next_msg(timeout=5)
    with pytest.raises(asyncipc.BrokenLinkError):
        await bus.publish("x", b"")
    await bus.close()


async def test_wrong_and_missing_token(tmp_path: Path, transport: str) -> None:
    async with asyncipc.Broker(token="s3cret") as b:
        where = f"unix://{tmp_path}/a.sock" if transport == "unix" else "tcp://127.0.0.1:0"
        url = (await b.listen(where)).url
        with pytest.raises(asyncipc.AuthenticationError, match="invalid token"):
            await asyncipc.connect(url, token="wrong")
        with pytest.raises(asyncipc.AuthenticationError, match="token required"):
            await asyncipc.connect(url)
        async with asyncipc.connect(url + "?token=s3cret") as bus:
            await bus.flush()
        async with asyncipc.connect(url, token="s3cret") as bus:
            await bus.flush()


async def test_connect_to_nothing(tmp_path: Path, transport: str) -> None:
    url = f"unix://{tmp_path}/none.sock" if transport == "unix" else "tcp://127.0.0.1:1"
    with pytest.raises(asyncipc.ConnectError, match="cannot connect"):
        await asyncipc.connect(url)


def test_log_lines_name_the_offender(caplog: pytest.LogCaptureFixture, transport: str) -> None:
    """One clear line per offender: 'closing client N (...): what was wrong'."""

    async def run() -> list[str]:
        async with asyncipc.Broker() as b:
            url = (await b.listen("tcp://127.0.0.1:0")).url
            reader, writer = await open_raw(url)
            writer.write(b"\x00" * 16)
            await read_until_closed(reader)
            writer.close()
        return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]

    lines = asyncio.run(run())
    assert len(lines) == 1
    assert lines[0].startswith("closing tcp ('127.0.0.1',")
    assert "bad preamble" in lines[0]
