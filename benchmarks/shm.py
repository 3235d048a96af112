"""Shared memory next to a Unix socket: ``shm://`` and direct shm channels against
``unix://``, and the machine's memory-copy bandwidth, in one run.

Rows (issue 4's targets in brackets):

* **1 MiB one-way through the broker**, ``shm://`` and ``unix://`` [shm at least 2x unix];
* **64 B one-way through the broker**, the same two [shm at least unix]; each of these
  two rows is the median of three runs, unix and shm taking turns (``PAIR_ROUNDS``);
* **64 B request/reply p50**: a direct shm channel (two processes, no broker) against
  ``unix://`` through the broker (requester -> broker -> responder and back)
  [shm at most 0.3x unix];
* **1 MiB one-way over a direct shm channel**, read in place (zero-copy) and copied out,
  against ``memcpy`` of 1 MiB into shared memory measured here [report the fraction];
* **against iceoryx2** (issue 12), in a second table: the direct shm channel next to
  iceoryx2 (``workers/iox_w.py``), each in its busy-poll and its sleep-until-woken mode:
  one-way 64 B and 1 MiB messages/s [ours >= 1.0x iceoryx2] and 64 B round-trip p50/p99
  [p50 <= 1.5x]. iceoryx2's Python API is synchronous, so its modes are its own loops:
  ``receive()`` spun on, or a ``Listener`` wait on an event service notified after each
  send (with a 1 ms backstop against iceoryx2's lost wake-ups, counted and printed:
  ``workers/iox_w.py`` says why). Ours is asyncio either way; its ring port polls for
  ``?spin=`` seconds after the last record before it sleeps on its doorbell, so
  ``?spin=1`` is its busy-poll mode (on these exchanges it never sleeps) and ``?spin=0``
  its wait mode (it sleeps as soon as the ring is empty). Both sides read one-way payloads in place.
  Each of these cells is the median of ``PAIR_ROUNDS`` runs, ours and iceoryx2's taking
  turns.
  Without the ``iceoryx2`` package the iceoryx2 cells are skipped with the reason.

The brokered rows have the shape of ``benchmarks/channels.py``: the broker runs in this
process (uvloop), publisher and subscriber are ``workers/asyncipc_w.py`` processes, and
the figure is messages/s received from the publisher's first timed message to the last
arrival. Direct rows use ``workers/shm_w.py``. Rings have their default size (4 MiB per
direction) everywhere.

Run alone: ``python -m benchmarks.shm [--quick] [--json PATH]``; ``benchmarks.run`` runs
it as the ``shm`` section (``--cases shm``).
"""

from __future__ import annotations

import contextlib
import importlib.util
import mmap
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import uvloop

import asyncipc

from ._cases import Case, _pubsub_metrics
from ._procs import BenchError, worker
from ._report import median_run, section_main

__all__ = ["measure", "memcpy_bandwidth", "table"]

MIB = 1024 * 1024
#: (payload bytes, messages in a full run); ``--quick`` divides by 10.
ONE_WAY = {MIB: 3_000, 64: 200_000}
REQUESTS, WARMUP = 10_000, 500
DIRECT = 5_000
STARTUP = 20.0
SUBJECT = "bench.x"


def memcpy_bandwidth(size: int = MIB, seconds: float = 0.3) -> float:
    """Bytes/s of copying ``size`` bytes into a shared mapping, as the ring writer does
    (slice assignment into a ``memoryview`` of an ``mmap``), best of three."""
    src = os.urandom(size)
    best = 0.0
    with mmap.mmap(-1, 4 * size) as mm:
        mv = memoryview(mm)
        try:
            for _ in range(3):
                n, t0 = 0, time.perf_counter()
                while (elapsed := time.perf_counter() - t0) < seconds:
                    for off in range(0, 4 * size, size):
                        mv[off : off + size] = src
                    n += 4
                best = max(best, n * size / elapsed)
        finally:
            mv.release()
    return best


def _case(size: int, count: int) -> Case:
    return Case(f"shm{size}", "", "", "pubsub", size, count, 1, ())


