"""asyncipc.signals: real signals to real processes, the drain on SIGTERM, and signals
sent through the broker, allowed and refused.

The process tests run ``asyncipc broker`` and ``tests/signal_child.py`` as children on a
Unix socket (and TCP), send them real signals with ``os.kill`` and read what they print.
Nothing waits for a time to pass: a service answers only once the signal reached it (or
once its broker removed its socket), so each answer proves the drain happened.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest

import asyncipc
from asyncipc import _system, signals
from asyncipc.link import PeerInfo
from asyncipc.protocol.system import allowed_signals

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CHILD = HERE / "signal_child.py"
GUARD = 30.0  # seconds: only a guard against a hang, never a measurement


def child_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("ASYNCIPC_")}


class Proc:
    """A child process whose stdout we read line by line; stderr goes to a file."""

    def __init__(self, argv: list[str], log: Path) -> None:
        self.log = log
        with open(log, "w") as err:
            self.proc = subprocess.Popen(
                argv, stdout=subprocess.PIPE, stderr=err, text=True, env=child_env(), cwd=ROOT
            )
        self.pid = self.proc.pid
        self.tail: list[str] = []
        """The words it printed after what we read, once stopped."""

    def readline(self) -> str:
        stdout: IO[str] | None = self.proc.stdout
        assert stdout is not None
        line = stdout.readline()
        if not line:
            self.proc.wait(GUARD)
            pytest.fail(f"{self.log.stem} exited ({self.proc.returncode}): {self.log.read_text()}")
        return line.strip()

    def stop(self, sig: int | None = signal.SIGTERM) -> int:
        """Send ``sig`` (if still running; ``None``: send nothing), wait for the exit."""
        if sig is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            self.proc.wait(GUARD)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout is not None:
            self.tail = self.proc.stdout.read().split()
            self.proc.stdout.close()
        return self.proc.returncode


class Child(Proc):
    """``tests/signal_child.py``: ``client_id`` and ``pid`` from its ``ready`` line."""

    def __init__(self, url: str, *args: str, log: Path) -> None:
        super().__init__([sys.executable, str(CHILD), url, *args], log)
        words = self.readline().split()
        assert words[0] == "ready", words
        self.client_id = int(words[1])
        assert int(words[2]) == self.pid


class BrokerProc(Proc):
    """``asyncipc broker`` with a Unix socket and a TCP listener."""

    def __init__(self, sock: Path, *args: str, log: Path) -> None:
        listen = ["--listen", f"unix://{sock}", "--listen", "tcp://127.0.0.1:0"]
        super().__init__([sys.executable, "-m", "asyncipc", "broker", *listen, *args], log)
        self.sock = sock
        lines = [self.readline(), self.readline()]
        self.unix, self.tcp = (line.removeprefix("listening on ") for line in lines)


class Net:
    """A broker process and two signal children: ``a`` on the Unix socket (allows and
    watches HUP and USR1), ``remote`` on TCP (allows HUP)."""

    def __init__(self, d: Path) -> None:
        self.broker = BrokerProc(d / "b.sock", log=d / "broker.log")
        self.a = Child(
            self.broker.unix,
            *("--name", "sig-a", "--allow", "HUP,USR1", "--watch", "HUP,USR1"),
            log=d / "a.log",
        )
        self.remote = Child(
            self.broker.tcp, "--name", "sig-remote", "--allow", "HUP", log=d / "remote.log"
        )


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Net]:
    d = tmp_path_factory.mktemp("signals")
    net = Net(d)
    yield net
    for child in (net.a, net.remote):
        assert child.stop() == 0, child.log.read_text()
    assert net.broker.stop() == 0, net.broker.log.read_text()
    assert not net.broker.sock.exists()


def send(url: str, target: int | str, sig: int | str) -> None:
    """``signals.send`` from a fresh connection of this process."""

    async def go() -> None:
        async with asyncipc.connect(url) as bus:
            await signals.send(bus, target, sig)

    asyncio.run(go())


# --- signals in: a process sees its own ------------------------------------------------


def test_a_child_sees_its_own_sighup_as_a_message(net: Net) -> None:
    os.kill(net.a.pid, signal.SIGHUP)
    assert net.a.readline() == "signal HUP"
    os.kill(net.a.pid, signal.SIGUSR1)
    assert net.a.readline() == "signal USR1"


# --- signals out: through the broker ---------------------------------------------------


def test_send_by_client_id_and_by_name(net: Net) -> None:
    send(net.broker.unix, net.a.client_id, "USR1")
    assert net.a.readline() == "signal USR1"
    send(net.broker.unix, "sig-a", signal.SIGHUP)
    assert net.a.readline() == "signal HUP"


@pytest.mark.parametrize(
    ("target", "sig", "via", "reason", "says"),
    [
        ("a", "USR2", "unix", "not-allowed", "did not allow SIGUSR2 (it allows: HUP, USR1)"),
        ("a", "HUP", "tcp", "remote-sender", "this tcp connection is not one"),
        ("99999", "HUP", "unix", "unknown-client", "no connected client '99999'"),
        ("nobody-by-this-name", "HUP", "unix", "unknown-client", "no connected client"),
        ("sig-remote", "HUP", "unix", "no-pid", "is connected over tcp"),
        ("a", "KILL", "unix", "bad-signal", "cannot send 'KILL'"),
    ],
)
def test_refusals_say_why(
    net: Net, target: str, sig: str, via: str, reason: str, says: str
) -> None:
    who = str(net.a.client_id) if target == "a" else target
    url = net.broker.unix if via == "unix" else net.broker.tcp
    with pytest.raises(asyncipc.SignalRefused, match=r".") as caught:
        send(url, who, sig)
    assert caught.value.reason == reason
    assert says in str(caught.value)
    # Nothing reached the child (a USR2 would have killed it): the next line is this.
    send(net.broker.unix, net.a.client_id, "USR1")
    assert net.a.readline() == "signal USR1"


# --- SIGTERM drains ----------------------------------------------------------------------


def test_sigterm_to_a_service_answers_the_request_in_flight(net: Net, tmp_path: Path) -> None:
    service = Child(net.broker.unix, "--serve", "slow.term", log=tmp_path / "service.log")

    async def go() -> asyncipc.Message:
        async with asyncipc.connect(net.broker.unix) as bus:
            asking = asyncio.create_task(bus.request("slow.term", b"x", timeout=GUARD))
            assert await asyncio.to_thread(service.readline) == "busy"
            os.kill(service.pid, signal.SIGTERM)
            return await asking

    reply = asyncio.run(go())
    assert reply.data == b"answered after SIGTERM"
    assert service.stop(None) == 0, service.log.read_text()
    assert service.tail == ["exit"]


def test_sigterm_to_a_broker_answers_the_request_in_flight(tmp_path: Path) -> None:
    broker = BrokerProc(tmp_path / "b.sock", log=tmp_path / "broker.log")
    service = Child(
        broker.unix,
        *("--serve", "slow.broker", "--until", str(broker.sock)),
        log=tmp_path / "service.log",
    )

    async def go() -> asyncipc.Message:
        async with asyncipc.connect(broker.unix) as bus:
            asking = asyncio.create_task(bus.request("slow.broker", b"x", timeout=GUARD))
            assert await asyncio.to_thread(service.readline) == "busy"
            broker.proc.send_signal(signal.SIGTERM)
            return await asking

    reply = asyncio.run(go())
    assert reply.data == b"answered after the broker began draining"
    assert broker.stop(None) == 0, broker.log.read_text()
    assert not broker.sock.exists(), "socket file left behind"
    assert "SIGTERM received: draining" in broker.log.read_text()
    assert "Traceback" not in broker.log.read_text()
    # The service noticed its broker leaving and exited on its own, cleanly.
    assert service.stop(None) == 0, service.log.read_text()
    assert service.tail == ["broker", "gone", "exit"]


# --- in this process: the handler registry -------------------------------------------------


@pytest.fixture
def bus(asyncipc_bus: asyncipc.Bus) -> asyncipc.Bus:
    """asyncipc.testing's bus on an embedded broker, under the name these tests use."""
    return asyncipc_bus


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGSTOP])
async def test_watch_refuses_uncatchable_signals(bus: asyncipc.Bus, sig: signal.Signals) -> None:
    with pytest.raises(asyncipc.ConfigurationError, match=f"{sig.name} cannot be caught"):
        async with signals.watch(bus, signal.SIGHUP, sig):
            pass
    assert signal.getsignal(signal.SIGHUP) == signal.SIG_DFL, "SIGHUP was left installed"


