"""Durable streams: asyncipc's streams (DESIGN.md section 8) against NATS JetStream, and
the ``file://`` bus's append and tail rates, in one run, 64 B payloads.

Rows (issue 10's targets in brackets):

* **pipelined acknowledged publishes**, at most 1,000 outstanding: asyncipc
  ``stream.publish_async`` and nats-py ``js.publish_async``
  [asyncipc fsync="always" at least 1x JetStream default, at least 5x JetStream with
  ``sync_interval: always``];
* **one acknowledged publish at a time**: msgs/s and p50/p99 of ``await stream.publish`` and
  ``await js.publish``;
* **fetch and acknowledge** the messages a first process stored: ``consumer.fetch(batch)``
  and ``await msg.ack()`` against a nats-py pull consumer, the same batch
  [asyncipc at least 1.5x JetStream default];
* **file://**: one process appends with ``bus.publish`` to ``file:///dir`` while another,
  subscribed, tails the log files.

Columns: asyncipc with ``fsync="always"`` (its default: acknowledged after an fsync that
covers the record) over ``unix://`` and over ``tcp://``; asyncipc ``fsync="never"``;
asyncipc without a store (streams in memory); JetStream with its default sync (the
acknowledgement once the record is written to the OS, an fsync every 2 minutes) and with
``sync_interval: always`` (an fsync per write batch). Every cell starts a fresh broker
(``workers/asyncipc_broker.py --store DIR``, or ``nats-server -c`` with a config file) in a
fresh temporary directory under /tmp, so both systems' stores are on the same file
system; clients are ``workers/asyncipc_stream_w.py`` and ``workers/jetstream_w.py``, each
in a process of its own, on uvloop.

Run alone: ``python -m benchmarks.streams [--quick] [--json PATH]``; ``benchmarks.run``
runs it as the ``streams`` section (``--cases streams``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import sys
import tempfile
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import uvloop

import asyncipc

from ._procs import BenchError, Server, free_port, server, wait_for_tcp, wait_for_unix, worker
from ._report import section_main
from ._systems import Nats

__all__ = ["COLUMNS", "measure", "table"]

SIZE = 64
WINDOW = 1_000
BATCH = 100
#: Messages (or timed publishes) per cell in a full run; ``--quick`` divides by 10.
COUNTS = {"window": 50_000, "each": 5_000, "fetch": 50_000, "file": 100_000}
EACH_WARMUP = 200
STARTUP = 20.0
#: Seconds one cell (start, measure, stop) may take.
CELL_TIMEOUT = {False: 120.0, True: 60.0}
#: The root of every cell's temporary directory, stores included.
TMP_ROOT = "/tmp"


@dataclass(frozen=True)
class Column:
    """One configuration of one system: a row of the results table."""

    id: str
    short: str  # in the ratio table
    label: str  # in the results table
    system: Literal["asyncipc", "jetstream"]
    #: asyncipc: the stream's ``fsync`` ("" = no store); JetStream: ``sync_interval``
    #: ("" = the server's default, every 2 minutes).
    sync: str
    #: "nats": asyncipc's streams API over ``nats://`` on the JetStream server of the
    #: ``jetstream/default`` column (the link translates it: docs/streams.md, On NATS).
    transport: Literal["unix", "tcp", "nats"] = "unix"


COLUMNS = [
    Column("asyncipc/always", "asyncipc always", 'asyncipc fsync="always"', "asyncipc", "always"),
    Column(
        "asyncipc/always/tcp",
        "asyncipc always tcp",
        'asyncipc fsync="always", tcp://',
        "asyncipc",
        "always",
        "tcp",
    ),
    Column("asyncipc/never", "asyncipc never", 'asyncipc fsync="never"', "asyncipc", "never"),
    Column("asyncipc/memory", "asyncipc memory", "asyncipc, no store (memory)", "asyncipc", ""),
    Column(
        "asyncipc/nats",
        "asyncipc on nats://",
        "asyncipc over nats:// (JetStream default)",
        "asyncipc",
        "",
        "nats",
    ),
    Column(
        "jetstream/default",
        "JetStream default",
        "JetStream default (fsync every 2 min)",
        "jetstream",
        "",
    ),
    Column(
        "jetstream/always",
        "JetStream always",
        "JetStream sync_interval: always",
        "jetstream",
        "always",
    ),
]
BY_ID = {c.id: c for c in COLUMNS}
CASES = ("window", "each", "fetch")
BASE = "asyncipc/always"
NATS = "asyncipc/nats"
#: (case, metric, base column, peer column, target) for the ratio table: ``base / peer``.
#: The ``asyncipc/nats`` rows are what the nats:// translation costs against nats-py
#: on the same JetStream server.
RATIOS: list[tuple[str, str, str, str, str]] = [
    ("window", "msgs_per_s", BASE, "jetstream/default", ">= 1.0x"),
    ("window", "msgs_per_s", BASE, "jetstream/always", ">= 5x"),
    ("each", "msgs_per_s", BASE, "jetstream/default", ""),
    ("each", "msgs_per_s", BASE, "jetstream/always", ""),
    ("each", "p50_us", BASE, "jetstream/default", ""),
    ("each", "p50_us", BASE, "jetstream/always", ""),
    ("fetch", "msgs_per_s", BASE, "jetstream/default", ">= 1.5x"),
    ("fetch", "msgs_per_s", BASE, "jetstream/always", ""),
    ("window", "msgs_per_s", NATS, "jetstream/default", ""),
    ("each", "p50_us", NATS, "jetstream/default", ""),
    ("fetch", "msgs_per_s", NATS, "jetstream/default", ""),
]
CASE_LABELS = {
    "window": f"pipelined, window {WINDOW:,}",
    "each": "one at a time",
    "fetch": f"fetch {BATCH} + ack",
}


def _uses_nats(col: Column) -> bool:
    return col.system == "jetstream" or col.transport == "nats"


def _unavailable(col: Column) -> str | None:
    if _uses_nats(col):
        return Nats().unavailable()
    return None


@contextlib.asynccontextmanager
async def _asyncipc_broker(col: Column, tmp: Path) -> AsyncIterator[str]:
    if col.transport == "unix":
        path = tmp / "b.sock"
        url = f"unix://{path}"

        async def ready(s: Server) -> None:
            await wait_for_unix(path, STARTUP, s.proc, s.log)
    else:
        port = free_port()
        url = f"tcp://127.0.0.1:{port}"

        async def ready(s: Server) -> None:
            await wait_for_tcp("127.0.0.1", port, STARTUP, s.proc, s.log)

    store = ["--store", str(tmp / "store")] if col.sync else []
    argv = [sys.executable, "-m", "benchmarks.workers.asyncipc_broker", *store, url]
    async with server("broker", argv, tmp, ready):
        yield url


def nats_config(port: int, store_dir: Path, sync: str) -> str:
    """A nats-server configuration: JetStream with its store in ``store_dir``, and
    ``sync_interval`` if ``sync`` is set (nats-server >= 2.10 knows it)."""
    lines = [f"listen: 127.0.0.1:{port}", "jetstream {", f'  store_dir: "{store_dir}"']
    if sync:
        lines.append(f"  sync_interval: {sync}")
    lines.append("}")
    return "\n".join(lines) + "\n"


@contextlib.asynccontextmanager
async def _nats_server(col: Column, tmp: Path) -> AsyncIterator[str]:
    binary = Nats.binary()
    assert binary is not None
    port = free_port()
    conf = tmp / "nats.conf"
    conf.write_text(nats_config(port, tmp / "store", col.sync))

    async def ready(s: Server) -> None:
        await wait_for_tcp("127.0.0.1", port, STARTUP, s.proc, s.log)

    async with server("nats-server", [binary, "-c", str(conf)], tmp, ready):
        yield f"nats://127.0.0.1:{port}"


def _serve(col: Column, tmp: Path) -> contextlib.AbstractAsyncContextManager[str]:
    return _nats_server(col, tmp) if _uses_nats(col) else _asyncipc_broker(col, tmp)


async def _client(
    col: Column, role: str, url: str, count: int, tmp: Path, timeout: float
) -> dict[str, Any]:
    module = "jetstream_w" if col.system == "jetstream" else "asyncipc_stream_w"
    argv = ["--url", url, "--count", str(count), "--size", str(SIZE)]
    argv += ["--window", str(WINDOW), "--batch", str(BATCH), "--warmup", str(EACH_WARMUP)]
    if col.system == "asyncipc" and col.sync:
        argv += ["--fsync", col.sync]
    async with worker(role, module, role, argv, tmp) as w:
        result = await w.expect("result", timeout)
    result.pop("event", None)
    return result


def _du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.exists() else 0


async def _cell(col: Column, case: str, count: int, tmp: Path, timeout: float) -> dict[str, Any]:
    if case == "fetch":
        return await _fetch_cell(col, count, tmp, timeout)
    async with _serve(col, tmp) as url:
        result = await _client(col, case, url, count, tmp, timeout)
    result["store_bytes"] = _du(tmp / "store")  # on disk: the store was used
    return result


async def _fetch_cell(col: Column, count: int, tmp: Path, timeout: float) -> dict[str, Any]:
    """Fill the stream, stop the broker, start it again on the same store (under the
    column's own configuration), fetch: the messages are pre-stored, read back from the
    store as after any restart. JetStream fills under its default sync, so that the
    untimed fill of the ``always`` column does not take minutes; asyncipc fills under the
    column's ``fsync`` (a stream's policy is part of its configuration). Without a store
    nothing survives a restart: that column fills and fetches in one broker's life."""
    stored = _uses_nats(col) or bool(col.sync)
    fill_col = replace(col, sync="") if _uses_nats(col) else col
    async with _serve(fill_col, tmp) as url:
        filled = await _client(col, "fill", url, count, tmp, timeout)
        if not stored:
            result = await _client(col, "fetch", url, count, tmp, timeout)
    if stored:
        async with _serve(col, tmp) as url:
            result = await _client(col, "fetch", url, count, tmp, timeout)
    result["fill_msgs_per_s"] = filled["msgs_per_s"]
    result["restarted"] = stored
    result["store_bytes"] = _du(tmp / "store")
    return result


