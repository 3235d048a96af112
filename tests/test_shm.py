"""shm:// with real shared memory and real processes: set-up, crashes, bad input, doorbells.

The conformance suite (test_conformance.py, ``-k shm``) covers the bus behaviours; this
file covers what only a ring transport has. Child programs are in ring_child.py.
"""

from __future__ import annotations

import asyncio
import json
import mmap
import os
import random
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

import asyncipc
from asyncipc.protocol import Op, Pub, encode
from asyncipc.transports import parse_url
from asyncipc.transports._ring import port as _ringport
from asyncipc.transports._ring import setup as _ringsetup
from asyncipc.transports._ring.channel import RingChannel
from asyncipc.transports._ring.ring import KIND_DATA, RECORD, TAIL, format_ring, header_check
from asyncipc.transports._ring.setup import connect_control, layout
from asyncipc.transports.shm import connect_channel, listen_channel, memfd_segment

HERE = Path(__file__).parent
CHILD = [sys.executable, str(HERE / "ring_child.py")]


def name() -> str:
    return f"t{os.urandom(4).hex()}"


def mapped_segments(label: str) -> list[str]:
    """Lines of /proc/self/maps for memfd segments whose label contains ``label``."""
    with open("/proc/self/maps") as f:
        return [line for line in f if "memfd:asyncipc" in line and label in line]


async def until(predicate: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    """Poll for a condition another process brings about (nothing to await on here)."""
    try:
        async with asyncio.timeout(timeout):
            while not predicate():  # noqa: ASYNC110
                await asyncio.sleep(0.01)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


async def ring_each_sleep(
    a: RingChannel, b: RingChannel, n: int, asleep: Callable[[], None] | None = None
) -> None:
    """``n`` times: ``b`` waits in ``recv()`` until it has gone to sleep, ``asleep()`` runs,
    then ``a`` sends it a record, which rings ``b``'s doorbell, and ``b`` returns it."""
    for i in range(n):
        task = asyncio.create_task(b.recv())
        # b waits in recv(): it spins, then publishes "sleeping" (an odd counter).
        await until(lambda: a._tx.reader_sleeping, "b to go to sleep")
        if asleep is not None:
            asleep()
        await a.send(b"%d" % i)  # rings b's eventfd: b's loop wakes
        assert await task == b"%d" % i


async def child(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        *CHILD, *args, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )


async def line(proc: asyncio.subprocess.Process) -> str:
    assert proc.stdout is not None
    async with asyncio.timeout(20):
        raw = await proc.stdout.readline()
    if not raw:
        assert proc.stderr is not None
        err = await proc.stderr.read()
        raise AssertionError(f"child ended: {err.decode()[-2000:]}")
    return raw.decode().strip()


async def reap(proc: asyncio.subprocess.Process) -> int:
    if proc.returncode is None:
        proc.kill()
    return await proc.wait()


@pytest.fixture
async def broker() -> AsyncIterator[asyncipc.Broker]:
    async with asyncipc.Broker() as b:
        yield b


# --- two processes, real shared memory -----------------------------------------------------


async def test_requests_cross_to_another_process_and_back(broker: asyncipc.Broker) -> None:
    url = (await broker.listen(f"shm://{name()}?size=64K")).url
    proc = await child("echo", url)
    try:
        assert await line(proc) == "ready"
        (peer,) = broker.peers
        assert (peer.transport, peer.pid, peer.uid) == ("shm", proc.pid, os.getuid())
        async with asyncipc.connect(url) as bus:
            for size in (0, 64, 100_000, 1_000_000):  # 1 MB: pieces through a 64K ring
                payload = os.urandom(size)
                assert (await bus.request("echo", payload, timeout=10)).data == payload
            replies = await asyncio.gather(
                *(bus.request("echo", b"%d" % i, timeout=10) for i in range(200))
            )
            assert [r.data for r in replies] == [b"%d" % i for i in range(200)]
    finally:
        await reap(proc)


async def test_a_killed_client_is_noticed_and_its_segment_freed(broker: asyncipc.Broker) -> None:
    n = name()
    url = (await broker.listen(f"shm://{n}")).url
    proc = await child("echo", url)
    try:
        assert await line(proc) == "ready"
        assert broker.sessions == 1
        assert len(mapped_segments(f":{n}:")) == 1
        proc.send_signal(signal.SIGKILL)
        await until(lambda: broker.sessions == 0, "the session to go")
        assert mapped_segments(f":{n}:") == [], "the dead client's segment is still mapped"
        async with asyncipc.connect(url) as bus:  # the broker carries on
            with pytest.raises(asyncipc.NoResponders):
                await bus.request("echo", b"", timeout=5)
    finally:
        await reap(proc)


async def test_a_killed_broker_is_noticed_and_a_new_one_replaces_its_socket() -> None:
    n = name()
    url = f"shm://{n}"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(HERE / "broker_proc.py"), url, stdout=subprocess.PIPE
    )
    try:
        assert (await line(proc)).startswith("ready")
        # Not redialled: this test is about noticing the death (test_conformance.py has
        # the reconnect over shm://).
        bus = await asyncipc.connect(url, options=asyncipc.ConnectOptions(reconnect=False))
        sub = bus.subscribe("x")
        await bus.flush()
        proc.send_signal(signal.SIGKILL)
        with pytest.raises(asyncipc.BrokenLinkError, match="went away without closing"):
            await sub.next_msg(timeout=10)
        assert bus.is_closed
        assert mapped_segments(f":{n}:") == []
        await bus.close()
        await proc.wait()  # (its listening socket closes with its process, not before)
        # The dead broker's control socket is still there; a new broker replaces it.
        assert os.path.exists(f"/dev/shm/asyncipc-{os.getuid()}/{n}.sock")
        async with asyncipc.Broker() as again:
            await again.listen(url)
            async with asyncipc.connect(url) as bus2:
                await bus2.flush()
    finally:
        await reap(proc)


