"""The ``asyncipc.v1.Streams`` service (docs/grpc.md, "Streams") against a real broker: a
grpc.aio server on a loopback port, the generated stubs on a grpc.aio channel, and native
buses on tcp:// beside them that see the same streams through the client API.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

import asyncipc
from asyncipc.adapters.grpc import _streams as grpc_streams
from asyncipc.adapters.grpc.proto import bus_pb2 as pb
from asyncipc.adapters.grpc.proto import bus_pb2_grpc as pb_grpc

pytestmark = pytest.mark.timeout(60)

TOKEN = "s3cret"
Code = grpc.StatusCode


class Stack:
    """A broker on grpc and tcp, and the Streams and Bus stubs on a channel to it."""

    def __init__(self, broker: asyncipc.Broker, tcp: str, channel: Any) -> None:
        self.broker = broker
        self.tcp = tcp
        self.channel = channel
        self.streams: Any = pb_grpc.StreamsStub(channel)
        self.bus: Any = pb_grpc.BusStub(channel)


async def _stack(**options: Any) -> AsyncIterator[Stack]:
    async with asyncipc.Broker(**options) as broker:
        target = (await broker.listen("grpc://127.0.0.1:0")).url.removeprefix("grpc://")
        tcp = (await broker.listen("tcp://127.0.0.1:0")).url
        async with grpc.aio.insecure_channel(target) as channel:
            yield Stack(broker, tcp, channel)


@pytest.fixture
async def stack() -> AsyncIterator[Stack]:
    async for s in _stack():
        yield s


async def refused(call: Any) -> tuple[Any, str]:
    """The status and details a call ends with; it must fail."""
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    return info.value.code(), str(info.value.details())


async def make_orders(stack: Stack, **config: Any) -> Any:
    return await stack.streams.StreamCreate(
        pb.StreamConfig(name="ORDERS", subjects=["orders.>"], **config)
    )


async def publish(stack: Stack, subject: str, data: bytes, **more: Any) -> Any:
    return await stack.streams.StreamPublish(
        pb.StreamPublishRequest(stream="ORDERS", subject=subject, data=data, **more)
    )


async def collect(call: Any) -> list[Any]:
    """What a Fetch call streams, until it ends (its error, if it fails)."""
    return [msg async for msg in call]


async def fetch(stack: Stack, consumer: str, batch: int = 10, timeout: float = 0.5) -> list[Any]:
    request = pb.FetchRequest(stream="ORDERS", consumer=consumer, batch=batch, timeout=timeout)
    return await collect(stack.streams.Fetch(request))


# --- streams -----------------------------------------------------------------------------


async def test_create_publish_with_acks_and_a_native_client_reads_the_stream(stack: Stack) -> None:
    info = await make_orders(stack, max_msgs=100)
    assert (info.config.name, list(info.config.subjects)) == ("ORDERS", ["orders.>"])
    assert (info.config.max_msgs, info.config.duplicate_window) == (100, 120)
    assert info.config.discard == pb.DISCARD_OLD
    assert not info.config.HasField("storage")  # the broker's default: memory here
    assert (info.storage, info.messages, info.last_seq) == (pb.STORAGE_MEMORY, 0, 0)
    # create-or-get: the fields set are compared; other values are a conflict
    again = await stack.streams.StreamCreate(pb.StreamConfig(name="ORDERS", max_msgs=100))
    assert again.created == info.created
    code, details = await refused(make_orders(stack, max_msgs=5))
    assert code is Code.ALREADY_EXISTS
    assert "max_msgs" in details
    code, _ = await refused(stack.streams.StreamCreate(pb.StreamConfig(name="O2", subjects=[">"])))
    assert code is Code.FAILED_PRECONDITION  # overlaps ORDERS

    first = await publish(
        stack, "orders.created", b'{"id": 7}', msg_id="o-7", headers={"trace": "abc"}
    )
    assert (first.stream, first.seq, first.duplicate) == ("ORDERS", 1, False)
    dup = await publish(stack, "orders.created", b'{"id": 7}', msg_id="o-7")
    assert (dup.seq, dup.duplicate) == (1, True)
    assert (await publish(stack, "orders.paid", b"\x00\xff")).seq == 2

    async with asyncipc.connect(stack.tcp) as bus:
        await bus.publish("orders.shipped", b"native")  # captured like the others
        consumer = await (await bus.stream("ORDERS")).consumer("native")
        got = await consumer.fetch(10, timeout=2)
        assert [(m.seq, m.subject, m.data) for m in got] == [
            (1, "orders.created", b'{"id": 7}'),
            (2, "orders.paid", b"\x00\xff"),
            (3, "orders.shipped", b"native"),
        ]
        assert got[0].headers is not None
        assert got[0].headers["trace"] == "abc"
        for m in got:
            await m.ack_sync()

    listed = await stack.streams.StreamList(pb.StreamListRequest())
    assert [s.config.name for s in listed.streams] == ["ORDERS"]
    info = await stack.streams.StreamGet(pb.StreamRequest(stream="ORDERS"))
    assert (info.messages, info.first_seq, info.last_seq, info.consumers) == (3, 1, 3, 1)
    assert info.last_time_ns >= info.first_time_ns > 0

    purge = stack.streams.StreamPurge
    assert (await purge(pb.StreamPurgeRequest(stream="ORDERS", subject="orders.paid"))).purged == 1
    assert (await purge(pb.StreamPurgeRequest(stream="ORDERS"))).purged == 2

    await stack.streams.StreamDelete(pb.StreamRequest(stream="ORDERS"))
    for call in (
        stack.streams.StreamGet(pb.StreamRequest(stream="ORDERS")),
        stack.streams.StreamDelete(pb.StreamRequest(stream="ORDERS")),
    ):
        assert (await refused(call))[0] is Code.NOT_FOUND
    assert list((await stack.streams.StreamList(pb.StreamListRequest())).streams) == []


async def test_a_full_stream_that_discards_new_is_resource_exhausted(stack: Stack) -> None:
    await make_orders(stack, max_msgs=1, discard=pb.DISCARD_NEW, max_msg_size=4)
    await publish(stack, "orders.a", b"1")
    code, details = await refused(publish(stack, "orders.b", b"2"))
    assert code is Code.RESOURCE_EXHAUSTED
    assert "full" in details
    await stack.streams.StreamPurge(pb.StreamPurgeRequest(stream="ORDERS"))
    assert (await refused(publish(stack, "orders.b", b"12345")))[0] is Code.RESOURCE_EXHAUSTED
    info = await stack.streams.StreamGet(pb.StreamRequest(stream="ORDERS"))
    assert info.refused == 2


# --- consumers ---------------------------------------------------------------------------


async def test_fetch_ack_nak_term_and_the_counts(stack: Stack) -> None:
    await make_orders(stack)
    config = pb.ConsumerConfig(name="billing", dead_letter="dead.orders", max_deliver=5)
    created = await stack.streams.ConsumerCreate(
        pb.ConsumerCreateRequest(stream="ORDERS", config=config)
    )
    assert (created.stream, created.config.name, created.config.durable) == (
        "ORDERS",
        "billing",
        True,
    )
    assert (created.config.ack_wait, created.config.max_ack_pending) == (30, 1000)
    await stack.streams.ConsumerCreate(pb.ConsumerCreateRequest(stream="ORDERS", config=config))
    found = await stack.streams.ConsumerCreate(  # the fields left unset are not compared
        pb.ConsumerCreateRequest(stream="ORDERS", config=pb.ConsumerConfig(name="billing"))
    )
    assert found.config.dead_letter == "dead.orders"
    other = pb.ConsumerCreateRequest(
        stream="ORDERS", config=pb.ConsumerConfig(name="billing", max_deliver=3)
    )
    code, details = await refused(stack.streams.ConsumerCreate(other))
    assert code is Code.ALREADY_EXISTS
    assert "max_deliver" in details
    listed = await stack.streams.ConsumerList(pb.StreamRequest(stream="ORDERS"))
    assert [c.config.name for c in listed.consumers] == ["billing"]

    for i in range(1, 6):
        await publish(stack, f"orders.{i}", f"m{i}".encode(), headers={"n": str(i)})

    got = await fetch(stack, "billing")
    assert [m.seq for m in got] == [1, 2, 3, 4, 5]
    m = got[0]
    assert (m.subject, m.data, m.headers["n"]) == ("orders.1", b"m1", "1")
    assert (m.stream, m.consumer, m.num_delivered) == ("ORDERS", "billing", 1)
    assert m.time_ns > 0
    assert m.ack_token
    assert await fetch(stack, "billing", timeout=0) == []  # all are out

    ack = stack.streams.Ack
    async with asyncipc.connect(stack.tcp) as bus, bus.subscribe("dead.orders") as dead:
        await bus.flush()
        await ack(pb.AckRequest(token=got[0].ack_token))  # ACK_KIND_ACK is the default
        await ack(pb.AckRequest(token=got[1].ack_token, kind=pb.ACK_KIND_IN_PROGRESS))
        await ack(pb.AckRequest(token=got[1].ack_token, kind=pb.ACK_KIND_ACK))
        await ack(pb.AckRequest(token=got[2].ack_token, kind=pb.ACK_KIND_NAK))
        await ack(pb.AckRequest(token=got[3].ack_token, kind=pb.ACK_KIND_TERM))
        await ack(pb.AckRequest(token=got[4].ack_token, kind=pb.ACK_KIND_NAK, delay=0.4))
        buried = await dead.next_msg(timeout=5)
        assert (buried.subject, buried.data) == ("dead.orders", b"m4")
        assert buried.headers is not None
        assert buried.headers["asyncipc-dead-reason"] == "terminated"

    again = await fetch(stack, "billing", timeout=0)
    assert [(m.seq, m.num_delivered) for m in again] == [(3, 2)]  # 5 waits its delay
    later = await fetch(stack, "billing", timeout=5)
    assert [(m.seq, m.num_delivered) for m in later] == [(5, 2)]
    request = pb.ConsumerRequest(stream="ORDERS", consumer="billing")
    info = await stack.streams.ConsumerGet(request)
    assert (info.num_ack_pending, info.num_redelivered) == (2, 2)
    await ack(pb.AckRequest(token=again[0].ack_token))
    await ack(pb.AckRequest(token=later[0].ack_token))
    code, details = await refused(ack(pb.AckRequest(token=got[0].ack_token)))
    assert code is Code.FAILED_PRECONDITION  # acknowledged already
    assert "not awaiting" in details

    info = await stack.streams.ConsumerGet(request)
    assert (info.num_pending, info.num_ack_pending) == (0, 0)
    assert (info.delivered, info.ack_floor, info.dead_lettered) == (5, 5, 1)

    await stack.streams.ConsumerDelete(request)
    assert (await refused(stack.streams.ConsumerGet(request)))[0] is Code.NOT_FOUND
    assert (await refused(stack.streams.ConsumerDelete(request)))[0] is Code.NOT_FOUND


async def test_a_fetch_answers_before_the_call_deadline(stack: Stack) -> None:
    """A Fetch asking to wait longer than its deadline answers with what it has, in time."""
    await make_orders(stack)
    await stack.streams.ConsumerCreate(
        pb.ConsumerCreateRequest(stream="ORDERS", config=pb.ConsumerConfig(name="w"))
    )
    loop = asyncio.get_running_loop()
    started = loop.time()
    got = await collect(
        stack.streams.Fetch(pb.FetchRequest(stream="ORDERS", consumer="w", timeout=30), timeout=1.0)
    )
    assert got == []
    assert loop.time() - started < 1.0
    # and one that waits gets the first message to come
    async with asyncipc.connect(stack.tcp) as bus:
        waiting = asyncio.create_task(fetch(stack, "w", batch=5, timeout=10))
        await asyncio.sleep(0.3)
        await bus.publish("orders.late", b"late")
        assert [m.data for m in await asyncio.wait_for(waiting, 5)] == [b"late"]


async def test_a_cancelled_fetch_leaves_its_messages_to_the_next(stack: Stack) -> None:
    await make_orders(stack)
    await stack.streams.ConsumerCreate(
        pb.ConsumerCreateRequest(stream="ORDERS", config=pb.ConsumerConfig(name="w"))
    )
    call = stack.streams.Fetch(pb.FetchRequest(stream="ORDERS", consumer="w", timeout=20))
    await asyncio.sleep(0.3)
    call.cancel()
    await asyncio.sleep(0.2)
    await publish(stack, "orders.a", b"x")
    got = await fetch(stack, "w", batch=1, timeout=5)
    assert [(m.seq, m.num_delivered) for m in got] == [(1, 1)]


async def test_a_fetch_streams_messages_as_large_as_the_broker_allows(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each message is a gRPC message of its own: a batch of them would be over gRPC's
    limit (max_frame and a little). The adapter asks for them a few at a time
    (MAX_FETCH_BYTES), however many the call wants."""
    monkeypatch.setattr(grpc_streams, "MAX_FETCH_BYTES", 200 * 1024)
    async for stack in _stack(max_frame=64 * 1024):
        await make_orders(stack)
        await stack.streams.ConsumerCreate(
            pb.ConsumerCreateRequest(stream="ORDERS", config=pb.ConsumerConfig(name="w"))
        )
        for i in range(10):
            await publish(stack, f"orders.{i}", bytes([i]) * 60_000)
        got = await fetch(stack, "w", batch=8, timeout=1)
        assert [m.seq for m in got] == [1, 2, 3, 4, 5, 6, 7, 8]
        assert [m.data for m in got] == [bytes([i]) * 60_000 for i in range(8)]
        info = await stack.streams.ConsumerGet(pb.ConsumerRequest(stream="ORDERS", consumer="w"))
        assert (info.num_ack_pending, info.num_pending) == (8, 2)


