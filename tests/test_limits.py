"""The broker's resource limits (issue 13): what an unauthenticated or slow peer can make
it hold, and how many connections it takes.

Each offender is a raw socket speaking the wire protocol, beside a healthy client that
must go on being served. The memory figures under attack, against a broker process, are
in ``test_exhaustion.py``; these are the behaviours, fast, in this event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import asyncipc
from asyncipc.protocol import PREAMBLE, Err, ErrorCode, FrameDecoder, Hello, Pub, Sub, encode
from tests.test_bad_input import assert_others_carry_on, open_raw, read_until_closed

HELLO = encode(Hello({"version": 1}))
NOREC = asyncipc.ConnectOptions(reconnect=False)


def errors_in(data: bytes) -> list[tuple[int, str]]:
    frames = FrameDecoder(msg_extra=4).feed(data)
    return [(f.code, f.message) for f in frames if isinstance(f, Err)]


@pytest.fixture(params=["unix", "tcp"])
def where(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return f"unix://{tmp_path}/b.sock" if request.param == "unix" else "tcp://127.0.0.1:0"


@contextlib.asynccontextmanager
async def serve(where: str, **options: object) -> AsyncIterator[tuple[asyncipc.Broker, str]]:
    async with asyncipc.Broker(**options) as broker:  # type: ignore[arg-type]
        yield broker, (await broker.listen(where)).url


async def wait_for(predicate: object, what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.01)


# --- path 1: before authentication ---------------------------------------------------------


async def test_an_oversized_hello_is_refused_on_its_length_prefix(where: str) -> None:
    """Only the 4 length bytes are sent: the ERR comes without the body being awaited."""
    async with serve(where, token="s3cret", max_hello=4096) as (broker, url):
        reader, writer = await open_raw(url)
        writer.write(PREAMBLE + struct.pack(">IB", 8 * 1024 * 1024 - 1, 1))
        answer = await read_until_closed(reader)
        writer.close()
        [(code, message)] = errors_in(answer)
        assert code == ErrorCode.FRAME_TOO_LARGE
        assert "first frame length 8388607 exceeds the maximum HELLO size 4096" in message
        assert "max_hello" in message
        await wait_for(lambda b=broker: b.sessions == 0, "the refused peer stayed a session")
        async with (
            asyncipc.connect(url, token="s3cret") as a,
            asyncipc.connect(url, token="s3cret") as b,
            b.subscribe("big") as sub,
        ):
            # After the handshake max_frame applies: a frame far above max_hello is fine.
            await a.publish("big", bytes(1 << 20))
            assert len((await sub.next_msg(timeout=5)).data) == 1 << 20


async def test_a_hello_up_to_max_hello_is_accepted(where: str) -> None:
    async with serve(where, max_hello=1024) as (_broker, url):
        reader, writer = await open_raw(url)
        hello = encode(Hello({"version": 1, "name": "x" * (1024 - 40)}))
        assert len(hello) - 4 <= 1024
        writer.write(PREAMBLE + hello)
        head = await asyncio.wait_for(reader.read(5), 5)
        assert head[4] == 2  # WELCOME
        writer.close()


async def test_pending_handshakes_are_bounded(where: str) -> None:
    """Beyond max_pending_handshakes a new connection hears why at once; a slot comes
    free when a pending connection completes its handshake or times out."""
    async with serve(where, max_pending_handshakes=3, handshake_timeout=30) as (broker, url):
        held = [await open_raw(url) for _ in range(3)]
        for _, writer in held:
            writer.write(PREAMBLE)  # ... and never HELLO
        await wait_for(lambda b=broker: b.sessions == 3, "the three did not become sessions")
        reader, writer = await open_raw(url)
        writer.write(PREAMBLE + HELLO)
        started = time.monotonic()
        answer = await read_until_closed(reader)
        writer.close()
        # At once, not at the 30 s handshake time-out (a bound far from both, not a timing).
        assert time.monotonic() - started < 15
        [(code, message)] = errors_in(answer)
        assert code == ErrorCode.LIMIT
        assert "max_pending_handshakes" in message
        assert broker.stats.refused_connections == 1
        with pytest.raises(asyncipc.HandshakeError, match="max_pending_handshakes"):
            await asyncipc.connect(url, options=NOREC)
        # One of the three completes its handshake: its slot is free again.
        held[0][1].write(HELLO)
        async with asyncipc.connect(url) as bus:
            await bus.flush()
        for _, w in held:
            w.close()


async def test_max_connections_refuses_with_an_error_naming_the_limit(where: str) -> None:
    async with serve(where, max_connections=2) as (broker, url):
        async with asyncipc.connect(url) as a, asyncipc.connect(url) as b:
            with pytest.raises(asyncipc.HandshakeError, match="at most 2"):
                await asyncipc.connect(url, options=NOREC)
            reader, writer = await open_raw(url)
            answer = await read_until_closed(reader)
            writer.close()
            [(code, _)] = errors_in(answer)
            assert code == ErrorCode.LIMIT
            async with b.subscribe("s") as sub:  # the two admitted carry on
                await a.publish("s", b"x")
                assert (await sub.next_msg(timeout=5)).data == b"x"
        await wait_for(lambda b=broker: b.sessions == 0, "sessions did not go")
        await assert_others_carry_on(url)  # and the slots came back


async def test_in_process_buses_do_not_count_against_max_connections(tmp_path: Path) -> None:
    async with asyncipc.Broker(max_connections=1) as broker:
        url = (await broker.listen(f"unix://{tmp_path}/b.sock")).url
        await broker.listen("memory://limits-inproc")
        async with asyncipc.connect("memory://limits-inproc"), asyncipc.connect(url):
            assert broker.sessions == 2


async def test_connections_per_peer_address_over_tcp() -> None:
    async with serve("tcp://127.0.0.1:0", max_connections_per_peer=2) as (broker, url):
        async with asyncipc.connect(url), asyncipc.connect(url):
            with pytest.raises(
                asyncipc.HandshakeError, match=r"from address 127\.0\.0\.1: at most 2"
            ):
                await asyncipc.connect(url, options=NOREC)
        await wait_for(lambda b=broker: b.sessions == 0, "sessions did not go")
        async with asyncipc.connect(url), asyncipc.connect(url):
            pass


async def test_connections_per_uid_over_unix(tmp_path: Path) -> None:
    """The uid from SO_PEERCRED is the peer on a Unix socket: a tcp listener of the same
    broker still admits this user's clients (another key), the unix one does not."""
    import os

    async with asyncipc.Broker(max_connections_per_peer=1) as broker:
        unix = (await broker.listen(f"unix://{tmp_path}/b.sock")).url
        tcp = (await broker.listen("tcp://127.0.0.1:0")).url
        async with asyncipc.connect(unix):
            with pytest.raises(asyncipc.HandshakeError, match=f"from uid {os.getuid()}: at most 1"):
                await asyncipc.connect(unix, options=NOREC)
            async with asyncipc.connect(tcp) as bus:
                await bus.flush()