async def test_watch_will_not_replace_another_loop_handler(bus: asyncipc.Bus) -> None:
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGUSR2, lambda: None)
    try:
        theirs = signal.getsignal(signal.SIGUSR2)
        with pytest.raises(asyncipc.SignalInUse, match="SIGUSR2 already has an event-loop"):
            async with signals.watch(bus, signal.SIGUSR2):
                pass
        assert signal.getsignal(signal.SIGUSR2) == theirs
    finally:
        loop.remove_signal_handler(signal.SIGUSR2)


async def test_watch_chains_a_python_handler_and_restores_it(bus: asyncipc.Bus) -> None:
    seen: list[int] = []

    def theirs(signum: int, frame: object) -> None:
        seen.append(signum)

    signal.signal(signal.SIGUSR2, theirs)
    try:
        async with (
            signals.watch(bus, "USR2"),
            bus.subscribe(signals.subject(signal.SIGUSR2)) as sub,
        ):
            os.kill(os.getpid(), signal.SIGUSR2)
            msg = await sub.next_msg(timeout=GUARD)
        assert msg.subject == "$sys.signal.USR2"
        assert msg.data == b"USR2"
        assert msg.headers == {"signum": str(int(signal.SIGUSR2)), "pid": str(os.getpid())}
        assert seen == [signal.SIGUSR2], "the handler installed before was not chained"
        assert signal.getsignal(signal.SIGUSR2) is theirs, "the previous handler is not back"
    finally:
        signal.signal(signal.SIGUSR2, signal.SIG_DFL)


