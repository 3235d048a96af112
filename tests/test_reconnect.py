"""Connections that survive (issue 9, DESIGN.md §7): a broker in its own process is
killed (SIGKILL), stopped (SIGTERM) and started again, and the buses in this process carry
on: what they lose, what waits, what fails at once, what they tell ``bus.events()``.

Every broker is ``tests/broker_proc.py`` in a process of its own, except in the 100-cycle
test, which restarts a broker in this process (a process start per cycle is too slow).
No timing is asserted here; ``benchmarks/`` measures how long resuming takes.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import os
import re
import signal
import subprocess
import sys
import tracemalloc
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import IO

import pytest

import asyncipc
from asyncipc._events import EVENT_BACKLOG

HERE = Path(__file__).parent
GUARD = 10.0
"""Seconds any single wait may take before the test fails instead of hanging."""

FAST_RETRY = asyncipc.ConnectOptions(reconnect_delay=0.001, reconnect_max_delay=0.002)
"""Redial every millisecond or two: many refused attempts (``"error"`` events) cheaply."""


class Proc:
    """A Python child of the test with its stdout read line by line without blocking the
    event loop; its stderr goes to a file, read when it fails."""

    def __init__(self, args: list[str], err: Path, env: dict[str, str] | None = None) -> None:
        self.err = err
        with err.open("w") as errfile:
            self.proc = subprocess.Popen(
                [sys.executable, *args],
                stdout=subprocess.PIPE,
                stderr=errfile,
                text=True,
                env={**os.environ, **(env or {})},
            )
        assert self.proc.stdout is not None
        self.stdout: IO[str] = self.proc.stdout

    async def line(self, prefix: str) -> str:
        """The next stdout line starting with ``prefix`` (others are skipped)."""
        async with asyncio.timeout(GUARD):
            while True:
                line = await asyncio.to_thread(self.stdout.readline)
                if not line:
                    rc = await asyncio.to_thread(self.proc.wait)
                    raise RuntimeError(
                        f"child exited ({rc}) before printing {prefix!r}: {self.err.read_text()}"
                    )
                if line.startswith(prefix):
                    return line.rstrip("\n")

    async def stop(self, sig: int = signal.SIGKILL) -> int:
        """Send ``sig`` (if it still runs) and wait for the exit; the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            async with asyncio.timeout(GUARD):
                return await asyncio.to_thread(self.proc.wait)
        except TimeoutError:
            self.proc.kill()
            return await asyncio.to_thread(self.proc.wait)

    async def finish(self) -> None:
        await self.stop()
        self.stdout.close()


class BrokerProc(Proc):
    """``tests/broker_proc.py URL...``, ready once it printed ``ready URL`` per listener."""

    urls: list[str]

    @classmethod
    async def start(
        cls, urls: list[str], err: Path, env: dict[str, str] | None = None
    ) -> BrokerProc:
        self = cls([str(HERE / "broker_proc.py"), *urls], err, env)
        self.urls = []
        try:
            for _ in urls:
                self.urls.append((await self.line("ready ")).split(" ", 1)[1])
        except BaseException:
            await self.finish()
            raise
        return self

    async def kill(self) -> None:
        """SIGKILL: no goodbye to the clients, the socket file stays behind."""
        assert await self.stop(signal.SIGKILL) == -signal.SIGKILL

    async def terminate(self) -> None:
        """SIGTERM: broker_proc.py drains, tells its clients (ERR 7) and exits 0."""
        assert await self.stop(signal.SIGTERM) == 0, self.err.read_text()


RESPONDER = """
import asyncio, sys
import asyncipc

async def main(url):
    async with asyncipc.connect(url) as bus:
        @bus.handler("svc.slow")
        async def slow(msg):
            print("got", msg.data.decode(), flush=True)
            await asyncio.sleep(60)
            return b"too late"

        @bus.handler("svc.echo")
        async def echo(msg):
            return b"echo:" + msg.data

        await bus.flush()
        print("ready", flush=True)
        async for event in bus.events():
            print(event.kind, event.url, flush=True)

asyncio.run(main(sys.argv[1]))
"""
"""A service in a process of its own, on a bus of its own (which reconnects too): prints
``ready``, ``got DATA`` when a slow request reaches it, and each connection event."""


