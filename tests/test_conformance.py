"""The conformance suite (DESIGN.md §6): the same behaviours over every transport.

``url`` (conftest.py) is parametrized over memory, unix, tcp and tls with a broker in this
process, and unix, tcp and tls with a broker in its own process. The process broker is
shared by the session, so every test works under its own subject prefix.

The reconnect case (DESIGN.md §7) kills its broker, so it has a process of its own per
test, over every transport whose URL reaches a broker process (``RECONNECTING``).
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import asyncipc
from tests.conftest import HERE, Certs

UDP_MAX_PAYLOAD = 65419
"""The largest payload over udp:// with the default max_datagram (docs/transports.md)."""


@pytest.fixture
def p() -> str:
    """A subject prefix no other test uses."""
    return f"t{os.urandom(4).hex()}"


async def test_publish_subscribe_carries_every_field(url: str, p: str) -> None:
    async with asyncipc.connect(url) as bus, bus.subscribe(f"{p}.orders.*") as sub:
        await bus.publish(
            f"{p}.orders.created", b'{"id": 7}', headers={"trace": "abc"}, reply_to=f"{p}.r"
        )
        msg = await sub.next_msg(timeout=5)
    assert msg.subject == f"{p}.orders.created"
    assert msg.data == b'{"id": 7}'
    assert msg.headers == {"trace": "abc"}
    assert msg.reply_to == f"{p}.r"


async def test_between_two_connections_in_order(url: str, p: str) -> None:
    async with (
        asyncipc.connect(url) as pub,
        asyncipc.connect(url) as subbus,
        subbus.subscribe(f"{p}.seq") as sub,
    ):
        for i in range(2000):
            await pub.publish(f"{p}.seq", i.to_bytes(4, "big"))
        got = [int.from_bytes((await sub.next_msg(timeout=5)).data, "big") for _ in range(2000)]
    assert got == list(range(2000))


async def test_wildcards(url: str, p: str) -> None:
    async with asyncipc.connect(url) as bus:
        star = bus.subscribe(f"{p}.*.created")
        full = bus.subscribe(f"{p}.>")
        exact = bus.subscribe(f"{p}.a.created")
        await bus.flush()
        for subject in (f"{p}.a.created", f"{p}.b.created", f"{p}.a.b.created", f"{p}.x"):
            await bus.publish(subject, b"")
        await bus.flush()
        assert [m.subject for m in _drain(star)] == [f"{p}.a.created", f"{p}.b.created"]
        assert len(_drain(full)) == 4
        assert [m.subject for m in _drain(exact)] == [f"{p}.a.created"]


def _drain(sub: asyncipc.Subscription) -> list[asyncipc.Message]:
    out = []
    while sub.pending:
        out.append(sub._queue.popleft())
    return out


async def test_queue_group_shares_and_plain_subscribers_get_all(url: str, p: str) -> None:
    async with asyncipc.connect(url) as a, asyncipc.connect(url) as b, asyncipc.connect(url) as c:
        w1 = a.subscribe(f"{p}.jobs", queue="workers")
        w2 = b.subscribe(f"{p}.jobs", queue="workers")
        audit = c.subscribe(f"{p}.jobs")
        for bus in (a, b, c):
            await bus.flush()
        for i in range(100):
            await c.publish(f"{p}.jobs", str(i).encode())
        for bus in (c, a, b):
            await bus.flush()
        got1, got2 = _drain(w1), _drain(w2)
        assert len(got1) + len(got2) == 100
        assert got1, "both members of the group get a share"
        assert got2, "both members of the group get a share"
        assert sorted(int(m.data) for m in got1 + got2) == list(range(100))
        assert len(_drain(audit)) == 100


