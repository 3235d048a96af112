"""benchmarks/chart.py: the summary's ratios as a PNG, from a results file of the run."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

from benchmarks.chart import advantages, draw, main

RESULTS = Path(__file__).resolve().parent.parent / "benchmarks" / "results"
SAMPLE = RESULTS / "2026-12-06-2cpu-vm.json"  # a complete full run, committed


def _case(metric: str, higher: bool, values: dict[str, float | None]) -> dict[str, object]:
    results = {
        system: {"status": "ok", "metrics": {metric: value}}
        if value is not None
        else {"status": "error", "metrics": {}, "reason": "boom"}
        for system, value in values.items()
    }
    rows = [{"label": metric, "metric": metric, "higher_is_better": higher}]
    return {"title": "t", "rows": rows, "results": results}


def test_advantage_is_better_than_one_whichever_way_the_figure_goes() -> None:
    doc = {
        "cases": {
            "rate": _case(
                "msgs_per_s",
                True,
                {"asyncipc-unix": 300.0, "nats-cb": 100.0, "nats-iter": 150.0, "relay": 600.0},
            ),
            "latency": _case(
                "p50_us", False, {"asyncipc-unix": 100.0, "nats-cb": 250.0, "nats-iter": 200.0}
            ),
        }
    }
    (rate_label, rate), (lat_label, lat) = advantages(doc)
    assert rate_label == "t: msgs_per_s"
    assert lat_label == "t: p50_us"
    # Each peer at its fastest idiom: nats-iter's 150 msgs/s, nats-iter's 200 us.
    assert rate == {"nats": 2.0, "relay": 0.5}
    assert lat == {"nats": 2.0}


def test_failed_or_missing_cells_give_no_bar() -> None:
    doc = {
        "cases": {
            "a": _case("msgs_per_s", True, {"asyncipc-unix": None, "nats-cb": 1.0}),
            "b": _case("msgs_per_s", True, {"asyncipc-unix": 5.0, "redis": None}),
        }
    }
    assert advantages(doc) == []


def test_the_committed_run_draws_a_png(tmp_path: Path) -> None:
    copy = tmp_path / "run.json"
    shutil.copy(SAMPLE, copy)
    labels = [label for label, _ in advantages(json.loads(copy.read_text()))]
    assert "pub/sub 64 B, 1 -> 1: msgs/s" in labels
    out = draw(copy)
    assert out == tmp_path / "run.png"
    head = out.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", head[16:24])
    assert width > 600
    assert height > 300


def test_command_line(tmp_path: Path) -> None:
    out = tmp_path / "chart.png"
    assert main([str(SAMPLE), str(out)]) == 0
    assert out.stat().st_size > 10_000
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({"cases": {}}))
    assert main([str(empty)]) == 1
    assert not (tmp_path / "empty.png").exists()
