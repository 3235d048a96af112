"""Results: the cells of a run, the printed tables and the JSON file.

Ratios compare asyncipc over a Unix socket with each peer, because ratios are what
survive a change of machine; the absolute numbers of a shared 2-core box do not. A ratio
is always ``asyncipc-unix / system`` of the same figure: for a throughput (higher is
better) above 1 means asyncipc is faster, for a latency (lower is better) below 1 does.

A peer with two common idioms has a column for each (``PEERS``); the summary compares
asyncipc with the faster of them in each figure, since a user who cares picks that one.
Every column is also read against the bare relay (``relay``, the reference): the share
of what Python on asyncio does at all here, 1.00 being as fast as the relay, whichever
way the figure goes.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from ._accel import SUFFIX
from ._cases import Case, Row

__all__ = [
    "BASE",
    "PEERS",
    "REFERENCE",
    "Cell",
    "bases",
    "render_inprocess",
    "render_summary",
    "render_tables",
    "write_json",
]

#: The column every ratio is computed from, and the peers it is compared with: each
#: peer's columns, one per idiom (the summary takes the fastest of them per figure).
BASE = "asyncipc-unix"
PEERS: dict[str, tuple[str, ...]] = {
    "nats": ("nats-cb", "nats-iter"),
    "zmq": ("zmq-copy", "zmq-nocopy"),
    "redis": ("redis",),
}
#: The bare asyncio relay (``workers/relay.py``): what Python can do at all, the column
#: every figure is also read against.
REFERENCE = "relay"


def bases(systems: Sequence[str]) -> list[str]:
    """The run's base columns: ``asyncipc-unix``, its compiled twin (``--build``), or both,
    pure first. A case table's ratios are computed from the first; the summary has a
    row per figure for each."""
    return [b for b in (BASE, BASE + SUFFIX) if b in systems]


#: Longest skip or error reason shown in a table (the JSON has all of it).
REASON_WIDTH = 90


@dataclass
class Cell:
    """One case on one system: its metrics (the median run), or why there are none."""

    status: Literal["ok", "error", "skipped"]
    metrics: dict[str, Any] = field(default_factory=dict)
    reason: str = ""
    detail: str = ""  # the failing process's log tail, for the JSON only
    runs: list[dict[str, Any]] = field(default_factory=list)


def median_run(runs: Sequence[dict[str, Any]], key: str, higher_is_better: bool) -> dict[str, Any]:
    """The run whose ``key`` is the median of ``runs`` (of an even number, the better of
    the two middle ones): what a repeated cell or a repeated pair reports."""
    ordered = sorted(runs, key=lambda run: float(run[key]), reverse=higher_is_better)
    return ordered[(len(ordered) - 1) // 2]


def _si(value: float) -> str:
    for factor, suffix in ((1e6, "M"), (1e3, "k")):
        if value >= factor:
            return f"{value / factor:.3g}{suffix}"
    return f"{value:.3g}"


def _value(row: Row, value: float) -> str:
    if row.metric.endswith("_us"):
        return f"{value:.0f} us" if value >= 100 else f"{value:.1f} us"
    return _si(value)


def _reason(cell: Cell) -> str:
    text = f"{cell.status}: {cell.reason}"
    return text if len(text) <= REASON_WIDTH else text[: REASON_WIDTH - 3] + "..."


def ratio_value(row: Row, base: Cell | None, other: Cell | None) -> float | None:
    """``asyncipc-unix / other`` for ``row``'s metric, or None when either is missing."""
    if base is None or other is None or base.status != "ok" or other.status != "ok":
        return None
    b, o = base.metrics[row.metric], other.metrics[row.metric]
    return b / o if o else None


def ratio(row: Row, base: Cell | None, other: Cell | None) -> str:
    value = ratio_value(row, base, other)
    return "-" if value is None else f"{value:.2f}x"


def share_value(row: Row, reference: Cell | None, cell: Cell | None) -> float | None:
    """``cell``'s figure as a share of the bare relay's: system / relay for a throughput,
    relay / system for a latency, so that 1.00 is always "as fast as the relay" and lower
    always slower; None when either is missing."""
    if reference is None or cell is None or reference.status != "ok" or cell.status != "ok":
        return None
    c, r = cell.metrics[row.metric], reference.metrics[row.metric]
    if row.higher_is_better:
        return c / r if r else None
    return r / c if c else None


def _share(row: Row, reference: Cell | None, cell: Cell | None) -> str:
    value = share_value(row, reference, cell)
    return "-" if value is None else f"{value:.2f}"


def fastest(row: Row, cells: Sequence[tuple[str, Cell | None]]) -> tuple[str, Cell] | None:
    """The column with the best ``row`` figure among ``cells`` (a peer's idioms)."""
    ok = [(name, c) for name, c in cells if c is not None and c.status == "ok"]
    if not ok:
        return None
    sign = 1 if row.higher_is_better else -1
    return max(ok, key=lambda nc: sign * nc[1].metrics[row.metric])


