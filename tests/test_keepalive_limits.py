"""Keep-alive from the client's side, and the maximum frame size the broker announces."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

import asyncipc
from asyncipc.protocol import PREAMBLE, FrameDecoder, Welcome, encode


async def test_client_drops_a_broker_that_stops_answering(tmp_path: Path) -> None:
    """A fake broker that welcomes us and then never says another word."""
    path = str(tmp_path / "mute.sock")
    got_ping = asyncio.Event()

    async def mute_broker(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert await reader.readexactly(len(PREAMBLE)) == PREAMBLE
        decoder = FrameDecoder()
        writer.write(encode(Welcome({"version": 1, "max_frame": 1 << 20})))
        while chunk := await reader.read(4096):
            if any(isinstance(f, asyncipc.protocol.Ping) for f in decoder.feed(chunk)):
                got_ping.set()  # ... and never PONG
        writer.close()

    server = await asyncio.start_unix_server(mute_broker, path)
    try:
        options = asyncipc.ConnectOptions(ping_interval=0.1, dead_peer_factor=3, reconnect=False)
        bus = await asyncipc.connect(f"unix://{path}", options=options)
        sub = bus.subscribe("anything")
        with pytest.raises(asyncipc.BrokenLinkError, match="stopped responding"):
            await sub.next_msg(timeout=5)
        assert got_ping.is_set()
        await bus.close()
    finally:
        server.close()


async def test_announced_max_frame_is_respected_by_the_client(tmp_path: Path) -> None:
    async with asyncipc.Broker(max_frame=64 * 1024) as b:
        url = (await b.listen(f"unix://{tmp_path}/b.sock")).url
        async with asyncipc.connect(url) as bus, bus.subscribe("s") as sub:
            assert bus.server_info["max_frame"] == 64 * 1024
            with pytest.raises(asyncipc.FrameTooLarge, match="exceeds the maximum"):
                await bus.publish("s", bytes(100 * 1024))
            await bus.publish("s", bytes(60 * 1024))
            assert len((await sub.next_msg(timeout=5)).data) == 60 * 1024


async def test_broker_does_not_send_a_client_more_than_it_accepts(tmp_path: Path) -> None:
    """A client announcing a small maximum is told of the message it missed (an error
    frame, counted in ``dropped``) instead of being sent an oversized MSG."""
    async with asyncipc.Broker() as b:
        url = (await b.listen(f"unix://{tmp_path}/b.sock")).url
        small = asyncipc.ConnectOptions(max_frame=16 * 1024)
        async with asyncipc.connect(url, options=small) as little, asyncipc.connect(url) as big:
            sub = little.subscribe("s")
            await little.flush()
            await big.publish("s", bytes(32 * 1024))
            await big.publish("s", b"small")
            await big.flush()
            assert (await sub.next_msg(timeout=5)).data == b"small"
            assert sub.dropped == 1
            assert sub.active