async def _file(count: int, tmp: Path, timeout: float) -> dict[str, Any]:
    """``file://``: a tail process subscribed, then an appender process publishing."""
    probe = tmp / "probe"
    probe.mkdir()
    try:
        async with asyncio.timeout(10), asyncipc.connect(f"file://{probe}"):
            pass
    except asyncipc.ConfigurationError as exc:
        return {"unavailable": f"file:// not available ({exc})"}
    except (OSError, asyncipc.AsyncIPCError) as exc:
        raise BenchError(f"file:// probe failed: {exc!r}") from exc
    bus = tmp / "bus"
    bus.mkdir()
    url = f"file://{bus}"
    argv = ["--url", url, "--count", str(count), "--size", str(SIZE), "--timeout", "10"]
    async with worker("tail", "asyncipc_stream_w", "file-tail", argv, tmp) as tail:
        await tail.expect("ready", STARTUP)
        async with worker("append", "asyncipc_stream_w", "file-append", argv, tmp) as app:
            sent = await app.expect("result", timeout)
        got = await tail.expect("result", timeout)
    received = got["count"]
    span = (got["last_ns"] - sent["start_ns"]) / 1e9
    return {
        "count": count,
        "append_msgs_per_s": sent["msgs_per_s"],
        "append_seconds": sent["seconds"],
        "tail_received": received,
        "tail_msgs_per_s": received / span if received and span > 0 else 0.0,
        "lost": count - received,
        "log_bytes": _du(bus),
    }


