"""Channels side by side: ``unix://``, ``fifo://`` and ``pipe:`` through one broker, and
the direct parent <-> child pipe link with no broker between, at 64 B and 64 KiB.

Every brokered row has the same shape, so that only the channel differs: the broker runs
in this process (uvloop), the publisher and the subscriber are ``workers/asyncipc_w.py``
processes, and the figure is the one of the pub/sub cases (messages/s received, from the
publisher's first timed message to the last arrival, warm-up first; see README.md).
``pipe:`` needs the broker to be the workers' parent (``Broker.spawn``), which is why the
broker is here rather than in a process of its own as in the other cases.

The ``pipe direct`` row is ``asyncipc.spawn_peer``: the publisher is a child process and
this process subscribes on the peer bus, so a message crosses the kernel once (child ->
parent), where the brokered rows cross it twice (publisher -> broker -> subscriber). The
issue's target: that row at least as fast as ``unix://`` through the broker.

Run alone: ``python -m benchmarks.channels [--quick] [--json PATH]``; ``benchmarks.run``
runs it as the ``channels`` section.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import sys
import tempfile
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import uvloop

import asyncipc

from ._cases import Case, _pubsub_metrics
from ._procs import BenchError, Worker, _child_setup, python_from, worker
from ._report import section_main
from .workers._common import Tally

__all__ = ["CHANNELS", "SIZES", "measure", "table"]

CHANNELS = ("unix", "fifo", "pipe", "pipe-direct")
LABELS = {
    "unix": "unix://",
    "fifo": "fifo://",
    "pipe": "pipe:",
    "pipe-direct": "pipe: direct (child -> parent)",
}
#: Payload size -> messages in a full run (``--quick`` divides by 10).
SIZES = {64: 200_000, 64 * 1024: 5_000}
SUBJECT = "bench.x"
STARTUP = 20.0


def _case(size: int, count: int) -> Case:
    return Case(f"ch{size}", "", "", "pubsub", size, count, 1, ())


def _worker_argv(role: str, url: str, size: int, count: int) -> list[str]:
    args = ["--url", url, "--subject", SUBJECT, "--count", str(count), "--size", str(size)]
    return [sys.executable, "-m", "benchmarks.workers.asyncipc_w", role, *args]


@contextlib.asynccontextmanager
async def _spawned(
    name: str, start: Any, argv: Sequence[str], tmp: Path
) -> AsyncIterator[tuple[Worker, Any]]:
    """A worker started over pipes by ``start`` (``broker.spawn`` or ``spawn_peer``), with
    the same stdin/stdout control channel as ``_procs.worker``'s."""
    log = tmp / f"{name}.log"
    cwd, env = python_from({"PYTHONUNBUFFERED": "1"})
    with log.open("wb") as err:
        started = await start(
            argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=err,
            cwd=cwd,
            env=env,
            start_new_session=True,
            preexec_fn=_child_setup,
        )
    child = started.child if isinstance(started, asyncipc.PipePeer) else started
    w = Worker(name, child.process, log)
    try:
        yield w, started
    finally:
        await w.close()
        if isinstance(started, asyncipc.PipePeer):
            await started.aclose()


async def _brokered(channel: str, size: int, count: int, tmp: Path) -> dict[str, Any]:
    async with contextlib.AsyncExitStack() as stack:
        broker = await stack.enter_async_context(asyncipc.Broker())
        if channel == "pipe":
            url = "pipe:"
        else:
            where = f"unix://{tmp}/b.sock" if channel == "unix" else f"fifo://{tmp}/b.fifo"
            url = (await broker.listen(where)).url
        workers: dict[str, Worker] = {}
        for role in ("sub", "pub"):
            argv = _worker_argv(role, url, size, count)
            if channel == "pipe":
                w, _ = await stack.enter_async_context(_spawned(role, broker.spawn, argv, tmp))
            else:
                w = await stack.enter_async_context(worker(role, "asyncipc_w", role, argv[4:], tmp))
            workers[role] = w
            await w.expect("ready", STARTUP)
        sub, pub = workers["sub"], workers["pub"]
        await sub.expect("warm", STARTUP)
        await pub.send("go")
        sent = await pub.expect("result", 120)
        result = await sub.expect("result", 120)
    return _pubsub_metrics(_case(size, count), count, sent, [result])


