"""udp:// beyond the conformance suite: bad input, loss accounting, vanishing peers.

Raw peers are plain UDP sockets that build datagrams from docs/protocol.md §21 (the
header) and asyncipc.protocol.encode (the frame), so they can send exactly the bytes a
test needs: garbage, gaps in the sequence, no HELLO, a HELLO and then silence.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

import asyncipc
from asyncipc.link import PeerInfo
from asyncipc.protocol import (
    Err,
    ErrorCode,
    Frame,
    Hello,
    Msg,
    Op,
    Ping,
    Pub,
    Sub,
    Unsub,
    Welcome,
    encode,
)
from asyncipc.protocol.datagram import (
    Arrival,
    Envelope,
    Flag,
    SequenceTracker,
    decode_frame,
    pack_header,
    parse_datagram,
)
from asyncipc.transports import TransportOptions
from asyncipc.transports._datagram.link import DatagramLink
from asyncipc.transports._datagram.sockets import DatagramSettings, DatagramSocket
from asyncipc.transports.udp import UdpListener

CONN = 0x5EED
F = TypeVar("F")
QUICK_CLOSE = asyncipc.ConnectOptions(drain_timeout=0.2)
"""For buses on a fake broker that never answers the PING of close()'s flush."""


def dgram(seq: int, frame: Frame | None = None, *, conn: int = CONN, flags: int = 0) -> bytes:
    return pack_header(flags, conn, seq, 0) + (encode(frame) if frame is not None else b"")