# --- what is refused ---------------------------------------------------------------------


async def test_unknown_streams_and_consumers_are_not_found(stack: Stack) -> None:
    s = stack.streams
    nope = pb.StreamRequest(stream="NOPE")
    for call in (
        s.StreamGet(nope),
        s.StreamDelete(nope),
        s.ConsumerList(nope),
        s.StreamPurge(pb.StreamPurgeRequest(stream="NOPE")),
        s.StreamPublish(pb.StreamPublishRequest(stream="NOPE", subject="a")),
        s.ConsumerCreate(
            pb.ConsumerCreateRequest(stream="NOPE", config=pb.ConsumerConfig(name="c"))
        ),
        s.ConsumerGet(pb.ConsumerRequest(stream="NOPE", consumer="c")),
        collect(s.Fetch(pb.FetchRequest(stream="NOPE", consumer="c"))),
        s.StreamCreate(pb.StreamConfig(name="NOPE")),  # only a name: a look-up
    ):
        code, details = await refused(call)
        assert code is Code.NOT_FOUND, details
    await make_orders(stack)
    for call in (
        s.ConsumerGet(pb.ConsumerRequest(stream="ORDERS", consumer="c")),
        s.ConsumerDelete(pb.ConsumerRequest(stream="ORDERS", consumer="c")),
        collect(s.Fetch(pb.FetchRequest(stream="ORDERS", consumer="c"))),
        s.Ack(pb.AckRequest(token="$sys.stream.ack.ORDERS.c.1.1.1")),
    ):
        code, details = await refused(call)
        assert code is Code.NOT_FOUND, details