def _verdict(row: Row) -> str:
    if row.higher_is_better:
        return "higher is better; ratio > 1: asyncipc-unix faster"
    return "LOWER is better; ratio < 1: asyncipc-unix faster"


def _markdown(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(header), rule, *(line(r) for r in rows)])


def _case_table(
    case: Case, systems: Sequence[str], cells: dict[tuple[str, str], Cell], count: int
) -> str:
    pubsub = case.pattern == "pubsub"
    repeated = any(len(cells[case.id, s].runs) > 1 for s in systems)
    base_name = next(iter(bases(systems)), "")
    base = cells.get((case.id, base_name)) if base_name else None
    reference = cells.get((case.id, REFERENCE)) if REFERENCE in systems else None

    header = ["system", *(r.label for r in case.rows)]
    if pubsub:
        header += ["MB/s", "lost"]
    if repeated:
        header.append(f"{case.primary.label} min..max")
    if base is not None:
        header += [f"{base_name} / system, {r.label}" for r in case.rows]
    if reference is not None:
        header += [f"share of relay, {r.label}" for r in case.rows]

    rows: list[list[str]] = []
    for name in systems:
        cell = cells[case.id, name]
        if cell.status == "ok":
            m = cell.metrics
            row = [name, *(_value(r, m[r.metric]) for r in case.rows)]
            if pubsub:
                lost = m["lost"]
                row += [
                    f"{m['mb_per_s']:.1f}",
                    f"{lost} of {m['expected']} ({lost / m['expected']:.1%})" if lost else "0",
                ]
            if repeated:
                values = sorted(r[case.primary.metric] for r in cell.runs)
                spread = f"{_value(case.primary, values[0])}..{_value(case.primary, values[-1])}"
                row.append(f"{spread} ({len(values)} run{'s' if len(values) > 1 else ''})")
        else:
            width = len(case.rows) + (2 if pubsub else 0) + (1 if repeated else 0)
            row = [name, _reason(cell), *["-"] * (width - 1)]
        if base is not None:
            if name == base_name:
                row += ["(base)"] * len(case.rows)
            else:
                row += [ratio(r, base, cell) for r in case.rows]
        if reference is not None:
            row += [_share(r, reference, cell) for r in case.rows]
        rows.append(row)

    unit = "microseconds per round trip" if not pubsub else "messages/s received"
    verdicts = sorted({_verdict(r) for r in case.rows})
    if not pubsub:
        counted = f"{count:,} timed requests"
    elif case.subscribers > 1:
        counted = f"{count:,} messages x {case.subscribers} subscribers"
    else:
        counted = f"{count:,} messages"
    heading = f"## {case.title} ({case.id}, {counted})"
    notes = [f"   {case.what}", f"   {unit}: {'; '.join(verdicts)}"]
    if reference is not None:
        notes.append(
            "   share of relay: the figure as a fraction of the bare asyncio relay's "
            "(1.00 = as fast as Python relays bytes at all here; higher is better)"
        )
    return "\n".join([heading, *notes, "", _markdown(header, rows)])


def render_tables(
    cases: Sequence[Case],
    systems: Sequence[str],
    cells: dict[tuple[str, str], Cell],
    counts: dict[str, int],
) -> str:
    """One table per case: each system's figures, lost messages, and the ratios."""
    return "\n\n".join(_case_table(c, systems, cells, counts[c.id]) for c in cases)