async def test_the_broker_closing_tells_clients_and_drains() -> None:
    url = f"shm://{name()}"
    async with asyncipc.Broker() as broker:
        await broker.listen(url)
        bus = await asyncipc.connect(url)
        sub = bus.subscribe("x")
        await bus.flush()
        for i in range(100):
            await bus.publish("x", b"%d" % i)
        await bus.flush()
    got = [int((await sub.next_msg(timeout=5)).data) for _ in range(100)]
    assert got == list(range(100))
    await bus.close()


# --- direct channels -------------------------------------------------------------------------


async def test_direct_channel_to_another_process_in_place_and_copied() -> None:
    async with await listen_channel(f"shm://{name()}?size=64K") as listener:
        proc = await child("channel-echo", listener.url)
        try:
            ch = await listener.accept()
            assert await line(proc) == "ready"
            assert ch.peer.pid == proc.pid
            for i in range(300):
                await ch.send(b"%d" % i * 100)
            for i in range(300):
                if i % 2:
                    assert await ch.recv() == b"%d" % i * 100
                    continue
                with await ch.recv_record() as rec:
                    view = rec.view
                    assert view[: len(b"%d" % i)] == b"%d" % i
                    assert len(view) == len(b"%d" % i) * 100
                with pytest.raises(asyncipc.RecordReleased):
                    view.tobytes()
            with pytest.raises(asyncipc.FrameTooLarge, match="use a larger"):
                await ch.send(bytes(ch.max_record + 1))
            await ch.aclose()
            assert await proc.wait() == 0  # its `async for` ended on our FIN
        finally:
            await reap(proc)


async def test_a_channel_peer_killed_mid_stream_leaves_what_it_committed() -> None:
    async with await listen_channel(f"shm://{name()}") as listener:
        proc = await child("channel-burst", listener.url, "500")
        try:
            ch = await listener.accept()
            assert await line(proc) == "sent"
            await proc.wait()
            got = [int.from_bytes((await ch.recv())[:4], "big") for _ in range(500)]
            assert got == list(range(500))
            with pytest.raises(asyncipc.BrokenLinkError, match="without closing the channel"):
                await ch.recv()
            with pytest.raises(asyncipc.BrokenLinkError):
                await ch.send(b"late")
        finally:
            await reap(proc)


async def test_channel_close_in_process_and_iteration_end() -> None:
    async with await listen_channel(f"shm://{name()}") as listener:
        a = await connect_channel(listener.url)
        b = await listener.accept()
        for i in range(5):
            await a.send(b"%d" % i)
        await a.aclose()
        assert [x async for x in b] == [b"%d" % i for i in range(5)]
        with pytest.raises(asyncipc.ClosedError):
            await a.send(b"x")
        await b.aclose()