@pytest.mark.parametrize(
    "config",
    [
        {"subjects": ["a..b"]},
        {"subjects": ["$sys.x"]},
        {"name": "no spaces"},
        {"name": ""},
        {"discard": 7},
        {"fsync": 9},
        {"storage": pb.STORAGE_FILE},  # this broker has no store
        {"max_age": math.nan},
        {"max_age": math.inf},
        {"max_age": 1e300},  # past what nanoseconds since 1970 hold
        {"duplicate_window": -1.0},
        {"sync_interval": 0.0},
    ],
)
async def test_bad_stream_configurations_are_invalid_argument(
    stack: Stack, config: dict[str, Any]
) -> None:
    given = {"name": "S", "subjects": ["s"], **config}
    code, details = await refused(stack.streams.StreamCreate(pb.StreamConfig(**given)))
    assert code is Code.INVALID_ARGUMENT, details
    assert list((await stack.streams.StreamList(pb.StreamListRequest())).streams) == []


async def test_bad_requests_are_invalid_argument(stack: Stack) -> None:
    s = stack.streams
    await make_orders(stack)
    bad_consumers = [
        pb.ConsumerConfig(),  # no name: an ephemeral consumer nobody would remove
        pb.ConsumerConfig(name="c", durable=False),
        pb.ConsumerConfig(name="c", ack_wait=0),
        pb.ConsumerConfig(name="c", ack_wait=math.nan),
        pb.ConsumerConfig(name="c", deliver=42),  # type: ignore[arg-type]
        pb.ConsumerConfig(name="c", deliver=pb.DELIVER_BY_START_SEQ),  # no start_seq
        pb.ConsumerConfig(name="c", deliver=pb.DELIVER_BY_START_TIME, start_time=1e300),
        pb.ConsumerConfig(name="c", filter_subject="elsewhere"),
        pb.ConsumerConfig(name="c", dead_letter="orders.dead"),  # it would come back
        pb.ConsumerConfig(name="bad name"),
    ]
    for config in bad_consumers:
        request = pb.ConsumerCreateRequest(stream="ORDERS", config=config)
        code, details = await refused(s.ConsumerCreate(request))
        assert code is Code.INVALID_ARGUMENT, (config, details)
    assert list((await s.ConsumerList(pb.StreamRequest(stream="ORDERS"))).consumers) == []

    for request in (
        pb.StreamPublishRequest(stream="ORDERS", subject="elsewhere"),  # not captured
        pb.StreamPublishRequest(stream="ORDERS", subject="orders.*"),
        pb.StreamPublishRequest(stream="bad name", subject="orders.a"),
    ):
        assert (await refused(s.StreamPublish(request)))[0] is Code.INVALID_ARGUMENT
    purge = pb.StreamPurgeRequest(stream="ORDERS", subject="a..b")
    assert (await refused(s.StreamPurge(purge)))[0] is Code.INVALID_ARGUMENT

    await s.ConsumerCreate(
        pb.ConsumerCreateRequest(stream="ORDERS", config=pb.ConsumerConfig(name="c"))
    )
    for fetch_request in (
        pb.FetchRequest(stream="ORDERS", consumer="c", batch=grpc_streams.MAX_FETCH_BATCH + 1),
        pb.FetchRequest(stream="ORDERS", consumer="c", timeout=31),
        pb.FetchRequest(stream="ORDERS", consumer="c", timeout=-1),
        pb.FetchRequest(stream="ORDERS", consumer="c", timeout=math.nan),
        pb.FetchRequest(stream="ORDERS", consumer="bad name"),
    ):
        code, details = await refused(collect(s.Fetch(fetch_request)))
        assert code is Code.INVALID_ARGUMENT, details
    most = pb.FetchRequest(
        stream="ORDERS", consumer="c", batch=grpc_streams.MAX_FETCH_BATCH, timeout=0
    )
    assert await collect(s.Fetch(most)) == []

    await publish(stack, "orders.a", b"x")
    [msg] = await fetch(stack, "c")
    for ack_request in (
        pb.AckRequest(token=msg.ack_token, kind=7),  # type: ignore[arg-type]
        pb.AckRequest(token=msg.ack_token, kind=pb.ACK_KIND_ACK, delay=1),
        pb.AckRequest(token=msg.ack_token, kind=pb.ACK_KIND_NAK, delay=-1),
        pb.AckRequest(token=msg.ack_token, kind=pb.ACK_KIND_NAK, delay=math.inf),
        pb.AckRequest(token="orders.a"),
        pb.AckRequest(token="$sys.stream.ack.ORDERS.c.x.1.1"),
        pb.AckRequest(token=""),
    ):
        code, details = await refused(s.Ack(ack_request))
        assert code is Code.INVALID_ARGUMENT, (ack_request, details)
    await s.Ack(pb.AckRequest(token=msg.ack_token))  # none of that touched it

    raw = stack.channel.unary_unary("/asyncipc.v1.Streams/StreamCreate")  # raw bytes
    assert (await refused(raw(b"\xff\xff\xff\xff not protobuf")))[0] is Code.INVALID_ARGUMENT