def render_summary(
    cases: Sequence[Case], systems: Sequence[str], cells: dict[tuple[str, str], Cell]
) -> str:
    """Every ratio of the run in one table: rows are figures, columns are peers, each at
    its fastest idiom for that figure (named in brackets when it has several), then
    asyncipc-unix's and each peer's share of the bare relay. With the compiled build in
    the run (``--build``), a first column names the asyncipc-unix column (build) each
    row's ratios are computed from, and both builds have their row."""
    peers = {p: [c for c in cols if c in systems] for p, cols in PEERS.items()}
    peers = {p: cols for p, cols in peers.items() if cols}
    names = bases(systems)
    if not names or not peers:
        return ""
    named = names != [BASE]
    has_reference = REFERENCE in systems
    rows = []
    for case, r, base_name in ((c, r, b) for c in cases for r in c.rows for b in names):
        base = cells.get((case.id, base_name))
        reference = cells.get((case.id, REFERENCE)) if has_reference else None
        ratios, shares = [], []
        for cols in peers.values():
            best = fastest(r, [(c, cells.get((case.id, c))) for c in cols])
            if best is None:
                ratios.append("-")
                shares.append("-")
                continue
            name, cell = best
            which = f" ({name.split('-', 1)[1]})" if len(cols) > 1 else ""
            ratios.append(ratio(r, base, cell) + which)
            shares.append(_share(r, reference, cell))
        row = [
            *([base_name] if named else []),
            f"{case.title}: {r.label}",
            "higher" if r.higher_is_better else "LOWER",
            *ratios,
        ]
        if has_reference:
            row += [_share(r, reference, base), *shares]
        rows.append(row)
    if not rows:  # only sections without peer columns (inprocess, channels, adapters) ran
        return ""
    who = "asyncipc" if named else BASE
    header = [*(["asyncipc column"] if named else []), "figure", "better"]
    header += [f"{who} / {p}" for p in peers]
    if has_reference:
        header += [f"{who} share of relay", *(f"{p} share" for p in peers)]
    title = (
        f"## Summary: {who} / peer for each figure, against the peer's fastest idiom "
        "(in brackets). Throughput: > 1 means asyncipc is faster. Latency (LOWER is "
        "better): < 1 means asyncipc is faster."
    )
    if has_reference:
        title += " Share of relay: the figure as a fraction of the bare asyncio relay's."
    return f"{title}\n\n{_markdown(header, rows)}"


def render_inprocess(r: dict[str, Any]) -> str:
    """The in-process section (``benchmarks/inprocess.py``'s results)."""
    rows = [
        ("memory:// publish -> async for", r["memory_pubsub_msgs_per_s"] / 1e6, "M msg/s"),
        ("asyncio.Queue reference", r["asyncio_queue_msgs_per_s"] / 1e6, "M msg/s"),
        ("memory:// / asyncio.Queue", r["memory_vs_queue"], "x"),
        ("memory:// publish -> next_batch", r["memory_batches_msgs_per_s"] / 1e6, "M msg/s"),
        ("next_batch / asyncio.Queue", r["batches_vs_queue"], "x"),
        ("publish, 0 unrelated subs", r["publish_0_unrelated_per_s"] / 1e6, "M msg/s"),
        ("publish, 10,000 unrelated subs", r["publish_10k_unrelated_per_s"] / 1e6, "M msg/s"),
        ("10k / 0 (1.00 = no slowdown)", r["routing_10k_vs_0"], "x"),
    ]
    lines = ["in-process (one process, uvloop, 64 B, best of 5 rounds in turn; routing: 3)"]
    lines += [f"  {name:<34}{value:8.3f} {unit}" for name, value, unit in rows]
    return "\n".join(lines)


def write_json(
    path: Path,
    meta: dict[str, Any],
    cases: Sequence[Case],
    systems: Sequence[str],
    cells: dict[tuple[str, str], Cell],
    inprocess: dict[str, Any] | None,
    *,
    channels: dict[str, Any] | None = None,
    adapters: dict[str, Any] | None = None,
    shm: dict[str, Any] | None = None,
) -> None:
    base_name = next(iter(bases(systems)), BASE)
    doc = {
        "meta": meta,
        "systems": list(systems),
        "base": base_name,
        "peers": {p: list(cols) for p, cols in PEERS.items()},
        "reference": REFERENCE,
        "cases": {
            case.id: {
                "title": case.title,
                "what": case.what,
                "pattern": case.pattern,
                "size": case.size,
                "subscribers": case.subscribers,
                "rows": [asdict(r) for r in case.rows],
                "results": {s: asdict(cells[case.id, s]) for s in systems},
                "shares_of_relay": {
                    r.metric: {
                        s: share_value(r, cells.get((case.id, REFERENCE)), cells[case.id, s])
                        for s in systems
                    }
                    for r in case.rows
                },
                **{
                    key: {
                        r.metric: {
                            s: ratio_value(r, cells.get((case.id, b)), cells[case.id, s])
                            for s in systems
                            if s != b
                        }
                        for r in case.rows
                    }
                    for key, b in zip(("ratios", "compiled_ratios"), bases(systems), strict=False)
                },
            }
            for case in cases
        },
        "inprocess": inprocess,
        "channels": channels,
        "adapters": adapters,
        "shm": shm,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2) + "\n")


def section_main(
    doc: str | None,
    measure: Callable[[bool], dict[str, Any]],
    table: Callable[[dict[str, Any]], str],
    quick_help: str | None = None,
) -> None:
    """``python -m benchmarks.<section> [--quick] [--json FILE]``: measure, print the
    table, and write the results as JSON if asked; the same for every section."""
    parser = argparse.ArgumentParser(description=(doc or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    results = measure(args.quick)
    if "asyncipc" in sys.modules:  # which build it measured, checked by benchmarks.run
        results["asyncipc_build"] = "compiled" if sys.modules["asyncipc"].compiled else "pure"
    print(table(results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
