"""The gRPC adapter against real grpcio stubs (docs/grpc.md).

A broker in this event loop listens on grpc://127.0.0.1:0 next to unix:// and tcp://;
the clients are the generated stubs on grpc.aio channels, as another program would use
them, and ordinary asyncipc buses on the other transports. Every status code of the
mapping, health and reflection, gRPC participants meeting participants on other
channels, and bad input after which the broker and everyone else carry on.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

import asyncipc
from asyncipc.adapters.grpc.proto import bus_pb2 as pb
from asyncipc.adapters.grpc.proto import bus_pb2_grpc as pb_grpc
from asyncipc.protocol import ErrorCode

pytestmark = pytest.mark.timeout(30)

TOKEN = "s3cret"


class Stack:
    """A broker on grpc, unix and tcp, and a gRPC channel to it."""

    def __init__(self, broker: asyncipc.Broker, urls: dict[str, str], channel: Any) -> None:
        self.broker = broker
        self.urls = urls
        self.channel = channel
        self.stub: Any = pb_grpc.BusStub(channel)

    @property
    def target(self) -> str:
        return self.urls["grpc"].removeprefix("grpc://")


async def _stack(tmp_path: Path, **options: Any) -> AsyncIterator[Stack]:
    async with asyncipc.Broker(**options) as broker:
        urls = {
            "grpc": (await broker.listen("grpc://127.0.0.1:0")).url,
            "unix": (await broker.listen(f"unix://{tmp_path}/b.sock")).url,
            "tcp": (await broker.listen("tcp://127.0.0.1:0")).url,
        }
        async with grpc.aio.insecure_channel(urls["grpc"].removeprefix("grpc://")) as channel:
            yield Stack(broker, urls, channel)


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    async for s in _stack(tmp_path):
        yield s


@pytest.fixture
async def small(tmp_path: Path) -> AsyncIterator[Stack]:
    """A broker whose maximum frame is 64 KiB."""
    async for s in _stack(tmp_path, max_frame=64 * 1024):
        yield s


@pytest.fixture
async def guarded(tmp_path: Path) -> AsyncIterator[Stack]:
    """A broker that requires TOKEN."""
    async for s in _stack(tmp_path, token=TOKEN):
        yield s


def bearer(token: str = TOKEN) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


async def status_of(awaitable: Any) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await awaitable
    code: grpc.StatusCode = info.value.code()
    return code


async def next_frames(call: Any, until: str) -> list[Any]:
    """Read a Connect stream until a frame of kind ``until`` has come: what came."""
    frames: list[Any] = []
    while not frames or frames[-1].WhichOneof("frame") != until:
        reply = await call.read()
        assert reply is not grpc.aio.EOF, f"the stream ended before a {until}: {frames}"
        frames += reply.frames
    return frames


async def read_to_the_end(call: Any) -> tuple[list[Any], grpc.StatusCode]:
    """Read a stream until it ends: what came, and the status it ended with."""
    got: list[Any] = []
    try:
        while (reply := await call.read()) is not grpc.aio.EOF:
            got.append(reply)
    except grpc.aio.AioRpcError as exc:
        return got, exc.code()
    code: grpc.StatusCode = await call.code()
    return got, code


async def subscribed(call: Any) -> None:
    """Wait for the response headers: the Subscribe call's subscription is in effect."""
    metadata = await call.initial_metadata()
    assert "asyncipc-subscribed" in dict(metadata)


# --- participants on other channels ------------------------------------------------------


async def test_grpc_publish_reaches_a_unix_subscriber(stack: Stack) -> None:
    async with asyncipc.connect(stack.urls["unix"]) as bus, bus.subscribe("orders.*") as sub:
        await bus.flush()
        await stack.stub.Publish(
            pb.Message(
                subject="orders.created", data=b'{"id": 7}', headers={"trace": "abc"}, reply_to="r"
            )
        )
        msg = await sub.next_msg(timeout=5)
        await msg.respond(b"")  # the broker would wait for this reply when it closes
    assert (msg.subject, msg.data, msg.headers, msg.reply_to) == (
        "orders.created",
        b'{"id": 7}',
        {"trace": "abc"},
        "r",
    )