async def test_publish_and_request_refuse_the_streams_api(stack: Stack) -> None:
    """$sys.stream. requests through the shared bus would make consumers nobody removes
    and pull past Fetch's bounds: the Streams service is the way."""
    await make_orders(stack)
    create = "$sys.stream.consumer.create.ORDERS"
    for call in (
        stack.bus.Publish(pb.Message(subject=create, data=b'{"name": "sneaky"}', reply_to="r")),
        stack.bus.Request(pb.RequestRequest(subject=create, data=b'{"name": "sneaky"}')),
        stack.bus.Request(pb.RequestRequest(subject="$sys.stream.list")),
    ):
        code, details = await refused(call)
        assert code is Code.PERMISSION_DENIED
        assert "Streams" in details
    listed = await stack.streams.ConsumerList(pb.StreamRequest(stream="ORDERS"))
    assert list(listed.consumers) == []


async def test_the_token_is_required() -> None:
    async for stack in _stack(token=TOKEN):
        s = stack.streams
        for metadata in ((), (("authorization", "Bearer wrong"),)):
            for call in (
                s.StreamList(pb.StreamListRequest(), metadata=metadata),
                s.StreamCreate(pb.StreamConfig(name="S", subjects=["s"]), metadata=metadata),
                collect(s.Fetch(pb.FetchRequest(stream="S", consumer="c"), metadata=metadata)),
                s.Ack(pb.AckRequest(token="$sys.stream.ack.S.c.1.1.1"), metadata=metadata),
            ):
                assert (await refused(call))[0] is Code.UNAUTHENTICATED
        good = (("authorization", f"Bearer {TOKEN}"),)
        await s.StreamCreate(pb.StreamConfig(name="S", subjects=["s"]), metadata=good)
        assert len((await s.StreamList(pb.StreamListRequest(), metadata=good)).streams) == 1