class Children:
    """Starts brokers and responders for one test; kills and waits for all of them."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.procs: list[Proc] = []
        self.started = 0

    def _err(self) -> Path:
        self.started += 1
        return self.tmp_path / f"child{self.started}.err"

    async def broker(self, *urls: str, env: dict[str, str] | None = None) -> BrokerProc:
        broker = await BrokerProc.start(list(urls), self._err(), env)  # or killed
        self.procs.append(broker)
        return broker

    async def failing_broker(self, *urls: str) -> str:
        """Start a broker process that must fail to start: its stderr."""
        proc = Proc([str(HERE / "broker_proc.py"), *urls], self._err())
        self.procs.append(proc)
        async with asyncio.timeout(GUARD):
            rc = await asyncio.to_thread(proc.proc.wait)
        assert rc != 0, "a second broker started on a live socket"
        return proc.err.read_text()

    async def responder(self, url: str) -> Proc:
        proc = Proc(["-c", RESPONDER, url], self._err())
        self.procs.append(proc)
        await proc.line("ready")
        return proc

    async def close(self) -> None:
        for proc in self.procs:
            await proc.finish()


@pytest.fixture
async def children(tmp_path: Path) -> AsyncIterator[Children]:
    kids = Children(tmp_path)
    try:
        yield kids
    finally:
        await kids.close()


async def until(cond: Callable[[], bool], what: str, timeout: float = GUARD) -> None:
    """Poll ``cond`` until it holds; fail naming ``what`` after ``timeout`` s."""
    try:
        async with asyncio.timeout(timeout):
            while not cond():  # noqa: ASYNC110 - counters and flags have no event to await
                await asyncio.sleep(0.002)
    except TimeoutError:
        raise AssertionError(f"gave up waiting for {what}") from None


async def next_event(events: asyncipc.EventStream, kind: str) -> asyncipc.ConnectionEvent:
    """The next event of ``kind``; any other kind first fails the test."""
    async with asyncio.timeout(GUARD):
        event = await anext(events)
    assert event.kind == kind, f"expected {kind!r}, got {event}"
    return event


async def collect(events: asyncipc.EventStream) -> list[asyncipc.ConnectionEvent]:
    """Every event up to and including ``"closed"``. A killed broker's dying socket may
    reset an attempt: that is no ``"error"`` event (only a broker's refusal is)."""
    return [event async for event in events]


def seq(n: int) -> bytes:
    return n.to_bytes(8, "big")


# --- 1. a broker killed under load -------------------------------------------------------


@pytest.mark.parametrize("kind", ["unix", "tcp"])
async def test_sigkill_under_load_loses_only_what_was_in_flight(
    kind: str, tmp_path: Path, children: Children
) -> None:
    """Steady publishing from one bus to a subscriber on another; the broker is killed
    and restarted on the same address. The subscriber resumes; what it lost is one run of
    consecutive messages published between its last delivery from the dead broker and
    the moment both buses were back (at most once, DESIGN.md §7); nothing published after
    that is lost, nothing comes twice or out of order."""
    where = f"unix://{tmp_path}/b.sock" if kind == "unix" else "tcp://127.0.0.1:0"
    broker = await children.broker(where)
    url = broker.urls[0]  # the real port: the restart binds the same one
    async with asyncipc.connect(url) as pub, asyncipc.connect(url) as subbus:
        sub = subbus.subscribe("load", max_pending=1 << 20)
        await subbus.flush()
        pub_events, sub_events = pub.events(), subbus.events()
        published = 0
        received: list[int] = []
        stop_at: int | None = None

        async def publisher() -> None:
            nonlocal published
            while stop_at is None or published < stop_at:
                for _ in range(10):
                    await pub.publish("load", seq(published))
                    published += 1
                await asyncio.sleep(0.001)

        async def receiver() -> None:
            async for msg in sub:
                received.append(int.from_bytes(msg.data, "big"))

        async with asyncio.TaskGroup() as tg:
            publishing = tg.create_task(publisher())
            receiving = tg.create_task(receiver())
            await until(lambda: len(received) >= 300, "steady delivery")
            last_before_kill = received[-1]
            await broker.kill()
            await next_event(sub_events, "disconnected")
            await next_event(pub_events, "disconnected")
            published_at_drop = published
            broker = await children.broker(url)
            assert (await next_event(sub_events, "reconnected")).url == url
            assert (await next_event(pub_events, "reconnected")).url == url
            await subbus.flush()  # the new broker has the subscription
            safe = published  # from here on, nothing may be lost
            stop_at = safe + 300
            await publishing
            await pub.flush()
            await until(lambda: bool(received) and received[-1] == stop_at - 1, "the last one")
            receiving.cancel()

    assert all(a < b for a, b in itertools.pairwise(received)), (
        "a message came twice or out of order"
    )
    missing = sorted(set(range(stop_at)) - set(received))
    print(
        f"\n{kind}: published {stop_at}, received {len(received)}, lost {len(missing)}; "
        f"{published_at_drop - last_before_kill - 1} published between the last delivery "
        f"and the drop, {safe - published_at_drop} while reconnecting"
    )
    assert not any(n <= last_before_kill for n in missing), "lost what was delivered before"
    assert all(n < safe for n in missing), "lost a message published after the reconnect"
    if missing:
        assert missing == list(range(missing[0], missing[-1] + 1)), (
            f"the loss is not one run of consecutive messages: {missing}"
        )
    assert received[-300:] == list(range(safe, stop_at)), "the subscriber did not resume"


# --- 2. the socket file a killed broker leaves ---------------------------------------


async def test_stale_socket_file_is_replaced_and_a_live_one_refused(
    tmp_path: Path, children: Children
) -> None:
    path = tmp_path / "b.sock"
    url = f"unix://{path}"
    first = await children.broker(url)
    await first.kill()
    assert path.is_socket(), "SIGKILL should leave the socket file behind"
    await children.broker(url)  # binds over the stale file
    async with asyncipc.connect(url) as bus, bus.subscribe("x") as sub:
        await bus.publish("x", b"1")
        assert (await sub.next_msg(timeout=GUARD)).data == b"1"

        refused = f"{path} is in use"
        async with asyncipc.Broker() as other:
            with pytest.raises(asyncipc.ConfigurationError, match=re.escape(refused)):
                await other.listen(url)
        assert refused in (await children.failing_broker(url))

        # The refusals took nothing from the live broker: same file, same clients.
        await bus.publish("x", b"2")
        assert (await sub.next_msg(timeout=GUARD)).data == b"2"
        assert bus.is_connected
    async with asyncipc.connect(url) as again:
        await again.flush(timeout=GUARD)


# --- 3. failover between URLs --------------------------------------------------------


async def test_failover_to_the_live_url_and_back(tmp_path: Path, children: Children) -> None:
    """A dead, B live: connect([A, B]) lands on B. B killed, A started: the bus moves to
    A, with the subscription it made on B."""
    url_a = f"unix://{tmp_path}/a.sock"
    b = await children.broker("tcp://127.0.0.1:0")
    url_b = b.urls[0]
    async with asyncipc.connect([url_a, url_b]) as bus:
        assert bus.is_connected
        assert bus.connected_url == url_b
        events = bus.events()
        sub = bus.subscribe("fo.x", queue="q", max_pending=10)
        await bus.flush()

        await b.kill()
        await next_event(events, "disconnected")
        assert not bus.is_connected
        assert bus.connected_url is None
        await children.broker(url_a)
        assert (await next_event(events, "reconnected")).url == url_a
        assert bus.connected_url == url_a

        async with asyncipc.connect(url_a) as other:
            await other.publish("fo.x", b"on A")
            assert (await sub.next_msg(timeout=GUARD)).data == b"on A"
        assert (sub.queue, sub.max_pending) == ("q", 10)


# --- 4. and 5. requests across a broker's death ----------------------------------------


async def test_request_in_flight_raises_disconnected_at_once(
    tmp_path: Path, children: Children
) -> None:
    """The responder (another process) holds the request; the broker dies. The request
    fails with Disconnected, not at its 30 s time-out (the guard is 10 s)."""
    broker = await children.broker(f"unix://{tmp_path}/b.sock")
    url = broker.urls[0]
    responder = await children.responder(url)
    async with asyncipc.connect(url) as bus:
        asking = asyncio.ensure_future(bus.request("svc.slow", b"r1", timeout=30))
        try:
            assert await responder.line("got ") == "got r1"
            await broker.kill()
            with pytest.raises(asyncipc.Disconnected, match=r"svc\.slow"):
                async with asyncio.timeout(GUARD):
                    await asking
        finally:
            asking.cancel()
        assert isinstance(asking.exception(), asyncipc.BrokenLinkError)
        assert not isinstance(asking.exception(), asyncipc.RequestTimeout)
        assert not bus.is_closed, "the bus itself goes on reconnecting"


async def test_request_made_while_disconnected_waits_for_the_reconnect(
    tmp_path: Path, children: Children
) -> None:
    """A request asked while the broker is down waits (within its time-out) and gets its
    reply once the broker and the responder are back.

    The requester reaches the broker through a symlink that the test puts back only once
    the responder has reconnected: else which of the two reconnects first is chance,
    and a request that arrives first is answered NoResponders, rightly."""
    real = tmp_path / "b.sock"
    link = tmp_path / "l.sock"
    link.symlink_to(real)
    broker = await children.broker(f"unix://{real}")
    responder = await children.responder(f"unix://{real}")
    async with asyncipc.connect(f"unix://{link}") as bus:
        events = bus.events()
        assert (await bus.request("svc.echo", b"up", timeout=GUARD)).data == b"echo:up"

        await broker.kill()
        await next_event(events, "disconnected")
        assert await responder.line("disconnected") == f"disconnected unix://{real}"
        link.unlink()
        asking = asyncio.ensure_future(bus.request("svc.echo", b"down", timeout=GUARD))
        try:
            await asyncio.sleep(0.1)
            assert not asking.done(), "a request made while disconnected must wait"
            await children.broker(f"unix://{real}")
            await responder.line("reconnected")
            assert not asking.done()
            link.symlink_to(real)
            async with asyncio.timeout(GUARD):
                reply = await asking
        finally:
            asking.cancel()
        assert reply.data == b"echo:down"
        assert (await next_event(events, "reconnected")).url == f"unix://{link}"


# --- 6. bus.events() ----------------------------------------------------------------


async def test_two_readers_see_every_event(tmp_path: Path, children: Children) -> None:
    broker = await children.broker(f"unix://{tmp_path}/b.sock")
    url = broker.urls[0]
    bus = await asyncipc.connect(url)
    try:
        readers = [asyncio.ensure_future(collect(bus.events())) for _ in range(2)]
        waiter = bus.events()
        await broker.kill()
        await next_event(waiter, "disconnected")
        await children.broker(url)
        await next_event(waiter, "reconnected")
    finally:
        await bus.close()
    async with asyncio.timeout(GUARD):
        seen = await asyncio.gather(*readers)
    for events in seen:
        assert [e.kind for e in events] == ["disconnected", "reconnected", "closed"]
        down, up, closed = events
        assert down.url == up.url == closed.url == url
        assert isinstance(down.error, asyncipc.BrokenLinkError), down
        assert up.error is None
        assert closed.error is None, "close() is not an error"
    # A reader that comes after the end hears that it ended.
    assert [e.kind for e in await collect(bus.events())] == ["closed"]


async def test_a_reader_that_never_reads_does_not_hold_the_bus(
    tmp_path: Path, children: Children
) -> None:
    """More than EVENT_BACKLOG events (refused reconnect attempts to a broker that wants
    a token) while one reader reads none: it loses the oldest, counted in ``dropped``,
    and the bus goes on to reconnect and deliver."""
    broker = await children.broker(f"unix://{tmp_path}/b.sock")
    url = broker.urls[0]
    bus = await asyncipc.connect(url, options=FAST_RETRY)
    try:
        lazy = bus.events()
        reading = asyncio.ensure_future(collect(bus.events()))
        await broker.kill()
        picky = await children.broker(url, env={"ASYNCIPC_TEST_TOKEN": "s3cret"})
        await until(lambda: lazy.dropped > 10, "the idle reader to drop events")
        await picky.kill()
        await children.broker(url)
        async with asyncipc.connect(url) as other:
            sub = bus.subscribe("ev.x")
            await until(lambda: bus.is_connected, "the reconnect")
            await bus.flush(timeout=GUARD)
            await other.publish("ev.x", b"still here")
            assert (await sub.next_msg(timeout=GUARD)).data == b"still here"
    finally:
        await bus.close()
    async with asyncio.timeout(GUARD):
        everything = await reading
        kept = await collect(lazy)
    assert kept == everything[-EVENT_BACKLOG:], "the idle reader keeps the newest"
    assert lazy.dropped == len(everything) - EVENT_BACKLOG
    events = everything
    assert [e.kind for e in events[:1] + events[-2:]] == ["disconnected", "reconnected", "closed"]
    refused = events[1:-2]
    assert len(refused) > EVENT_BACKLOG
    assert all(e.kind == "error" for e in refused)
    assert all(isinstance(e.error, asyncipc.AuthenticationError) for e in refused)


# --- 7. publish and flush while disconnected -----------------------------------------


async def fill(bus: asyncipc.Bus, subject: str, size: int) -> tuple[int, asyncio.Future[None]]:
    """Publish ``size``-byte messages (numbered) until one does not return at once: how
    many returned, and the one left waiting."""
    sent = 0
    while True:
        task = asyncio.ensure_future(bus.publish(subject, seq(sent) + bytes(size - 8)))
        for _ in range(3):
            await asyncio.sleep(0)
        if not task.done():
            return sent, task
        task.result()
        sent += 1
        assert sent < 10_000, "publish never waited"


async def test_publish_while_disconnected_holds_then_waits(
    tmp_path: Path, children: Children
) -> None:
    buffer = 64 * 1024
    broker = await children.broker(f"unix://{tmp_path}/b.sock")
    url = broker.urls[0]
    async with asyncipc.connect(
        url, options=asyncipc.ConnectOptions(reconnect_buffer=buffer)
    ) as bus:
        sub = bus.subscribe("held", max_pending=1 << 20)
        await bus.flush()
        events = bus.events()
        await broker.kill()
        await next_event(events, "disconnected")

        held, waiting = await fill(bus, "held", 1024)
        try:
            assert buffer // 2048 <= held <= buffer // 1024, held
            await asyncio.sleep(0.1)
            assert not waiting.done(), "publish past reconnect_buffer must wait"
            await children.broker(url)
            await next_event(events, "reconnected")
            async with asyncio.timeout(GUARD):
                await waiting
        finally:
            waiting.cancel()
        got = [int.from_bytes((await sub.next_msg(timeout=GUARD)).data[:8], "big")]
        while len(got) < held + 1:
            got.append(int.from_bytes((await sub.next_msg(timeout=GUARD)).data[:8], "big"))
        assert got == list(range(held + 1)), "held messages lost or out of order"


async def test_publish_waiting_when_reconnecting_gives_up_raises_disconnected(
    tmp_path: Path, children: Children
) -> None:
    broker = await children.broker(f"unix://{tmp_path}/b.sock")
    options = asyncipc.ConnectOptions(
        reconnect_buffer=16 * 1024,
        max_reconnect_attempts=3,
        # Slow enough that the buffer fills before the third attempt gives up.
        reconnect_delay=0.15,
        reconnect_max_delay=0.15,
    )
    bus = await asyncipc.connect(broker.urls[0], options=options)
    try:
        sub = bus.subscribe("gone")
        events = bus.events()
        await broker.kill()
        await next_event(events, "disconnected")
        _, waiting = await fill(bus, "gone", 1024)
        with pytest.raises(asyncipc.Disconnected, match="gave up reconnecting"):
            async with asyncio.timeout(GUARD):
                await waiting
        assert bus.is_closed
        assert not bus.is_connected
        closed = await next_event(events, "closed")
        assert isinstance(closed.error, asyncipc.Disconnected)
        with pytest.raises(StopAsyncIteration):
            await anext(events)
        with pytest.raises(asyncipc.Disconnected):
            await sub.next_msg(timeout=GUARD)
        with pytest.raises(asyncipc.Disconnected):
            await bus.publish("gone", b"after")
        async with asyncio.timeout(GUARD):
            await bus.wait_closed()
    finally:
        async with asyncio.timeout(GUARD):
            await bus.close()


async def test_flush_and_subscribe_while_disconnected_wait_for_the_reconnect(
    tmp_path: Path, children: Children
) -> None:
    broker = await children.broker(f"unix://{tmp_path}/b.sock")
    url = broker.urls[0]
    async with asyncipc.connect(url) as bus:
        events = bus.events()
        await broker.kill()
        await next_event(events, "disconnected")
        late = bus.subscribe("late")  # made while down: the reconnect sends it
        flushing = asyncio.ensure_future(bus.flush(timeout=GUARD))
        try:
            await asyncio.sleep(0.1)
            assert not flushing.done(), "flush() while disconnected must wait"
            await children.broker(url)
            async with asyncio.timeout(GUARD):
                await flushing
        finally:
            flushing.cancel()
        assert bus.is_connected
        async with asyncipc.connect(url) as other:
            await other.publish("late", b"x")
            assert (await late.next_msg(timeout=GUARD)).data == b"x"


# --- 8. graceful shutdown -------------------------------------------------------------


async def test_sigterm_tells_clients_and_they_come_back(tmp_path: Path, children: Children) -> None:
    broker = await children.broker(f"unix://{tmp_path}/b.sock")
    url = broker.urls[0]
    async with asyncipc.connect(url) as bus:
        sub = bus.subscribe("after")
        await bus.flush()
        events = bus.events()
        await broker.terminate()
        down = await next_event(events, "disconnected")
        assert isinstance(down.error, asyncipc.BrokerError), down
        assert down.error.code == 7, "the broker said it is shutting down (ERR 7)"
        await children.broker(url)
        await next_event(events, "reconnected")
        async with asyncipc.connect(url) as other:
            await other.publish("after", b"back")
            assert (await sub.next_msg(timeout=GUARD)).data == b"back"


# --- 9. reconnecting off --------------------------------------------------------------


async def test_reconnect_off_ends_the_bus_as_before(tmp_path: Path, children: Children) -> None:
    broker = await children.broker(f"unix://{tmp_path}/b.sock")
    url = broker.urls[0]
    responder = await children.responder(url)
    bus = await asyncipc.connect(url, options=asyncipc.ConnectOptions(reconnect=False))
    try:
        sub = bus.subscribe("x")
        events = bus.events()
        asking = asyncio.ensure_future(bus.request("svc.slow", b"r", timeout=30))
        await responder.line("got ")
        await broker.kill()
        async with asyncio.timeout(GUARD):
            await bus.wait_closed()
        assert bus.is_closed
        assert not bus.is_connected
        for waited in (asking, sub.next_msg(timeout=GUARD)):
            with pytest.raises(asyncipc.BrokenLinkError) as failed:
                await waited
            assert not isinstance(failed.value, asyncipc.Disconnected)
        with pytest.raises(asyncipc.BrokenLinkError):
            await bus.publish("x", b"")
        closed = await next_event(events, "closed")
        assert isinstance(closed.error, asyncipc.BrokenLinkError), closed
        assert not isinstance(closed.error, asyncipc.Disconnected)
        # Starting the broker again changes nothing for this bus.
        await children.broker(url)
        await asyncio.sleep(0.05)
        assert bus.is_closed
    finally:
        async with asyncio.timeout(GUARD):
            await bus.close()


# --- 10. many cycles leave nothing behind ----------------------------------------------


def footprint() -> tuple[int, int, int]:
    """Open file descriptors, asyncio tasks, traced bytes, after a collection."""
    gc.collect()
    return (
        len(os.listdir("/proc/self/fd")),
        len(asyncio.all_tasks()),
        tracemalloc.get_traced_memory()[0],
    )


async def test_hundred_reconnect_cycles_leave_no_residue(tmp_path: Path) -> None:
    """A broker in this process closed and listened again 100 times under one bus with a
    subscription and a handler: the bus's file descriptors, tasks and memory after the
    100th cycle are those after the first."""
    url = f"unix://{tmp_path}/c.sock"
    tracing = tracemalloc.is_tracing()  # PYTHONTRACEMALLOC: leave it as it was
    tracemalloc.start()
    broker = asyncipc.Broker()
    try:
        await broker.listen(url)
        async with asyncipc.connect(url) as bus:
            sub = bus.subscribe("cyc.data")

            @bus.handler("cyc.echo")
            async def echo(msg: asyncipc.Message) -> bytes:
                return msg.data

            events = bus.events()

            async def cycle(i: int) -> None:
                nonlocal broker
                await broker.close()
                await next_event(events, "disconnected")
                broker = asyncipc.Broker()
                await broker.listen(url)
                await next_event(events, "reconnected")
                n = str(i).encode()
                assert (await bus.request("cyc.echo", n, timeout=GUARD)).data == n
                await bus.publish("cyc.data", n)
                assert (await sub.next_msg(timeout=GUARD)).data == n

            await cycle(0)
            before = footprint()
            for i in range(1, 100):
                await cycle(i)
            after = footprint()
            print(
                f"\nafter cycle 1: {before[0]} fds, {before[1]} tasks, {before[2]} bytes;"
                f" after cycle 100: {after[0]} fds, {after[1]} tasks, {after[2]} bytes"
            )
            assert after[0] <= before[0], "file descriptors leaked"
            assert after[1] <= before[1], "tasks leaked"
            # Slack: the bounded cache of validated subjects (asyncipc/subjects.py) keeps
            # each request's reply subject, about 160 bytes a cycle here.
            assert after[2] <= before[2] + 64 * 1024, "memory grew over 100 cycles"
    finally:
        if not tracing:
            tracemalloc.stop()
        with contextlib.suppress(asyncipc.ClosedError):
            await broker.close()