async def test_grpc_request_answered_by_a_tcp_handler(stack: Stack) -> None:
    async with asyncipc.connect(stack.urls["tcp"]) as bus:

        @bus.handler("pricing.quote", queue="pricing")
        async def quote(msg: asyncipc.Message) -> bytes:
            return b"42:" + msg.data + (msg.headers or {}).get("currency", "").encode()

        await bus.flush()
        reply = await stack.stub.Request(
            pb.RequestRequest(subject="pricing.quote", data=b"sku-1", headers={"currency": "EUR"}),
            timeout=5,
        )
        assert reply.data == b"42:sku-1EUR"
        # Many at once share the one in-process bus and still find their own replies.
        replies = await asyncio.gather(
            *(
                stack.stub.Request(pb.RequestRequest(subject="pricing.quote", data=b"%d" % i))
                for i in range(20)
            )
        )
        assert [r.data for r in replies] == [b"42:%d" % i for i in range(20)]


async def test_subscribe_stream_sees_what_a_tcp_client_publishes(stack: Stack) -> None:
    call = stack.stub.Subscribe(pb.SubscribeRequest(subject="prices.>"))
    await subscribed(call)
    async with asyncipc.connect(stack.urls["tcp"]) as bus:
        for i in range(3):
            await bus.publish(f"prices.eu.{i}", b"%d" % i, headers={"n": str(i)})
        got = [await call.read() for _ in range(3)]
    call.cancel()
    assert [(m.subject, m.data, dict(m.headers)) for m in got] == [
        (f"prices.eu.{i}", b"%d" % i, {"n": str(i)}) for i in range(3)
    ]


async def test_subscribe_queue_groups_share(stack: Stack) -> None:
    calls = [
        stack.stub.Subscribe(pb.SubscribeRequest(subject="jobs", queue="workers")) for _ in range(2)
    ]
    for call in calls:
        await subscribed(call)
    for i in range(40):
        await stack.stub.Publish(pb.Message(subject="jobs", data=b"%d" % i))
    async with asyncipc.connect(stack.urls["unix"]) as bus:
        await bus.flush()  # every Publish above was routed before this PONG
    got: list[int] = []
    shares = []
    for call in calls:
        share = 0
        while len(got) < 40:
            try:
                async with asyncio.timeout(0.5):
                    msg = await call.read()
            except TimeoutError:
                break
            got.append(int(msg.data))
            share += 1
        shares.append(share)
        call.cancel()
    assert sorted(got) == list(range(40))
    assert all(shares), f"both members get a share: {shares}"


async def test_connect_stream_with_raw_stubs(stack: Stack) -> None:
    """What a client in another language does: no Hello, ids to correlate."""
    call = stack.stub.Connect()
    await call.write(
        pb.ConnectRequest(
            frames=[
                pb.ClientFrame(subscribe=pb.SubscribeRequest(sid=7, subject="greet.*")),
                pb.ClientFrame(ping=pb.Ping(id=41)),
            ]
        )
    )
    welcome, pong = await next_frames(call, until="pong")
    assert welcome.welcome.max_frame == stack.broker.options.max_frame
    # What the broker holds this client to, as WELCOME says over the stream transports.
    assert welcome.welcome.high_water == stack.broker.options.high_water
    assert welcome.welcome.client_max_frame > 0
    assert pong.pong.id == 41  # and the subscription is in effect
    async with asyncipc.connect(stack.urls["unix"]) as bus:
        await bus.publish("greet.world", b"hello", headers={"h": "1"}, reply_to="back")
        await bus.flush()
    (frame,) = await next_frames(call, until="message")
    assert frame.message.sid == 7
    assert (frame.message.subject, frame.message.data, frame.message.reply_to) == (
        "greet.world",
        b"hello",
        "back",
    )
    assert dict(frame.message.headers) == {"h": "1"}
    # A refused frame (code 100) leaves the stream open.
    await call.write(
        pb.ConnectRequest(frames=[pb.ClientFrame(publish=pb.Message(subject="bad..subject"))])
    )
    (refusal,) = await next_frames(call, until="error")
    assert refusal.error.code == ErrorCode.INVALID_SUBJECT
    await call.write(pb.ConnectRequest(frames=[pb.ClientFrame(ping=pb.Ping(id=42))]))
    (pong,) = await next_frames(call, until="pong")
    assert pong.pong.id == 42
    await stack.stub.Publish(pb.Message(subject="back"))  # the broker waits for replies
    await call.done_writing()
    assert await call.read() is grpc.aio.EOF
    assert await call.code() is grpc.StatusCode.OK