async def test_the_service_is_described_served_and_healthy(stack: Stack) -> None:
    service = pb.DESCRIPTOR.services_by_name["Streams"]
    assert service.full_name == grpc_streams.STREAMS_SERVICE == "asyncipc.v1.Streams"
    assert [m.name for m in service.methods] == list(grpc_streams._RPCS)
    health = health_pb2_grpc.HealthStub(stack.channel)
    reply = await health.Check(health_pb2.HealthCheckRequest(service="asyncipc.v1.Streams"))
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    unknown = stack.channel.unary_unary("/asyncipc.v1.Streams/Nope")
    assert (await refused(unknown(b"")))[0] is Code.UNIMPLEMENTED


async def test_a_broker_with_a_store_keeps_streams_on_file(tmp_path: Path) -> None:
    async for stack in _stack(store=tmp_path):
        info = await make_orders(stack, storage=pb.STORAGE_FILE)
        assert (info.storage, info.config.storage) == (pb.STORAGE_FILE, pb.STORAGE_FILE)
        assert (await publish(stack, "orders.a", b"kept")).seq == 1
    async for stack in _stack(store=tmp_path):
        info = await stack.streams.StreamGet(pb.StreamRequest(stream="ORDERS"))
        assert (info.storage, info.messages) == (pb.STORAGE_FILE, 1)