async def test_signal_messages_reach_only_the_watching_connection(bus: asyncipc.Bus) -> None:
    async with (
        asyncipc.connect(bus.url) as other,
        signals.watch(bus, signal.SIGUSR1),
        bus.subscribe("$sys.signal.*") as mine,
        other.subscribe("$sys.signal.>") as theirs,
    ):
        # Another client cannot forge a signal for us: it only ever reaches itself.
        await other.publish("$sys.signal.USR1", b"forged")
        assert (await theirs.next_msg(timeout=GUARD)).data == b"forged"
        os.kill(os.getpid(), signal.SIGUSR1)
        assert (await mine.next_msg(timeout=GUARD)).data == b"USR1"
        await bus.flush()
        await other.flush()
        assert mine.pending == 0
        assert theirs.pending == 0, "another connection saw our signal"


async def test_two_watchers_of_one_signal_both_see_it(bus: asyncipc.Bus) -> None:
    async with (
        asyncipc.connect(bus.url) as other,
        signals.watch(bus, signal.SIGUSR1),
        signals.watch(other, signal.SIGUSR1),
        bus.subscribe("$sys.signal.USR1") as one,
        other.subscribe("$sys.signal.USR1") as two,
    ):
        os.kill(os.getpid(), signal.SIGUSR1)
        assert (await one.next_msg(timeout=GUARD)).data == b"USR1"
        assert (await two.next_msg(timeout=GUARD)).data == b"USR1"
    assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL


async def test_on_signal_gives_sigint_back_as_it_found_it() -> None:
    before = signal.getsignal(signal.SIGINT)
    with signals.on_signal(lambda sig: None, signal.SIGINT, "TERM"):
        assert signal.getsignal(signal.SIGINT) is not before
    assert signal.getsignal(signal.SIGINT) is before
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


# --- in this process: draining ------------------------------------------------------------


async def test_broker_close_waits_for_the_reply_to_a_request_in_flight() -> None:
    name = f"memory://inflight-{os.urandom(4).hex()}"
    started, release = asyncio.Event(), asyncio.Event()

    async def slow(msg: asyncipc.Message) -> bytes:
        started.set()
        await release.wait()
        return b"late but answered"

    broker = asyncipc.Broker()
    await broker.listen(name)
    async with asyncipc.connect(name) as service, asyncipc.connect(name) as client:
        service.serve("slow", slow)
        await service.flush()
        asking = asyncio.create_task(client.request("slow", timeout=GUARD))
        await started.wait()
        closing = asyncio.create_task(broker.close())
        for _ in range(50):
            await asyncio.sleep(0)
        assert not closing.done(), "the broker closed with a request in flight"
        release.set()
        assert (await asking).data == b"late but answered"
        await closing


