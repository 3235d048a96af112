"""iceoryx2 peer roles (``pip install iceoryx2``): the shared-memory library to compare the
direct shm channel with, in its own processes.

iceoryx2's Python API is synchronous, so each role runs its hot loop as a plain blocking
loop (the event loop of :func:`run_worker` only carries the ``go``/``stop`` control lines,
before and after it). ``--url`` is the service name; ``--idiom`` the waiting mode:

* ``poll``: busy-poll, as the ``publish_subscribe``/``request_response`` examples do
  between their ``node.wait(cycle_time)`` calls, without the sleep: ``receive()`` until a
  sample (or a request, a response) is there;
* ``wait``: sleep until woken, as ``examples/python/event_based_communication`` does: a
  separate event service next to the data service, the sender ``notify()``-ing after each
  ``send()``, the receiver asleep in its ``Listener`` and then draining ``receive()``.
  The wait is ``Listener.timed_wait(BACKSTOP)``, not ``blocking_wait()``: with
  iceoryx2 0.10.0 on this machine a listener woken once per sample at full speed
  sometimes stays asleep with samples (or a reply) ready and no notification pending,
  a lost wake-up (``blocking_wait()`` and a ``WaitSet`` both hung in about one run in
  three of 2,000 64 B samples). The backstop bounds such a stall; every wait that ends on
  it after the first message is counted and reported as ``stalls``, so a figure that
  includes stalls says so (benchmarks/README.md).

Payloads are ``Slice[c_uint8]`` (``publish_subscribe_dynamic_data``,
``request_response_dynamic_data``) loaned from the shared segment with
``loan_slice_uninit`` (zero-copy: the only copy is the sender's write into the loan, done
with ``ctypes.memmove`` into ``payload_ptr`` as iceoryx2's own ``send_copy`` does, not the
examples' byte-by-byte loop, which is a demo) and read in place on the other side.
One-way services have no safe overflow and a publisher that retries until delivered
(``BackpressureStrategy.RetryUntilDelivered``), so a full subscriber buffer slows the
publisher instead of dropping samples, as a full ring does to ours.

* ``iox-sink``: subscriber, receives ``--count`` samples of ``--size`` bytes (it stops
  after ``--idle`` seconds without one, and the missing ones count as lost);
* ``iox-source``: publisher, waits for ``go``, sends ``--count`` samples;
* ``iox-echo``: request/response server, answers ``--warmup + --count`` requests with a
  loaned response of the request's bytes, then reports its ``stalls``;
* ``iox-req``: client, times ``--count`` round trips after ``--warmup`` untimed ones
  (``--timeout`` seconds per request at most).
"""

from __future__ import annotations

import ctypes
import time
from typing import Any

import iceoryx2 as iox2

from ._common import Control, Role, WorkerArgs, emit, latency_summary, payload, run_worker

#: Subscriber buffer (samples) per payload size: about our ring's 4 MiB at 1 MiB, and
#: plenty at 64 B (a sample slot is not a ring byte: see benchmarks/README.md).
BUFFER = {64: 1024}
BUFFER_LARGE = 4
U8 = iox2.Slice[ctypes.c_uint8]
#: The longest a ``wait``-mode receiver sleeps without a notification (see above).
BACKSTOP = iox2.Duration.from_millis(1)
STALL_NS = 900_000


def _slept_out(listener: Any) -> bool:
    """Wait for a notification; ``True`` when the wait ran to the backstop without one
    (an empty return well before it is a spurious wake-up, not a stall)."""
    t0 = time.monotonic_ns()
    return not listener.timed_wait(BACKSTOP) and time.monotonic_ns() - t0 >= STALL_NS


def _node() -> Any:
    iox2.set_log_level_from_env_or(iox2.LogLevel.Warn)
    return iox2.NodeBuilder.new().create(iox2.ServiceType.Ipc)


def _pubsub(node: Any, args: WorkerArgs) -> Any:
    return (
        node.service_builder(iox2.ServiceName.new(args.url))
        .publish_subscribe(U8)
        .enable_safe_overflow(False)
        .subscriber_max_buffer_size(BUFFER.get(args.size, BUFFER_LARGE))
        .open_or_create()
    )


def _event(node: Any, name: str) -> Any:
    return node.service_builder(iox2.ServiceName.new(name)).event().open_or_create()