def _filesystem(path: str) -> str:
    """The file system ``path`` is on, as /proc/mounts names it (Linux), for the title."""
    try:
        mounts = [line.split() for line in Path("/proc/mounts").read_text().splitlines()]
    except OSError:
        return "unknown"
    real = os.path.realpath(path)
    best = max(
        (m for m in mounts if real == m[1] or real.startswith(m[1].rstrip("/") + "/")),
        key=lambda m: len(m[1]),
        default=None,
    )
    return f"{best[2]} on {best[0]}" if best else "unknown"


async def _run_cell(results: dict[str, Any], key: str, run: Any, timeout: float) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="aipcst-", dir=TMP_ROOT))
    try:
        async with asyncio.timeout(timeout):
            results[key] = await run(tmp)
    except TimeoutError:
        results[key] = {"error": f"timeout ({timeout:g} s)"}
    except BenchError as exc:
        results[key] = {"error": str(exc), "detail": exc.detail}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    done = results[key].get("error") or results[key].get("unavailable") or _brief(results[key])
    print(f"  {key:<28} {done}", file=sys.stderr, flush=True)


def _brief(m: dict[str, Any]) -> str:
    if "msgs_per_s" in m:
        return f"{m['msgs_per_s']:,.0f} msgs/s"
    if "append_msgs_per_s" in m:
        return f"append {m['append_msgs_per_s']:,.0f}, tail {m['tail_msgs_per_s']:,.0f} msgs/s"
    return "done"