async def _direct(size: int, count: int, tmp: Path) -> dict[str, Any]:
    argv = _worker_argv("pub", "pipe:", size, count)
    async with _spawned("pub", asyncipc.spawn_peer, argv, tmp) as (pub, peer):
        tally = Tally(count)
        sub = peer.bus.subscribe(SUBJECT)
        await peer.bus.flush()

        async def receive() -> None:
            async for msg in sub:
                if tally.add(msg.data):
                    return

        task = asyncio.ensure_future(receive())
        try:
            await pub.expect("ready", STARTUP)
            async with asyncio.timeout(STARTUP):
                await tally.warm.wait()
            await pub.send("go")
            sent = await pub.expect("result", 120)
            async with asyncio.timeout(120):
                await task
        finally:
            task.cancel()
    return _pubsub_metrics(_case(size, count), count, sent, [{"conns": [tally.as_dict()]}])


async def run_all(quick: bool) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for size, full in SIZES.items():
        count = max(1, full // (10 if quick else 1))
        for channel in CHANNELS:
            tmp = Path(tempfile.mkdtemp(prefix="aipcc-", dir="/tmp"))
            try:
                if channel == "pipe-direct":
                    metrics = await _direct(size, count, tmp)
                else:
                    metrics = await _brokered(channel, size, count, tmp)
                results[f"{channel}/{size}"] = metrics
            except (BenchError, TimeoutError) as exc:
                results[f"{channel}/{size}"] = {"error": str(exc) or "timeout"}
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            print(f"  {channel:<12} {size:>6} B  done", file=sys.stderr, flush=True)
    return {"quick": quick, "counts": {str(s): c for s, c in SIZES.items()}, "cells": results}


def _fmt(m: dict[str, Any] | None, key: str) -> str:
    if not m or "error" in m:
        return "error" if m else "-"
    v = float(m[key])
    return f"{v / 1e3:,.1f}k" if key == "msgs_per_s" else f"{v:,.0f}"


def table(r: dict[str, Any]) -> str:
    """The channels section as printed by ``benchmarks.run``."""
    cells: dict[str, dict[str, Any]] = r["cells"]
    head = ["channel"]
    for size in SIZES:
        label = "64 B" if size == 64 else f"{size // 1024} KiB"
        head += [f"{label} msgs/s", f"{label} MB/s", f"{label} / unix"]
    rows = []
    for channel in CHANNELS:
        row = [LABELS[channel]]
        for size in SIZES:
            m, base = cells.get(f"{channel}/{size}"), cells.get(f"unix/{size}")
            ratio = "-"
            if m and base and "error" not in m and "error" not in base:
                ratio = f"{m['msgs_per_s'] / base['msgs_per_s']:.2f}x"
            row += [_fmt(m, "msgs_per_s"), _fmt(m, "mb_per_s"), ratio]
        rows.append(row)
    widths = [max(len(x) for x in col) for col in zip(head, *rows, strict=True)]

    def line(cells_: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells_, widths, strict=True)) + " |"

    title = (
        "channels: pub/sub 1 -> 1, broker in the orchestrating process (pipe: direct: no "
        "broker, the parent subscribes); msgs/s received, higher is better"
    )
    errors = [
        f"  {k}: {v['error']}" for k, v in cells.items() if isinstance(v, dict) and "error" in v
    ]
    out = [title, "", line(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(row) for row in rows]
    return "\n".join(out + errors)


def measure(quick: bool = False) -> dict[str, Any]:
    """Run every channel at both sizes in a fresh uvloop loop."""
    return uvloop.run(run_all(quick))


def main() -> None:
    section_main(__doc__, measure, table)


if __name__ == "__main__":
    main()
