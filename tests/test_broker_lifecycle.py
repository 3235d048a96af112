"""Broker start and stop when calls overlap, and what a refused client logs."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from pathlib import Path

import pytest

import asyncipc
from asyncipc.link import Accept, Link, Listener
from asyncipc.protocol import PREAMBLE, Welcome, encode
from asyncipc.transports import URL, TransportOptions, lookup, register


class GatedUnix:
    """The unix transport, holding each listen() until the test opens the gate: the
    window in which close() can run while a listener is being bound, made wide."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.entered = asyncio.Event()

    async def connect(self, url: URL, options: TransportOptions) -> Link:
        return await lookup("unix").connect(url, options)

    async def listen(self, url: URL, accept: Accept, options: TransportOptions) -> Listener:
        self.entered.set()
        await self.gate.wait()
        return await lookup("unix").listen(url, accept, options)


async def test_close_during_listen_leaves_no_listener(tmp_path: Path) -> None:
    """close() while listen() is binding: the new listener must not outlive the broker."""
    gated = GatedUnix()
    register("gated-unix", gated)
    broker = asyncipc.Broker()
    path = tmp_path / "late.sock"
    binding = asyncio.ensure_future(broker.listen(f"gated-unix://{path}"))
    await gated.entered.wait()
    await broker.close()
    gated.gate.set()
    with pytest.raises(asyncipc.ClosedError, match="broker is closed"):
        await binding
    assert broker.urls == []
    assert not path.exists(), "a socket file outlived the broker"


async def test_second_close_waits_for_the_drain(tmp_path: Path) -> None:
    broker = asyncipc.Broker()
    listener = await broker.listen(f"unix://{tmp_path}/b.sock")
    bus = await asyncipc.connect(listener.url)
    try:
        first = asyncio.ensure_future(broker.close())
        await asyncio.sleep(0)
        second = asyncio.ensure_future(broker.close())
        await asyncio.sleep(0)
        assert not second.done(), "a second close() returned before the drain"
        await asyncio.wait_for(asyncio.gather(first, second), 10)
        assert broker.sessions == 0
    finally:
        await bus.close()


async def test_refused_token_is_raised_not_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with asyncipc.Broker(token="right") as broker:
        listener = await broker.listen(f"unix://{tmp_path}/b.sock")
        with caplog.at_level(logging.WARNING, logger="asyncipc"):
            with pytest.raises(asyncipc.AuthenticationError, match="invalid token"):
                await asyncipc.connect(listener.url + "?token=wrong")
            await asyncio.sleep(0.05)  # let the link's loss be processed
        client_lines = [r for r in caplog.records if r.name.startswith("asyncipc.client")]
        assert client_lines == [], [r.getMessage() for r in client_lines]