async def test_connect_streams_account_for_every_byte(stack: Stack) -> None:
    """What a stream's queue counts in goes out again: after 20,000 messages each way,
    nothing is counted as buffered (a drift would one day read as a slow client)."""
    async with (
        asyncipc.connect(stack.urls["grpc"]) as publisher,
        asyncipc.connect(stack.urls["grpc"]) as subscriber,
        subscriber.subscribe("count.*", max_pending=30_000) as sub,
    ):
        await subscriber.flush()
        for i in range(20_000):
            await publisher.publish(f"count.{i % 7}", b"x" * (i % 50), reply_to="r.x")
        await publisher.flush()
        for _ in range(20_000):
            await sub.next_msg(timeout=5)
        links = [peer for peer in stack.broker._sessions if peer.link.transport == "grpc"]
        assert len(links) == 2
        assert [s.link.buffered for s in links] == [0, 0]
        assert not any(s.link.write_blocked for s in links)
        assert publisher._link.buffered == 0
        await publisher.publish("r.x", b"")  # the broker waits for replies when it closes


async def test_connect_client_answers_requests_from_unary_calls(stack: Stack) -> None:
    async with asyncipc.connect(stack.urls["grpc"]) as responder:

        @responder.handler("echo")
        async def echo(msg: asyncipc.Message) -> bytes:
            return msg.data

        await responder.flush()
        reply = await stack.stub.Request(pb.RequestRequest(subject="echo", data=b"x"), timeout=5)
    assert reply.data == b"x"
    peers = {peer.transport for peer in stack.broker.peers}
    assert "grpc" in peers


# --- the status codes --------------------------------------------------------------------


async def test_invalid_subjects_are_invalid_argument(stack: Stack) -> None:
    stub = stack.stub
    for call in (
        stub.Publish(pb.Message(subject="a..b")),
        stub.Publish(pb.Message(subject="a.*")),  # a pattern is no place to publish to
        stub.Publish(pb.Message(subject="ok", reply_to="bad reply")),
        stub.Request(pb.RequestRequest(subject="")),
    ):
        assert await status_of(call) is grpc.StatusCode.INVALID_ARGUMENT
    sub = stub.Subscribe(pb.SubscribeRequest(subject="a.>.b"))
    assert await status_of(sub.read()) is grpc.StatusCode.INVALID_ARGUMENT
    sub = stub.Subscribe(pb.SubscribeRequest(subject="ok", overflow=9))
    assert await status_of(sub.read()) is grpc.StatusCode.INVALID_ARGUMENT
    await stub.Publish(pb.Message(subject="still.fine"))


async def test_no_responders_is_unavailable(stack: Stack) -> None:
    call = stack.stub.Request(pb.RequestRequest(subject="nobody.home"), timeout=5)
    assert await status_of(call) is grpc.StatusCode.UNAVAILABLE
    assert "no responders" in (await call.details())


async def test_deadline_is_the_request_timeout(stack: Stack) -> None:
    async with asyncipc.connect(stack.urls["unix"]) as bus, bus.subscribe("slow") as sub:
        await bus.flush()
        call = stack.stub.Request(pb.RequestRequest(subject="slow"), timeout=0.3)
        assert await status_of(call) is grpc.StatusCode.DEADLINE_EXCEEDED
        asked = await sub.next_msg(timeout=5)
        await asked.respond(b"too late")  # nobody waits for it any more


async def test_failing_responder_is_unknown(stack: Stack) -> None:
    async with asyncipc.connect(stack.urls["tcp"]) as bus:

        @bus.handler("fails")
        async def fails(msg: asyncipc.Message) -> bytes:
            raise RuntimeError("out of stock")

        await bus.flush()
        call = stack.stub.Request(pb.RequestRequest(subject="fails"), timeout=5)
        assert await status_of(call) is grpc.StatusCode.UNKNOWN
        details = await call.details()
        assert "internal error" in details
        assert "out of stock" not in details, "the handler's text stays in the service"