async def run_all(quick: bool) -> dict[str, Any]:
    div = 10 if quick else 1
    counts = {k: max(1, v // div) for k, v in COUNTS.items()}
    timeout = CELL_TIMEOUT[quick]
    loadavg = os.getloadavg()
    cells: dict[str, Any] = {}
    for case in CASES:
        for col in COLUMNS:
            key = f"{case}/{col.id}"
            reason = _unavailable(col)
            if reason is not None:
                cells[key] = {"error": f"skipped: {reason}"}
                continue

            async def one(tmp: Path, col: Column = col, case: str = case) -> dict[str, Any]:
                return await _cell(col, case, counts[case], tmp, timeout)

            await _run_cell(cells, key, one, timeout)
    await _run_cell(cells, "file", lambda tmp: _file(counts["file"], tmp, timeout), timeout)
    return {
        "quick": quick,
        "size": SIZE,
        "window": WINDOW,
        "batch": BATCH,
        "each_warmup": EACH_WARMUP,
        "counts": counts,
        "filesystem": _filesystem(TMP_ROOT),
        "loadavg_at_start": loadavg,
        "loadavg_at_end": os.getloadavg(),
        "columns": {c.id: c.label for c in COLUMNS},
        "cells": cells,
    }


# ---------------------------------------------------------------------------------------
# The tables


def _get(cells: dict[str, Any], key: str, metric: str) -> float | None:
    m = cells.get(key)
    if not isinstance(m, dict) or "error" in m or metric not in m:
        return None
    return float(m[metric])


def _rate(v: float | None) -> str:
    if v is None:
        return "error"
    return f"{v / 1e3:,.1f}k" if v < 1e6 else f"{v / 1e6:.2f}M"


def _us(v: float | None) -> str:
    if v is None:
        return "error"
    return f"{v:,.0f} us" if v >= 100 else f"{v:.1f} us"


def _markdown(head: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in (head, *rows)) for i in range(len(head))]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(x.ljust(w) for x, w in zip(cells, widths, strict=True)) + " |"

    return [line(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)]


def table(result: dict[str, Any]) -> str:
    """The streams section as ``benchmarks.run`` prints it."""
    c: dict[str, Any] = result["cells"]
    n = result["counts"]
    load = result["loadavg_at_start"][0], result["loadavg_at_end"][0]
    head = (
        "column",
        f"{CASE_LABELS['window']} msgs/s",
        "one at a time msgs/s",
        "p50",
        "p99",
        f"{CASE_LABELS['fetch']} msgs/s",
    )
    rows = []
    for col in COLUMNS:
        rows.append(
            (
                col.label,
                _rate(_get(c, f"window/{col.id}", "msgs_per_s")),
                _rate(_get(c, f"each/{col.id}", "msgs_per_s")),
                _us(_get(c, f"each/{col.id}", "p50_us")),
                _us(_get(c, f"each/{col.id}", "p99_us")),
                _rate(_get(c, f"fetch/{col.id}", "msgs_per_s")),
            )
        )
    title = (
        f"streams: {result['size']} B, acknowledged publishes and fetch+ack, every process on "
        f"uvloop; pipelined {n['window']:,} (window {result['window']:,}), one at a time "
        f"{n['each']:,} after {result['each_warmup']} warm-up, fetch {n['fetch']:,} stored "
        f"({result['batch']} per fetch, after a broker restart); stores in {TMP_ROOT} "
        f"({result['filesystem']}); load average {load[0]:.1f} at start, {load[1]:.1f} at "
        "end; msgs/s higher is better, latency lower"
    )
    out = [title, "", *_markdown(head, rows)]

    ratio_rows = []
    for case, metric, base, peer, target in RATIOS:
        b, p = _get(c, f"{case}/{base}", metric), _get(c, f"{case}/{peer}", metric)
        value = b / p if b is not None and p else None
        what = "msgs/s" if metric == "msgs_per_s" else "p50 (lower: asyncipc faster)"
        met, shown = "", "-" if value is None else f"{value:.2f}x"
        if target and value is not None:
            goal = float(target.split()[1].rstrip("x"))
            met = "yes" if value >= goal else "NO"
            if (round(value, 2) >= goal) != (value >= goal):
                shown = f"{value:.3f}x"  # 4.996 is not 5.00: say so
        ratio_rows.append(
            (
                f"{CASE_LABELS[case]} {what}",
                f"{BY_ID[base].short} / {BY_ID[peer].short}",
                shown,
                target,
                met,
            )
        )
    out += [
        "",
        "streams: ratios",
        "",
        *_markdown(("figure", "ratio of", "value", "target", "met"), ratio_rows),
    ]

    f = c.get("file", {})
    out += [
        "",
        f"file:// ({n['file']:,} messages of {result['size']} B, append and tail in two processes)",
    ]
    if "unavailable" in f:
        out.append("  file:// not available")
    elif "error" in f:
        out.append(f"  error: {f['error']}")
    else:
        lost = f" (tail got {f['tail_received']:,} of {f['count']:,})" if f["lost"] else ""
        append, tail = _rate(f["append_msgs_per_s"]), _rate(f["tail_msgs_per_s"])
        out.append(f"  append {append} msgs/s, tail {tail} msgs/s{lost}")
    out += [f"  {k}: {v['error']}" for k, v in c.items() if isinstance(v, dict) and "error" in v]
    return "\n".join(out)


def measure(quick: bool = False) -> dict[str, Any]:
    """Every cell, in a fresh uvloop loop."""
    return uvloop.run(run_all(quick))


def main() -> None:
    section_main(__doc__, measure, table)


if __name__ == "__main__":
    main()