async def test_broker_close_does_not_wait_past_the_requesters_time_out() -> None:
    """A request carries its requester's time-out; a closing broker stops waiting for its
    reply once the requester has stopped waiting, long before ``drain_timeout``."""
    name = f"memory://gave-up-{os.urandom(4).hex()}"
    started = asyncio.Event()

    async def never(msg: asyncipc.Message) -> bytes:
        started.set()
        await asyncio.Event().wait()
        return b"never"

    broker = asyncipc.Broker(drain_timeout=10 * GUARD)
    await broker.listen(name)
    async with asyncipc.connect(name) as service, asyncipc.connect(name) as client:
        service.serve("never", never)
        await service.flush()
        asking = asyncio.create_task(client.request("never", timeout=0.2))
        await started.wait()
        await asyncio.wait_for(broker.close(), GUARD)  # not 10 * GUARD
        with pytest.raises(asyncipc.RequestTimeout):
            await asking


async def test_drain_on_signals_closes_buses_then_brokers() -> None:
    name = f"memory://drain-{os.urandom(4).hex()}"
    broker = asyncipc.Broker()
    await broker.listen(name)
    bus = await asyncipc.connect(name)
    async with signals.drain_on_signals(bus, broker, signals=["USR1"]) as drain:
        os.kill(os.getpid(), signal.SIGUSR1)
        assert await drain.wait() == signal.SIGUSR1
        assert drain.received == signal.SIGUSR1
    assert bus.is_closed
    assert broker.sessions == 0
    await broker.serve_forever()  # returns: the broker is closed
    assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL


async def test_run_until_signalled_returns_none_when_the_broker_goes() -> None:
    name = f"memory://gone-{os.urandom(4).hex()}"
    broker = asyncipc.Broker()
    await broker.listen(name)
    bus = await asyncipc.connect(name)
    waiting = asyncio.create_task(signals.run_until_signalled(bus, signals=["USR1"]))
    await broker.close()
    assert await waiting is None
    assert bus.is_closed


def test_drain_refuses_what_it_cannot_close() -> None:
    with pytest.raises(asyncipc.ConfigurationError, match="not str"):
        signals.drain_on_signals("unix:///tmp/x.sock")  # type: ignore[arg-type]


# --- in this process: sending, and the rules ----------------------------------------------


async def test_remote_signals_when_the_broker_enables_them() -> None:
    """A TCP sender is refused by default (tests above); with ``remote_signals`` it may
    signal a local client, here an in-process bus (its process is this one)."""
    name = f"memory://remote-{os.urandom(4).hex()}"
    async with asyncipc.Broker(remote_signals=True) as broker:
        await broker.listen(name)
        tcp = await broker.listen("tcp://127.0.0.1:0")
        options = asyncipc.ConnectOptions(name="local", allow_signals=("USR1",))
        async with (
            asyncipc.connect(name, options=options) as target,
            asyncipc.connect(tcp.url) as sender,
            signals.watch(target, "USR1"),
            target.subscribe("$sys.signal.USR1") as sub,
        ):
            assert target.server_info["signals"] == ["USR1"]
            await signals.send(sender, "local", "USR1")
            assert (await sub.next_msg(timeout=GUARD)).data == b"USR1"


async def test_a_child_the_broker_spawned_over_pipes_can_be_signalled() -> None:
    """A pipe child has no peer credentials: the broker knows its pid because it
    started it. Here the sender is in-process (memory://), also a local client."""
    name = f"memory://spawn-{os.urandom(4).hex()}"
    async with asyncipc.Broker() as broker:
        await broker.listen(name)
        argv = [sys.executable, str(CHILD), "pipe:", "--name", "piped"]
        child = await broker.spawn(
            [*argv, "--allow", "HUP", "--watch", "HUP"],
            stdout=subprocess.PIPE,
            env=child_env(),
        )
        assert child.process.stdout is not None
        ready = (await child.process.stdout.readline()).split()
        assert ready[0] == b"ready"
        async with asyncipc.connect(name) as bus:
            await signals.send(bus, "piped", "HUP")
            assert await child.process.stdout.readline() == b"signal HUP\n"
            await signals.send(bus, int(ready[1]), "HUP")
            assert await child.process.stdout.readline() == b"signal HUP\n"
        child.send_signal(signal.SIGTERM)
        assert await child.wait() == 0
        assert await child.process.stdout.read() == b"exit\n"


