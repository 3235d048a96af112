"""The conformance suite (DESIGN.md §6): the same behaviours over every transport.

The checks are ``asyncipc.testing``'s (``check_transport``, docs/testing.md): one test
per check and transport. ``url`` (conftest.py) is parametrized over every transport, with
a broker in this process and in its own. The process brokers are shared by the session,
so every test works under its own subject prefix.

The reconnect case (DESIGN.md §7) kills its broker, so it has a process of its own per
test, over every transport whose URL reaches a broker process (``RECONNECTING``).
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import asyncipc
from asyncipc.testing import ConformanceCheck, conformance_params
from tests.conftest import HERE, Certs


@pytest.fixture
def p() -> str:
    """A subject prefix no other test uses."""
    return f"t{os.urandom(4).hex()}"


@pytest.mark.parametrize("check", conformance_params())
async def test_conformance(url: str, p: str, check: ConformanceCheck) -> None:
    """One of asyncipc.testing's conformance checks (CHECKS) over one transport: the
    checks themselves ship in the package (asyncipc/testing/_conformance.py), so that a
    transport written elsewhere is tested exactly as these are."""
    await check(url, p)


# --- reconnect (DESIGN.md §7) ------------------------------------------------------------

RECONNECTING = ["unix", "tcp", "tls", "fifo", "http", "grpc", "shm", "mmap", "udp"]
"""Every transport that reaches a broker process; ``memory://`` and ``pipe:`` never redial
(there is nothing to dial again), so they have no reconnect case."""

GUARD = 10.0
"""Seconds any one wait of the reconnect case may take before it fails (never a hang)."""


class RestartableBroker:
    """``tests/broker_proc.py`` on one URL in a process of its own, that can be killed
    (SIGKILL: no goodbye to its clients, its files left behind) and started again on the
    same URL. Started with asyncio, so the buses under test go on running meanwhile."""

    def __init__(self, listen: str, log: Path) -> None:
        self.listen = listen
        self.log = log
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> str:
        """Start it; the URL it printed once ready."""
        with self.log.open("ab") as err:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                str(HERE / "broker_proc.py"),
                self.listen,
                stdout=asyncio.subprocess.PIPE,
                stderr=err,
            )
        assert self.proc.stdout is not None
        async with asyncio.timeout(GUARD):
            line = (await self.proc.stdout.readline()).decode()
        if not line.startswith("ready "):
            await self.stop()
            raise RuntimeError(f"broker process failed: {line!r} {self.log.read_text()!r}")
        return line.split(" ", 1)[1].strip()

    async def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        async with asyncio.timeout(GUARD):
            await self.proc.wait()

    async def stop(self) -> int | None:
        """SIGTERM (the broker drains and exits 0), SIGKILL if it does not within GUARD."""
        proc = self.proc
        if proc is None:
            return None
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(GUARD):
                    await proc.wait()
            finally:
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
        return proc.returncode


def _free_port(kind: socket.SocketKind) -> int:
    """A port on 127.0.0.1 free a moment ago: a restarted broker must bind the same one.
    Below the kernel's ephemeral range, so that no socket bound to port 0 meanwhile (the
    UDP buses' own, made anew on each reconnect attempt) can be given it while the broker
    is down (seen once: the restarted UDP broker's port in use)."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    rng = random.Random()
    for _ in range(1000):
        port = rng.randrange(max(1024, low - 12000), low)
        with socket.socket(socket.AF_INET, kind) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise AssertionError("no free port below the ephemeral range")


def _listen_url(kind: str, tmp_path: Path, certs: Certs) -> tuple[str, str]:
    """Where the broker listens for ``kind``, and what a client adds to the URL it prints."""
    if kind == "unix":
        return f"unix://{tmp_path}/b.sock", ""
    if kind == "fifo":
        return f"fifo://{tmp_path}/b.fifo", ""
    if kind == "mmap":
        return f"mmap://{tmp_path}/m", ""
    if kind == "shm":
        return f"shm://r{os.urandom(4).hex()}?dir={tmp_path}", ""
    port = _free_port(socket.SOCK_DGRAM if kind == "udp" else socket.SOCK_STREAM)
    if kind == "tls":
        return f"tls://127.0.0.1:{port}" + certs.server_query(), certs.client_query()
    return f"{kind}://127.0.0.1:{port}", ""


@pytest.fixture
async def restartable(tmp_path: Path) -> AsyncIterator[list[RestartableBroker]]:
    """Every RestartableBroker a test appends is stopped and reaped, whatever happened."""
    brokers: list[RestartableBroker] = []
    try:
        yield brokers
    finally:
        for broker in brokers:
            await broker.stop()


async def _until(events: asyncipc.EventStream, kind: str) -> list[asyncipc.ConnectionEvent]:
    """Every event up to and including the first of ``kind``, within GUARD seconds."""
    seen: list[asyncipc.ConnectionEvent] = []
    async with asyncio.timeout(GUARD):
        async for event in events:
            seen.append(event)
            if event.kind == kind:
                return seen
    raise AssertionError(f"events ended before {kind!r}: {seen}")


@pytest.mark.parametrize("kind", RECONNECTING)
async def test_broker_killed_and_restarted_subscriptions_resume(
    kind: str, p: str, tmp_path: Path, certs: Certs, restartable: list[RestartableBroker]
) -> None:
    """SIGKILL the broker process and start it again on the same URL: both buses
    reconnect by themselves, and the subscription and the handler made before the kill
    get what is sent after, once each."""
    listen, client_query = _listen_url(kind, tmp_path, certs)
    broker = RestartableBroker(listen, tmp_path / "broker.log")
    restartable.append(broker)
    url = await broker.start() + client_query
    options = asyncipc.ConnectOptions()
    if kind == "udp":
        # A UDP bus hears that its broker died only when it next sends (docs/transports.md,
        # UDP: "Vanishing peers"); the keep-alive is what makes an idle subscriber send.
        options = asyncipc.ConnectOptions(ping_interval=0.2)
    async with (
        asyncipc.connect(url, options=options) as subbus,
        asyncipc.connect(url, options=options) as pub,
    ):
        sub = subbus.subscribe(f"{p}.orders")

        @subbus.handler(f"{p}.upper")
        async def upper(msg: asyncipc.Message) -> bytes:
            return msg.data.upper()

        await subbus.flush()
        # Before the kill: the publisher's reply inbox exists and must come back too.
        assert (await pub.request(f"{p}.upper", b"before", timeout=GUARD)).data == b"BEFORE"
        streams = [subbus.events(), pub.events()]

        await broker.kill()
        for events in streams:
            down = await _until(events, "disconnected")
            assert [(e.kind, e.url) for e in down] == [("disconnected", url)], down
        for bus in (subbus, pub):
            assert not bus.is_connected
            assert bus.connected_url is None
            assert not bus.is_closed, "a reconnecting bus is not closed"

        assert await broker.start() + client_query == url
        for events in streams:
            back = await _until(events, "reconnected")
            # "error" is for a broker that refused us; one not yet listening is no error.
            assert [(e.kind, e.url) for e in back] == [("reconnected", url)], back
        for bus in (subbus, pub):
            assert bus.is_connected
            assert bus.connected_url == url

        # "reconnected" means the subscriptions were sent again, not yet that the broker
        # has them: the two buses' connections race, and the publisher's may be read first.
        await subbus.flush(timeout=GUARD)
        await pub.publish(f"{p}.orders", b"after")
        msg = await sub.next_msg(timeout=GUARD)
        assert (msg.subject, msg.data) == (f"{p}.orders", b"after")
        assert (await pub.request(f"{p}.upper", b"after", timeout=GUARD)).data == b"AFTER"
        await pub.flush(timeout=GUARD)
        await subbus.flush(timeout=GUARD)
        assert sub.pending == 0, "the subscription was restored twice"
    assert await broker.stop() == 0, "the restarted broker did not drain and exit 0"
