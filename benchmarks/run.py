"""Run the benchmarks: ``python -m benchmarks.run [--quick] [--cases ...] [--systems ...]``.

Prints progress on stderr as cells finish, then the tables on stdout, and writes every
number (all repeats, latency percentiles, lost counts, versions) as JSON. ``--build
both`` measures the pure and the mypyc-compiled asyncipc in the same run, the compiled
columns named ``asyncipc-unix [compiled]`` and so on (``_accel.py``). Ctrl-C (or
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
from collections.abc import AsyncIterator, Callable, Sequence
from importlib import import_module
from pathlib import Path
from typing import Any

import uvloop

from ._accel import SUFFIX, ensure_compiled
from ._cases import CASES, Case, Scale, run_cell
from ._procs import REPO_ROOT, BenchError, run_module, running_compiled
from ._report import (
    Cell,
    median_run,
    render_inprocess,
    render_summary,
    render_tables,
    write_json,
)
from ._rest_cases import REST_SYSTEMS
from ._systems import SYSTEMS, Nats, System, compiled_twin
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


#: ``--build``: which asyncipc the asyncipc columns and sections run. ``current``: whatever
#: the checkout imports (the sources, or what ``make accel`` compiled in place), as before;
#: ``pure``: the sources, checked; ``compiled``: a compiled copy (``_accel.py``);
#: ``both``: each asyncipc column and section twice, pure and compiled, in one run.
BUILDS = ("current", "pure", "compiled", "both")
#: The JSON key of a section's compiled run (``inprocess_compiled``, ...).
COMPILED_KEY = "_compiled"


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
    p.add_argument(
        "--build",
        choices=BUILDS,
        default="current",
        help="which asyncipc runs: current = what the checkout imports (default), pure = "
        "its sources (checked), compiled = a mypyc-compiled copy under build/accel, "
        "both = pure and compiled columns side by side",
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


async def _cells(
    case: Case, columns: dict[str, System], scale: Scale, repeat: int
) -> AsyncIterator[tuple[str, Cell, float]]:
    """Each system's cell of ``case``: ``(system, cell, seconds)`` as each finishes.

    With ``repeat`` > 1 the runs take turns: a round runs every system once, then the
    next round starts. A slow minute on a shared machine then falls on one run of
    several systems, not on all the runs of one, and the medians compare like with like
    (run in blocks, our five round trips once all came out slow and the peers' did not).
    A system that fails or is unavailable is left out of the later rounds."""
    runs: dict[str, list[dict[str, Any]]] = {}
    seconds: dict[str, float] = {}
    for name, system in columns.items():
        reason = system.unavailable()
        if reason is not None:
            yield name, Cell("skipped", reason=reason), 0.0
        else:
            runs[name], seconds[name] = [], 0.0
    for round_no in range(repeat):
        for name in list(runs):
            t0 = time.monotonic()
            failure: BenchError | None = None
            try:
                runs[name].append(await run_cell(case, columns[name], scale))
            except BenchError as exc:
                failure = exc
            seconds[name] += time.monotonic() - t0
            if failure is not None:
                done = runs.pop(name)
                cell = Cell("error", reason=str(failure), detail=failure.detail, runs=done)
                yield name, cell, seconds[name]
            elif round_no == repeat - 1:
                primary = case.primary
                metrics = median_run(runs[name], primary.metric, primary.higher_is_better)
                yield name, Cell("ok", metrics=metrics, runs=runs[name]), seconds[name]


def _summary(case: Case, cell: Cell) -> str:
    if cell.status != "ok":
        return f"{cell.status}: {cell.reason}"
    m = cell.metrics
    return ", ".join(f"{r.metric}={m[r.metric]:,.1f}" for r in case.rows) + (
        f", lost={m['lost']}" if m.get("lost") else ""
    )


def _version(argv: list[str], cwd: Path | None = None) -> str | None:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False, cwd=cwd)
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
    accel``; docs/architecture.md). Asked of a child started where the workers start, as
    this process does not import it."""
    code = "import asyncipc; print('compiled' if asyncipc.compiled else 'pure')"
    return _version([sys.executable, "-c", code], cwd=REPO_ROOT)


def _columns(names: Sequence[str], build: str, root: Path | None) -> dict[str, System]:
    """The table's columns: ``names``' systems, each asyncipc one followed by its compiled
    twin (``--build both``) or replaced by it (``--build compiled``)."""
    columns: dict[str, System] = {}
    for name in names:
        system = SYSTEMS[name]
        if build != "compiled" or not system.runs_asyncipc:
            columns[name] = system
        if root is not None and system.runs_asyncipc:
            twin = compiled_twin(system, root)
            columns[twin.name] = twin
    return columns


def _builds(build: str, root: Path | None) -> list[tuple[str, Path | None]]:
    """Each build a section runs under: its JSON key's suffix and the compiled copy."""
    pure: list[tuple[str, Path | None]] = [] if build == "compiled" else [("", None)]
    return pure + ([(COMPILED_KEY, root)] if root is not None else [])


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
        "asyncipc_build": _build() if args.build == "current" else args.build,
        "compiled_copy": str(args.compiled_root) if args.compiled_root else None,
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


def _section_table(name: str, result: dict[str, Any]) -> str:
    """A section's printed table, or its error, under a ``##`` heading (starting with
    ``[compiled]`` when the result is of the compiled build's run)."""
    base = name.removesuffix(COMPILED_KEY)
    heading = "## " + (SUFFIX.strip() + " " if name != base else "")
    if "error" in result:
        title = "in-process" if base == INPROCESS else base
        return f"{heading}{title}\n\nerror: {result['error']}"
    if base == INPROCESS:
        return heading + render_inprocess(result)
    # imports asyncipc: only when the section ran
    table: Callable[[dict[str, Any]], str] = import_module(f"benchmarks.{base}").table
    return heading + table(result)


def _render(
    scale: Scale,
    cases: list[Case],
    systems: list[str],
    cells: dict[tuple[str, str], Cell],
    sections: dict[str, dict[str, Any]],
) -> str:
    parts = [render_tables(cases, systems, cells, {c.id: scale.count(c) for c in cases})]
    parts += [_section_table(name, result) for name, result in sections.items()]
    parts.append(render_summary(cases, systems, cells))
    return "\n\n".join(p for p in parts if p)


def _check_pure(build: str) -> None:
    """Exit when ``--build`` says the unnamed columns are pure and the checkout's
    ``asyncipc`` is compiled in place (``make accel``): those columns would lie."""
    if build not in ("pure", "both"):
        return
    found = _build()
    if found != "pure":
        raise SystemExit(
            f"--build {build}: the checkout's asyncipc is {found}, not pure (`make accel` "
            "compiles it in place; `make pure` removes that), or use --build current"
        )


async def amain(args: argparse.Namespace) -> int:
    chosen = _select(args.cases, ALL_CASES, "case", DEFAULT_CASES)
    cases = [CASES[c] for c in chosen if c in CASES]
    names = _select(args.systems, list(SYSTEMS), "system")
    columns = _columns(names, args.build, args.compiled_root)
    systems = list(columns)
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
            chosen_columns = {name: columns[name] for name in systems}
            async for name, cell, took in _cells(case, chosen_columns, scale, args.repeat):
                cells[case.id, name] = cell
                print(
                    f"{case.id:>9} {name:<24} {took:5.1f} s  {_summary(case, cell)}",
                    file=sys.stderr,
                    flush=True,
                )
        for name, who, cells_long, done_text in SECTIONS:
            if name not in chosen:
                continue
            for key, root in _builds(args.build, args.compiled_root):
                t0 = time.monotonic()
                try:
                    with running_compiled(root):
                        result = await _inprocess(args.quick, cells_long * scale.timeout, name)
                    if root is not None and result.get("asyncipc_build") != "compiled":
                        # Its processes check it themselves (benchmarks/__init__.py) too.
                        why = f"not the compiled build: it ran {result.get('asyncipc_build')}"
                        raise BenchError(why)
                    done = done_text(result)
                except BenchError as exc:
                    result = {"error": str(exc), "detail": exc.detail}
                    done = f"error: {exc}"
                sections[name + key] = result
                print(
                    f"{name:>9} {who + (SUFFIX if key else ''):<24} "
                    f"{time.monotonic() - t0:5.1f} s  {done}",
                    file=sys.stderr,
                    flush=True,
                )
    except asyncio.CancelledError:
        # Ctrl-C or SIGTERM: the cell's processes are stopped by now (context managers).
        for case in cases:
            for name in systems:
                cells.setdefault((case.id, name), Cell("skipped", reason="interrupted"))
        print("\ninterrupted; the cells that finished:\n", file=sys.stderr)
        print(_render(scale, cases, systems, cells, sections), flush=True)
        raise
    meta["seconds"] = round(time.monotonic() - started, 1)
    wanted = [
        name + key
        for name, *_ in SECTIONS
        if name in DEFAULT_CASES or name in chosen
        for key, _root in _builds(args.build, args.compiled_root)
    ]
    meta["complete"] = (
        not args.quick
        and set(DEFAULT_CASES) <= set(chosen)
        and names == list(SYSTEMS)
        and all(c.status == "ok" for c in cells.values())
        and all(key in sections and "error" not in sections[key] for key in wanted)
    )
    print(f"asyncipc build: {meta['asyncipc_build']}\n")
    print(_render(scale, cases, systems, cells, sections))
    first = {name: sections.get(name) for name in (INPROCESS, CHANNELS, ADAPTERS, SHM)}
    write_json(
        args.json,
        meta,
        cases,
        systems,
        cells,
        first[INPROCESS],
        channels=first[CHANNELS],
        adapters=first[ADAPTERS],
        shm=first[SHM],
    )
    for key, result in sections.items():
        if key not in first:
            _add_section(args.json, key, result)
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
    _check_pure(args.build)
    args.compiled_root = None
    if args.build in ("compiled", "both"):
        # Before the loop starts: a build (when the sources changed) takes about a minute.
        try:
            args.compiled_root = ensure_compiled()
        except RuntimeError as exc:
            raise SystemExit(str(exc)) from None

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
