"""asyncipc stream roles against an ``asyncipc_broker`` process (see ``_streams`` for the
roles), and the ``file://`` roles, which need no broker.

Written against DESIGN.md section 8: ``bus.stream(name, subjects=..., fsync=...)`` (get or
create), pipelined publishes with ``stream.publish_async`` (a future per publish; the
window is kept by awaiting the publish ``--window`` places back before issuing the next),
one at a time with ``await stream.publish``, consumption with a durable consumer,
``await consumer.fetch(batch)`` and ``await msg.ack()`` per message.

``file-tail`` and ``file-append``: two processes open the same ``file:///dir``; the tail
subscribes and counts, the appender publishes ``--count`` messages and closes. Both stamp
``time.monotonic_ns()`` (system-wide), so the tail's rate runs from the appender's first
message to the tail's last arrival.
"""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Any

import asyncipc

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


async def _stream(bus: Any, args: StreamArgs) -> Any:
    options: dict[str, Any] = {"fsync": args.fsync} if args.fsync else {}
    return await bus.stream(STREAM, subjects=SUBJECTS, **options)


async def _pipelined(stream: Any, payload: bytes, n: int, window: int) -> list[Any]:
    """``n`` publishes, ``window`` outstanding at most; returns once every
    acknowledgement is in. Acknowledgements come in order, so waiting for the publish
    ``window`` places back is waiting for a free place in the window."""
    futures: list[asyncio.Future[Any]] = []
    append = futures.append
    publish = stream.publish_async
    for i in range(n):
        if i >= window:
            await futures[i - window]
        append(publish(SUBJECT, payload))
    await asyncio.gather(*futures[-window:])
    return futures


def _check(futures: list[asyncio.Future[Any]], last_seq: int) -> None:
    errors = [f.exception() for f in futures if f.exception() is not None]
    if errors:
        raise RuntimeError(f"{len(errors)} publishes failed, first: {errors[0]!r}")
    seq = futures[-1].result().seq
    if seq != last_seq:
        raise RuntimeError(f"last acknowledged seq {seq}, expected {last_seq}")


async def window(args: StreamArgs) -> None:
    async with asyncipc.connect(args.url) as bus:
        stream = await _stream(bus, args)
        payload = data(args.size)
        _check(await _pipelined(stream, payload, args.window, args.window), args.window)
        t0 = clock()
        futures = await _pipelined(stream, payload, args.count, args.window)
        seconds = clock() - t0
        _check(futures, args.window + args.count)
        emit("result", **rate(args.count, seconds), window=args.window)


async def each(args: StreamArgs) -> None:
    async with asyncipc.connect(args.url) as bus:
        stream = await _stream(bus, args)
        payload = data(args.size)
        samples: list[int] = []
        ns = time.perf_counter_ns
        first = ack = None
        t0 = 0.0
        for i in range(args.warmup + args.count):
            if i == args.warmup:
                t0 = clock()
            s0 = ns()
            ack = await stream.publish(SUBJECT, payload)
            if i >= args.warmup:
                samples.append(ns() - s0)
            first = first or ack
        seconds = clock() - t0
        assert first is not None
        assert ack is not None
        assert ack.seq - first.seq == args.warmup + args.count - 1, (first, ack)
        emit("result", **{**latency_summary(samples), **rate(args.count, seconds)})


async def fill(args: StreamArgs) -> None:
    async with asyncipc.connect(args.url) as bus:
        stream = await _stream(bus, args)
        t0 = clock()
        futures = await _pipelined(stream, data(args.size), args.count, args.window)
        seconds = clock() - t0
        _check(futures, args.count)
        emit("result", **rate(args.count, seconds))


async def fetch(args: StreamArgs) -> None:
    async with asyncipc.connect(args.url) as bus:
        stream = await _stream(bus, args)
        consumer = await stream.consumer(CONSUMER, deliver="all", ack_wait=30.0)
        got = batches = 0
        t0 = clock()
        while got < args.count:
            msgs = await consumer.fetch(args.batch, timeout=args.timeout)
            if not msgs:
                raise RuntimeError(f"fetch returned nothing after {got} of {args.count}")
            batches += 1
            for msg in msgs:
                await msg.ack()
            got += len(msgs)
        await bus.flush(timeout=args.timeout)  # the last acknowledgements reached the broker
        seconds = clock() - t0
        # Untimed: the broker has every acknowledgement (ack() does not wait for it).
        deadline = time.monotonic() + args.timeout
        info = await consumer.info()
        while info.num_ack_pending and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
            info = await consumer.info()
        emit(
            "result",
            **rate(got, seconds),
            batch=args.batch,
            batches=batches,
            ack_pending=info.num_ack_pending,
            ack_floor=info.ack_floor,
        )


async def file_tail(args: StreamArgs) -> None:
    """Subscribe to ``--url`` (a ``file://`` directory), count ``--count`` messages."""
    async with asyncipc.connect(args.url) as bus:
        async with bus.subscribe(SUBJECT) as sub:
            await bus.flush(timeout=args.timeout)
            emit("ready")
            got = first_ns = last_ns = 0
            now = time.monotonic_ns
            it = aiter(sub)
            try:
                while got < args.count:
                    await asyncio.wait_for(anext(it), args.timeout)
                    last_ns = now()
                    if not got:
                        first_ns = last_ns
                    got += 1
            except TimeoutError:
                pass  # reported: got < count
        emit("result", count=got, first_ns=first_ns, last_ns=last_ns)


async def file_append(args: StreamArgs) -> None:
    """Publish ``--count`` messages to ``--url`` (a ``file://`` directory). A publish only
    queues the message for the log's writer, so the rate is taken to the bus closed, by
    which time every message is in the log (``published`` is the rate to the last
    ``publish`` and ``flush``)."""
    async with asyncipc.connect(args.url) as bus:
        payload = data(args.size)
        await bus.publish(SUBJECT + ".warm", payload)  # the log files are open
        await bus.flush(timeout=args.timeout)
        start_ns = time.monotonic_ns()
        t0 = clock()
        for _ in range(args.count):
            await bus.publish(SUBJECT, payload)
        await bus.flush(timeout=60)
        published = clock() - t0
    seconds = clock() - t0
    emit(
        "result",
        **rate(args.count, seconds),
        published_msgs_per_s=args.count / published,
        start_ns=start_ns,
    )


ROLES: dict[str, Role] = {
    "window": window,
    "each": each,
    "fill": fill,
    "fetch": fetch,
    "file-tail": file_tail,
    "file-append": file_append,
}

if __name__ == "__main__":
    run_stream_worker(ROLES, sys.argv[1:])
