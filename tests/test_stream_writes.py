"""When a stream link writes what it queues (``transports/_stream/link.py``, ``_Reading``).

A frame that nothing is queued before goes on the wire at once, not a loop turn later; a
burst is still gathered into one write. Each test drives a real ``StreamLink`` over a real
Unix socket pair and looks at the other end with a non-blocking ``recv``: what it finds
there at a given moment is what the link has written by then.
"""

from __future__ import annotations

import asyncio
import itertools
import socket
from collections.abc import AsyncIterator, Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from asyncipc.protocol import PING, PONG, PREAMBLE, Frame, FrameDecoder, Headers, encode
from asyncipc.transports import TransportOptions
from asyncipc.transports._stream.link import _WRITEV_MIN, StreamLink, _gathered


def _available(sock: socket.socket) -> bytes:
    """Everything the link has written so far, without waiting (a non-blocking socket)."""
    got = b""
    while True:
        try:
            chunk = sock.recv(1 << 20)
        except BlockingIOError:
            return got
        if not chunk:
            return got
        got += chunk


def _frames(data: bytes) -> list[Frame]:
    decoder = FrameDecoder(msg_extra=1024)
    return decoder.feed(data)


class _LookSoon:
    """What the peer holds, looked at by a handle :meth:`schedule` puts on the loop: it
    runs before any handle the link schedules after it (its end-of-turn flush)."""

    def __init__(self, peer: socket.socket) -> None:
        self.peer = peer
        self._seen: list[bytes] = []
        self._looked = asyncio.Event()

    def schedule(self) -> None:
        asyncio.get_running_loop().call_soon(self._look)

    def _look(self) -> None:
        self._seen.append(_available(self.peer))
        self._looked.set()

    async def seen(self) -> bytes:
        await asyncio.wait_for(self._looked.wait(), 5)
        return self._seen[0]


class _Replier:
    """A receiver that answers each PING with a PONG, calling ``on_ping`` first."""

    def __init__(self, link: StreamLink, on_ping: Callable[[int], None]) -> None:
        self.link = link
        self.on_ping = on_ping
        self.pings = 0

    def frame_received(self, frame: Frame) -> None:
        assert frame == PING
        self.pings += 1
        self.on_ping(self.pings)
        self.link.send(PONG)

    def link_lost(self, exc: BaseException | None) -> None:
        pass

    def writing_resumed(self) -> None:
        pass

    def pub_received(
        self, subject: str, data: bytes, reply: str | None, headers: Headers | None
    ) -> None:
        raise AssertionError("a stream link hands over frames")

    def msg_received(
        self, sid: int, subject: str, data: bytes, reply: str | None, headers: Headers | None
    ) -> None:
        raise AssertionError("a stream link hands over frames")


