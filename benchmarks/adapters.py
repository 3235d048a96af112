"""Adapters side by side: pub -> sub throughput and request/reply p50 through each one,
next to ``unix://`` and next to the bare framework underneath (grpc.aio, aiohttp).

Every row has the same shape: the server (an ``asyncipc.Broker`` listening on what the
row needs, or the bare reference server) runs in this process on uvloop, and each client
is a worker process (``benchmarks/workers/``) speaking the usual stdin/stdout protocol.
The figures are those of the main cases (README.md): pub/sub is messages/s received, from
the publisher's first timed message to the last arrival, 64 B payloads, warm-up first;
request/reply is the p50 and p99 of one request in flight at a time, 64 B, after
untimed warm-up requests.

Each adapter contributes its rows from a module of its own (``MODULES``: the gRPC
adapter's is ``_grpc_cases.py``); this module has the ``unix://`` row every ratio is taken
against, the machinery, and the table.

Run alone: ``python -m benchmarks.adapters [--quick] [--json PATH]``; ``benchmarks.run``
runs it as the ``adapters`` section.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import shutil
import sys
import tempfile
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvloop

import asyncipc

from ._cases import Case, _pubsub_metrics
from ._procs import BenchError, Worker, worker
from ._report import section_main

__all__ = ["MODULES", "Row", "Side", "asyncipc_broker", "measure", "table"]

# This process runs gRPC servers and forks workers: gRPC's fork handlers would only log
# that they are skipped (threads are busy), once per worker. The workers exec at once.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

#: Modules with more rows (each has ``ROWS: list[Row]``), in table order.
MODULES = ["benchmarks._grpc_cases"]

SIZE = 64
PUBSUB_COUNT = 100_000
REQREP_COUNT = 5_000
REQREP_WARMUP = 500
STARTUP = 20.0
CELL_TIMEOUT = 120.0

Endpoints = dict[str, str]
"""What a row's server serves, by name: ``{"unix": "unix:///...", "grpc": "grpc://..."}``."""


@dataclass(frozen=True)
class Side:
    """One client of a row: ``python -m benchmarks.workers.<module> <role> --url <url>``,
    the URL being the server's endpoint named ``endpoint``."""

    module: str
    role: str
    endpoint: str


@dataclass(frozen=True)
class Row:
    """One line of the table. A row without ``pub``/``sub`` (or ``requester``) shows "-"
    in those columns. ``reference`` rows are the bare frameworks."""

    id: str
    label: str
    serve: Callable[[Path], AbstractAsyncContextManager[Endpoints]]
    pub: Side | None = None
    sub: Side | None = None
    responder: Side | None = None
    requester: Side | None = None
    reference: bool = False


@contextlib.asynccontextmanager
async def asyncipc_broker(tmp: Path, *listen: str) -> AsyncIterator[Endpoints]:
    """A broker in this process on ``unix://`` and each of ``listen`` (``grpc://...``)."""
    async with asyncipc.Broker() as broker:
        endpoints = {"unix": (await broker.listen(f"unix://{tmp}/b.sock")).url}
        for url in listen:
            endpoints[url.split(":", 1)[0]] = (await broker.listen(url)).url
        yield endpoints


UNIX = Row(
    "unix",
    "unix:// (asyncipc Bus)",
    lambda tmp: asyncipc_broker(tmp),
    pub=Side("asyncipc_w", "pub", "unix"),
    sub=Side("asyncipc_w", "sub", "unix"),
    responder=Side("asyncipc_w", "responder", "unix"),
    requester=Side("asyncipc_w", "requester", "unix"),
)


def rows() -> list[Row]:
    out = [UNIX]
    for name in MODULES:
        out += importlib.import_module(name).ROWS
    return out


async def _start(
    stack: AsyncExitStack, name: str, side: Side, ep: Endpoints, args: list[str], tmp: Path
) -> Worker:
    argv = ["--url", ep[side.endpoint], *args]
    return await stack.enter_async_context(worker(name, side.module, side.role, argv, tmp))


async def _pubsub(row: Row, count: int, tmp: Path) -> dict[str, Any]:
    assert row.pub is not None
    assert row.sub is not None
    common = ["--subject", "bench.x", "--count", str(count), "--size", str(SIZE)]
    async with AsyncExitStack() as stack:
        ep = await stack.enter_async_context(row.serve(tmp))
        sub = await _start(stack, "sub", row.sub, ep, common, tmp)
        await sub.expect("ready", STARTUP)
        pub = await _start(stack, "pub", row.pub, ep, common, tmp)
        await pub.expect("ready", STARTUP)
        await sub.expect("warm", STARTUP)
        await pub.send("go")
        sent = await pub.expect("result", CELL_TIMEOUT)
        result = await sub.expect("result", CELL_TIMEOUT)
    case = Case(f"{row.id}-pubsub", "", "", "pubsub", SIZE, count, 1, ())
    return _pubsub_metrics(case, count, sent, [result])