def _argv(url: str, count: int, size: int, **extra: Any) -> list[str]:
    args = ["--url", url, "--count", str(count), "--size", str(size)]
    for key, value in extra.items():
        args += [f"--{key}", str(value)]
    return args


async def _one_way(url: str, size: int, count: int, tmp: Path) -> dict[str, Any]:
    async with contextlib.AsyncExitStack() as stack:
        broker = await stack.enter_async_context(asyncipc.Broker())
        url = (await broker.listen(url)).url
        sub = await stack.enter_async_context(
            worker("sub", "asyncipc_w", "sub", _argv(url, count, size, subject=SUBJECT), tmp)
        )
        await sub.expect("ready", STARTUP)
        pub = await stack.enter_async_context(
            worker("pub", "asyncipc_w", "pub", _argv(url, count, size, subject=SUBJECT), tmp)
        )
        await pub.expect("ready", STARTUP)
        await sub.expect("warm", STARTUP)
        await pub.send("go")
        sent = await pub.expect("result", 300)
        result = await sub.expect("result", 300)
    return _pubsub_metrics(_case(size, count), count, sent, [result])


async def _reqrep_unix(count: int, tmp: Path) -> dict[str, Any]:
    async with contextlib.AsyncExitStack() as stack:
        broker = await stack.enter_async_context(asyncipc.Broker())
        url = (await broker.listen(f"unix://{tmp}/b.sock")).url
        responder = await stack.enter_async_context(
            worker("responder", "asyncipc_w", "responder", ["--url", url], tmp)
        )
        await responder.expect("ready", STARTUP)
        args = _argv(url, count, 64, warmup=WARMUP, timeout=5)
        requester = await stack.enter_async_context(
            worker("requester", "asyncipc_w", "requester", args, tmp)
        )
        return await requester.expect("result", 300)


async def _reqrep_direct(count: int, tmp: Path, spin: str = "") -> dict[str, Any]:
    url = f"shm://bench{os.urandom(4).hex()}" + (f"?spin={spin}" if spin else "")
    async with contextlib.AsyncExitStack() as stack:
        echo = await stack.enter_async_context(
            worker("echo", "shm_w", "chan-echo", ["--url", url], tmp)
        )
        await echo.expect("ready", STARTUP)
        args = _argv(url, count, 64, warmup=WARMUP)
        requester = await stack.enter_async_context(
            worker("requester", "shm_w", "chan-req", args, tmp)
        )
        return await requester.expect("result", 300)


async def _direct(
    count: int, in_place: bool, tmp: Path, size: int = MIB, spin: str = ""
) -> dict[str, Any]:
    url = f"shm://bench{os.urandom(4).hex()}" + (f"?spin={spin}" if spin else "")
    mode = "in-place" if in_place else "copy"
    async with contextlib.AsyncExitStack() as stack:
        sink = await stack.enter_async_context(
            worker("sink", "shm_w", "chan-sink", _argv(url, count, size, subject=mode), tmp)
        )
        await sink.expect("ready", STARTUP)
        source = await stack.enter_async_context(
            worker("source", "shm_w", "chan-source", _argv(url, count, size), tmp)
        )
        await source.expect("ready", STARTUP)
        await source.send("go")
        sent = await source.expect("result", 300)
        result = await sink.expect("result", 300)
    return _pubsub_metrics(_case(size, count), count, sent, [result])


#: Our channel's ``?spin=`` for each waiting mode of the iceoryx2 comparison (module
#: docstring): poll for up to a second before sleeping (never, here), or not at all.
SPIN = {"poll": "1", "wait": "0"}
IOX_MODES = ("poll", "wait")


def iceoryx2_missing() -> str | None:
    """Why the iceoryx2 cells cannot run, or ``None``."""
    if importlib.util.find_spec("iceoryx2") is None:
        return "no iceoryx2 (pip install iceoryx2)"
    return None


def _iox_name() -> str:
    return f"asyncipc-bench/{os.getpid()}-{os.urandom(4).hex()}"