async def test_request_reply_and_its_errors(url: str, p: str) -> None:
    async with asyncipc.connect(url) as server, asyncipc.connect(url) as client:

        @server.handler(f"{p}.upper")
        async def upper(msg: asyncipc.Message) -> bytes:
            return msg.data.upper()

        @server.handler(f"{p}.fail")
        async def fail(msg: asyncipc.Message) -> bytes:
            raise RuntimeError("no stock")

        silent = server.subscribe(f"{p}.silent")
        await server.flush()

        reply = await client.request(f"{p}.upper", b"sku-1", timeout=5)
        assert reply.data == b"SKU-1"
        with pytest.raises(asyncipc.NoResponders):
            await client.request(f"{p}.nobody", b"", timeout=5)
        with pytest.raises(asyncipc.RequestTimeout) as timeout:
            await client.request(f"{p}.silent", b"", timeout=0.2)
        assert isinstance(timeout.value, TimeoutError)
        assert silent.pending == 1
        with pytest.raises(asyncipc.ServiceError, match="internal error") as failed:
            await client.request(f"{p}.fail", b"", timeout=5)
        assert "no stock" not in str(failed.value), "the handler's text stays in the service"
        # Many at once: replies find their own requests.
        replies = await asyncio.gather(
            *(client.request(f"{p}.upper", f"x{i}".encode(), timeout=5) for i in range(50))
        )
        assert [r.data for r in replies] == [f"X{i}".encode() for i in range(50)]


async def test_respond_and_callback_subscriptions(url: str, p: str) -> None:
    seen: list[bytes] = []

    async def on_msg(msg: asyncipc.Message) -> None:
        seen.append(msg.data)
        await msg.respond(b"ack:" + msg.data)

    async with asyncipc.connect(url) as server, asyncipc.connect(url) as client:
        server.subscribe(f"{p}.cb", callback=on_msg)
        await server.flush()
        reply = await client.request(f"{p}.cb", b"1", timeout=5)
    assert reply.data == b"ack:1"
    assert seen == [b"1"]


@pytest.mark.parametrize("size", [0, 1, 64 * 1024, 1024 * 1024, 6 * 1024 * 1024])
async def test_message_sizes(url: str, p: str, size: int) -> None:
    payload = os.urandom(size)
    if url.startswith("udp:") and size > UDP_MAX_PAYLOAD:
        pytest.skip("udp carries one frame per datagram: see docs/transports.md, UDP")
    async with asyncipc.connect(url) as bus, bus.subscribe(f"{p}.big") as sub:
        await bus.publish(f"{p}.big", payload)
        msg = await sub.next_msg(timeout=10)
    assert msg.data == payload


async def test_oversized_refused_at_sender_and_bus_goes_on(url: str, p: str) -> None:
    async with asyncipc.connect(url) as bus, bus.subscribe(f"{p}.x") as sub:
        with pytest.raises(asyncipc.FrameTooLarge, match="exceeds"):
            await bus.publish(f"{p}.x", b"\0" * (9 * 1024 * 1024))
        await bus.publish(f"{p}.x", b"after")
        assert (await sub.next_msg(timeout=5)).data == b"after"


async def test_invalid_subjects_raise_before_sending(url: str, p: str) -> None:
    async with asyncipc.connect(url) as bus:
        for bad in ("", "a..b", "a.*", "a.>", " a", "a b"):
            with pytest.raises(asyncipc.InvalidSubject):
                await bus.publish(bad, b"")
        with pytest.raises(ValueError, match="'>' must be the last token"):
            bus.subscribe("a.>.b")
        with pytest.raises(ValueError, match="invalid queue group name"):
            bus.subscribe("a", queue="bad queue")
        await bus.flush()  # still connected and usable


@pytest.mark.parametrize(
    ("overflow", "kept"), [("drop_new", range(10)), ("drop_oldest", range(90, 100))]
)
async def test_drop_policies(url: str, p: str, overflow: str, kept: range) -> None:
    async with (
        asyncipc.connect(url) as pub,
        asyncipc.connect(url) as subbus,
        subbus.subscribe(f"{p}.d", max_pending=10, overflow=overflow) as sub,
    ):
        for i in range(100):
            await pub.publish(f"{p}.d", str(i).encode())
        await pub.flush()
        await subbus.flush()
        assert sub.dropped == 90
        assert [int(m.data) for m in _drain(sub)] == list(kept)


async def test_error_policy_yields_what_it_has_then_raises(url: str, p: str) -> None:
    async with asyncipc.connect(url) as bus:
        sub = bus.subscribe(f"{p}.e", max_pending=5, overflow="error")
        await bus.flush()
        for i in range(20):
            await bus.publish(f"{p}.e", str(i).encode())
        await bus.flush()
        got = [int((await sub.next_msg(timeout=5)).data) for _ in range(5)]
        assert got == [0, 1, 2, 3, 4]
        with pytest.raises(asyncipc.SlowConsumer, match="fell behind"):
            await sub.next_msg(timeout=5)
        assert not sub.active