async def test_a_client_that_allowed_nothing_cannot_be_signalled(bus: asyncipc.Bus) -> None:
    async with asyncipc.connect(bus.url, name="shy") as shy:
        assert "signals" not in shy.server_info  # it did not ask for any
        with pytest.raises(
            asyncipc.SignalRefused, match=r"did not allow SIGHUP \(it allows: none\)"
        ):
            await signals.send(bus, "shy", "HUP")


async def test_a_client_that_left_cannot_be_signalled(bus: asyncipc.Bus) -> None:
    options = asyncipc.ConnectOptions(allow_signals=("HUP",))
    async with asyncipc.connect(bus.url, options=options) as gone:
        client_id = gone.server_info["client_id"]
    with pytest.raises(asyncipc.SignalRefused) as caught:
        await signals.send(bus, client_id, "HUP")
    assert caught.value.reason == "unknown-client"


async def test_reserved_subjects_are_not_routed(bus: asyncipc.Bus) -> None:
    async with asyncipc.connect(bus.url) as other, other.subscribe("svc") as sub:
        # A reply subject under $sys. would let a service send a signal for the requester.
        await bus.publish("svc", b"x", reply_to="$sys.kill.1")
        await bus.publish("svc", b"ok")
        assert (await sub.next_msg(timeout=GUARD)).data == b"ok"
        reply = await bus.request("$sys.nothing", timeout=GUARD)
        assert reply.headers is not None
        assert reply.headers["asyncipc-status"] == "403"
        assert reply.headers["asyncipc-reason"] == "reserved"


async def test_allow_signals_is_checked_before_connecting() -> None:
    options = asyncipc.ConnectOptions(allow_signals=("KILL",))
    with pytest.raises(asyncipc.ConfigurationError, match="SIGKILL cannot be allowed"):
        await asyncipc.connect(f"memory://refuse-{os.urandom(4).hex()}", options=options)


def test_names() -> None:
    assert signals.signal_name(signal.SIGHUP) == "HUP"
    assert signals.signal_name("sigusr1") == signals.signal_name(" USR1 ") == "USR1"
    assert signals.subject(int(signal.SIGWINCH)) == "$sys.signal.WINCH"
    with pytest.raises(asyncipc.ConfigurationError, match="unknown signal 'SIGNOPE'"):
        signals.signal_name("SIGNOPE")
    assert allowed_signals(["hup", "SIGUSR1", "KILL", 9, "TERM"]) == (
        frozenset({"HUP", "USR1", "TERM"}),
        ["'KILL'", "9"],
    )
    assert allowed_signals("HUP") == (frozenset(), ["'HUP'"])


def test_who_the_broker_knows() -> None:
    assert _system.process_of(PeerInfo("memory", "x")) == _system.Process(os.getpid(), os.geteuid())
    assert _system.process_of(PeerInfo("pipe", "child", pid=42)).uid == os.geteuid()
    assert _system.process_of(PeerInfo("unix", "/s", pid=42, uid=1000)).local
    assert _system.process_of(PeerInfo("fifo", "/f", uid=1000)).local
    assert not _system.process_of(PeerInfo("tcp", ("127.0.0.1", 1))).local


def test_only_the_same_user_or_root_may_signal() -> None:
    """The uid rule, on the pure decision (two users need two accounts, which a test
    process cannot count on)."""

    class Target:
        allowed_signals = frozenset({"HUP"})
        link = type("L", (), {"peer": PeerInfo("unix", "/s", pid=42, uid=1000)})()

        def describe(self) -> str:
            return "client 7"

    def decide(uid: int) -> tuple[str, str] | None:
        return _system.refusal(
            sender=_system.Process(43, uid),
            sender_transport="unix",
            remote_signals=False,
            name="HUP",
            target=Target(),  # type: ignore[arg-type]
            target_label="7",
        )

    assert decide(1000) is None
    assert decide(0) is None
    refused = decide(1001)
    assert refused is not None
    assert refused[0] == "uid-mismatch"
    assert "runs as uid 1000, the sender as uid 1001" in refused[1]


# --- the example ------------------------------------------------------------------------------


def test_signals_demo() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "signals_demo.py")],
        capture_output=True,
        text=True,
        timeout=90,
        env=child_env(),
    )
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
    out = done.stdout
    assert "worker: reloaded config (SIGHUP #1)" in out
    assert "USR2 refused       not-allowed:" in out
    assert "reply 'done: job-1'" in out
    assert "worker exited      0" in out
    assert "socket removed" in out
    assert out.rstrip().endswith("everything went as described")