async def _iox_one_way(size: int, count: int, mode: str, tmp: Path) -> dict[str, Any]:
    name = _iox_name()
    async with contextlib.AsyncExitStack() as stack:
        args = _argv(name, count, size, idiom=mode, idle=10)
        sink = await stack.enter_async_context(worker("sink", "iox_w", "iox-sink", args, tmp))
        await sink.expect("ready", STARTUP)
        source = await stack.enter_async_context(worker("source", "iox_w", "iox-source", args, tmp))
        await source.expect("ready", STARTUP)
        await source.send("go")
        sent = await source.expect("result", 300)
        result = await sink.expect("result", 300)
    metrics = _pubsub_metrics(_case(size, count), count, sent, [result])
    return {**metrics, "stalls": result.get("stalls", 0)}


async def _iox_reqrep(count: int, mode: str, tmp: Path) -> dict[str, Any]:
    name = _iox_name()
    args = _argv(name, count, 64, warmup=WARMUP, idiom=mode, timeout=5)
    async with contextlib.AsyncExitStack() as stack:
        echo = await stack.enter_async_context(worker("echo", "iox_w", "iox-echo", args, tmp))
        await echo.expect("ready", STARTUP)
        requester = await stack.enter_async_context(
            worker("requester", "iox_w", "iox-req", args, tmp)
        )
        result = await requester.expect("result", 300)
        served = await echo.expect("result", 60)
    return {**result, "stalls": result.get("stalls", 0) + served.get("stalls", 0)}


PAIR_ROUNDS = 3
"""Rounds of the brokered unix/shm pairs: unix then shm in each, and each row the median
of its runs. One run apiece put a minute's noise on one side of a ratio whose target is
1.0x (1.22x in one full run, 0.97x in the next, on the same code)."""


def _median_msgs(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median messages/s, with every run's figure beside it (``runs``);
    an error if any run failed."""
    failed = [run for run in runs if "msgs_per_s" not in run]
    if failed:
        return failed[0]
    middle = median_run(runs, "msgs_per_s", higher_is_better=True)
    return {**middle, "runs": [run["msgs_per_s"] for run in runs]}


def _median_latency(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median p50, with every run's p50 beside it (``runs``); an error
    if any run failed."""
    failed = [run for run in runs if "p50_us" not in run]
    if failed:
        return failed[0]
    middle = median_run(runs, "p50_us", higher_is_better=False)
    return {**middle, "runs": [run["p50_us"] for run in runs]}


async def _cell(results: dict[str, Any], key: str, run: Any) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="aipcs-", dir="/tmp"))
    try:
        results[key] = await run(tmp)
    except (BenchError, TimeoutError) as exc:
        results[key] = {"error": str(exc) or "timeout"}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"  {key:<22} done", file=sys.stderr, flush=True)