async def test_a_grpc_caller_is_remote_for_signal_requests(stack: Stack) -> None:
    """The adapter's in-process clients carry the gRPC peer, not the broker's own pid."""
    async with asyncipc.connect(
        stack.urls["unix"], name="victim", options=asyncipc.ConnectOptions(allow_signals=("HUP",))
    ) as victim:
        await victim.flush()
        call = stack.stub.Request(
            pb.RequestRequest(subject="$sys.kill.victim", data=b"HUP"), timeout=5
        )
        assert await status_of(call) is grpc.StatusCode.PERMISSION_DENIED
        assert "remote_signals" in (await call.details())


async def test_oversized_is_resource_exhausted(small: Stack) -> None:
    stub = small.stub
    # Over max_frame but within what gRPC lets through: refused by the adapter.
    call = stub.Publish(pb.Message(subject="big", data=bytes(70 * 1024)))
    assert await status_of(call) is grpc.StatusCode.RESOURCE_EXHAUSTED
    # Far over: refused by gRPC's own limit, set from max_frame.
    call = stub.Publish(pb.Message(subject="big", data=bytes(1024 * 1024)))
    assert await status_of(call) is grpc.StatusCode.RESOURCE_EXHAUSTED
    call = stub.Request(pb.RequestRequest(subject="big", data=bytes(1024 * 1024)), timeout=5)
    assert await status_of(call) is grpc.StatusCode.RESOURCE_EXHAUSTED
    # On a Connect stream the frame is refused and the stream ends with the same code.
    stream = stub.Connect()
    await stream.write(
        pb.ConnectRequest(
            frames=[pb.ClientFrame(publish=pb.Message(subject="big", data=bytes(1024 * 1024)))]
        )
    )
    assert await status_of(stream.read()) is grpc.StatusCode.RESOURCE_EXHAUSTED
    # A Bus over gRPC learns the maximum from WELCOME and refuses before sending.
    async with asyncipc.connect(small.urls["grpc"]) as bus:
        with pytest.raises(asyncipc.FrameTooLarge):
            await bus.publish("big", bytes(70 * 1024))
        await bus.publish("small", b"fine")
        await bus.flush()
    await stub.Publish(pb.Message(subject="small", data=bytes(1024)))


async def test_tokens(guarded: Stack) -> None:
    stub = guarded.stub
    unauthenticated = grpc.StatusCode.UNAUTHENTICATED
    message = pb.Message(subject="a")
    assert await status_of(stub.Publish(message)) is unauthenticated
    assert await status_of(stub.Publish(message, metadata=bearer("wrong"))) is unauthenticated
    malformed = (("authorization", "Basic czNjcmV0"),)
    assert await status_of(stub.Publish(message, metadata=malformed)) is unauthenticated
    request = pb.RequestRequest(subject="a")
    assert await status_of(stub.Request(request, metadata=bearer("wrong"))) is unauthenticated
    sub = stub.Subscribe(pb.SubscribeRequest(subject="a"), metadata=bearer("wrong"))
    assert await status_of(sub.read()) is unauthenticated
    for metadata, hello in ((bearer("wrong"), pb.Hello()), ((), pb.Hello(token="wrong"))):
        stream = stub.Connect(metadata=metadata)
        await stream.write(pb.ConnectRequest(frames=[pb.ClientFrame(hello=hello)]))
        (error,) = await next_frames(stream, until="error")  # says why, then the status
        assert error.error.code == ErrorCode.AUTH
        assert await status_of(stream.read()) is unauthenticated
    with pytest.raises(asyncipc.AuthenticationError):
        await asyncipc.connect(guarded.urls["grpc"], token="wrong")

    # The right token, in the metadata or in Hello, opens every door.
    await stub.Publish(message, metadata=bearer())
    sub = stub.Subscribe(pb.SubscribeRequest(subject="a"), metadata=bearer())
    await subscribed(sub)
    await stub.Publish(pb.Message(subject="a", data=b"in"), metadata=bearer())
    assert (await sub.read()).data == b"in"
    sub.cancel()
    async with asyncipc.connect(guarded.urls["grpc"], token=TOKEN) as bus:
        await bus.flush()