# --- doorbells ---------------------------------------------------------------------------------


async def test_an_idle_side_sleeps_and_a_record_wakes_it() -> None:
    async with await listen_channel(f"shm://{name()}?spin=0.001") as listener:
        a = await connect_channel(listener.url)
        b = await listener.accept()
        await ring_each_sleep(a, b, 30)
        # The writer side too: a full ring makes a writer wait; space wakes it.
        big = bytes(a.max_record // 3)
        sends = asyncio.create_task(_send_many(a, big, 10))
        await until(lambda: b._rx.writer_waiting, "a to wait for space")
        for _ in range(10):
            assert await b.recv() == big
        await sends
        await a.aclose()
        await b.aclose()


async def test_a_publisher_that_fills_the_brokers_ring_loses_nothing_and_raises_nothing(
    broker: asyncipc.Broker,
) -> None:
    """A publisher in another process, faster than the broker, keeps the broker's inbound
    ring full and waits for space; the broker's read then schedules its next look from
    inside the look (its port's ``consumed``: less than a quarter of the ring free). The
    compiled build raised a TypeError from the port's poll there, read after read (mypy
    had narrowed the port's handle to None across the owner's calls), and the loop
    logged it while the messages still went through: the loop must report nothing."""
    loop = asyncio.get_running_loop()
    problems: list[dict[str, object]] = []
    loop.set_exception_handler(lambda _, ctx: problems.append(ctx))
    count = 50_000
    try:
        # Records of up to 64 KiB (one per publisher turn) in a 1 MiB ring: a record
        # read frees less than a quarter of a full ring.
        url = (await broker.listen(f"shm://{name()}?size=1M")).url
        async with asyncipc.connect(url) as bus, bus.subscribe("fill") as sub:
            await bus.flush()
            proc = await child("publish", url, "fill", str(count))
            try:
                got = 0
                async with asyncio.timeout(60):
                    async for msg in sub:
                        assert msg.data == b"%-64d" % got
                        got += 1
                        if got == count:
                            break
                assert await line(proc) == "sent"
                assert await proc.wait() == 0
            finally:
                await reap(proc)
    finally:
        loop.set_exception_handler(None)
    assert [str(p.get("exception") or p.get("message")) for p in problems] == []


async def test_a_pad_committed_alone_wakes_the_reader_and_its_space_the_writer() -> None:
    """A record that does not fit the end commits a pad alone and waits; the sleeping
    reader must be rung for the pad, and its writer for the space the pad frees."""
    async with await listen_channel(f"shm://{name()}?size=64K&spin=0") as listener:
        a = await connect_channel(listener.url)
        b = await listener.accept()
        first, second = b"a" * 40000, b"b" * 45000
        await a.send(first)
        assert await b.recv() == first
        waiting = asyncio.create_task(b.recv())
        await until(lambda: a._tx.reader_sleeping, "b to go to sleep")
        await a.send(second)  # pad to the end, committed alone; then waits for room at 0
        assert await waiting == second
        await a.aclose()
        await b.aclose()


def _backstop_armed(b: RingChannel) -> None:
    assert b._port._backstop_handle is not None


async def test_without_membarrier_a_sleeper_still_wakes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where membarrier(2) is missing the port sleeps with a backstop timer too: records
    still arrive, whether the doorbell or the timer wakes it."""

    monkeypatch.setattr(_ringport, "FENCE", None)
    async with await listen_channel(f"shm://{name()}?spin=0") as listener:
        a = await connect_channel(listener.url)
        b = await listener.accept()
        await ring_each_sleep(a, b, 5, lambda: _backstop_armed(b))
        await a.aclose()
        await b.aclose()


async def test_a_record_committed_without_its_ring_is_found_after_the_fence(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What a lost wake-up leaves: a record committed as the reader went to sleep, and
    no ring. The sleeper fences and looks again ``FENCE_AFTER`` after going to sleep,
    and finds it (before that look existed it would have waited for the next ring).
    ``FENCE_AFTER`` is stretched so that the commit surely comes before the look."""
    if _ringport.FENCE is None:
        pytest.skip("no membarrier(2) here: the 50 ms backstop covers this (test above)")
    monkeypatch.setattr(_ringport, "FENCE_AFTER", 2.0)
    async with await listen_channel(f"shm://{name()}?spin=0") as listener:
        a = await connect_channel(listener.url)
        b = await listener.accept()
        assert a._tx is not None
        for i in range(2):
            task = asyncio.create_task(b.recv())
            await until(lambda: a._tx.reader_sleeping, "b to go to sleep")
            assert a._tx.try_write(b"unrung %d" % i)  # committed; the doorbell not rung
            assert b._port._backstop_handle is not None  # the deferred look is to come
            assert await asyncio.wait_for(task, 10) == b"unrung %d" % i
        await a.aclose()
        await b.aclose()


async def test_a_sleeper_rung_before_fence_after_issues_no_fence(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A stream whose reader sleeps between records: each ring comes before the deferred
    fence, which is then never issued (the fence interrupts every CPU the peer runs on)."""
    real = _ringport.FENCE
    if real is None:
        pytest.skip("no membarrier(2) here: sleepers use the backstop timer instead")
    fences = 0

    def counted() -> None:
        nonlocal fences
        fences += 1
        real()

    monkeypatch.setattr(_ringport, "FENCE", counted)
    monkeypatch.setattr(_ringport, "FENCE_AFTER", 60.0)
    async with await listen_channel(f"shm://{name()}?spin=0") as listener:
        a = await connect_channel(listener.url)
        b = await listener.accept()
        await ring_each_sleep(a, b, 20, lambda: _backstop_armed(b))  # the fence, deferred
        assert fences == 0
        await a.aclose()
        await b.aclose()


@pytest.mark.parametrize("big", [1200, 16000])
async def test_no_wake_up_is_lost_when_the_reader_sleeps_as_the_writer_writes(big: int) -> None:
    """Another process writes in runs after random pauses while this side, at ``spin=0``,
    sleeps whenever the ring is empty (and, with 16 KB records in a 64 KiB ring, the
    writer sleeps whenever it is full and this side reads in random pauses): thousands
    of sleeps that race a commit. Every record arrives, in order, none held back behind
    a lost wake-up (which would stall a receive for good: each has 10 s)."""
    n = 4000
    async with await listen_channel(f"shm://{name()}?size=64K&spin=0") as listener:
        proc = await child("channel-jitter", listener.url, str(n), "12", str(big))
        ch = None
        try:
            ch = await listener.accept()
            rnd = random.Random(34)
            sleeps = ch._port._rx
            assert sleeps is not None
            for i in range(n):
                data = await asyncio.wait_for(ch.recv(), 10)
                assert data[:4] == i.to_bytes(4, "big")
                assert len(data) in (4, 64, big)
                if rnd.random() < 0.01:
                    await asyncio.sleep(rnd.random() * 1e-3)
            assert await asyncio.wait_for(line(proc), 10) == "sent"
            # Not a vacuous pass: this side did sleep, over and over, during the run.
            assert sleeps._sleep_seq > 10  # (44, two per sleep, in the fewest seen)
            with pytest.raises(asyncipc.BrokenLinkError, match="closed the channel"):
                await asyncio.wait_for(ch.recv(), 10)
            assert await proc.wait() == 0
        finally:
            await reap(proc)
            if ch is not None:  # a failure above must not leak its sockets into later tests
                await ch.aclose()


async def test_a_waiting_writer_is_woken_when_the_reader_stops_short_of_a_quarter() -> None:
    """A reader wakes a writer that waits for space only once a quarter of the ring is free, or
    when it stops reading: a few records' space freed, then no more reading, must still
    let the waiting writer put a record there."""
    async with await listen_channel(f"shm://{name()}?size=64K&spin=0") as listener:
        a = await connect_channel(listener.url)
        b = await listener.accept()
        record = bytes(1000)
        while a._tx.try_write(record):
            pass  # fill the ring directly (b does not read yet)
        sends = asyncio.create_task(_send_many(a, record, 2))
        await until(lambda: b._rx.writer_waiting, "a to wait for space")
        for _ in range(3):  # far from a quarter: consumed() does not ring for this
            assert await b.recv() == record
        await asyncio.wait_for(sends, 10)  # b stopped reading: its port rang anyway
        await a.aclose()
        await b.aclose()


async def test_a_receive_looks_in_place_briefly_then_lets_the_loop_run() -> None:
    """With ``spin`` a receive on an empty ring looks again in place, holding the loop,
    but once and briefly (``LOOK_IN_PLACE``): other tasks keep running while it waits,
    and the record that comes later is still delivered through the loop. With
    ``spin=0`` it does not look at all."""
    from asyncipc.transports._ring.channel import LOOK_IN_PLACE

    assert LOOK_IN_PLACE <= 0.001
    async with await listen_channel(f"shm://{name()}?spin=1") as listener:
        a = await connect_channel(listener.url)
        b = await listener.accept()
        assert b._look == LOOK_IN_PLACE
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0)

        tick = asyncio.create_task(ticker())
        waiting = asyncio.create_task(b.recv())
        await asyncio.sleep(0.05)
        assert not waiting.done()
        assert ticks > 50  # the loop ran on while the receive waited
        await a.send(b"late")
        assert await asyncio.wait_for(waiting, 5) == b"late"
        tick.cancel()
        await a.aclose()
        await b.aclose()
    async with await listen_channel(f"shm://{name()}?spin=0") as listener:
        a = await connect_channel(listener.url)
        b = await listener.accept()
        assert b._look == 0
        await a.aclose()
        await b.aclose()


async def _send_many(ch: object, data: bytes, n: int) -> None:
    for _ in range(n):
        await ch.send(data)  # type: ignore[attr-defined]


class PausingReceiver:
    """A link receiver that pauses its link after every frame it gets."""

    def __init__(self) -> None:
        self.link: asyncipc.Link | None = None
        self.got: list[object] = []
        self.arrived = asyncio.Event()

    def frame_received(self, frame: object) -> None:
        self.got.append(frame)
        assert self.link is not None
        self.link.pause_reading()
        self.arrived.set()

    def pub_received(self, *args: object) -> None:
        raise AssertionError("not over shm")

    msg_received = pub_received

    def link_lost(self, exc: BaseException | None) -> None:
        pass

    def writing_resumed(self) -> None:
        pass


async def test_pause_reading_holds_the_rest_of_a_record_and_the_records_after() -> None:
    """Small frames share a record, large ones have their own: a pause after any frame
    must stop delivery there, whichever of the two it falls in."""
    from asyncipc.protocol import Pub
    from asyncipc.transports import TransportOptions
    from asyncipc.transports.shm import ShmTransport

    transport, opts = ShmTransport(), TransportOptions()
    accepted: list[asyncipc.Link] = []
    url = parse_url(f"shm://{name()}")
    listener = await transport.listen(url, accepted.append, opts)
    client = await transport.connect(url, opts)
    await until(lambda: bool(accepted), "the server end")
    server = accepted[0]
    receiver = PausingReceiver()
    receiver.link = server
    server.set_receiver(receiver)
    sizes = [10] * 5 + [40_000] * 3 + [10] * 5
    for i, size in enumerate(sizes):
        client.send(Pub(f"s.{i}", bytes(size)))
    for i in range(len(sizes)):
        await asyncio.wait_for(receiver.arrived.wait(), 5)
        receiver.arrived.clear()
        await asyncio.sleep(0.01)  # time for a wrong second delivery to happen
        assert len(receiver.got) == i + 1
        server.resume_reading()
    assert [p.subject for p in receiver.got] == [f"s.{i}" for i in range(len(sizes))]  # type: ignore[attr-defined]
    client.close()
    server.close()
    await listener.aclose()


# --- bad input ---------------------------------------------------------------------------------


def raw_control(path: str, hello: bytes) -> bytes:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    sock.settimeout(10)
    sock.connect(path)
    sock.send(hello)
    reply = sock.recv(4096)
    sock.close()
    return reply


@pytest.mark.parametrize(
    ("hello", "problem"),
    [
        (b"GET / HTTP/1.1\r\n\r\n", "hello is not JSON"),
        (b'{"asyncipc": "rings/9"}', "not an asyncipc rings/1 hello"),
        (b'{"asyncipc": "rings/1", "kind": "channel"}', "serves links"),
        (b'{"asyncipc": "rings/1", "kind": "link", "size": 5}', "ring size 5 is not"),
        (b'{"asyncipc": "rings/1", "kind": "link", "checksum": "x"}', "checksum must be"),
    ],
)
async def test_garbage_on_the_control_socket_is_refused_by_name(
    broker: asyncipc.Broker, hello: bytes, problem: str, caplog: pytest.LogCaptureFixture
) -> None:
    n = name()
    url = (await broker.listen(f"shm://{n}")).url
    path = f"/dev/shm/asyncipc-{os.getuid()}/{n}.sock"
    reply = await asyncio.to_thread(raw_control, path, hello)
    assert problem in json.loads(reply)["error"]
    assert problem in caplog.text
    async with asyncipc.connect(url) as bus:  # the broker carries on
        await bus.flush()


async def test_bytes_on_the_control_socket_after_set_up_cut_that_client_off(
    broker: asyncipc.Broker, caplog: pytest.LogCaptureFixture
) -> None:
    url = (await broker.listen(f"shm://{name()}")).url
    async with asyncipc.connect(url) as good:
        # Cut off for good: a redial would bring the session count back to 2.
        bad = await asyncipc.connect(url, options=asyncipc.ConnectOptions(reconnect=False))
        await until(lambda: broker.sessions == 2, "both sessions")
        bad._link._ctl.send(b"surprise")  # type: ignore[attr-defined]
        await until(lambda: broker.sessions == 1, "the bad session to go")
        assert "unexpected 8 bytes on the control socket" in caplog.text
        await good.flush()
        await bad.close()


async def test_a_record_past_the_ring_end_cuts_off_that_client_alone(
    broker: asyncipc.Broker, caplog: pytest.LogCaptureFixture
) -> None:
    n = name()
    url = (await broker.listen(f"shm://{n}")).url
    async with asyncipc.connect(url) as good, good.subscribe("ok") as sub:
        path = f"/dev/shm/asyncipc-{os.getuid()}/{n}.sock"
        ep = await connect_control(
            url, path, kind="link", transport="shm", address=n, size=None, checksum=None,
            timeout=5, sealed=True,
        )  # fmt: skip
        # Forge a record whose valid-looking header claims more than the ring holds.
        tx = ep.tx
        length = tx.capacity + 100
        check = header_check(length, 0, 0, KIND_DATA, 0)
        RECORD.pack_into(tx.buffer, tx._data, length, 0, 0, KIND_DATA, 0, check)
        struct.pack_into("<Q", tx.buffer, tx._base + TAIL, 64)  # and commit it
        ep.bell_out.ring()
        await until(lambda: "runs past the ring end" in caplog.text, "the broker to notice")
        # It was told, in an ERR frame in its inbound ring, before the hang-up.
        data = ep.rx.read_bytes()
        assert data is not None
        assert b"runs past the ring end" in data
        await good.publish("ok", b"still here")
        assert (await sub.next_msg(timeout=5)).data == b"still here"
        ep.rx.close()
        ep.tx.close()
        ep.segment.close()
        ep.ctl.close()


async def test_a_scribbled_tail_cuts_off_that_client_alone(
    broker: asyncipc.Broker, caplog: pytest.LogCaptureFixture
) -> None:
    n = name()
    url = (await broker.listen(f"shm://{n}")).url
    # Cut off for good: a redial would bring the session count back to 2.
    once = asyncipc.ConnectOptions(reconnect=False)
    async with asyncipc.connect(url) as good, asyncipc.connect(url, options=once) as bad:
        await until(lambda: broker.sessions == 2, "both sessions")
        tx = bad._link._tx  # type: ignore[attr-defined]
        tx._q[TAIL // 8] = 10 * tx.capacity  # its own ring's commit word, out of range
        bad._link._port.wrote()  # type: ignore[attr-defined]
        bad._link._bells[1].ring()  # type: ignore[attr-defined]
        await until(lambda: broker.sessions == 1, "the scribbler to be cut off")
        assert f"the writer's tail {10 * tx.capacity} is out of range" in caplog.text
        await good.flush()


@pytest.mark.parametrize(
    ("tail", "problem"),
    [
        (b"\x00\x00\x00", "3 stray bytes at the end of a ring record"),
        (struct.pack(">IB", 100, Op.PUB) + b"abc", "frame of 100 bytes runs past its ring record"),
    ],
)
async def test_a_record_that_ends_inside_a_frame_delivers_its_good_frames_then_cuts_off(
    broker: asyncipc.Broker, caplog: pytest.LogCaptureFixture, tail: bytes, problem: str
) -> None:
    """A client's record of small frames is parsed whole: the PUBs before a frame that
    runs past the record's end are delivered, then that client alone is cut off."""
    n = name()
    url = (await broker.listen(f"shm://{n}")).url
    once = asyncipc.ConnectOptions(reconnect=False)
    async with asyncipc.connect(url) as good, good.subscribe("ok") as sub:
        await good.flush()
        async with asyncipc.connect(url, options=once) as bad:
            await until(lambda: broker.sessions == 2, "both sessions")
            record = encode(Pub("ok", b"one")) + encode(Pub("ok", b"two")) + tail
            link = bad._link  # type: ignore[attr-defined]
            assert link._tx.try_write_parts((record,), len(record), 0)
            link._port.wrote()
            await until(lambda: broker.sessions == 1, "the bad client to be cut off")
            assert problem in caplog.text
        assert [(await sub.next_msg(timeout=5)).data for _ in range(2)] == [b"one", b"two"]
        await good.publish("ok", b"still here")
        assert (await sub.next_msg(timeout=5)).data == b"still here"


class FakeListener:
    """A control socket that answers with whatever a test wants (a hostile broker)."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.sock.bind(path)
        os.chmod(path, 0o600)
        self.sock.listen(1)
        self.path = path

    def answer(self, message: bytes, fds: list[int]) -> None:
        conn, _ = self.sock.accept()
        conn.recv(4096)
        socket.send_fds(conn, [message], fds)
        conn.close()


def reply_for(size: int) -> bytes:
    total, a, b = layout(size)
    return json.dumps(
        {"ok": True, "version": "rings/1", "size": size, "total": total, "offsets": [a, b]}
    ).encode()


def good_fds(size: int, *, sealed: bool = True, corrupt: bool = False) -> list[int]:
    total, a, b = layout(size)
    if sealed:
        fd, _ = memfd_segment(total, "asyncipc:test")
    else:
        fd = os.memfd_create("asyncipc:test")
        os.ftruncate(fd, total)
        os.fchmod(fd, 0o600)
    with mmap.mmap(fd, total) as mm:
        format_ring(mm, size, offset=a)
        format_ring(mm, size, offset=b)
        if corrupt:
            mm[b : b + 8] = b"GARBAGE!"
    return [fd, os.eventfd(0), os.eventfd(0)]


@pytest.mark.parametrize(
    ("case", "error", "problem"),
    [
        ("not-json", asyncipc.RemoteProtocolError, "set-up reply is not JSON"),
        ("refusal", asyncipc.ConnectError, "refused the connection: go away"),
        ("two-fds", asyncipc.RemoteProtocolError, "carried 2 file descriptors, expected 3"),
        ("layout", asyncipc.RemoteProtocolError, "inconsistent layout"),
        ("unsealed", asyncipc.RemoteProtocolError, "not sealed against shrinking"),
        ("corrupt-ring", asyncipc.CorruptRing, "bad magic b'GARBAGE!'"),
        ("not-eventfd", asyncipc.RemoteProtocolError, "descriptor is pipe:"),
    ],
)
async def test_garbage_from_a_listener_is_named(
    tmp_path: Path, case: str, error: type[Exception], problem: str
) -> None:
    os.chmod(tmp_path, 0o700)
    path = str(tmp_path / "x.sock")
    fake = FakeListener(path)
    size = 64 * 1024
    message, fds = reply_for(size), good_fds(size, sealed=case != "unsealed")
    if case == "not-json":
        message = b"\x00\x01garbage"
    elif case == "refusal":
        message = b'{"error": "go away"}'
    elif case == "two-fds":
        os.close(fds.pop())
    elif case == "layout":
        message = message.replace(b'"total": ', b'"total": 1')
    elif case == "corrupt-ring":
        for fd in fds:
            os.close(fd)
        fds = good_fds(size, corrupt=True)
    elif case == "not-eventfd":
        os.close(fds.pop())
        r, w = os.pipe()
        os.close(w)
        fds.append(r)
    task = asyncio.create_task(asyncio.to_thread(fake.answer, message, fds))
    url = f"shm://x?dir={tmp_path}"
    with pytest.raises(error, match=problem):
        await connect_control(
            url, path, kind="link", transport="shm", address="x", size=None,
            checksum=None, timeout=5, sealed=True,
        )  # fmt: skip
    await task
    for fd in fds:
        os.close(fd)
    fake.sock.close()
    assert mapped_segments("asyncipc:test") == []


# --- users, modes, stale files --------------------------------------------------------------


async def test_bad_directories_and_names_are_refused(tmp_path: Path) -> None:
    loose = tmp_path / "loose"
    loose.mkdir(mode=0o755)
    loose.chmod(0o755)
    async with asyncipc.Broker() as broker:
        with pytest.raises(asyncipc.ConfigurationError, match="lets other users in"):
            await broker.listen(f"shm://a?dir={loose}")
        with pytest.raises(asyncipc.ConfigurationError, match="bad channel name"):
            await broker.listen("shm://a%2Fb")
        with pytest.raises(asyncipc.ConfigurationError, match=r"outside 64K\.\.1G"):
            await broker.listen("shm://a?size=1K")
        with pytest.raises(asyncipc.ConfigurationError, match="unknown option"):
            await broker.listen("shm://a?colour=red")
        (tmp_path / "file").write_text("")
        with pytest.raises(asyncipc.ConfigurationError, match="not a directory"):
            await broker.listen(f"shm://a?dir={tmp_path / 'file'}")
    with pytest.raises(asyncipc.ConnectError, match="no control socket"):
        await asyncipc.connect(f"shm://{name()}")


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to make files of another user")
async def test_another_users_files_and_processes_are_refused(tmp_path: Path) -> None:
    other = 54321
    d = tmp_path / "d"
    d.mkdir(mode=0o700)
    d.chmod(0o700)
    theirs = d / "x.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    s.bind(str(theirs))
    os.chown(theirs, other, other)
    with pytest.raises(asyncipc.ConnectError, match="belongs to uid 54321"):
        await asyncipc.connect(f"shm://x?dir={d}")
    async with asyncipc.Broker() as broker:
        with pytest.raises(asyncipc.ConfigurationError, match="belongs to uid 54321"):
            await broker.listen(f"shm://x?dir={d}")
        s.close()
        os.chown(d, other, other)
        with pytest.raises(asyncipc.ConfigurationError, match="belongs to uid 54321"):
            await broker.listen(f"shm://y?dir={d}")
    # A process of another user that reaches a socket anyway is refused by its uid.
    python = "/usr/bin/python3"  # (the venv's may sit where other users cannot go)
    if not os.access(python, os.X_OK):
        return
    shared = Path(tempfile.mkdtemp(prefix="aipc-"))
    try:
        async with asyncipc.Broker() as broker:
            await broker.listen(f"shm://z?dir={shared}")
            shared.chmod(0o711)
            (shared / "z.sock").chmod(0o666)
            script = (
                "import socket;s=socket.socket(socket.AF_UNIX,socket.SOCK_SEQPACKET);"
                f"s.connect({str(shared / 'z.sock')!r});"
                's.send(b\'{"asyncipc":"rings/1","kind":"link"}\');print(s.recv(4096).decode())'
            )
            done = await asyncio.to_thread(
                subprocess.run,
                [python, "-c", script],
                user=other,
                capture_output=True,
                cwd="/",
                timeout=30,
            )
            assert "uid 54321 may not use" in json.loads(done.stdout)["error"]
            assert broker.sessions == 0
    finally:
        shutil.rmtree(shared)


async def test_settings_reach_both_sides() -> None:
    n = name()
    async with asyncipc.Broker() as broker:
        await broker.listen(f"shm://{n}?size=128K&checksum=crc32")
        async with asyncipc.connect(f"shm://{n}?size=256K") as bus, bus.subscribe("x") as sub:
            link = bus._link
            assert link._tx.capacity == 256 * 1024  # type: ignore[attr-defined]
            assert link._tx.checksum  # type: ignore[attr-defined]
            await bus.publish("x", b"y" * 300_000)  # in pieces
            assert (await sub.next_msg(timeout=5)).data == b"y" * 300_000
    assert parse_url(f"shm://{n}").name == n
    assert _ringsetup.parse_size("16M") == 16 * 1024 * 1024


def test_the_shm_pipeline_example_runs() -> None:
    done = subprocess.run(
        [sys.executable, str(HERE.parent / "examples" / "shm_pipeline.py"), "--frames", "12"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "CRCs checked: ok" in done.stdout
    assert "CRCs checked: 12/12" in done.stdout
    assert "every CRC matched" in done.stdout
