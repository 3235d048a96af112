"""Run the benchmarks: ``python -m benchmarks.run [--quick] [--cases ...] [--systems ...]``.

Prints progress on stderr as cells finish, then the tables on stdout, and writes every
number (all repeats, latency percentiles, lost counts, versions) as JSON. Ctrl-C (or
SIGTERM) stops the run: every process it started is stopped, and the tables of the cells
that finished are printed.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import importlib.metadata
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import uvloop

from ._cases import CASES, Case, Scale, run_cell
from ._procs import REPO_ROOT, BenchError, run_module
from ._report import Cell, render_inprocess, render_summary, render_tables, write_json
from ._rest_cases import REST_SYSTEMS
from ._systems import SYSTEMS, Nats, System
from .chart import draw

DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "latest.json"

#: ``--systems asyncipc`` means all of its columns, ``nats`` and ``zmq`` both idioms.
ALIASES = {
    "asyncipc": ["asyncipc-unix", "asyncipc-tcp", "asyncipc-udp"],
    "nats": ["nats-cb", "nats-iter"],
    "zmq": ["zmq-copy", "zmq-nocopy"],
}

#: The REST adapter's columns (``_rest_cases.py``): the Bus over http:// and bare aiohttp.
SYSTEMS = {**SYSTEMS, **REST_SYSTEMS}
ALIASES["rest"] = ["asyncipc-unix", "asyncipc-http", "aiohttp-ws"]

#: The in-process section (``benchmarks/inprocess.py``): asyncipc alone, one process.
INPROCESS = "inprocess"
#: The channels section (``benchmarks/channels.py``): unix://, fifo://, pipe: and the
#: direct parent <-> child pipe link side by side, 64 B and 64 KiB.
CHANNELS = "channels"
#: The adapters section (``benchmarks/adapters.py``): gRPC (and HTTP) next to unix:// and
#: next to the bare frameworks under them.
ADAPTERS = "adapters"
#: The shared-memory section (``benchmarks/shm.py``): shm:// and direct shm channels next
#: to unix://, and memcpy bandwidth.
SHM = "shm"
#: The reconnect section (``benchmarks/reconnect.py``): time from a restarted broker
#: accepting to the first delivery to a subscriber connected before it was killed.
RECONNECT = "reconnect"
#: The streams section (``benchmarks/streams.py``): durable streams against NATS JetStream
#: (pipelined and one-at-a-time acknowledged publishes, fetch and ack) and file://.
STREAMS = "streams"
#: The bridge section (``benchmarks/bridge.py``): a broker bridged to NATS next to nats-py
#: straight, both ways, and requests across it.
BRIDGE = "bridge"
ALL_CASES = [*CASES, INPROCESS, CHANNELS, ADAPTERS, SHM, RECONNECT, STREAMS, BRIDGE]
#: Sections run only when ``--cases`` names them (or says ``all``). The streams section is
#: one: it about doubles a full run (a minute or more, most of it waiting on fsyncs) and
#: its figures move with whatever else is writing to the disk. The bridge section is
#: another: it measures a feature (docs/bridge.md), not asyncipc against the other
#: systems, and it would lengthen every default run.
OPT_IN: list[str] = [STREAMS, BRIDGE]
DEFAULT_CASES = [c for c in ALL_CASES if c not in OPT_IN]
#: The sections after the cells, in order: name, who the progress line names, the
#: section's backstop time-out in cells (each measures more than one cell, each bounded
#: inside), and what the progress line says once it is done.
SECTIONS: list[tuple[str, str, int, Callable[[dict[str, Any]], str]]] = [
    (INPROCESS, "asyncipc", 1, lambda r: f"memory/queue={r['memory_vs_queue']:.2f}"),
    (CHANNELS, "asyncipc", 4, lambda r: "unix, fifo, pipe, pipe direct"),
    (ADAPTERS, "asyncipc", 6, lambda r: ", ".join(r["rows"])),
    (SHM, "asyncipc", 4, lambda r: "unix vs shm, direct channel, memcpy, iceoryx2"),
    (RECONNECT, "asyncipc", 4, lambda r: "unix, tcp, nats: default options and slow reconnects"),
    (
        STREAMS,
        "both",
        8,
        lambda r: "asyncipc and JetStream: pipelined, one at a time, fetch+ack; file://",
    ),
    (BRIDGE, "both", 4, lambda r: "local <-> NATS through the bridge, nats-py straight"),
]


def _select(
    text: str | None, known: Sequence[str], what: str, default: Sequence[str] | None = None
) -> list[str]:
    if not text:
        return list(known if default is None else default)
    chosen: list[str] = []
    for name in (n.strip() for n in text.split(",") if n.strip()):
        names = list(known) if name == "all" else ALIASES.get(name, [name])
        for n in names:
            if n not in known:
                raise SystemExit(f"unknown {what} {n!r}; choose from {', '.join(known)}")
            if n not in chosen:
                chosen.append(n)
    # Keep the canonical order, so the table's columns do not depend on the flag's.
    return [k for k in known if k in chosen]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.run",
        description="asyncipc against nats-py, pyzmq and redis-py, same run, same machine.",
    )
    p.add_argument("--quick", action="store_true", help="divide message counts by 10")
    p.add_argument(
        "--cases",
        help=f"comma-separated, of: {', '.join(ALL_CASES)}; default: all but "
        f"{', '.join(OPT_IN)}; 'all' is every one",
    )
    p.add_argument(
        "--systems",
        help=f"comma-separated, of: {', '.join(SYSTEMS)}; asyncipc = its three socket "
        "columns, nats and zmq = both idioms, rest = the REST adapter's",
    )
    p.add_argument("--json", type=Path, default=DEFAULT_JSON, help="where to write results")
    p.add_argument("--repeat", type=int, default=1, help="runs per cell; the median is shown")
    p.add_argument("--timeout", type=float, help="seconds per cell (default 120, quick 60)")
    p.add_argument(
        "--fanout-procs",
        type=int,
        default=2,
        help="processes the fan-out case's 10 subscriber connections are spread over",
    )
    args = p.parse_args(argv)
    if args.repeat < 1:
        p.error("--repeat must be at least 1")
    if args.fanout_procs < 1:
        p.error("--fanout-procs must be at least 1")
    return args


def _median_run(case: Case, runs: list[dict[str, Any]]) -> dict[str, Any]:
    key = case.primary.metric
    ordered = sorted(runs, key=lambda m: m[key], reverse=case.primary.higher_is_better)
    return ordered[(len(ordered) - 1) // 2]


async def _cell(case: Case, system: System, scale: Scale, repeat: int) -> Cell:
    reason = system.unavailable()
    if reason is not None:
        return Cell("skipped", reason=reason)
    runs: list[dict[str, Any]] = []
    for _ in range(repeat):
        try:
            runs.append(await run_cell(case, system, scale))
        except BenchError as exc:
            return Cell("error", reason=str(exc), detail=exc.detail, runs=runs)
    return Cell("ok", metrics=_median_run(case, runs), runs=runs)


def _summary(case: Case, cell: Cell) -> str:
    if cell.status != "ok":
        return f"{cell.status}: {cell.reason}"
    m = cell.metrics
    return ", ".join(f"{r.metric}={m[r.metric]:,.1f}" for r in case.rows) + (
        f", lost={m['lost']}" if m.get("lost") else ""
    )


def _version(argv: list[str]) -> str | None:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


def _commit() -> str | None:
    """HEAD, with "+dirty" when the measured code differs from it (uncommitted edits)."""
    git = ["git", "-C", str(REPO_ROOT)]
    head = _version([*git, "rev-parse", "--short", "HEAD"])
    if head is None:
        return None
    changes = _version([*git, "status", "--porcelain", "--", "asyncipc", "benchmarks"])
    return f"{head}+dirty" if changes else head


def _build() -> str | None:
    """Which asyncipc the workers import: "pure" (the sources) or "compiled" (mypyc, ``make
    accel``; docs/architecture.md). Asked of a child, as this process does not import it."""
    code = "import asyncipc; print('compiled' if asyncipc.compiled else 'pure')"
    return _version([sys.executable, "-c", code])


def _meta(args: argparse.Namespace, scale: Scale) -> dict[str, Any]:
    versions: dict[str, str | None] = {}
    for dist in ("asyncipc", "nats-py", "pyzmq", "redis", "hiredis", "uvloop"):
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[dist] = None
    nats_server = Nats.binary()
    versions["nats-server"] = _version([nats_server, "--version"]) if nats_server else None
    versions["redis-server"] = _version(["redis-server", "--version"])
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "commit": _commit(),
        "python": sys.version.split()[0],
        "asyncipc_build": _build(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "loadavg_at_start": os.getloadavg(),
        "quick": args.quick,
        "repeat": args.repeat,
        "fanout_procs": scale.fanout_procs,
        "counts": {c.id: scale.count(c) for c in CASES.values()},
        "request_warmup": scale.warmup,
        "versions": versions,
    }


async def _inprocess(quick: bool, timeout: float, name: str = INPROCESS) -> dict[str, Any]:
    """The in-process section (or ``name``'s: ``benchmarks/<name>.py``, which writes its
    results with ``--json``), in a child process of its own (a fresh uvloop loop, and the
    same stop-on-timeout/Ctrl-C guarantee as every other process of the run)."""
    with tempfile.TemporaryDirectory(prefix="aipcb-") as tmp:
        out = Path(tmp) / f"{name}.json"
        args = ["--json", str(out), *(["--quick"] if quick else [])]
        try:
            async with asyncio.timeout(timeout):
                await run_module(name, f"benchmarks.{name}", args, Path(tmp))
        except TimeoutError:
            raise BenchError(f"timeout ({timeout:g} s)") from None
        result: dict[str, Any] = json.loads(out.read_text())
        return result


def _render(
    args: argparse.Namespace,
    scale: Scale,
    cases: list[Case],
    systems: list[str],
    cells: dict[tuple[str, str], Cell],
    inprocess: dict[str, Any] | None,
    channels: dict[str, Any] | None = None,
    adapters: dict[str, Any] | None = None,
    shm: dict[str, Any] | None = None,
    reconnect: dict[str, Any] | None = None,
    streams: dict[str, Any] | None = None,
    bridge: dict[str, Any] | None = None,
) -> str:
    parts = [render_tables(cases, systems, cells, {c.id: scale.count(c) for c in cases})]
    if inprocess is not None:
        if "error" in inprocess:
            parts.append(f"## in-process\n\nerror: {inprocess['error']}")
        else:
            parts.append("## " + render_inprocess(inprocess))
    if channels is not None:
        if "error" in channels:
            parts.append(f"## channels\n\nerror: {channels['error']}")
        else:
            from .channels import table  # imports asyncipc: only when it ran

            parts.append("## " + table(channels))
    if adapters is not None:
        if "error" in adapters:
            parts.append(f"## adapters\n\nerror: {adapters['error']}")
        else:
            from .adapters import table as adapters_table

            parts.append("## " + adapters_table(adapters))
    if shm is not None:
        if "error" in shm:
            parts.append(f"## shm\n\nerror: {shm['error']}")
        else:
            from .shm import table as shm_table

            parts.append("## " + shm_table(shm))
    if reconnect is not None:
        if "error" in reconnect:
            parts.append(f"## reconnect\n\nerror: {reconnect['error']}")
        else:
            from .reconnect import table as reconnect_table

            parts.append("## " + reconnect_table(reconnect))
    if streams is not None:
        if "error" in streams:
            parts.append(f"## streams\n\nerror: {streams['error']}")
        else:
            from .streams import table as streams_table

            parts.append("## " + streams_table(streams))
    if bridge is not None:
        if "error" in bridge:
            parts.append(f"## bridge\n\nerror: {bridge['error']}")
        else:
            from .bridge import table as bridge_table

            parts.append("## " + bridge_table(bridge))
    parts.append(render_summary(cases, systems, cells))
    return "\n\n".join(p for p in parts if p)


async def amain(args: argparse.Namespace) -> int:
    chosen = _select(args.cases, ALL_CASES, "case", DEFAULT_CASES)
    cases = [CASES[c] for c in chosen if c in CASES]
    systems = _select(args.systems, list(SYSTEMS), "system")
    scale = Scale(
        divisor=10 if args.quick else 1,
        timeout=args.timeout or (60.0 if args.quick else 120.0),
        fanout_procs=args.fanout_procs,
    )
    meta = _meta(args, scale)
    print(f"asyncipc build: {meta['asyncipc_build']}", file=sys.stderr)
    cells: dict[tuple[str, str], Cell] = {}
    sections: dict[str, dict[str, Any]] = {}
    started = time.monotonic()
    try:
        for case in cases:
            for name in systems:
                t0 = time.monotonic()
                cell = await _cell(case, SYSTEMS[name], scale, args.repeat)
                cells[case.id, name] = cell
                print(
                    f"{case.id:>9} {name:<14} {time.monotonic() - t0:5.1f} s  "
                    f"{_summary(case, cell)}",
                    file=sys.stderr,
                    flush=True,
                )
        for name, who, cells_long, done_text in SECTIONS:
            if name not in chosen:
                continue
            t0 = time.monotonic()
            try:
                result = await _inprocess(args.quick, cells_long * scale.timeout, name)
                done = done_text(result)
            except BenchError as exc:
                result = {"error": str(exc), "detail": exc.detail}
                done = f"error: {exc}"
            sections[name] = result
            print(
                f"{name:>9} {who:<14} {time.monotonic() - t0:5.1f} s  {done}",
                file=sys.stderr,
                flush=True,
            )
    except asyncio.CancelledError:
        # Ctrl-C or SIGTERM: the cell's processes are stopped by now (context managers).
        inprocess, channels, adapters, shm, reconnect, streams, bridge = (
            sections.get(name) for name, *_ in SECTIONS
        )
        for case in cases:
            for name in systems:
                cells.setdefault((case.id, name), Cell("skipped", reason="interrupted"))
        print("\ninterrupted; the cells that finished:\n", file=sys.stderr)
        print(
            _render(
                args,
                scale,
                cases,
                systems,
                cells,
                inprocess,
                channels,
                adapters,
                shm,
                reconnect,
                streams,
                bridge,
            ),
            flush=True,
        )
        raise
    inprocess, channels, adapters, shm, reconnect, streams, bridge = (
        sections.get(name) for name, *_ in SECTIONS
    )
    meta["seconds"] = round(time.monotonic() - started, 1)
    meta["complete"] = (
        not args.quick
        and set(DEFAULT_CASES) <= set(chosen)
        and systems == list(SYSTEMS)
        and all(c.status == "ok" for c in cells.values())
        and inprocess is not None
        and "error" not in inprocess
        and channels is not None
        and "error" not in channels
        and adapters is not None
        and "error" not in adapters
        and shm is not None
        and "error" not in shm
        and reconnect is not None
        and "error" not in reconnect
        and (STREAMS not in chosen or (streams is not None and "error" not in streams))
        and (BRIDGE not in chosen or (bridge is not None and "error" not in bridge))
    )
    print(f"asyncipc build: {meta['asyncipc_build']}\n")
    print(
        _render(
            args,
            scale,
            cases,
            systems,
            cells,
            inprocess,
            channels,
            adapters,
            shm,
            reconnect,
            streams,
            bridge,
        )
    )
    write_json(
        args.json,
        meta,
        cases,
        systems,
        cells,
        inprocess,
        channels=channels,
        adapters=adapters,
        shm=shm,
    )
    if reconnect is not None:
        _add_section(args.json, RECONNECT, reconnect)
    if streams is not None:
        _add_section(args.json, STREAMS, streams)
    if bridge is not None:
        _add_section(args.json, BRIDGE, bridge)
    print(f"\nfull results: {args.json} ({meta['seconds']:.0f} s)", file=sys.stderr)
    picture = draw(args.json)
    if picture is not None:
        print(f"chart: {picture}", file=sys.stderr)
    return 0


def _add_section(path: Path, name: str, result: dict[str, Any]) -> None:
    """Put a section's results in the JSON file ``write_json`` wrote (it has parameters
    for the sections that came before this one)."""
    doc = json.loads(path.read_text())
    doc[name] = result
    path.write_text(json.dumps(doc, indent=2) + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)

    async def run() -> int:
        # SIGTERM is handled like Ctrl-C: cancel, so that every process is stopped.
        task = asyncio.current_task()
        assert task is not None
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
        return await amain(args)

    try:
        # uvloop here too, like every process the run starts: the orchestrator is idle
        # while a cell runs, but it shares the 2 cores with the measured processes.
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(run())
    except KeyboardInterrupt:
        return 130
    except asyncio.CancelledError:
        return 128 + signal.SIGTERM


if __name__ == "__main__":
    sys.exit(main())