async def fail_handshakes(url: str, n: int) -> list[int]:
    """``n`` connections with a wrong token, one after another: each one's ERR code."""
    codes = []
    for _ in range(n):
        reader, writer = await open_raw(url)
        writer.write(PREAMBLE + encode(Hello({"version": 1, "token": "wrong"})))
        answer = await read_until_closed(reader)
        writer.close()
        codes += [code for code, _ in errors_in(answer)]
    return codes


async def test_an_address_failing_handshakes_is_refused_at_once_then_served_again(
    tmp_path: Path,
) -> None:
    """max_failed_handshakes 4: four wrong tokens from 127.0.0.1 are each told so
    (AUTH); then even the right token is refused at once, naming the limit, while the
    same user over the Unix socket (a uid, never refused this way) is served; once the
    bucket drains (4 per 4 s) the address is served again."""
    async with asyncipc.Broker(token="s3cret", max_failed_handshakes=4) as broker:
        unix = (await broker.listen(f"unix://{tmp_path}/b.sock")).url
        tcp = (await broker.listen("tcp://127.0.0.1:0")).url
        assert await fail_handshakes(tcp, 4) == [ErrorCode.AUTH] * 4
        with pytest.raises(
            asyncipc.HandshakeError,
            match=r"too many failed handshakes from address 127\.0\.0\.1.*max_failed_handshakes 4",
        ):
            await asyncipc.connect(tcp, token="s3cret", options=NOREC)
        assert broker.stats.refused_connections >= 1
        assert await fail_handshakes(unix, 8) == [ErrorCode.AUTH] * 8
        async with asyncipc.connect(unix, token="s3cret") as bus:
            await bus.flush()
        deadline = time.monotonic() + 10
        refusals: list[str] = []
        while True:
            try:
                async with asyncipc.connect(tcp, token="s3cret", options=NOREC) as bus:
                    await bus.flush()
                break
            except asyncipc.HandshakeError as exc:
                refusals.append(str(exc))
            assert time.monotonic() < deadline, "the address stayed refused"
            await asyncio.sleep(0.2)
        assert all("failed handshakes" in text for text in refusals), refusals


