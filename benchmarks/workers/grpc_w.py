"""gRPC client roles without asyncipc's client: plain grpc.aio, as another program would.

* ``bare-pub``, ``bare-sub``, ``bare-requester`` talk to the bare grpc.aio relay that
  ``benchmarks/_grpc_cases.py`` serves (``bench.Relay``: ``Publish`` client-streaming,
  ``Subscribe`` server-streaming, ``Echo`` unary), raw bytes without a schema, one gRPC
  message per message: the floor a grpc.aio program pays for the same patterns, and the
  reference the adapter is measured against.
* ``unary-requester`` calls the adapter's unary ``asyncipc.v1.Bus/Request`` with the
  request pre-serialized: what a client in another language pays per request, minus its
  own protobuf work.
"""

from __future__ import annotations

import time

import grpc

from asyncipc.adapters.grpc.proto import bus_pb2 as pb

from ._common import (
    WARM,
    Control,
    Role,
    Tally,
    WorkerArgs,
    consume,
    emit,
    latency_summary,
    payload,
    run_worker,
    warm_up_until_go,
)

RELAY = "/bench.Relay"
ECHO = "bench.echo"  # the subject asyncipc_w.py's responder serves


def _target(url: str) -> str:
    return url.removeprefix("grpc://")


async def bare_pub(args: WorkerArgs) -> None:
    ctl = await Control.open()
    async with grpc.aio.insecure_channel(_target(args.url)) as channel:
        call = channel.stream_unary(f"{RELAY}/Publish")()
        data, warm = payload(args.size), payload(args.size, WARM)
        emit("ready")

        async def send_warm() -> None:
            await call.write(warm)

        await warm_up_until_go(ctl, send_warm)
        start_ns = time.monotonic_ns()
        t0 = time.perf_counter()
        for _ in range(args.count):
            await call.write(data)
        await call.done_writing()
        await call  # the relay has taken every message
        emit("result", sent=args.count, seconds=time.perf_counter() - t0, start_ns=start_ns)
        await ctl.wait("stop")


async def bare_sub(args: WorkerArgs) -> None:
    async with grpc.aio.insecure_channel(_target(args.url)) as channel:
        call = channel.unary_stream(f"{RELAY}/Subscribe")(b"")
        emit("ready")
        tally = Tally(args.count)

        async def receive() -> None:
            async for data in call:
                if tally.add(data):
                    return

        await consume([receive()], [tally], args.idle)
        call.cancel()


async def bare_requester(args: WorkerArgs) -> None:
    async with grpc.aio.insecure_channel(_target(args.url)) as channel:
        echo = channel.unary_unary(f"{RELAY}/Echo")
        data = payload(args.size)
        samples: list[int] = []
        clock = time.perf_counter_ns
        reply = b""
        for i in range(args.warmup + args.count):
            t0 = clock()
            reply = await echo(data, timeout=args.timeout)
            if i >= args.warmup:
                samples.append(clock() - t0)
        assert reply == data, "echo mismatch"
        emit("result", **latency_summary(samples))


async def unary_requester(args: WorkerArgs) -> None:
    async with grpc.aio.insecure_channel(_target(args.url)) as channel:
        request = channel.unary_unary("/asyncipc.v1.Bus/Request")  # bytes in, bytes out
        data = payload(args.size)
        raw = pb.RequestRequest(subject=ECHO, data=data).SerializeToString()
        samples: list[int] = []
        clock = time.perf_counter_ns
        reply = b""
        for i in range(args.warmup + args.count):
            t0 = clock()
            reply = await request(raw, timeout=args.timeout)
            if i >= args.warmup:
                samples.append(clock() - t0)
        assert pb.Message.FromString(reply).data == data, "echo mismatch"
        emit("result", **latency_summary(samples))


ROLES: dict[str, Role] = {
    "bare-pub": bare_pub,
    "bare-sub": bare_sub,
    "bare-requester": bare_requester,
    "unary-requester": unary_requester,
}

if __name__ == "__main__":
    run_worker(ROLES)
