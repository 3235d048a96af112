"""Anonymous pipes (``pipe:``): real child processes wired to a broker in this process.

The children are ``tests/pipe_child.py`` (see its docstring). The conformance suite runs
over ``pipe://name`` too (conftest.py); here are the parts only real processes show:
fan-out through a queue group, each side noticing the other's exit, the child's stdio
staying its own, and bad bytes from a child cutting off that child alone.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

import asyncipc
from asyncipc.protocol import PREAMBLE, Err, ErrorCode, FrameDecoder, Hello, Pub, encode
from asyncipc.transports.pipe import ENV_VAR, attach

CHILD = str(Path(__file__).with_name("pipe_child.py"))
EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "pipe_fanout.py"

Env = tuple[asyncipc.Broker, asyncipc.Bus]


def child(*args: str) -> list[str]:
    return [sys.executable, CHILD, *args]


@pytest.fixture
def env(asyncipc_memory_broker: asyncipc.Broker, asyncipc_bus: asyncipc.Bus) -> Env:
    """A broker in this process and a bus on it (over memory://): asyncipc.testing's."""
    return asyncipc_memory_broker, asyncipc_bus


async def serve_ready(bus: asyncipc.Bus) -> asyncio.Queue[int]:
    """Answer the children's ``ready`` requests; their pids arrive on the queue."""
    pids: asyncio.Queue[int] = asyncio.Queue()

    async def ready(msg: asyncipc.Message) -> bytes:
        pids.put_nowait(int(msg.data))
        return b"ok"

    bus.serve("ready", ready)
    await bus.flush()
    return pids


async def quit_child(bus: asyncipc.Bus, proc: asyncipc.transports.pipe.PipeChild) -> int:
    assert (await bus.request(f"ctl.{proc.pid}", b"quit", timeout=10)).data == b"bye"
    return await proc.wait()


async def test_fan_out_through_a_queue_group_and_gather_with_requests(env: Env) -> None:
    broker, bus = env
    ready = await serve_ready(bus)
    children = [await broker.spawn(child("worker")) for _ in range(3)]
    pids = {await asyncio.wait_for(ready.get(), 30) for _ in children}
    assert pids == {c.pid for c in children}
    assert {p.pid for p in broker.peers if p.transport == "pipe"} == pids

    jobs = [f"job {i}" for i in range(30)]
    replies = await asyncio.gather(*(bus.request("work", j.encode(), timeout=10) for j in jobs))
    answers = [json.loads(r.data) for r in replies]
    assert [a["result"] for a in answers] == [j.upper() for j in jobs]
    # Round robin in the queue group: each child took a third of the work.
    assert Counter(a["pid"] for a in answers) == {pid: 10 for pid in pids}

    assert [await quit_child(bus, c) for c in children] == [0, 0, 0]
    assert broker.sessions == 1  # only our own bus is left


async def test_child_exit_is_noticed_and_its_subscriptions_go(env: Env) -> None:
    broker, bus = env
    ready = await serve_ready(bus)
    proc = await broker.spawn(child("worker"))
    await asyncio.wait_for(ready.get(), 30)
    assert broker.sessions == 2
    proc.kill()
    assert await proc.wait() == -9  # returns once the link is closed too
    assert broker.sessions == 1
    with pytest.raises(asyncipc.NoResponders):
        await bus.request("work", b"anyone?", timeout=5)


async def test_parent_exit_is_noticed_by_the_child() -> None:
    """A broker process spawns a worker; we SIGKILL the broker; the worker's bus breaks
    with an error naming the parent, and it exits (its stdout is ours, so our read ends
    only once both have gone)."""
    parent = await asyncio.create_subprocess_exec(*child("parent"), stdout=subprocess.PIPE)
    assert parent.stdout is not None
    line = await asyncio.wait_for(parent.stdout.readline(), 30)
    assert line.startswith(b"parent ready "), line
    worker_pid = int(line.split()[-1])
    parent.kill()
    await parent.wait()
    rest = (await asyncio.wait_for(parent.stdout.read(), 30)).decode()
    # (It may have been waiting for the answer to its "ready" when the parent went.)
    assert f"worker {worker_pid} saw: " in rest
    assert f"pipe parent pid={parent.pid} closed the connection" in rest


async def test_direct_link_to_one_child_without_a_broker_process() -> None:
    async with asyncipc.spawn_peer(child("worker")) as peer:
        ready = await serve_ready(peer.bus)
        assert await asyncio.wait_for(ready.get(), 30) == peer.pid
        reply = await peer.bus.request("work", b"direct", timeout=10)
        assert json.loads(reply.data) == {"pid": peer.pid, "result": "DIRECT"}
        # Only the two of them on the private router: our bus and the child.
        assert sorted(p.transport for p in peer.broker.peers) == ["memory", "pipe"]
    # Leaving closed the pipes: the child saw its parent go and exited by itself.
    assert peer.child.returncode == 0


async def test_the_childs_stdin_and_stdout_stay_its_own(env: Env) -> None:
    broker, bus = env
    async with bus.subscribe("stdio") as sub:
        proc = await broker.spawn(child("stdio"), stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        out, _ = await proc.process.communicate(b"hello over stdin\n")
        assert out == b"HELLO OVER STDIN\n"
        assert (await sub.next_msg(timeout=10)).data == b"hello over stdin"
    assert await proc.wait() == 0


async def test_a_slow_starting_child_is_not_held_to_the_handshake_timeout() -> None:
    """The broker adopts a child when it first speaks, not when it is forked."""
    async with asyncipc.Broker(handshake_timeout=0.2) as broker:
        url = (await broker.listen(f"memory://slow{os.urandom(4).hex()}")).url
        async with asyncipc.connect(url) as bus:
            ready = await serve_ready(bus)
            proc = await broker.spawn(child("worker", "0.5"))
            assert await asyncio.wait_for(ready.get(), 30) == proc.pid
            assert await quit_child(bus, proc) == 0


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("garbage", "bad preamble"),
        ("badframe", "unknown frame op 238"),
    ],
)
async def test_bad_bytes_from_a_child_cut_off_that_child_alone(
    env: Env, mode: str, expected: str
) -> None:
    broker, bus = env
    ready = await serve_ready(bus)
    healthy = await broker.spawn(child("worker"))
    await asyncio.wait_for(ready.get(), 30)

    bad = await broker.spawn(child("raw", mode), stdout=subprocess.PIPE)
    out, _ = await asyncio.wait_for(bad.process.communicate(), 30)
    assert await bad.wait() == 0
    frames = FrameDecoder().feed(bytes.fromhex(out.decode().strip()))
    [err] = [f for f in frames if isinstance(f, Err)]
    assert err.code == ErrorCode.PROTOCOL
    assert expected in err.message

    reply = await bus.request("work", b"still there?", timeout=10)
    assert json.loads(reply.data)["pid"] == healthy.pid
    assert await quit_child(bus, healthy) == 0