async def test_a_penalized_connection_is_told_at_once_then_held_unread() -> None:
    """The ERR comes at once, and then the broker neither reads nor closes for a while
    (a reconnect loop waits), whatever the peer sends; closing the broker ends it."""
    async with serve("tcp://127.0.0.1:0", token="s3cret", max_failed_handshakes=2) as (
        broker,
        url,
    ):
        assert await fail_handshakes(url, 2) == [ErrorCode.AUTH] * 2
        reader, writer = await open_raw(url)
        writer.write(PREAMBLE + struct.pack(">IB", 8 * 1024 * 1024 - 1, 1))  # not read
        head = await asyncio.wait_for(reader.read(65536), 5)
        [(code, message)] = errors_in(head)
        assert code == ErrorCode.LIMIT
        assert "max_failed_handshakes 2" in message
        with pytest.raises(TimeoutError):  # held: no FRAME_TOO_LARGE, no close yet
            await asyncio.wait_for(reader.read(65536), 0.5)
        await broker.close()
        try:  # closed with the unread bytes: an end of file, or on asyncio a reset
            assert await asyncio.wait_for(reader.read(65536), 5) == b""
        except ConnectionResetError:
            pass
        writer.close()


async def test_max_failed_handshakes_zero_never_refuses_an_address() -> None:
    async with serve("tcp://127.0.0.1:0", token="s3cret", max_failed_handshakes=0) as (_, url):
        assert await fail_handshakes(url, 50) == [ErrorCode.AUTH] * 50
        async with asyncipc.connect(url, token="s3cret", options=NOREC) as bus:
            await bus.flush()


async def test_max_subscriptions_refuses_the_sub_and_keeps_the_connection(where: str) -> None:
    async with serve(where, max_subscriptions=2) as (_broker, url):
        reader, writer = await open_raw(url)
        writer.write(PREAMBLE + HELLO)
        for sid in (1, 2, 3):
            writer.write(encode(Sub(sid, f"s.{sid}")))
        writer.write(encode(Pub("s.1", b"still open")))
        data = b""
        decoder = FrameDecoder(msg_extra=4)
        frames: list[object] = []
        while not any(type(f).__name__ == "Msg" for f in frames):
            chunk = await asyncio.wait_for(reader.read(65536), 5)
            assert chunk, f"closed: {frames}"
            data += chunk
            frames += decoder.feed(chunk)
        errs = [f for f in frames if isinstance(f, Err)]
        assert [(e.code, e.sid) for e in errs] == [(ErrorCode.TOO_MANY_SUBSCRIPTIONS, 3)]
        assert "max_subscriptions" in errs[0].message
        writer.close()
        async with asyncipc.connect(url) as bus, bus.subscribe("a"), bus.subscribe("b"):
            sub = bus.subscribe("c")
            with pytest.raises(asyncipc.BrokerError, match="max_subscriptions"):
                await sub.next_msg(timeout=5)


# --- path 2: a frame that is never finished ---------------------------------------------


async def test_a_trickled_frame_is_cut_off_at_its_deadline(where: str) -> None:
    """A byte every 50 ms used to count as life for ever; now the frame has
    frame_timeout + length / frame_min_rate seconds from its first byte."""
    async with serve(where, frame_timeout=0.5, frame_min_rate=64 << 20) as (broker, url):
        reader, writer = await open_raw(url)
        writer.write(PREAMBLE + HELLO)
        body = encode(Pub("slow", bytes(1 << 20)))
        writer.write(body[:-1000])
        answer = b""
        trickled = 0

        async def trickle() -> None:
            nonlocal trickled
            for i in range(200):  # 10 s of life, if a byte still counted as life
                writer.write(body[-1000 + i : -999 + i])
                trickled += 1
                await asyncio.sleep(0.05)

        feeder = asyncio.create_task(trickle())
        try:
            answer = await read_until_closed(reader)
        finally:
            feeder.cancel()
            writer.close()
        # Cut off while the bytes were still coming (an order, not a timing: the trickle
        # alone would have kept the frame alive to its last byte).
        assert trickled < 200, "the trickle ran to its end without being cut off"
        code, message = errors_in(answer)[-1]
        assert code == ErrorCode.PEER_TIMEOUT
        assert "frame not completed in" in message
        assert "frame_timeout=0.5 s" in message
        await wait_for(lambda b=broker: b.sessions == 0, "the slow peer stayed a session")
        await assert_others_carry_on(url)


async def test_a_large_frame_at_a_steady_pace_gets_its_time(where: str) -> None:
    """Longer than frame_timeout, within the allowance its length buys: delivered."""
    paced = serve(where, frame_timeout=0.3, frame_min_rate=512 * 1024)
    async with paced as (_broker, url), asyncipc.connect(url) as bus, bus.subscribe("paced") as sub:
        await bus.flush()
        _reader, writer = await open_raw(url)
        writer.write(PREAMBLE + HELLO)
        body = encode(Pub("paced", bytes(512 * 1024)))  # 0.3 + 1 s allowed
        step = len(body) // 4 + 1
        for i in range(0, len(body), step):
            writer.write(body[i : i + step])
            await asyncio.sleep(0.2)  # 0.6 s in all: twice frame_timeout
        msg = await sub.next_msg(timeout=5)
        assert len(msg.data) == 512 * 1024
        writer.close()