async def run_all(quick: bool) -> dict[str, Any]:
    div = 10 if quick else 1
    r: dict[str, Any] = {}
    for size, full in ONE_WAY.items():
        n = max(1, full // div)
        runs: dict[str, list[dict[str, Any]]] = {"unix": [], "shm": []}
        for _ in range(PAIR_ROUNDS):
            for scheme in ("unix", "shm"):

                async def one_way(
                    tmp: Path, scheme: str = scheme, size: int = size, n: int = n
                ) -> Any:
                    where = f"unix://{tmp}/b.sock" if scheme == "unix" else f"shm://b{tmp.name}"
                    return await _one_way(where, size, n, tmp)

                await _cell(r, f"{scheme}/{size}", one_way)
                runs[scheme].append(r[f"{scheme}/{size}"])
        for scheme, done in runs.items():
            r[f"{scheme}/{size}"] = _median_msgs(done)
    await _cell(r, "unix/reqrep", lambda tmp: _reqrep_unix(REQUESTS // div, tmp))
    await _cell(r, "direct/reqrep", lambda tmp: _reqrep_direct(REQUESTS // div, tmp))
    for in_place in (True, False):
        key = "direct/1MiB/" + ("in-place" if in_place else "copy")
        await _cell(r, key, lambda tmp, p=in_place: _direct(DIRECT // div, p, tmp))
    await _run_iceoryx2(r, div)
    r["memcpy_bytes_per_s"] = memcpy_bandwidth()
    return {"quick": quick, "cells": r}


async def _run_iceoryx2(r: dict[str, Any], div: int) -> None:
    """The direct channel and iceoryx2 side by side, ours first in each pair, so both
    meet the same load, for ``PAIR_ROUNDS`` rounds; each cell is the median of its runs
    (one run apiece: iceoryx2's 1 MiB wait row moved between 0.88x and 1.37x of ours
    over runs of the same code). iceoryx2's cells are skipped (with the reason) without
    it."""
    missing = iceoryx2_missing()
    runs: dict[str, list[dict[str, Any]]] = {}

    async def cell(key: str, run: Any) -> None:
        await _cell(r, key, run)
        runs.setdefault(key, []).append(r[key])

    for _ in range(PAIR_ROUNDS):
        for mode in IOX_MODES:
            spin = SPIN[mode]
            for size, n in ((64, ONE_WAY[64] // div), (MIB, DIRECT // div)):
                await cell(
                    f"direct/{size}/{mode}",
                    lambda tmp, n=n, size=size, spin=spin: _direct(n, True, tmp, size, spin),
                )
                if not missing:
                    await cell(
                        f"iox/{size}/{mode}",
                        lambda tmp, n=n, size=size, mode=mode: _iox_one_way(size, n, mode, tmp),
                    )
            n = REQUESTS // div
            await cell(
                f"direct/reqrep/{mode}",
                lambda tmp, n=n, spin=spin: _reqrep_direct(n, tmp, spin),
            )
            if not missing:
                await cell(
                    f"iox/reqrep/{mode}",
                    lambda tmp, n=n, mode=mode: _iox_reqrep(n, mode, tmp),
                )
    for key, done in runs.items():
        if "/reqrep/" in key:
            r[key] = _median_latency(done)
        else:
            r[key] = _median_msgs(done)
    if missing:
        for mode in IOX_MODES:
            for what in (64, MIB, "reqrep"):
                r[f"iox/{what}/{mode}"] = {"skipped": missing}


def _skipped(cells: dict[str, Any], key: str) -> str | None:
    m = cells.get(key)
    return str(m["skipped"]) if isinstance(m, dict) and "skipped" in m else None


def _get(cells: dict[str, Any], key: str, metric: str) -> float | None:
    m = cells.get(key)
    if not isinstance(m, dict) or "error" in m or metric not in m:
        return None
    return float(m[metric])


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a is not None and b else "-"


def _rate(v: float | None, unit: str) -> str:
    if v is None:
        return "error"
    if unit == "B/s":
        return f"{v / 1e9:.2f} GB/s"
    if unit == "us":
        return f"{v:.1f} us"
    return f"{v / 1e3:,.1f}k msgs/s" if v < 1e6 else f"{v / 1e6:.2f}M msgs/s"


def table(result: dict[str, Any]) -> str:
    """The shm section as ``benchmarks.run`` prints it."""
    c: dict[str, Any] = result["cells"]
    memcpy = float(c["memcpy_bytes_per_s"])
    rows: list[tuple[str, str, str, str, str]] = []

    def one_way(label: str, size: int, target: str) -> None:
        u = _get(c, f"unix/{size}", "msgs_per_s")
        s = _get(c, f"shm/{size}", "msgs_per_s")
        rows.append((label, _rate(u, "msgs"), _rate(s, "msgs"), _ratio(s, u), target))

    # Each of these rows is the median of PAIR_ROUNDS runs, unix and shm taking turns.
    one_way("1 MiB one-way via broker", MIB, ">= 2x")
    rows.append(
        (
            "  (as bytes)",
            _rate(_mb(c, "unix", MIB), "B/s"),
            _rate(_mb(c, "shm", MIB), "B/s"),
            "",
            "",
        )
    )
    one_way("64 B one-way via broker", 64, ">= 1x")
    u = _get(c, "unix/reqrep", "p50_us")
    d = _get(c, "direct/reqrep", "p50_us")
    rows.append(
        (
            "64 B req/reply p50 (shm: direct)",
            _rate(u, "us"),
            _rate(d, "us"),
            _ratio(d, u),
            "<= 0.3x",
        )
    )
    for mode in ("in-place", "copy"):
        rate = _get(c, f"direct/1MiB/{mode}", "mb_per_s")
        bps = rate * 1e6 if rate is not None else None
        rows.append(
            (
                f"1 MiB direct shm, {mode} / memcpy",
                _rate(memcpy, "B/s"),
                _rate(bps, "B/s"),
                _ratio(bps, memcpy),
                "close to 1x" if mode == "in-place" else "",
            )
        )
    head = ("case", "unix:// (or memcpy)", "shm", "shm / unix", "target")
    widths = [max(len(r[i]) for r in (head, *rows)) for i in range(5)]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(x.ljust(w) for x, w in zip(cells, widths, strict=True)) + " |"

    title = (
        "shm: shm:// and a direct shm channel against unix:// (broker in the orchestrating "
        "process) and memcpy into shared memory; default 4 MiB rings"
    )
    out = [title, "", line(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(r) for r in rows]
    out += ["", *_grid(_iceoryx2_rows(c), IOX_HEAD, IOX_TITLE)]
    out += [f"  {k}: {v['error']}" for k, v in c.items() if isinstance(v, dict) and "error" in v]
    stalls = {k: v["stalls"] for k, v in c.items() if isinstance(v, dict) and v.get("stalls")}
    if stalls:
        out.append(
            "  iceoryx2 lost wake-ups (waits that ended on the 1 ms backstop, included in "
            "the figures): " + ", ".join(f"{k} {n}" for k, n in stalls.items())
        )
    lost = {k: v["lost"] for k, v in c.items() if isinstance(v, dict) and v.get("lost")}
    if lost:
        out.append("  lost (never arrived): " + ", ".join(f"{k} {n}" for k, n in lost.items()))
    skipped = sorted({s for k in c if (s := _skipped(c, k))})
    out += [f"  iceoryx2 skipped: {s}" for s in skipped]
    return "\n".join(out)


IOX_HEAD = (
    "case (direct channel vs iceoryx2)",
    "mode",
    "asyncipc",
    "iceoryx2",
    "ours / iox",
    "target",
)
IOX_TITLE = (
    "direct shm channel (asyncio, ?spin=1 poll / ?spin=0 wait) against iceoryx2 "
    "(synchronous: receive() spun on / Listener wait); one-way read in place"
)


def _iceoryx2_rows(c: dict[str, Any]) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    for mode in IOX_MODES:
        for size, label in ((64, "64 B one-way"), (MIB, "1 MiB one-way")):
            ours = _get(c, f"direct/{size}/{mode}", "msgs_per_s")
            iox = _get(c, f"iox/{size}/{mode}", "msgs_per_s")
            skip = _skipped(c, f"iox/{size}/{mode}")
            rows.append(
                (
                    label,
                    mode,
                    _rate(ours, "msgs"),
                    "skipped" if skip else _rate(iox, "msgs"),
                    _ratio(ours, iox),
                    ">= 1.0x",
                )
            )
        for pct in ("p50", "p99"):
            ours = _get(c, f"direct/reqrep/{mode}", f"{pct}_us")
            iox = _get(c, f"iox/reqrep/{mode}", f"{pct}_us")
            skip = _skipped(c, f"iox/reqrep/{mode}")
            rows.append(
                (
                    f"64 B round trip {pct}",
                    mode,
                    _rate(ours, "us"),
                    "skipped" if skip else _rate(iox, "us"),
                    _ratio(ours, iox),
                    "<= 1.5x" if pct == "p50" else "",
                )
            )
    return rows


def _grid(rows: Sequence[Sequence[str]], head: Sequence[str], title: str) -> list[str]:
    widths = [max(len(r[i]) for r in (head, *rows)) for i in range(len(head))]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(x.ljust(w) for x, w in zip(cells, widths, strict=True)) + " |"

    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return [title, "", line(head), sep, *(line(r) for r in rows)]


def _mb(cells: dict[str, Any], scheme: str, size: int) -> float | None:
    v = _get(cells, f"{scheme}/{size}", "mb_per_s")
    return v * 1e6 if v is not None else None


def measure(quick: bool = False) -> dict[str, Any]:
    """Every row, in a fresh uvloop loop."""
    return uvloop.run(run_all(quick))


def main() -> None:
    section_main(__doc__, measure, table)


if __name__ == "__main__":
    main()