async def test_child_vanishing_mid_frame(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    broker, bus = env
    async with bus.subscribe("partial.>") as watch:
        proc = await broker.spawn(child("raw", "vanish"))
        assert await proc.wait() == 0
        assert broker.sessions == 1
        await bus.flush()
        assert watch.pending == 0, "half a message is never delivered"
    assert any("mid-frame" in r.getMessage() for r in caplog.records)


async def test_what_a_child_wrote_before_exiting_is_still_delivered(env: Env) -> None:
    """The child is gone before the broker answers its HELLO: our writes to it break, but
    its frames are in the pipe, and they are read to the end and routed."""
    broker, bus = env
    async with bus.subscribe("last.words") as sub:
        proc = await broker.spawn(child("raw", "lastwords"))
        assert await proc.wait() == 0
        got = [(await sub.next_msg(timeout=10)).data for _ in range(100)]
    assert got == [b"%d" % i for i in range(100)]


async def test_frames_from_a_peer_gone_before_the_link_started() -> None:
    """The peer wrote a handshake and 100 PUBs and closed both ends before the broker
    even set up its end: writing to it is impossible from the start, reading is not."""
    async with asyncipc.Broker() as broker:
        url = (await broker.listen(f"memory://gone{os.urandom(4).hex()}")).url
        async with asyncipc.connect(url) as bus, bus.subscribe("last.words") as sub:
            (c_r, b_w), (b_r, c_w) = os.pipe(), os.pipe()
            pubs = b"".join(encode(Pub("last.words", b"%d" % i)) for i in range(100))
            os.write(c_w, PREAMBLE + encode(Hello({"version": 1})) + pubs)
            os.close(c_w)
            os.close(c_r)
            link = await attach(broker.attach, b_r, b_w)
            got = [(await sub.next_msg(timeout=10)).data for _ in range(100)]
            await link.wait_closed()
    assert got == [b"%d" % i for i in range(100)]


async def test_explicit_descriptors_form() -> None:
    """``pipe:?fds=R,W`` with pipes made by hand, served with ``pipe.attach``."""
    async with asyncipc.Broker() as broker:
        (c_r, b_w), (b_r, c_w) = os.pipe(), os.pipe()
        await attach(broker.attach, b_r, b_w)
        async with asyncipc.connect(f"pipe:?fds={c_r},{c_w}") as bus, bus.subscribe("x") as sub:
            await bus.publish("x", b"over pipes made by hand")
            assert (await sub.next_msg(timeout=5)).data == b"over pipes made by hand"
            assert bus.peer.address == f"fds={c_r},{c_w}"
            assert broker.sessions == 1


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def test_connect_without_inherited_pipes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_VAR, raising=False)
    with pytest.raises(asyncipc.ConnectError, match=r"\$ASYNCIPC_PIPE_FDS is not set"):
        await asyncipc.connect("pipe:")


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("3", r"\$ASYNCIPC_PIPE_FDS='3' is not 'R,W'"),
        ("a,b", r"\$ASYNCIPC_PIPE_FDS='a,b' is not 'R,W'"),
        ("4,4", "need two different non-negative descriptors"),
    ],
)
async def test_malformed_descriptor_variable(
    monkeypatch: pytest.MonkeyPatch, value: str, message: str
) -> None:
    monkeypatch.setenv(ENV_VAR, value)
    with pytest.raises(asyncipc.ConfigurationError, match=message):
        await asyncipc.connect("pipe:")