@pytest.fixture
async def pair() -> AsyncIterator[tuple[StreamLink, socket.socket]]:
    """A client-side StreamLink on one end of a socket pair, a plain socket on the other
    (the PREAMBLE the link sends first already read)."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    loop = asyncio.get_running_loop()
    _, link = await loop.create_unix_connection(
        lambda: StreamLink("unix", TransportOptions(), server_side=False), sock=ours
    )
    assert isinstance(link, StreamLink)
    theirs.settimeout(5)
    assert theirs.recv(len(PREAMBLE)) == PREAMBLE
    theirs.setblocking(False)
    try:
        yield link, theirs
    finally:
        link.close()
        await link.wait_closed()
        theirs.close()


async def test_a_frame_a_task_publishes_is_written_before_publish_returns(
    pair: tuple[StreamLink, socket.socket],
) -> None:
    link, peer = pair
    link.publish("a.b", b"payload", "r.1", None)
    # No await since: a frame deferred to the end of the loop turn would not be there.
    frames = _frames(_available(peer))
    assert [(f.subject, f.data, f.reply) for f in frames] == [("a.b", b"payload", "r.1")]  # type: ignore[union-attr]


async def test_a_lone_large_frame_is_written_before_publish_returns(
    pair: tuple[StreamLink, socket.socket],
) -> None:
    """Its head and payload go out as two parts of one write (no concatenation)."""
    link, peer = pair
    big = bytes(range(256)) * 200
    link.publish("a.b", big, None, None)
    frames = _frames(_available(peer))
    assert [(f.subject, f.data) for f in frames] == [("a.b", big)]  # type: ignore[union-attr]


@given(st.lists(st.sampled_from([0, 1, 100, _WRITEV_MIN - 1, _WRITEV_MIN, 70_000]), max_size=30))
def test_a_gathered_batch_keeps_large_parts_whole_and_joins_the_small_ones(
    sizes: list[int],
) -> None:
    out = [bytes([i % 251]) * n for i, n in enumerate(sizes)]
    parts = _gathered(out)
    assert b"".join(parts) == b"".join(out)
    large = [p for p in out if len(p) >= _WRITEV_MIN]
    assert [p for p in parts if len(p) >= _WRITEV_MIN and any(p is q for q in large)] == large
    for a, b in itertools.pairwise(parts):
        assert len(a) >= _WRITEV_MIN or len(b) >= _WRITEV_MIN  # no two small ones apart


async def test_a_burst_from_a_task_is_its_first_frames_then_one_write_of_the_rest(
    pair: tuple[StreamLink, socket.socket],
) -> None:
    link, peer = pair
    for i in range(100):
        link.publish("burst", str(i).encode(), None, None)
    first = _frames(_available(peer))
    # The first frame schedules nothing (nothing says its turn is the link's last
    # lone frame's); the second, in the same turn, is written and schedules the end.
    assert [f.data for f in first] == [b"0", b"1"]  # type: ignore[union-attr]
    assert link.buffered > 0  # the other 98 wait for the end of the turn, in one piece
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    rest = _frames(_available(peer))
    assert [f.data for f in rest] == [str(i).encode() for i in range(2, 100)]  # type: ignore[union-attr]
    assert link.buffered == 0
    link.publish("later", b"x", None, None)  # a new turn: at once again
    assert [f.data for f in _frames(_available(peer))] == [b"x"]  # type: ignore[union-attr]
    link.publish("later", b"y", None, None)
    link.publish("later", b"z", None, None)
    assert [f.data for f in _frames(_available(peer))] == [b"y"]  # type: ignore[union-attr]
    await asyncio.sleep(0)
    assert [f.data for f in _frames(_available(peer))] == [b"z"]  # type: ignore[union-attr]


async def test_after_a_read_a_tasks_frame_is_written_and_nothing_scheduled(
    pair: tuple[StreamLink, socket.socket],
) -> None:
    """A requester's loop: the reply is read, the task sends the next request. The link
    knows a new turn began (a read came between), so it writes the request and schedules
    no end of turn: the loop can sleep at once, with no zero-timeout poll first."""
    link, peer = pair
    read = asyncio.Event()
    link.set_receiver(_Replier(link, lambda n: read.set()))
    for n in range(1, 4):
        read.clear()
        peer.sendall(encode(PING))  # the "reply"
        await asyncio.wait_for(read.wait(), 5)
        assert _frames(_available(peer)) == [PONG]  # answered in the read, at once
        link.publish("req", str(n).encode(), "inbox.1", None)  # the next "request"
        assert [f.data for f in _frames(_available(peer))] == [str(n).encode()]  # type: ignore[union-attr]
        assert link._flush_handle is None  # no extra loop iteration to pay for it
    # A second frame in the same turn cannot tell the turn apart: the end is scheduled
    # then, and what follows is gathered into one write.
    link.publish("req", b"a", None, None)
    assert link._flush_handle is not None
    link.publish("req", b"b", None, None)
    link.publish("req", b"c", None, None)
    assert [f.data for f in _frames(_available(peer))] == [b"a"]  # type: ignore[union-attr]
    await asyncio.sleep(0)
    assert [f.data for f in _frames(_available(peer))] == [b"b", b"c"]  # type: ignore[union-attr]
    assert link._flush_handle is None


async def test_the_answer_to_a_read_of_one_frame_is_written_while_the_read_is_handled(
    pair: tuple[StreamLink, socket.socket],
) -> None:
    link, peer = pair
    look = _LookSoon(peer)

    def on_ping(n: int) -> None:
        # Runs in the link's read callback, before the PONG is queued.
        look.schedule()

    link.set_receiver(_Replier(link, on_ping))
    peer.sendall(encode(PING))
    assert _frames(await look.seen()) == [PONG]


async def test_the_answers_to_a_read_of_many_frames_are_gathered_into_one_write(
    pair: tuple[StreamLink, socket.socket],
) -> None:
    """A burst read at once is throughput, not a waiting requester: what it makes is
    written in one piece at the end of the turn."""
    link, peer = pair
    during: list[bytes] = []
    look = _LookSoon(peer)

    def on_ping(n: int) -> None:
        during.append(_available(peer))  # nothing yet: the read is still being handled
        if n == 1:
            look.schedule()  # before the PONGs' flush: runs first

    replier = _Replier(link, on_ping)
    link.set_receiver(replier)
    peer.sendall(encode(PING) * 3)  # one write: one read on the link's side
    before_the_flush = await look.seen()
    if replier.pings < 3:
        pytest.fail(f"the 3 PINGs did not arrive in one read ({replier.pings} then more)")
    assert during == [b"", b"", b""]
    assert before_the_flush == b""
    await asyncio.sleep(0)
    assert _frames(_available(peer)) == [PONG, PONG, PONG]


async def test_frames_stay_in_order_across_the_ways_they_are_written(
    pair: tuple[StreamLink, socket.socket],
) -> None:
    """At once, gathered per turn, gathered per read, after the OS buffer filled: the
    peer reads every frame once, in the order queued."""
    link, peer = pair
    sent: list[bytes] = []
    big = b"z" * 60_000

    def on_ping(n: int) -> None:
        for _ in range(3):
            data = f"read{n}.{len(sent)}".encode()
            sent.append(data)
            link.publish("o", data, None, None)

    link.set_receiver(_Replier(link, on_ping))
    decoder = FrameDecoder(msg_extra=1024)
    got: list[bytes] = []

    def drain_peer() -> None:
        for f in decoder.feed(_available(peer)):
            if f != PONG:
                got.append(f.data)  # type: ignore[union-attr]

    for round_ in range(5):
        for i in range(20):  # fills the socket buffer: later frames queue behind
            data = big if i % 5 == 4 else f"t{round_}.{i}".encode()
            sent.append(data)
            link.publish("o", data, None, None)
        peer.sendall(encode(PING) * (1 + round_ % 2))
        for _ in range(50):
            await asyncio.sleep(0.002)
            drain_peer()
    while len(got) < len(sent):
        await asyncio.sleep(0.01)
        drain_peer()
    assert got == sent