async def test_close_lets_go_of_a_broker_that_stopped_reading(tmp_path: Path) -> None:
    """Bus.close() is bounded even when the broker reads nothing more, and afterwards the
    socket is really closed (aborted), not left open holding unsendable bytes."""
    path = str(tmp_path / "deaf.sock")
    release = asyncio.Event()

    async def deaf_broker(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readexactly(len(PREAMBLE))
        writer.write(encode(Welcome({"version": 1, "max_frame": 1 << 20})))
        await release.wait()  # and never reads again: the client's socket fills up
        writer.close()

    def open_fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    server = await asyncio.start_unix_server(deaf_broker, path)
    try:
        before = open_fds()
        options = asyncipc.ConnectOptions(drain_timeout=0.3, ping_interval=60)
        bus = await asyncipc.connect(f"unix://{path}", options=options)
        while True:  # publish until backpressure holds us: the broker is not reading
            publishing = asyncio.ensure_future(bus.publish("flood", bytes(65536)))
            done, _ = await asyncio.wait({publishing}, timeout=0.5)
            if not done:
                break
        await asyncio.wait_for(bus.close(), 20)
        with contextlib.suppress(asyncipc.AsyncIPCError, OSError):
            await publishing
        for _ in range(20):  # the transport's connection_lost runs a turn or two later
            await asyncio.sleep(0.01)
        server_side = 1  # the broker's accepted socket is still open until release
        assert open_fds() <= before + server_side, "the client socket was left open"
    finally:
        release.set()
        server.close()


async def test_shutdown_does_not_wait_for_replies_nobody_reads(tmp_path: Path) -> None:
    """A closing broker waits for requests in flight, but not past the requester's own
    time-out, which Bus.request sends along as the asyncipc-timeout header."""
    broker = asyncipc.Broker(drain_timeout=60)
    listener = await broker.listen(f"unix://{tmp_path}/b.sock")
    seen: list[dict[str, str] | None] = []
    async with (
        asyncipc.connect(listener.url) as service,
        asyncipc.connect(listener.url) as client,
    ):
        ignored = service.subscribe("ignored")  # receives, never answers
        await service.flush()
        with pytest.raises(asyncipc.RequestTimeout):
            await client.request("ignored", b"?", timeout=0.2)
        seen.append((await ignored.next_msg(timeout=5)).headers)
        # Well under drain_timeout: the one request in flight has expired already.
        await asyncio.wait_for(broker.close(), 30)
    assert seen == [{"asyncipc-timeout": "0.2"}]


@pytest.mark.one_loop("the broker's bookkeeping, not the event loop")
async def test_a_requester_that_leaves_takes_only_its_own_requests_in_flight(
    tmp_path: Path,
) -> None:
    """Requests with no time-out stay in the broker's table until answered or until their
    requester leaves; a leaving requester takes its own entries and no one else's."""
    broker = asyncipc.Broker(drain_timeout=20)
    listener = await broker.listen(f"unix://{tmp_path}/b.sock")
    table = broker._inflight
    try:
        async with (
            asyncipc.connect(listener.url) as service,
            asyncipc.connect(listener.url) as stayer,
        ):
            ignored = service.subscribe("ignored")  # receives, never answers
            await service.flush()
            leaver = await asyncipc.connect(listener.url)
            for n in range(3):  # no asyncipc-timeout header: no deadline
                await leaver.publish("ignored", b"?", reply_to=f"_INBOX.leaver.{n}")
            await stayer.publish("ignored", b"?", reply_to="_INBOX.stayer.0")
            for _ in range(4):
                assert (await ignored.next_msg(timeout=5)).headers is None
            assert sorted(table.replies) == [
                "_INBOX.leaver.0",
                "_INBOX.leaver.1",
                "_INBOX.leaver.2",
                "_INBOX.stayer.0",
            ]
            await leaver.close()
            for _ in range(500):
                if len(table) == 1:
                    break
                await asyncio.sleep(0.01)
            assert list(table.replies) == ["_INBOX.stayer.0"]
            # The answer clears the last one, and a shutdown then has nothing to wait for.
            await service.publish("_INBOX.stayer.0", b"!")
            await service.flush()
            assert len(table) == 0
            await stayer.publish("ignored", b"?", reply_to="_INBOX.stayer.1")
            await ignored.next_msg(timeout=5)
            assert list(table.replies) == ["_INBOX.stayer.1"]
        # Both requester and responder are gone: nothing is left to wait for.
        await asyncio.wait_for(broker.close(), 10)
        assert len(table) == 0
    finally:
        await broker.close()


async def test_an_orderly_broker_shutdown_is_not_logged_as_a_fault(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    broker = asyncipc.Broker()
    listener = await broker.listen(f"unix://{tmp_path}/b.sock")
    bus = await asyncipc.connect(listener.url, options=asyncipc.ConnectOptions(reconnect=False))
    try:
        with caplog.at_level(logging.INFO, logger="asyncipc.client"):
            await broker.close()
            await asyncio.wait_for(bus.wait_closed(), 10)
        client = [r for r in caplog.records if r.name == "asyncipc.client"]
        assert [r.levelno for r in client] == [logging.INFO]
        assert "shutting down" in client[0].getMessage()
    finally:
        await bus.close()
