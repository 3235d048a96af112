"""A healthy client's request latency while the broker is attacked (issue 13's figure).

For each exhaustion attack of ``tests/test_exhaustion.py`` (the same attacker,
``tests/attacker.py``, and the same broker process, ``tests/limits_broker.py`` on
uvloop, as ``asyncipc broker`` runs), this measures the p99 of one-at-a-time requests
from a healthy client (an echo service and a requester, this process, uvloop, over the
broker's Unix socket) unloaded and then for as long as the attack lasts, and prints the
ratio, with the CPU the broker and the attacker used meanwhile.

Two layouts, because this machine is small (``benchmarks/README.md``, "Attacks"):

* ``shared``: nobody pinned. The attacker's own CPU (a Python process opening thousands
  of connections a second, or pushing 128 MiB through loopback) competes with the broker
  and the healthy client for the same cores: the figure mixes what the broker does with
  what the machine can still schedule.
* ``apart``: the attacker pinned to the last CPU, the broker and the healthy client to
  the others (on 2 cores: CPU 0): the attacker is on "another machine", and the figure
  is what the broker's handling of the attack costs its healthy clients. This is the
  figure the issue's "within 2x" is read against.

Each cell is the median of ``--runs`` runs (3; 1 with ``--quick``), each run a fresh
broker. Run: ``python -m benchmarks.attacks [--quick] [--runs N] [--modes hello,...]
[--json PATH]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import uvloop

import asyncipc

TESTS = Path(__file__).resolve().parent.parent / "tests"

#: mode -> (broker options, attack seconds, what it is)
MODES: dict[str, tuple[dict[str, Any], float, str]] = {
    "hello": (
        {"token": "s3cret", "max_hello": 64 * 1024},
        3.0,
        "64 reconnecting peers without the token announce 8 MiB HELLOs (path 1)",
    ),
    "stall": (
        {"token": "s3cret", "max_pending_handshakes": 256, "handshake_timeout": 30},
        3.0,
        "600 peers send 60 KiB of a 64 KiB HELLO and stall (path 1)",
    ),
    "slowloris": (
        {"frame_timeout": 1.0, "frame_min_rate": 8 * 1024 * 1024},
        6.0,
        "16 peers send 8 MiB - 1,000 B of a PUB, then a byte every 0.5 s (path 2)",
    ),
    "block": (
        {"block_timeout": 2.0, "high_water": 256 * 1024},
        10.0,
        "a block subscriber that never reads, renewed every 3 s, beside a publisher of "
        "16 KiB messages on its subject (path 5)",
    ),
    "flood": (
        {"max_connections_per_peer": 200, "max_connections": 2000},
        3.0,
        "1,000 connections with a handshake from one address (path 4)",
    ),
}


def _cpu_seconds(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _pin(pid: int, cpus: set[int] | None) -> None:
    if cpus is not None:
        os.sched_setaffinity(pid, cpus)


@contextlib.contextmanager
def _broker(options: dict[str, Any], urls: list[str], cpus: set[int] | None) -> Iterator[Any]:
    log = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen(
        [sys.executable, str(TESTS / "limits_broker.py"), json.dumps(options), *urls],
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
        env={**os.environ, "LIMITS_LOOP": "uvloop"},
    )
    try:
        _pin(proc.pid, cpus)
        assert proc.stdout is not None
        got = []
        for _ in urls:
            line = proc.stdout.readline()
            if not line.startswith("ready "):
                log.seek(0)
                raise RuntimeError(f"broker failed: {line!r} {log.read()[-2000:]}")
            got.append(line.split(" ", 1)[1].strip())
        yield proc, got
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
        log.close()


@contextlib.asynccontextmanager
async def healthy_pair(url: str, token: str | None = None) -> AsyncIterator[asyncipc.Bus]:
    """An echo service ("echo") and a requester, connected to ``url``: the requester."""
    async with (
        asyncipc.connect(url, token=token) as service,
        asyncipc.connect(url, token=token) as requester,
    ):

        @service.handler("echo")
        async def echo(msg: asyncipc.Message) -> bytes:
            return msg.data

        await service.flush()
        yield requester


async def round_trips(bus: asyncipc.Bus, n: int) -> list[float]:
    """``n`` requests to "echo" one after another: each one's round trip, in seconds."""
    out = []
    for i in range(n):
        t = time.perf_counter()
        reply = await bus.request("echo", b"%d" % i, timeout=10)
        out.append(time.perf_counter() - t)
        if reply.data != b"%d" % i:
            raise RuntimeError("a reply to another request")
    return out