async def iox_sink(args: WorkerArgs) -> None:
    ctl = await Control.open()
    node = _node()
    subscriber = _pubsub(node, args).subscriber_builder().create()
    wait = args.idiom == "wait"
    listener = _event(node, args.url + "/sent").listener_builder().create() if wait else None
    emit("ready")
    first_ns = last_ns = 0
    n, size, stalls = 0, args.size, 0
    idle_ns, since = int(args.idle * 1e9), time.monotonic_ns()
    while n < args.count:
        sample = subscriber.receive()
        if sample is None:
            if listener is not None and _slept_out(listener) and n:
                stalls += 1
            if n and time.monotonic_ns() - since > idle_ns:
                break  # samples that never came are reported as lost
            continue
        since = time.monotonic_ns()
        assert sample.payload().len() == size  # read in place, released at once
        del sample
        last_ns = time.monotonic_ns()
        if not n:
            first_ns = last_ns
        n += 1
    conn = {"count": n, "first_ns": first_ns, "last_ns": last_ns, "size": size}
    emit("result", conns=[conn], stalls=stalls)
    await ctl.wait("stop")


async def iox_source(args: WorkerArgs) -> None:
    ctl = await Control.open()
    node = _node()
    publisher = (
        _pubsub(node, args)
        .publisher_builder()
        .initial_max_slice_len(args.size)
        .backpressure_strategy(iox2.BackpressureStrategy.RetryUntilDelivered)
        .create()
    )
    notifier = (
        _event(node, args.url + "/sent").notifier_builder().create()
        if args.idiom == "wait"
        else None
    )
    data, size = payload(args.size), args.size
    memmove = ctypes.memmove
    emit("ready")
    await ctl.wait("go")
    start_ns = time.monotonic_ns()
    t0 = time.perf_counter()
    for _ in range(args.count):
        sample = publisher.loan_slice_uninit(size)
        memmove(sample.payload_ptr, data, size)
        sample.assume_init().send()
        if notifier is not None:
            notifier.notify()
    emit("result", sent=args.count, seconds=time.perf_counter() - t0, start_ns=start_ns)
    await ctl.wait("stop")


def _reqrep(node: Any, args: WorkerArgs) -> Any:
    return (
        node.service_builder(iox2.ServiceName.new(args.url))
        .request_response(U8, U8)
        .open_or_create()
    )


async def iox_echo(args: WorkerArgs) -> None:
    ctl = await Control.open()
    node = _node()
    server = _reqrep(node, args).server_builder().initial_max_slice_len(args.size).create()
    wait = args.idiom == "wait"
    listener = _event(node, args.url + "/req").listener_builder().create() if wait else None
    notifier = _event(node, args.url + "/resp").notifier_builder().create() if wait else None
    memmove = ctypes.memmove
    emit("ready")
    stalls = 0
    for i in range(args.warmup + args.count):
        while (request := server.receive()) is None:
            if listener is not None and _slept_out(listener) and i:
                stalls += 1
        n = request.payload().len()
        response = request.loan_slice_uninit(n)
        memmove(response.payload_ptr, request.payload_ptr, n)
        response.assume_init().send()
        if notifier is not None:
            notifier.notify()
        del request, response
    emit("result", stalls=stalls)
    await ctl.wait("stop")


async def iox_req(args: WorkerArgs) -> None:
    node = _node()
    client = _reqrep(node, args).client_builder().initial_max_slice_len(args.size).create()
    wait = args.idiom == "wait"
    notifier = _event(node, args.url + "/req").notifier_builder().create() if wait else None
    listener = _event(node, args.url + "/resp").listener_builder().create() if wait else None
    data, size = payload(args.size), args.size
    memmove = ctypes.memmove
    samples: list[int] = []
    clock = time.perf_counter_ns
    reply = b""
    stalls = 0
    for i in range(args.warmup + args.count):
        t0 = clock()
        request = client.loan_slice_uninit(size)
        memmove(request.payload_ptr, data, size)
        pending = request.assume_init().send()
        if notifier is not None:
            notifier.notify()
        deadline = t0 + int(args.timeout * 1e9)
        while (response := pending.receive()) is None:
            if listener is not None and _slept_out(listener):
                stalls += 1
            if clock() > deadline:
                raise TimeoutError(f"no response to request {i} in {args.timeout} s")
        if i >= args.warmup:
            samples.append(clock() - t0)
        else:
            reply = bytes(response.payload().as_memory_view())
        del response, pending
    assert reply == data, "echo mismatch"
    emit("result", **latency_summary(samples), stalls=stalls)


ROLES: dict[str, Role] = {
    "iox-sink": iox_sink,
    "iox-source": iox_source,
    "iox-echo": iox_echo,
    "iox-req": iox_req,
}

if __name__ == "__main__":
    run_worker(ROLES)