async def test_descriptors_that_are_not_open_pipes(tmp_path: Path) -> None:
    before = open_fds()
    with pytest.raises(asyncipc.ConnectError, match="file descriptor 1000 is not open"):
        await asyncipc.connect("pipe:?fds=1000,1001")
    f = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT)
    r, w = os.pipe()
    with pytest.raises(asyncipc.ConnectError, match=rf"descriptor {f} is not a pipe"):
        await asyncipc.connect(f"pipe:?fds={r},{f}")
    for fd in (f, r, w):
        os.close(fd)
    assert open_fds() == before


async def test_listen_and_spawn_refuse_what_they_cannot_do(env: Env) -> None:
    broker, _ = env
    before = open_fds()
    with pytest.raises(asyncipc.ConfigurationError, match="listens on pipe://name"):
        await broker.listen("pipe:")
    with pytest.raises(asyncipc.ConnectError, match="no broker listens on pipe://nobody"):
        await asyncipc.connect("pipe://nobody")
    with pytest.raises(asyncipc.ConfigurationError, match="not a string"):
        await broker.spawn(f"{sys.executable} {CHILD} worker")
    with pytest.raises(asyncipc.ConfigurationError, match="argv is empty"):
        await broker.spawn([])
    with pytest.raises(FileNotFoundError, match="no-such-program"):
        await broker.spawn(["/nonexistent/no-such-program"])
    assert open_fds() == before, "a failed spawn leaked its pipes"


def test_the_fan_out_example_runs() -> None:
    done = subprocess.run(
        [sys.executable, str(EXAMPLE), "--workers", "3", "--jobs", "24"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
    assert "24 answers from 3 workers" in done.stdout
    assert "every job answered once" in done.stdout


async def test_broker_close_lets_a_silent_child_go() -> None:
    """A spawned child that never spoke is not a client yet; closing the broker still
    closes its pipes, so the child sees end-of-file instead of waiting for ever."""
    waits_for_eof = (
        "import os; r = int(os.environ['ASYNCIPC_PIPE_FDS'].split(',')[0]); "
        "print('eof' if os.read(r, 1) == b'' else 'data', flush=True)"
    )
    broker = asyncipc.Broker()
    kid = await broker.spawn([sys.executable, "-c", waits_for_eof], stdout=asyncio.subprocess.PIPE)
    await broker.close()
    assert kid.process.stdout is not None
    out = await asyncio.wait_for(kid.process.stdout.read(), 20)
    assert await asyncio.wait_for(kid.process.wait(), 20) == 0
    assert out == b"eof\n"