async def test_block_policy_slows_the_publisher_and_loses_nothing(url: str, p: str) -> None:
    """A subscriber that stops reading holds the publisher back (through the broker), and
    once it reads again every message arrives, in order."""
    # 62 MiB: far more than every buffer on the way together. 25 MiB was not, once, over
    # TCP loopback, whose autotuned socket buffers reach several MiB on each of four ends.
    if url.startswith("nats:"):
        pytest.skip(
            "a NATS server never holds a publisher back for a slow subscriber: "
            "docs/transports.md, NATS (tests/test_nats.py checks what block keeps there)"
        )
    n, size = 1000, 64 * 1024
    if url.startswith("udp:"):
        size = 60 * 1024  # one datagram each (docs/transports.md, UDP): still 58 MiB
    async with asyncipc.connect(url) as pub, asyncipc.connect(url) as subbus:
        sub = subbus.subscribe(f"{p}.b", max_pending=8)
        await subbus.flush()
        progress = 0

        async def produce() -> None:
            nonlocal progress
            for i in range(n):
                await pub.publish(f"{p}.b", i.to_bytes(4, "big") * (size // 4))
                progress = i + 1

        task = asyncio.create_task(produce())
        for _ in range(50):  # let it run until it stalls
            await asyncio.sleep(0.02)
        assert not task.done(), "the publisher should be held back by the stalled subscriber"
        assert progress < n
        got = []
        async for msg in sub:
            got.append(int.from_bytes(msg.data[:4], "big"))
            if len(got) == n:
                break
        await task
        assert got == list(range(n))


async def test_close_drains_what_was_published(url: str, p: str) -> None:
    async with asyncipc.connect(url) as subbus, subbus.subscribe(f"{p}.drain") as sub:
        pub = await asyncipc.connect(url)
        for i in range(500):
            await pub.publish(f"{p}.drain", str(i).encode())
        await pub.close()  # returns only once the broker has everything
        got = [int((await sub.next_msg(timeout=5)).data) for _ in range(500)]
        assert got == list(range(500))
        with pytest.raises(asyncipc.ClosedError):
            await pub.publish(f"{p}.drain", b"late")


async def test_close_lets_handlers_finish(url: str, p: str) -> None:
    started = asyncio.Event()
    release = asyncio.Event()
    async with asyncipc.connect(url) as client:
        server = await asyncipc.connect(url)

        @server.handler(f"{p}.slow")
        async def slow(msg: asyncipc.Message) -> bytes:
            started.set()
            await release.wait()
            return b"done"

        await server.flush()
        pending = asyncio.create_task(client.request(f"{p}.slow", b"", timeout=10))
        await started.wait()
        closing = asyncio.create_task(server.close())
        await asyncio.sleep(0.05)
        release.set()
        await closing
        assert (await pending).data == b"done"


async def test_reconnect_after_close_and_subscriptions_go_with_the_bus(url: str, p: str) -> None:
    bus = await asyncipc.connect(url)

    @bus.handler(f"{p}.svc")
    async def svc(msg: asyncipc.Message) -> bytes:
        return b"one"

    await bus.flush()
    await bus.close()
    async with asyncipc.connect(url) as again:
        with pytest.raises(asyncipc.NoResponders):
            await again.request(f"{p}.svc", b"", timeout=5)

        @again.handler(f"{p}.svc")
        async def svc2(msg: asyncipc.Message) -> bytes:
            return b"two"

        await again.flush()
        assert (await again.request(f"{p}.svc", b"", timeout=5)).data == b"two"


async def test_unsubscribe_stops_delivery(url: str, p: str) -> None:
    async with asyncipc.connect(url) as bus:
        sub = bus.subscribe(f"{p}.u")
        await bus.flush()
        await bus.publish(f"{p}.u", b"1")
        await bus.flush()
        await sub.unsubscribe()
        await bus.publish(f"{p}.u", b"2")
        await bus.flush()
        assert [m.data async for m in sub] == [b"1"]


async def test_drain_leaves_a_queue_group_without_losing_a_message(url: str, p: str) -> None:
    """unsubscribe() drops what the broker already sent; drain() keeps it, so every
    message reaches exactly one member while one of them leaves mid-stream."""
    n = 2000
    async with (
        asyncipc.connect(url) as pub,
        asyncipc.connect(url) as a,
        asyncipc.connect(url) as b,
    ):
        # A small bound on a: its link pauses, so messages wait in flight for it.
        sa = a.subscribe(f"{p}.work", queue="g", max_pending=10)
        sb = b.subscribe(f"{p}.work", queue="g")
        await a.flush()
        await b.flush()
        got_b: list[int] = []

        async def read_b() -> None:
            async for m in sb:
                got_b.append(int(m.data[:8]))

        async def publish() -> None:
            for i in range(n):
                # 4 KiB each: more than a socket buffer holds is in flight for a.
                await pub.publish(f"{p}.work", b"%08d" % i + bytes(4096))
            await pub.flush()

        reader = asyncio.create_task(read_b())
        publisher = asyncio.create_task(publish())
        got_a: list[int] = []
        async for m in sa:
            got_a.append(int(m.data[:8]))
            if len(got_a) == 50:
                await sa.drain(timeout=10)  # iteration goes on with what was in flight
        await publisher
        await b.flush()  # b's PONG follows every message routed to it
        await sb.drain(timeout=10)
        await reader
    assert sorted(got_a + got_b) == list(range(n))
    assert len(got_a) >= 50


async def test_serve_drain_answers_the_request_in_hand(url: str, p: str) -> None:
    async with asyncipc.connect(url) as service, asyncipc.connect(url) as client:
        started = asyncio.Event()
        release = asyncio.Event()

        async def slow(msg: asyncipc.Message) -> bytes:
            started.set()
            await release.wait()
            return b"done:" + msg.data

        sub = service.serve(f"{p}.slow", slow)
        await service.flush()
        request = asyncio.create_task(client.request(f"{p}.slow", b"x", timeout=10))
        await started.wait()
        draining = asyncio.create_task(sub.drain(timeout=10))
        await asyncio.sleep(0.05)
        assert not draining.done(), "drain() returned before the handler finished"
        release.set()
        await draining
        assert (await request).data == b"done:x"
        with pytest.raises(asyncipc.NoResponders):
            await client.request(f"{p}.slow", b"y", timeout=5)


# --- reconnect (DESIGN.md §7) ------------------------------------------------------------

RECONNECTING = ["unix", "tcp", "tls", "fifo", "http", "grpc", "shm", "mmap", "udp"]
"""Every transport that reaches a broker process; ``memory://`` and ``pipe:`` never redial
(there is nothing to dial again), so they have no reconnect case."""

GUARD = 10.0
"""Seconds any one wait of the reconnect case may take before it fails (never a hang)."""


class RestartableBroker:
    """``tests/broker_proc.py`` on one URL in a process of its own, that can be killed
    (SIGKILL: no goodbye to its clients, its files left behind) and started again on the
    same URL. Started with asyncio, so the buses under test go on running meanwhile."""

    def __init__(self, listen: str, log: Path) -> None:
        self.listen = listen
        self.log = log
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> str:
        """Start it; the URL it printed once ready."""
        with self.log.open("ab") as err:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                str(HERE / "broker_proc.py"),
                self.listen,
                stdout=asyncio.subprocess.PIPE,
                stderr=err,
            )
        assert self.proc.stdout is not None
        async with asyncio.timeout(GUARD):
            line = (await self.proc.stdout.readline()).decode()
        if not line.startswith("ready "):
            await self.stop()
            raise RuntimeError(f"broker process failed: {line!r} {self.log.read_text()!r}")
        return line.split(" ", 1)[1].strip()

    async def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        async with asyncio.timeout(GUARD):
            await self.proc.wait()

    async def stop(self) -> int | None:
        """SIGTERM (the broker drains and exits 0), SIGKILL if it does not within GUARD."""
        proc = self.proc
        if proc is None:
            return None
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(GUARD):
                    await proc.wait()
            finally:
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
        return proc.returncode


def _free_port(kind: socket.SocketKind) -> int:
    """A port on 127.0.0.1 free a moment ago: a restarted broker must bind the same one."""
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _listen_url(kind: str, tmp_path: Path, certs: Certs) -> tuple[str, str]:
    """Where the broker listens for ``kind``, and what a client adds to the URL it prints."""
    if kind == "unix":
        return f"unix://{tmp_path}/b.sock", ""
    if kind == "fifo":
        return f"fifo://{tmp_path}/b.fifo", ""
    if kind == "mmap":
        return f"mmap://{tmp_path}/m", ""
    if kind == "shm":
        return f"shm://r{os.urandom(4).hex()}?dir={tmp_path}", ""
    port = _free_port(socket.SOCK_DGRAM if kind == "udp" else socket.SOCK_STREAM)
    if kind == "tls":
        return f"tls://127.0.0.1:{port}" + certs.server_query(), certs.client_query()
    return f"{kind}://127.0.0.1:{port}", ""


@pytest.fixture
async def restartable(tmp_path: Path) -> AsyncIterator[list[RestartableBroker]]:
    """Every RestartableBroker a test appends is stopped and reaped, whatever happened."""
    brokers: list[RestartableBroker] = []
    try:
        yield brokers
    finally:
        for broker in brokers:
            await broker.stop()


async def _until(events: asyncipc.EventStream, kind: str) -> list[asyncipc.ConnectionEvent]:
    """Every event up to and including the first of ``kind``, within GUARD seconds."""
    seen: list[asyncipc.ConnectionEvent] = []
    async with asyncio.timeout(GUARD):
        async for event in events:
            seen.append(event)
            if event.kind == kind:
                return seen
    raise AssertionError(f"events ended before {kind!r}: {seen}")


@pytest.mark.parametrize("kind", RECONNECTING)
async def test_broker_killed_and_restarted_subscriptions_resume(
    kind: str, p: str, tmp_path: Path, certs: Certs, restartable: list[RestartableBroker]
) -> None:
    """SIGKILL the broker process and start it again on the same URL: both buses
    reconnect by themselves, and the subscription and the handler made before the kill
    get what is sent after, once each."""
    listen, client_query = _listen_url(kind, tmp_path, certs)
    broker = RestartableBroker(listen, tmp_path / "broker.log")
    restartable.append(broker)
    url = await broker.start() + client_query
    options = asyncipc.ConnectOptions()
    if kind == "udp":
        # A UDP bus hears that its broker died only when it next sends (docs/transports.md,
        # UDP: "Vanishing peers"); the keep-alive is what makes an idle subscriber send.
        options = asyncipc.ConnectOptions(ping_interval=0.2)
    async with (
        asyncipc.connect(url, options=options) as subbus,
        asyncipc.connect(url, options=options) as pub,
    ):
        sub = subbus.subscribe(f"{p}.orders")

        @subbus.handler(f"{p}.upper")
        async def upper(msg: asyncipc.Message) -> bytes:
            return msg.data.upper()

        await subbus.flush()
        # Before the kill: the publisher's reply inbox exists and must come back too.
        assert (await pub.request(f"{p}.upper", b"before", timeout=GUARD)).data == b"BEFORE"
        streams = [subbus.events(), pub.events()]

        await broker.kill()
        for events in streams:
            down = await _until(events, "disconnected")
            assert [(e.kind, e.url) for e in down] == [("disconnected", url)], down
        for bus in (subbus, pub):
            assert not bus.is_connected
            assert bus.connected_url is None
            assert not bus.is_closed, "a reconnecting bus is not closed"

        assert await broker.start() + client_query == url
        for events in streams:
            back = await _until(events, "reconnected")
            # "error" is for a broker that refused us; one not yet listening is no error.
            assert [(e.kind, e.url) for e in back] == [("reconnected", url)], back
        for bus in (subbus, pub):
            assert bus.is_connected
            assert bus.connected_url == url

        # "reconnected" means the subscriptions were sent again, not yet that the broker
        # has them: the two buses' connections race, and the publisher's may be read first.
        await subbus.flush(timeout=GUARD)
        await pub.publish(f"{p}.orders", b"after")
        msg = await sub.next_msg(timeout=GUARD)
        assert (msg.subject, msg.data) == (f"{p}.orders", b"after")
        assert (await pub.request(f"{p}.upper", b"after", timeout=GUARD)).data == b"AFTER"
        await pub.flush(timeout=GUARD)
        await subbus.flush(timeout=GUARD)
        assert sub.pending == 0, "the subscription was restored twice"
    assert await broker.stop() == 0, "the restarted broker did not drain and exit 0"
