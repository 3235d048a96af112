"""The summary as a picture: how many times better asyncipc is than each peer, per figure.

``python -m benchmarks.run`` calls :func:`draw` after writing its JSON and puts the PNG
next to it (``results/latest.json`` -> ``results/latest.png``); ``python -m
benchmarks.chart RESULTS.json [OUT.png]`` draws one from any results file.

Every bar is an *advantage*: for throughput ``asyncipc / peer``, for latency ``peer /
asyncipc``, so that right of the 1.0 line always means asyncipc is better and the bars of
throughput and latency figures read the same way. Each peer is taken at its fastest idiom
for that figure (the summary table's rule), and the bare asyncio relay gets a bar too:
left of 1.0 by how much Python itself could still do. The axis is logarithmic, so 2x
better and 2x worse are bars of the same length.

matplotlib is the ``bench`` extra's; without it :func:`draw` says so and returns None.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ._report import BASE, PEERS, REFERENCE

__all__ = ["advantages", "draw", "main"]

#: Bar colours per column, fixed so that a peer keeps its colour from run to run.
COLOURS = {"nats": "#27aae1", "zmq": "#e5613a", "redis": "#c0392b", REFERENCE: "#9e9e9e"}


def _metric(results: dict[str, Any], system: str, metric: str) -> float | None:
    cell = results.get(system)
    if not cell or cell.get("status") != "ok":
        return None
    value = cell.get("metrics", {}).get(metric)
    return float(value) if isinstance(value, int | float) and value > 0 else None


def advantages(doc: dict[str, Any]) -> list[tuple[str, dict[str, float]]]:
    """``(figure, {column: advantage})`` for every row of every case in a results file;
    columns are the peers (at their fastest idiom) and the relay reference."""
    out: list[tuple[str, dict[str, float]]] = []
    for case in doc.get("cases", {}).values():
        results = case.get("results", {})
        for row in case.get("rows", []):
            metric, higher = row["metric"], row["higher_is_better"]
            base = _metric(results, doc.get("base", BASE), metric)
            if base is None:
                continue
            bars: dict[str, float] = {}
            columns = {**{p: list(c) for p, c in PEERS.items()}, REFERENCE: [REFERENCE]}
            for name, systems in columns.items():
                values = [v for s in systems if (v := _metric(results, s, metric)) is not None]
                if not values:
                    continue
                best = max(values) if higher else min(values)
                bars[name] = base / best if higher else best / base
            if bars:
                out.append((f"{case['title']}: {row['label']}", bars))
    return out


def draw(results_json: Path, out: Path | None = None) -> Path | None:
    """Draw ``results_json``'s advantages as a PNG (default: beside it); its path, or
    None when matplotlib is missing or the file holds no comparable figure."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # no display: a file only
        import matplotlib.pyplot as plt
    except ImportError:
        print("chart: matplotlib missing (pip install -e '.[bench]'): no PNG", file=sys.stderr)
        return None
    doc = json.loads(results_json.read_text())
    rows = advantages(doc)
    if not rows:
        return None
    out = out or results_json.with_suffix(".png")
    columns = [c for c in COLOURS if any(c in bars for _, bars in rows)]
    height = 0.8 / len(columns)
    fig, ax = plt.subplots(figsize=(10, 0.9 + 0.55 * len(rows) * max(1, len(columns) / 2)))
    for i, (_, bars) in enumerate(rows):
        for j, column in enumerate(columns):
            value = bars.get(column)
            if value is None:
                continue
            y = i + (j - (len(columns) - 1) / 2) * height
            ax.barh(
                y,
                value - 1 if value >= 1 else -(1 - value),
                left=1,
                height=height,
                color=COLOURS[column],
                label=column if i == 0 or column not in ax.get_legend_handles_labels()[1] else None,
            )
            ax.annotate(
                f"{value:.2f}x",
                (value, y),
                xytext=(3 if value >= 1 else -3, 0),
                textcoords="offset points",
                va="center",
                fontsize=7,
                ha="left" if value >= 1 else "right",
            )
    ax.set_xscale("log")
    ticks = [t for t in (0.1, 0.2, 0.5, 1, 2, 5, 10) if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
    ax.set_xticks(ticks, [f"{t:g}x" for t in ticks])
    ax.minorticks_off()
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_yticks(range(len(rows)), [label for label, _ in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel(
        f"{BASE} advantage (log scale): right of 1.0 = asyncipc better, left = the column better"
    )
    meta = doc.get("meta", {})
    ax.set_title(
        f"asyncipc against each peer's fastest idiom, and the bare relay "
        f"({meta.get('commit', '?')}, {meta.get('cpus', '?')} CPUs"
        f"{', quick' if meta.get('quick') else ''})",
        fontsize=10,
    )
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles, strict=True))
    ax.legend(
        unique.values(), unique.keys(), loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8
    )
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.chart", description=__doc__)
    p.add_argument("results", type=Path, help="a results JSON of python -m benchmarks.run")
    p.add_argument("out", type=Path, nargs="?", help="the PNG (default: beside the JSON)")
    args = p.parse_args(argv)
    path = draw(args.results, args.out)
    if path is None:
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