async def _reqrep(row: Row, count: int, warmup: int, tmp: Path) -> dict[str, Any]:
    assert row.requester is not None
    async with AsyncExitStack() as stack:
        ep = await stack.enter_async_context(row.serve(tmp))
        if row.responder is not None:
            responder = await _start(stack, "responder", row.responder, ep, [], tmp)
            await responder.expect("ready", STARTUP)
        args = ["--count", str(count), "--warmup", str(warmup), "--size", str(SIZE)]
        requester = await _start(stack, "requester", row.requester, ep, args, tmp)
        result = await requester.expect("result", CELL_TIMEOUT)
    result.pop("event", None)
    return result


async def _cell(run: Callable[[Path], Any]) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="aipca-", dir="/tmp"))
    try:
        metrics: dict[str, Any] = await run(tmp)
        return metrics
    except (BenchError, TimeoutError, AssertionError) as exc:
        return {"error": str(exc) or type(exc).__name__}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


async def run_all(quick: bool) -> dict[str, Any]:
    div = 10 if quick else 1
    pubsub_count, reqrep_count = PUBSUB_COUNT // div, REQREP_COUNT // div
    warmup = REQREP_WARMUP // div
    cells: dict[str, dict[str, Any]] = {}
    for row in rows():
        if row.pub is not None:
            cells[f"{row.id}/pubsub"] = await _cell(lambda t, r=row: _pubsub(r, pubsub_count, t))
        if row.requester is not None:
            cells[f"{row.id}/reqrep"] = await _cell(
                lambda t, r=row: _reqrep(r, reqrep_count, warmup, t)
            )
        print(f"  {row.id:<14} done", file=sys.stderr, flush=True)
    return {
        "quick": quick,
        "size": SIZE,
        "counts": {"pubsub": pubsub_count, "reqrep": reqrep_count, "warmup": warmup},
        "rows": {r.id: {"label": r.label, "reference": r.reference} for r in rows()},
        "cells": cells,
    }


def _ratio(m: dict[str, Any] | None, base: dict[str, Any] | None, key: str) -> str:
    if not m or not base or "error" in m or "error" in base or not base[key]:
        return "-"
    return f"{m[key] / base[key]:.2f}x"


def _value(m: dict[str, Any] | None, key: str) -> str:
    if not m:
        return "-"
    if "error" in m:
        return "error"
    v = float(m[key])
    return f"{v / 1e3:,.1f}k" if key == "msgs_per_s" else f"{v:,.0f} us"


def table(r: dict[str, Any]) -> str:
    """The adapters section as printed by ``benchmarks.run``."""
    cells: dict[str, dict[str, Any]] = r["cells"]
    head = ["row", "pub->sub msgs/s", "/ unix", "req/rep p50", "p99", "p50 / unix"]
    lines = []
    for row_id, info in r["rows"].items():
        ps, rr = cells.get(f"{row_id}/pubsub"), cells.get(f"{row_id}/reqrep")
        base_ps, base_rr = cells.get("unix/pubsub"), cells.get("unix/reqrep")
        label = info["label"] + (" [reference]" if info["reference"] else "")
        lines.append(
            [
                label,
                _value(ps, "msgs_per_s"),
                _ratio(ps, base_ps, "msgs_per_s"),
                _value(rr, "p50_us"),
                _value(rr, "p99_us"),
                _ratio(rr, base_rr, "p50_us"),
            ]
        )
    widths = [max(len(x) for x in col) for col in zip(head, *lines, strict=True)]

    def line(values: Sequence[str]) -> str:
        return "| " + " | ".join(v.ljust(w) for v, w in zip(values, widths, strict=True)) + " |"

    counts = r["counts"]
    title = (
        f"adapters: {r['size']} B; pub->sub 1 -> 1, {counts['pubsub']:,} messages "
        f"(higher is better); request/reply one at a time, {counts['reqrep']:,} timed "
        "(lower is better); server in the orchestrating process, clients in their own"
    )
    out = [title, "", line(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(x) for x in lines]
    out += [f"  {k}: {v['error']}" for k, v in cells.items() if "error" in v]
    return "\n".join(out)


def measure(quick: bool = False) -> dict[str, Any]:
    """Run every row in a fresh uvloop loop."""
    return uvloop.run(run_all(quick))


def main() -> None:
    section_main(__doc__, measure, table)


if __name__ == "__main__":
    main()