async def test_time_the_broker_paused_reading_does_not_count(tmp_path: Path) -> None:
    """A publisher paused by a ``block`` subscriber mid-frame is not a slowloris: the
    broker stopped reading it. Its frames (200 KiB, so that reads end inside them)
    wait 1.5 s, five times frame_timeout, and are all delivered once the subscriber
    reads."""
    async with serve(
        f"unix://{tmp_path}/b.sock",
        frame_timeout=0.3,
        frame_min_rate=64 << 20,
        high_water=64 * 1024,
    ) as (broker, url):
        sub_r, sub_w = await open_raw(url)
        sub_w.write(PREAMBLE + HELLO + encode(Sub(1, "s")))  # overflow "block", never read
        pub_r, pub_w = await open_raw(url)
        pub_w.write(PREAMBLE + HELLO)
        await wait_for(lambda: broker.sessions == 2 and broker.pending_handshakes == 0, "up")
        payload = bytes(200 * 1024)
        n = 40  # 8 MB: far more than the broker's buffer and both sockets' hold
        for _ in range(n):
            pub_w.write(encode(Pub("s", payload)))
        await asyncio.sleep(1.5)
        assert broker.sessions == 2, "a paused publisher was cut off"
        dec = FrameDecoder(msg_extra=4)
        got = 0
        async with asyncio.timeout(20):
            while got < n:
                chunk = await sub_r.read(1 << 20)
                assert chunk, "the subscriber was disconnected"
                frames = dec.feed(chunk)
                assert not [f for f in frames if isinstance(f, Err)], frames
                got += sum(type(f).__name__ == "Msg" for f in frames)
        assert not pub_r.at_eof()
        sub_w.close()
        pub_w.close()


async def test_frame_timeout_zero_disables_the_deadline(tmp_path: Path) -> None:
    async with serve(f"unix://{tmp_path}/b.sock", frame_timeout=0) as (broker, url):
        reader, writer = await open_raw(url)
        writer.write(PREAMBLE + HELLO + encode(Pub("x", bytes(1000)))[:100])
        await asyncio.sleep(0.3)
        assert broker.sessions == 1
        assert not reader.at_eof()
        writer.close()


# --- the command line --------------------------------------------------------------------


async def test_the_broker_command_takes_the_limit_flags(tmp_path: Path) -> None:
    from tests.test_cli import BrokerProc, cli_env

    broker = BrokerProc(
        f"unix://{tmp_path}/b.sock",
        log=tmp_path / "broker.log",
        env=cli_env(),
        args=[
            "--max-connections",
            "1",
            "--max-hello",
            "1K",
            "--frame-timeout",
            "0",
            "--max-failed-handshakes",
            "0",
        ],
    )
    try:
        async with asyncipc.connect(broker.url) as bus:
            await bus.flush()
            with pytest.raises(asyncipc.HandshakeError, match="at most 1 "):
                await asyncipc.connect(broker.url, options=NOREC)
    finally:
        assert broker.stop() == 0
    assert "too many connections" in (tmp_path / "broker.log").read_text()


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--max-hello", "100"),
        ("--frame-timeout", "-1"),
        ("--max-connections", "0"),
        ("--max-failed-handshakes", "-1"),
    ],
)
def test_bad_limit_flags_exit_2(flag: str, value: str) -> None:
    from tests.test_cli import run

    done = run("broker", flag, value)
    assert done.returncode == 2
    assert flag in done.stderr


def test_the_broker_command_raises_a_low_descriptor_limit(tmp_path: Path) -> None:
    """A soft RLIMIT_NOFILE of 256 under a higher hard one: ``asyncipc broker`` raises it
    for its --max-connections (as the Go runtime does) instead of serving 128."""
    import resource
    import subprocess

    from tests.test_cli import CLI, ROOT, cli_env

    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and hard < 2000:
        pytest.skip(f"the hard descriptor limit is {hard}")

    def low_soft_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))

    log = tmp_path / "broker.log"
    with open(log, "w") as err:
        proc = subprocess.Popen(
            [*CLI, "broker", "--listen", f"unix://{tmp_path}/b.sock", "--max-connections", "1000"],
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            env=cli_env(),
            cwd=ROOT,
            preexec_fn=low_soft_limit,
        )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith("listening on ")
        with open(f"/proc/{proc.pid}/limits") as f:
            line = next(x for x in f if x.startswith("Max open files"))
        assert int(line.split()[3]) == 1000 + 128, line
    finally:
        proc.terminate()
        proc.wait(10)
        assert proc.stdout is not None
        proc.stdout.close()
    text = log.read_text()
    assert "raised the file descriptor limit (ulimit -n) to 1128" in text
    assert "serving at most" not in text