async def test_slow_subscribe_call_with_error_policy_is_cut_off(stack: Stack) -> None:
    call = stack.stub.Subscribe(
        pb.SubscribeRequest(subject="flood", overflow=pb.OVERFLOW_ERROR, max_pending=4)
    )
    await subscribed(call)
    async with asyncipc.connect(stack.urls["unix"]) as bus:
        for _ in range(400):  # faster than the call writes to gRPC: its queue holds 4
            await bus.publish("flood", bytes(1024))
        await bus.flush()
    received, code = await read_to_the_end(call)  # what was sent before the cut, then
    assert code is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert len(received) < 400
    await _still_serving(stack)


async def test_connect_protocol_version_and_handshake_time(tmp_path: Path) -> None:
    async for stack in _stack(tmp_path, handshake_timeout=0.3):
        call = stack.stub.Connect()
        await call.write(pb.ConnectRequest(frames=[pb.ClientFrame(hello=pb.Hello(version=2))]))
        (error,) = await next_frames(call, until="error")
        assert error.error.code == ErrorCode.VERSION
        assert await status_of(call.read()) is grpc.StatusCode.FAILED_PRECONDITION
        silent = stack.stub.Connect()  # opens the stream and says nothing
        (error,) = await next_frames(silent, until="error")
        assert error.error.code == ErrorCode.HANDSHAKE_TIMEOUT
        assert await status_of(silent.read()) is grpc.StatusCode.DEADLINE_EXCEEDED


# --- health and reflection ------------------------------------------------------------------


async def test_health(stack: Stack) -> None:
    health = health_pb2_grpc.HealthStub(stack.channel)
    serving = health_pb2.HealthCheckResponse.SERVING
    for service in ("", "asyncipc.v1.Bus"):
        reply = await health.Check(health_pb2.HealthCheckRequest(service=service))
        assert reply.status == serving
    call = health.Check(health_pb2.HealthCheckRequest(service="no.such.Service"))
    assert await status_of(call) is grpc.StatusCode.NOT_FOUND


async def test_health_reports_not_serving_while_the_broker_drains(tmp_path: Path) -> None:
    async with asyncipc.Broker() as broker:
        url = (await broker.listen("grpc://127.0.0.1:0")).url
        async with grpc.aio.insecure_channel(url.removeprefix("grpc://")) as channel:
            watch = health_pb2_grpc.HealthStub(channel).Watch(
                health_pb2.HealthCheckRequest(service="asyncipc.v1.Bus")
            )
            assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING
            closing = asyncio.ensure_future(broker.close())
            assert (await watch.read()).status == health_pb2.HealthCheckResponse.NOT_SERVING
            watch.cancel()  # else the server gives it a grace period before cancelling it
            await closing


async def test_reflection(stack: Stack) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(stack.channel)

    async def ask(**request: Any) -> Any:
        call = stub.ServerReflectionInfo()
        await call.write(reflection_pb2.ServerReflectionRequest(**request))
        await call.done_writing()
        reply = await call.read()
        return reply

    listed = await ask(list_services="")
    names = {s.name for s in listed.list_services_response.service}
    assert {"asyncipc.v1.Bus", "grpc.health.v1.Health"} <= names
    found = await ask(file_containing_symbol="asyncipc.v1.Bus")
    from google.protobuf import descriptor_pb2

    files = [
        descriptor_pb2.FileDescriptorProto.FromString(raw)
        for raw in found.file_descriptor_response.file_descriptor_proto
    ]
    assert "asyncipc/v1/bus.proto" in {f.name for f in files}
    bus = next(f for f in files if f.name == "asyncipc/v1/bus.proto")
    assert [m.name for m in bus.service[0].method] == ["Publish", "Request", "Subscribe", "Connect"]


# --- bad input: the broker and everyone else carry on ------------------------------------


async def _still_serving(stack: Stack) -> None:
    async with asyncipc.connect(stack.urls["unix"]) as bus, bus.subscribe("alive") as sub:
        await bus.flush()
        await stack.stub.Publish(pb.Message(subject="alive", data=b"yes"))
        assert (await sub.next_msg(timeout=5)).data == b"yes"