async def start_attacker(
    mode: str, url: str, hold: float, cpus: set[int] | None = None
) -> asyncio.subprocess.Process:
    """``tests/attacker.py MODE URL HOLD`` in a process of its own (on ``cpus``), once it
    says its connections are open; its stdout then holds its one-line JSON result."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(TESTS / "attacker.py"),
        mode,
        url,
        str(hold),
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(TESTS.parent)},
    )
    _pin(proc.pid, cpus)
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 30)
    if line != b"started\n":
        proc.kill()
        await proc.wait()
        raise RuntimeError(f"attacker {mode}: {line!r}")
    return proc


def _p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


async def _one_run(mode: str, layout: str) -> dict[str, Any]:
    options, hold, _ = MODES[mode]
    ncpu = os.cpu_count() or 1
    apart = layout == "apart" and ncpu >= 2
    home = set(range(ncpu - 1)) if apart else None
    away = {ncpu - 1} if apart else None
    _pin(0, home)
    try:
        with (
            tempfile.TemporaryDirectory() as tmp,
            _broker(options, [f"unix://{tmp}/b.sock", "tcp://127.0.0.1:0"], home) as (
                proc,
                (unix, tcp),
            ),
        ):
            async with healthy_pair(unix, options.get("token")) as bus:
                await round_trips(bus, 200)  # warm
                calm = await round_trips(bus, 2000)
                attacker = await start_attacker(mode, tcp, hold, away)
                assert attacker.stdout is not None
                done = asyncio.ensure_future(attacker.stdout.readline())
                cpu0 = cpu1 = _cpu_seconds(proc.pid), _cpu_seconds(attacker.pid)
                t0 = time.perf_counter()
                loaded: list[float] = []
                while not done.done() or len(loaded) < 100:
                    loaded += await round_trips(bus, 10)
                    if not done.done():
                        cpu1 = _cpu_seconds(proc.pid), _cpu_seconds(attacker.pid)
                elapsed = time.perf_counter() - t0
                result = json.loads(await done)
                await attacker.wait()
    finally:
        _pin(0, set(range(ncpu)) if apart else None)
    return {
        "calm_p99_ms": _p99(calm) * 1e3,
        "attacked_p99_ms": _p99(loaded) * 1e3,
        "ratio": _p99(loaded) / _p99(calm),
        "requests": len(loaded),
        "broker_cpu": (cpu1[0] - cpu0[0]) / elapsed,
        "attacker_cpu": (cpu1[1] - cpu0[1]) / elapsed,
        "attacker": result,
    }


def measure(modes: list[str], layouts: list[str], runs: int) -> dict[str, Any]:
    out: dict[str, Any] = {"cpus": os.cpu_count(), "runs": runs, "cells": {}}
    for mode in modes:
        for layout in layouts:
            got = [uvloop.run(_one_run(mode, layout)) for _ in range(runs)]
            out["cells"][f"{mode}/{layout}"] = {
                "runs": got,
                "ratio": statistics.median(r["ratio"] for r in got),
                "calm_p99_ms": statistics.median(r["calm_p99_ms"] for r in got),
                "attacked_p99_ms": statistics.median(r["attacked_p99_ms"] for r in got),
                "broker_cpu": statistics.median(r["broker_cpu"] for r in got),
                "attacker_cpu": statistics.median(r["attacker_cpu"] for r in got),
            }
            cell = out["cells"][f"{mode}/{layout}"]
            each = ", ".join(f"{r['ratio']:.2f}" for r in got)
            print(
                f"{mode:<10} {layout:<7} p99 {cell['calm_p99_ms']:6.2f} ms calm, "
                f"{cell['attacked_p99_ms']:6.2f} ms attacked: {cell['ratio']:5.2f}x "
                f"(runs: {each}); CPU broker "
                f"{cell['broker_cpu'] * 100:3.0f}%, attacker {cell['attacker_cpu'] * 100:3.0f}%",
                flush=True,
            )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one run per cell")
    parser.add_argument("--runs", type=int, default=None)
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--layouts", default="apart,shared")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    runs = args.runs or (1 if args.quick else 3)
    for mode, (_, _, what) in MODES.items():
        if mode in args.modes.split(","):
            print(f"# {mode}: {what}")
    results = measure(args.modes.split(","), args.layouts.split(","), runs)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
