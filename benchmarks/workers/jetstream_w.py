"""nats-py JetStream roles against a ``nats-server -js`` (see ``_streams`` for the roles).

Written as the nats-py documentation writes them: pipelined publishes with
``js.publish_async`` (nats-py >= 2.7), the window being the context's
``publish_async_max_pending`` and the end ``js.publish_async_completed()``; one at a time
with ``await js.publish``; consumption with a pull consumer, ``js.pull_subscribe`` and
``await psub.fetch(batch)``, each message acknowledged with ``await msg.ack()`` (a plain
publish to the ack subject; ``ack_sync`` would wait for the server's reply).
"""

from __future__ import annotations

import asyncio
import sys
import time

import nats
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy, PubAck, StorageType

from ._common import emit, latency_summary
from ._streams import (
    CONSUMER,
    STREAM,
    SUBJECT,
    SUBJECTS,
    Role,
    StreamArgs,
    clock,
    data,
    rate,
    run_stream_worker,
)


async def _connect(url: str) -> Client:
    async def on_error(exc: Exception) -> None:
        print(f"nats error: {exc!r}", file=sys.stderr, flush=True)

    return await nats.connect(
        servers=[url], allow_reconnect=False, connect_timeout=5, error_cb=on_error
    )


async def _stream(js: JetStreamContext) -> None:
    """Get or create the file-backed stream, as ``bus.stream`` does."""
    await js.add_stream(name=STREAM, subjects=SUBJECTS, storage=StorageType.FILE)


async def _pipelined(js: JetStreamContext, payload: bytes, n: int) -> list[asyncio.Future[PubAck]]:
    """``n`` publishes, ``publish_async_max_pending`` outstanding at most; returns once
    every acknowledgement is in."""
    futures = [await js.publish_async(SUBJECT, payload) for _ in range(n)]
    await js.publish_async_completed()
    return futures


def _check(futures: list[asyncio.Future[PubAck]], last_seq: int) -> None:
    errors = [f.exception() for f in futures if f.exception() is not None]
    if errors:
        raise RuntimeError(f"{len(errors)} publishes failed, first: {errors[0]!r}")
    seq = futures[-1].result().seq
    if seq != last_seq:
        raise RuntimeError(f"last acknowledged seq {seq}, expected {last_seq}")


async def window(args: StreamArgs) -> None:
    nc = await _connect(args.url)
    try:
        js = nc.jetstream(timeout=args.timeout, publish_async_max_pending=args.window)
        await _stream(js)
        payload = data(args.size)
        _check(await _pipelined(js, payload, args.window), args.window)  # warm-up
        t0 = clock()
        futures = await _pipelined(js, payload, args.count)
        seconds = clock() - t0
        _check(futures, args.window + args.count)
        emit("result", **rate(args.count, seconds), window=args.window)
    finally:
        await nc.close()


async def each(args: StreamArgs) -> None:
    nc = await _connect(args.url)
    try:
        js = nc.jetstream(timeout=args.timeout)
        await _stream(js)
        payload = data(args.size)
        samples: list[int] = []
        ns = time.perf_counter_ns
        first = ack = None
        t0 = 0.0
        for i in range(args.warmup + args.count):
            if i == args.warmup:
                t0 = clock()
            s0 = ns()
            ack = await js.publish(SUBJECT, payload)
            if i >= args.warmup:
                samples.append(ns() - s0)
            first = first or ack
        seconds = clock() - t0
        assert first is not None
        assert ack is not None
        assert ack.seq - first.seq == args.warmup + args.count - 1, (first, ack)
        emit("result", **{**latency_summary(samples), **rate(args.count, seconds)})
    finally:
        await nc.close()


async def fill(args: StreamArgs) -> None:
    nc = await _connect(args.url)
    try:
        js = nc.jetstream(timeout=args.timeout, publish_async_max_pending=args.window)
        await _stream(js)
        t0 = clock()
        futures = await _pipelined(js, data(args.size), args.count)
        seconds = clock() - t0
        _check(futures, args.count)
        emit("result", **rate(args.count, seconds))
    finally:
        await nc.close()


async def fetch(args: StreamArgs) -> None:
    nc = await _connect(args.url)
    try:
        js = nc.jetstream(timeout=args.timeout)
        config = ConsumerConfig(deliver_policy=DeliverPolicy.ALL, ack_wait=30.0)
        psub = await js.pull_subscribe(SUBJECTS[0], durable=CONSUMER, stream=STREAM, config=config)
        got = batches = 0
        t0 = clock()
        while got < args.count:
            msgs = await psub.fetch(args.batch, timeout=args.timeout)
            batches += 1
            for msg in msgs:
                await msg.ack()
            got += len(msgs)
        await nc.flush()  # the last acknowledgements are on their way to the server
        seconds = clock() - t0
        # Untimed: the server has every acknowledgement (ack() does not wait for it).
        deadline = time.monotonic() + args.timeout
        info = await psub.consumer_info()
        while info.num_ack_pending and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
            info = await psub.consumer_info()
        emit(
            "result",
            **rate(got, seconds),
            batch=args.batch,
            batches=batches,
            ack_pending=info.num_ack_pending,
            ack_floor=info.ack_floor.stream_seq if info.ack_floor else None,
        )
    finally:
        await nc.close()


ROLES: dict[str, Role] = {"window": window, "each": each, "fill": fill, "fetch": fetch}

if __name__ == "__main__":
    run_stream_worker(ROLES, sys.argv[1:])