@pytest.mark.parametrize(
    "garbage",
    [
        b"\x00\x01\x02garbage\xff" * 100,
        b"POST /asyncipc.v1.Bus/Publish HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\n"
        b"Content-Length: 5\r\n\r\nhello",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + os.urandom(200),  # the preface, then noise
        b"AIPC/1\r\n\x00\x00\x00\x05\x01{}{}",  # an asyncipc client on the wrong port
    ],
    ids=["noise", "http1", "h2-noise", "asyncipc-wire"],
)
async def test_garbage_on_the_port(stack: Stack, garbage: bytes) -> None:
    host, port = stack.target.rsplit(":", 1)
    async with asyncipc.connect(stack.urls["grpc"]) as bystander:
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(garbage)
        await writer.drain()
        try:
            async with asyncio.timeout(5):
                await reader.read()  # grpc answers (GOAWAY, an HTTP/1 error) and hangs up
        except (TimeoutError, ConnectionError):
            pass
        writer.close()
        await bystander.flush(timeout=5)
    await _still_serving(stack)


def _h2_frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return (
        len(payload).to_bytes(3, "big")
        + bytes([kind, flags])
        + stream.to_bytes(4, "big")
        + (payload)
    )


def _h2_literal(name: str, value: str) -> bytes:
    """An HPACK literal header field, not indexed, no Huffman coding (RFC 7541 §6.2.2)."""
    return b"\x00" + bytes([len(name)]) + name.encode() + bytes([len(value)]) + value.encode()


async def _raw_h2_call(target: str, content_type: str, body: bytes, answer: bool = True) -> str:
    """POST one request frame by frame on a raw socket; the grpc-status of the answer
    (with ``answer=False``, hang up at once instead)."""
    host, port = target.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    fields = {
        ":method": "POST",
        ":scheme": "http",
        ":path": "/asyncipc.v1.Bus/Publish",
        ":authority": target,
        "content-type": content_type,
        "te": "trailers",
    }
    block = b"".join(_h2_literal(k, v) for k, v in fields.items())
    writer.write(
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
        + _h2_frame(0x4, 0, 0)  # SETTINGS
        + _h2_frame(0x1, 0x4, 1, block)  # HEADERS, END_HEADERS
        + _h2_frame(0x0, 0x1, 1, body)  # DATA, END_STREAM
    )
    try:
        if not answer:
            await writer.drain()
            return ""
        async with asyncio.timeout(5):
            while True:
                head = await reader.readexactly(9)
                payload = await reader.readexactly(int.from_bytes(head[:3], "big"))
                kind, flags, stream = head[3], head[4], int.from_bytes(head[5:], "big")
                if stream == 1 and kind == 0x1 and flags & 0x1:  # trailers: END_STREAM
                    at = payload.index(b"grpc-status") + len(b"grpc-status")
                    assert not payload[at] & 0x80, "a Huffman-coded status: decode it"
                    return payload[at + 1 : at + 1 + payload[at]].decode()
                if stream == 1 and kind == 0x3:  # RST_STREAM
                    return "reset"
    finally:
        writer.close()


async def test_raw_http2_requests(stack: Stack) -> None:
    """A request written frame by frame, as a client of our own would. grpc's core serves
    a well-framed body whatever its content-type says. A body shorter than its gRPC length
    prefix never reaches the service (grpc.aio does not answer it either: the client
    hangs up), and nobody else notices."""
    body = pb.Message(subject="raw.h2", data=b"by hand").SerializeToString()
    framed = b"\x00" + len(body).to_bytes(4, "big") + body
    async with asyncipc.connect(stack.urls["unix"]) as bus, bus.subscribe("raw.h2") as sub:
        await bus.flush()
        assert await _raw_h2_call(stack.target, "text/plain", framed) == "0"
        assert (await sub.next_msg(timeout=5)).data == b"by hand"
        truncated = b"\x00" + (len(body) + 100).to_bytes(4, "big") + body
        await _raw_h2_call(stack.target, "application/grpc", truncated, answer=False)
        await _still_serving(stack)
        assert sub.pending == 0