def host_port(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("udp://").split("?")[0].rsplit(":", 1)
    return host, int(port)


class Raw:
    """A UDP socket connected to ``url`` that speaks datagrams by hand."""

    def __init__(self, url: str) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        self.sock.connect(host_port(url))

    def send(self, data: bytes) -> None:
        self.sock.send(data)

    async def recv(self, timeout: float = 5) -> Envelope:
        loop = asyncio.get_running_loop()
        data = await asyncio.wait_for(loop.sock_recv(self.sock, 65536), timeout)
        return parse_datagram(data)

    async def until(self, check: Callable[[Envelope], object], timeout: float = 5) -> Envelope:
        """The next datagram ``check`` accepts; the others are skipped."""
        while not check(env := await self.recv(timeout)):
            pass
        return env

    async def frame(self, timeout: float = 5) -> Frame:
        """The next datagram that carries a frame (acknowledgements are skipped)."""
        env = await self.until(lambda env: env.frame, timeout)
        return decode_frame(env.frame, 1 << 20)

    async def frame_of(self, kind: type[F], timeout: float = 5) -> F:
        """The next frame of type ``kind`` (the broker's PINGs and others are skipped)."""
        while not isinstance(frame := await self.frame(timeout), kind):
            pass
        return frame

    async def frames_until_quiet(self, quiet: float = 0.5) -> list[Frame]:
        frames = []
        try:
            while True:
                frames.append(await self.frame(timeout=quiet))
        except TimeoutError:
            return frames

    async def hello(self) -> Welcome:
        self.send(dgram(1, Hello({"version": 1, "name": "raw"})))
        return await self.frame_of(Welcome)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def raw_peers() -> Iterator[list[Raw]]:
    peers: list[Raw] = []
    yield peers
    for peer in peers:
        peer.close()


@pytest.fixture
async def broker() -> AsyncIterator[tuple[asyncipc.Broker, UdpListener]]:
    async with asyncipc.Broker(handshake_timeout=0.3, ping_interval=0.2, dead_peer_factor=2) as b:
        listener = await b.listen("udp://127.0.0.1:0")
        assert isinstance(listener, UdpListener)
        yield b, listener


async def wait_until(check: object, what: str) -> None:
    for _ in range(500):
        if callable(check) and check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting until {what}")


class FakeBroker(asyncio.DatagramProtocol):
    """A hand-driven broker endpoint (asyncio's datagram endpoint: uvloop has no
    sock_recvfrom). ``next()`` returns the next datagram and remembers its sender."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[bytes] = asyncio.Queue()
        self.addr: tuple[str, int] | None = None
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.addr = addr
        self.queue.put_nowait(data)

    async def next(self) -> Envelope:
        return parse_datagram(await asyncio.wait_for(self.queue.get(), 5))

    async def next_frame(self) -> Envelope:
        while not (env := await self.next()).frame:
            pass
        return env

    def send(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.sendto(data, self.addr)

    def welcome(self, conn: int) -> None:
        self.send(
            dgram(1, Welcome({"version": 1, "max_frame": 60000, "ping_interval": 0}), conn=conn)
        )


@pytest.fixture
async def fake() -> AsyncIterator[tuple[FakeBroker, str]]:
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_datagram_endpoint(FakeBroker, local_addr=("127.0.0.1", 0))
    yield proto, f"udp://127.0.0.1:{transport.get_extra_info('sockname')[1]}"
    transport.close()


async def assert_others_carry_on(url: str) -> None:
    async with asyncipc.connect(url) as a, asyncipc.connect(url) as b, b.subscribe("health") as sub:
        await b.flush()
        await a.publish("health", b"still here")
        assert (await sub.next_msg(timeout=5)).data == b"still here"


# --- the envelope, alone ---------------------------------------------------------------


def test_envelope_round_trip_and_every_way_to_break_it() -> None:
    frame = encode(Pub("a.b", b"xyz"))
    env = parse_datagram(pack_header(Flag.ACK_REQ, 7, 3, 2) + frame)
    assert (env.flags, env.conn, env.seq, env.ack) == (Flag.ACK_REQ, 7, 3, 2)
    pub = decode_frame(env.frame, 1024)
    assert isinstance(pub, Pub)
    assert (pub.subject, pub.data) == ("a.b", b"xyz")
    good = pack_header(0, 7, 3, 2)
    for bad, why in [
        (good[:15], "shorter than the header"),
        (b"XX" + good[2:], "does not start with"),
        (good[:2] + b"\x02" + good[3:], "version 2"),
        (pack_header(0, 0, 1, 0), "connection id 0"),
        (good + frame[:-1], "disagrees"),
        (good + frame + b"\0", "disagrees"),
        (good + b"\0\0\0", "at least 5"),
    ]:
        with pytest.raises(asyncipc.RemoteProtocolError, match=why):
            parse_datagram(bad)
    with pytest.raises(asyncipc.FrameTooLarge):
        decode_frame(encode(Pub("a", bytes(2000))), 1024)


def test_sequence_tracker_counts_gaps_late_and_duplicates() -> None:
    t = SequenceTracker()
    assert [t.arrived(s) for s in (1, 2, 5)] == [Arrival.NEXT] * 3
    assert (t.lost, t.reordered) == (2, 0)
    assert t.arrived(3) is Arrival.LATE
    assert (t.lost, t.reordered) == (1, 1)
    assert t.arrived(3) is Arrival.DUPLICATE
    assert t.arrived(5) is Arrival.DUPLICATE
    assert t.duplicates == 2
    t.skip_to(8)  # a control datagram: the peer used up to 8
    assert t.lost == 4
    assert t.arrived(8) is Arrival.LATE
    # Numbers wrap after 2**32 datagrams.
    w = SequenceTracker()
    w.highest = 0xFFFFFFFE
    assert w.arrived(0xFFFFFFFF) is Arrival.NEXT
    assert w.arrived(1) is Arrival.NEXT  # 0 skipped
    assert w.lost == 1
    assert w.arrived(0) is Arrival.LATE


# --- bad input at the broker ------------------------------------------------------------


async def test_garbage_and_truncated_datagrams_are_dropped_and_counted(
    broker: tuple[asyncipc.Broker, UdpListener], raw_peers: list[Raw]
) -> None:
    b, listener = broker
    raw = Raw(listener.url)
    raw_peers.append(raw)
    pub = encode(Pub("health", b"x"))
    garbage = [
        b"",
        b"GET / HTTP/1.1\r\n\r\n",
        os.urandom(100),
        pack_header(0, CONN, 1, 0)[:10],
        b"AU\x09" + pack_header(0, CONN, 1, 0)[3:] + pub,  # another version
        pack_header(0, CONN, 1, 0) + pub[:-1],  # truncated frame
        pack_header(0, CONN, 1, 0) + pub + b"tail",  # something after the frame
    ]
    for data in garbage:
        raw.send(data)
    await wait_until(lambda: listener.stats.malformed == len(garbage), "all were counted")
    assert b.sessions == 0
    await assert_others_carry_on(listener.url)

    # A peer with a session that sends a broken frame loses that datagram, not its session.
    await raw.hello()
    raw.send(dgram(2, None) + b"\0\0\0\x02\x03\xff")  # a PUB body cut short
    raw.send(dgram(3, Ping()))
    await raw.frame_of(asyncipc.protocol.Pong)
    (peer,) = b.peers
    assert peer.extra["stats"].malformed == 1
    assert b.sessions == 1


async def test_datagrams_without_a_hello_are_dropped_counted_and_reset(
    broker: tuple[asyncipc.Broker, UdpListener], raw_peers: list[Raw]
) -> None:
    b, listener = broker
    async with asyncipc.connect(listener.url) as bus, bus.subscribe("orders.>") as sub:
        await bus.flush()
        raw = Raw(listener.url)
        raw_peers.append(raw)
        raw.send(dgram(2, Pub("orders.fake", b"never seen")))
        env = await raw.recv()
        assert env.flags & Flag.RESET, "the broker tells the peer it has no session"
        assert env.conn == CONN
        assert listener.stats.unexpected == 1
        assert listener.stats.resets == 1
        raw.send(dgram(2, Pub("orders.fake", b"x"), flags=Flag.FIN))  # FIN: no answer
        await bus.publish("orders.real", b"seen")
        assert (await sub.next_msg(timeout=5)).data == b"seen"
        assert sub.pending == 0
        assert b.sessions == 1


async def test_oversized_datagrams_at_the_receiver_are_dropped(raw_peers: list[Raw]) -> None:
    async with asyncipc.Broker() as b:
        listener = await b.listen("udp://127.0.0.1:0?max_datagram=2000")
        assert isinstance(listener, UdpListener)
        raw = Raw(listener.url)
        raw_peers.append(raw)
        welcome = await raw.hello()
        assert welcome.fields["max_frame"] == 2000 - 24, "WELCOME announces the datagram limit"
        raw.send(dgram(2, Pub("a", bytes(1990))))  # a frame over the maximum, in 2,022 bytes
        raw.send(pack_header(0, CONN, 3, 0) + bytes(30000))
        await wait_until(lambda: listener.stats.oversized == 2, "both were counted")
        # 1,998 bytes: fits the datagram, but the frame (1,978) is over the maximum (1,976).
        raw.send(dgram(2, Pub("a", bytes(1968))))
        raw.send(dgram(3, Ping()))
        await raw.frame_of(asyncipc.protocol.Pong)
        assert b.peers[0].extra["stats"].oversized == 1


async def test_a_frame_over_the_datagram_limit_is_refused_at_the_sender() -> None:
    async with asyncipc.Broker() as b:
        listener = await b.listen("udp://127.0.0.1:0?max_datagram=1500")
        async with asyncipc.connect(listener.url) as bus, bus.subscribe("big") as sub:
            assert bus.server_info["max_frame"] == 1476
            assert bus.max_payload == 1476 - 64
            with pytest.raises(asyncipc.FrameTooLarge, match="exceeds the maximum of 1412"):
                await bus.publish("big", bytes(1413))
            with pytest.raises(asyncipc.FrameTooLarge, match="exceeds the maximum frame size"):
                await bus.publish("big", bytes(1400), headers={"h": "v" * 100})
            await bus.publish("big", bytes(1412))
            assert len((await sub.next_msg(timeout=5)).data) == 1412
            assert bus.peer.extra["stats"].send_errors == 0


async def test_url_options_are_checked() -> None:
    async with asyncipc.Broker() as b:
        for bad, why in [
            ("max_datagram=70000", "outside 1232..65507"),
            ("max_datagram=100", "outside"),
            ("window=0", "must be positive"),
            ("window=lots", "not a number"),
            ("mtu=1500", "unknown udp URL option"),
        ]:
            with pytest.raises(asyncipc.ConfigurationError, match=why):
                await b.listen(f"udp://127.0.0.1:0?{bad}")
        with pytest.raises(asyncipc.ConfigurationError, match="needs host:port"):
            await asyncipc.connect("udp://localhost")


# --- vanishing peers ----------------------------------------------------------------------


async def test_a_peer_that_vanishes_is_reaped_by_the_keepalive(
    broker: tuple[asyncipc.Broker, UdpListener], raw_peers: list[Raw]
) -> None:
    b, listener = broker
    raw = Raw(listener.url)
    raw_peers.append(raw)
    await raw.hello()
    raw.send(dgram(2, Sub(1, "x")))
    assert b.sessions == 1
    # ... and never says another word: pinged (maybe), then cut off with ERR 6.
    await wait_until(lambda: b.sessions == 0, "the silent peer is reaped")
    frames = await raw.frames_until_quiet()
    assert any(isinstance(f, Err) and f.code == ErrorCode.PEER_TIMEOUT for f in frames)
    assert listener.links == []
    await assert_others_carry_on(listener.url)


async def test_idle_timeout_reaps_when_keepalive_is_off(raw_peers: list[Raw]) -> None:
    async with asyncipc.Broker(ping_interval=0) as b:
        listener = await b.listen("udp://127.0.0.1:0?idle_timeout=0.2")
        assert isinstance(listener, UdpListener)
        raw = Raw(listener.url)
        raw_peers.append(raw)
        await raw.hello()
        await wait_until(lambda: b.sessions == 0, "the idle peer is reaped")
        assert listener.stats.peers_timed_out == 1
        assert listener.stats.peers == 0
        await raw.until(lambda env: env.flags & Flag.FIN)  # a peer still there is told


async def test_a_client_that_closes_ends_its_session_at_once(
    broker: tuple[asyncipc.Broker, UdpListener],
) -> None:
    b, listener = broker
    bus = await asyncipc.connect(listener.url)
    await bus.flush()
    assert b.sessions == 1
    await bus.close()  # sends FIN
    await wait_until(lambda: b.sessions == 0, "the FIN ends the session")
    assert listener.stats.peers == 0


async def test_a_hello_again_from_the_same_address_replaces_the_session(
    broker: tuple[asyncipc.Broker, UdpListener], raw_peers: list[Raw]
) -> None:
    b, listener = broker
    raw = Raw(listener.url)
    raw_peers.append(raw)
    first = await raw.hello()
    raw.send(dgram(1, Hello({"version": 1}), conn=CONN + 1))  # restarted, same port
    second = await raw.frame_of(Welcome)
    assert second.fields["client_id"] == first.fields["client_id"] + 1
    await wait_until(lambda: b.sessions == 1, "the old session is gone")
    assert listener.stats.peers_total == 2


async def test_broker_shutdown_reaches_the_client() -> None:
    b = asyncipc.Broker()
    listener = await b.listen("udp://127.0.0.1:0")
    bus = await asyncipc.connect(listener.url, options=asyncipc.ConnectOptions(reconnect=False))
    sub = bus.subscribe("x")
    await bus.flush()
    await b.close()
    with pytest.raises(asyncipc.BrokenLinkError, match="shutting down"):
        await sub.next_msg(timeout=5)
    await bus.close()


async def test_no_broker_at_the_address_is_a_clear_error() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # Nothing listens now: the kernel answers the HELLO with "port unreachable".
    with pytest.raises(asyncipc.HandshakeError, match="connection refused"):
        await asyncipc.connect(f"udp://127.0.0.1:{port}")


# --- loss the receiver can see -------------------------------------------------------------


async def test_sequence_gaps_and_late_datagrams_are_counted_at_the_broker(
    broker: tuple[asyncipc.Broker, UdpListener], raw_peers: list[Raw]
) -> None:
    b, listener = broker
    async with asyncipc.connect(listener.url) as bus, bus.subscribe("m") as sub:
        await bus.flush()
        raw = Raw(listener.url)
        raw_peers.append(raw)
        await raw.hello()
        for seq in (2, 3, 6, 4, 4, 7):  # 5 never comes, 4 comes late and then twice
            raw.send(dgram(seq, Pub("m", str(seq).encode())))
        got = [int((await sub.next_msg(timeout=5)).data) for _ in range(5)]
        assert got == [2, 3, 6, 4, 7], "late datagrams are delivered, duplicates are not"
        stats = next(p for p in b.peers if p.extra["stats"].received == 6).extra["stats"]
        assert (stats.lost, stats.reordered, stats.duplicates) == (1, 1, 1)
        # A probe says "I sent up to 9": 8 and 9 never came.
        raw.send(pack_header(Flag.ACK_REQ, CONN, 9, 0))
        # A receiver that is not paused acknowledges the gap too, or the sender would wait.
        await raw.until(lambda env: env.ack == 9)
        assert stats.lost == 3


async def test_gaps_are_counted_at_the_client(fake: tuple[FakeBroker, str]) -> None:
    """A fake broker sends MSGs with a gap; the bus counts it in peer.extra["stats"]."""
    broker, url = fake

    async def serve() -> None:
        conn = (await broker.next()).conn
        broker.welcome(conn)
        while (await broker.next_frame()).frame[4] != Op.SUB:
            pass
        for seq in (2, 4, 5, 3):
            broker.send(dgram(seq, Msg(1, "t", str(seq).encode()), conn=conn))

    task = asyncio.create_task(serve())
    bus = await asyncipc.connect(url, options=QUICK_CLOSE)
    sub = bus.subscribe("t")
    got = [int((await sub.next_msg(timeout=5)).data) for _ in range(4)]
    await task
    assert got == [2, 4, 5, 3]
    stats = bus.peer.extra["stats"]
    assert (stats.received, stats.lost, stats.reordered) == (5, 0, 1)
    await bus.close()


async def test_kernel_drops_on_a_full_receive_buffer_are_counted(raw_peers: list[Raw]) -> None:
    """The listener cannot read while this test floods it without yielding: the socket's
    smallest receive buffer overflows and the kernel's count (SO_RXQ_OVFL) shows it."""
    async with asyncipc.Broker() as b:
        listener = await b.listen("udp://127.0.0.1:0?rcvbuf=4096")
        assert isinstance(listener, UdpListener)
        raw = Raw(listener.url)
        raw_peers.append(raw)
        for _ in range(200):
            raw.send(b"x" * 1000)
        await wait_until(lambda: listener.stats.datagrams > 0, "some were read")
        await asyncio.sleep(0.05)
        raw.send(b"x")  # stamped with the drop count so far
        await wait_until(lambda: listener.stats.kernel_drops > 0, "drops are counted")
        assert listener.stats.datagrams + listener.stats.kernel_drops == 201


async def test_frames_the_socket_refused_wait_in_the_link_until_it_drains() -> None:
    """A full send buffer refuses datagrams; the socket calls the link back
    (``socket_writable``) once it drains, and every frame then goes, in order.

    A Unix datagram pair, because its sender really meets EAGAIN when the receiver does
    not read (a UDP socket on loopback hardly ever does)."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    b.setblocking(False)
    endpoint = DatagramSocket(a, DatagramSettings(window=1 << 20, window_bytes=1 << 30))
    link = DatagramLink(
        endpoint, None, CONN, TransportOptions(), server_side=True, peer=PeerInfo("udp", "pair")
    )
    n = 3000
    try:
        for sid in range(n):
            link.send(Unsub(sid))
        assert link.stats.sent < n, "the socket refused some: they wait in the link"
        loop = asyncio.get_running_loop()
        got: list[int] = []
        async with asyncio.timeout(10):
            while len(got) < n:
                env = parse_datagram(await loop.sock_recv(b, 65536))
                frame = decode_frame(env.frame, 1024)
                assert isinstance(frame, Unsub)
                got.append(frame.sid)
        assert got == list(range(n))
        assert link.stats.sent == n
    finally:
        link.abort()
        endpoint.close()
        b.close()


# --- request/reply and the handshake over a lossy path ------------------------------------


async def test_request_times_out_when_the_reply_is_lost(fake: tuple[FakeBroker, str]) -> None:
    """A fake broker that welcomes the client and then drops everything."""
    broker, url = fake

    async def serve() -> None:
        broker.welcome((await broker.next()).conn)

    task = asyncio.create_task(serve())
    bus = await asyncipc.connect(url, options=QUICK_CLOSE)
    await task
    with pytest.raises(asyncipc.RequestTimeout, match=r"within 0\.2 s"):
        await bus.request("svc", b"", timeout=0.2)
    await bus.close()


async def test_request_reply_over_udp(broker: tuple[asyncipc.Broker, UdpListener]) -> None:
    _, listener = broker
    async with asyncipc.connect(listener.url) as server, asyncipc.connect(listener.url) as client:

        @server.handler("echo")
        async def echo(msg: asyncipc.Message) -> bytes:
            return msg.data

        silent = server.subscribe("silent")
        await server.flush()
        assert (await client.request("echo", b"hi", timeout=5)).data == b"hi"
        with pytest.raises(asyncipc.RequestTimeout):
            await client.request("silent", b"", timeout=0.2)
        assert silent.pending == 1
        with pytest.raises(asyncipc.NoResponders):
            await client.request("nobody", b"", timeout=5)
        stats = client.peer.extra["stats"]
        assert (stats.lost, stats.kernel_drops) == (0, 0)


async def test_a_lost_hello_is_sent_again(fake: tuple[FakeBroker, str]) -> None:
    """A fake broker that ignores the first HELLO: the client repeats it."""
    broker, url = fake

    async def serve() -> bool:
        first = await broker.next()  # "lost"
        again = await broker.next()
        broker.welcome(again.conn)
        return first == again

    task = asyncio.create_task(serve())
    bus = await asyncipc.connect(url, options=QUICK_CLOSE)
    assert await task, "the same datagram, number 1 again"
    await bus.close()


async def test_a_duplicate_hello_gets_the_welcome_again(
    broker: tuple[asyncipc.Broker, UdpListener], raw_peers: list[Raw]
) -> None:
    b, listener = broker
    raw = Raw(listener.url)
    raw_peers.append(raw)
    first = await raw.hello()
    again = await raw.hello()  # as if our WELCOME had been lost
    assert again.fields == first.fields
    assert b.sessions == 1
    assert b.peers[0].extra["stats"].duplicates == 1


def test_the_example_in_the_protocol_doc_is_what_the_encoder_makes() -> None:
    """docs/protocol.md §21.5, byte for byte."""
    doc = (Path(__file__).parent.parent / "docs" / "protocol.md").read_text()
    section = doc[doc.index("### 21.5 Example") :]
    block = section[section.index("```text") : section.index("```\n", section.index("```text") + 7)]
    datagrams: list[bytes] = []
    for line in block.splitlines()[1:]:
        if line.startswith("#"):
            datagrams.append(b"")
        elif line:
            datagrams[-1] += bytes.fromhex(line[6:54])
    conn = 0x0A0B0C0D
    assert datagrams == [
        pack_header(0, conn, 1, 0) + encode(Hello({"version": 1})),
        pack_header(0, conn, 2, 1) + encode(Pub("t", b"hi")),
        pack_header(Flag.ACK_REQ, conn, 2, 5),
    ]


def test_the_udp_metrics_example_runs() -> None:
    example = Path(__file__).resolve().parent.parent / "examples" / "udp_metrics.py"
    done = subprocess.run(
        [sys.executable, str(example), "--samples", "50"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
    assert "collector received" in done.stdout
    assert done.stdout.count("latest ") == 6, done.stdout


async def test_a_paused_subscriber_holds_the_publisher_back_through_the_window(
    broker: tuple[asyncipc.Broker, UdpListener],
) -> None:
    """docs/transports.md, UDP, flow control: the subscriber stops acknowledging, the
    broker's window towards it closes, the broker stops acknowledging the publisher."""
    b, listener = broker
    n = 3000
    async with asyncipc.connect(listener.url) as pub, asyncipc.connect(listener.url) as subbus:
        sub = subbus.subscribe("flow", max_pending=4)
        await subbus.flush()
        sent = 0

        async def produce() -> None:
            nonlocal sent
            for i in range(n):
                await pub.publish("flow", i.to_bytes(4, "big") + bytes(2044))
                sent += 1

        task = asyncio.create_task(produce())
        await wait_until(lambda: pub.peer.extra["stats"].window_stalls > 0, "the publisher stalls")
        got = [int.from_bytes((await sub.next_msg(timeout=10)).data[:4], "big") for _ in range(n)]
        await task
        towards_sub = next(p.extra["stats"] for p in b.peers if p.extra["stats"].sent >= n)
    assert got == list(range(n))
    assert towards_sub.window_stalls > 0
    for stats in (pub.peer.extra["stats"], subbus.peer.extra["stats"], towards_sub):
        assert (stats.lost, stats.kernel_drops, stats.overruns) == (0, 0, 0)