async def test_bytes_that_are_not_the_message(stack: Stack) -> None:
    raw = stack.channel.unary_unary("/asyncipc.v1.Bus/Publish")  # no serializer: raw bytes
    code = await status_of(raw(b"\xff\xff\xff\xff not protobuf"))
    assert code is grpc.StatusCode.INVALID_ARGUMENT
    stream = stack.channel.stream_stream("/asyncipc.v1.Bus/Connect")()
    await stream.write(b"\xff\xff\xff\xff not protobuf")
    replies, code = await read_to_the_end(stream)
    assert code is grpc.StatusCode.INVALID_ARGUMENT
    (frame,) = [f for r in replies for f in pb.ConnectResponse.FromString(r).frames]
    assert frame.error.code == ErrorCode.PROTOCOL
    assert "does not parse" in frame.error.message
    unknown = stack.channel.unary_unary("/asyncipc.v1.Bus/Nope")
    assert await status_of(unknown(b"")) is grpc.StatusCode.UNIMPLEMENTED
    await _still_serving(stack)


async def test_malformed_connect_frames_end_only_that_stream(stack: Stack) -> None:
    for frames in (
        [pb.ClientFrame()],  # no frame set
        [pb.ClientFrame(subscribe=pb.SubscribeRequest(sid=1, subject="a", overflow=7))],
    ):
        call = stack.stub.Connect()
        await call.write(pb.ConnectRequest(frames=frames))
        replies, code = await read_to_the_end(call)
        assert code is grpc.StatusCode.INVALID_ARGUMENT
        assert "error" in [f.WhichOneof("frame") for r in replies for f in r.frames]
    await _still_serving(stack)


async def test_a_vanished_connect_client_leaves_nothing_behind(stack: Stack) -> None:
    call = stack.stub.Connect()
    await call.write(
        pb.ConnectRequest(
            frames=[
                pb.ClientFrame(subscribe=pb.SubscribeRequest(sid=1, subject="gone")),
                pb.ClientFrame(ping=pb.Ping(id=1)),
            ]
        )
    )
    await next_frames(call, until="pong")  # subscribed
    assert stack.broker.router.route("gone")
    call.cancel()
    for _ in range(200):
        if not stack.broker.router.route("gone"):
            break
        await asyncio.sleep(0.01)
    assert not stack.broker.router.route("gone"), "the subscription went with the stream"
    await _still_serving(stack)


async def test_bind_and_connect_failures_say_so(stack: Stack) -> None:
    async with asyncipc.Broker() as other:
        with pytest.raises(OSError, match="cannot listen on grpc://"):
            await other.listen(stack.urls["grpc"])  # taken: no silent SO_REUSEPORT sharing
        with pytest.raises(asyncipc.ConfigurationError, match="host:port"):
            await other.listen("grpc://127.0.0.1")
    with pytest.raises(asyncipc.ConnectError, match="no gRPC server"):
        await asyncipc.connect("grpc://127.0.0.1:1")  # refused at once, not after time-out
    await _still_serving(stack)


# --- shutdown and the command line ----------------------------------------------------------


async def test_broker_close_ends_streams_and_refuses_new_calls() -> None:
    broker = asyncipc.Broker()
    url = (await broker.listen("grpc://127.0.0.1:0")).url
    async with grpc.aio.insecure_channel(url.removeprefix("grpc://")) as channel:
        stub = pb_grpc.BusStub(channel)
        sub = stub.Subscribe(pb.SubscribeRequest(subject="x"))
        await subscribed(sub)
        bus = await asyncipc.connect(url, options=asyncipc.ConnectOptions(reconnect=False))
        await broker.close()
        assert await status_of(sub.read()) is grpc.StatusCode.UNAVAILABLE
        assert await status_of(stub.Publish(pb.Message(subject="x"))) is (
            grpc.StatusCode.UNAVAILABLE
        )
        await bus.wait_closed()
        assert bus.is_closed
        await bus.close()


def test_cli_broker_grpc(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "asyncipc", "broker", "--grpc", "127.0.0.1:0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("listening on grpc://127.0.0.1:"), line
        url = line.split()[-1]

        async def use() -> bytes:
            async with asyncipc.connect(url) as bus, bus.subscribe("cli") as sub:
                await bus.flush()
                async with grpc.aio.insecure_channel(url.removeprefix("grpc://")) as channel:
                    await pb_grpc.BusStub(channel).Publish(pb.Message(subject="cli", data=b"ok"))
                return (await sub.next_msg(timeout=5)).data

        assert asyncio.run(use()) == b"ok"
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=15)
    assert proc.returncode == 0, err
