"""``benchmarks.run --repeat N``: the runs of a case take turns across the systems."""

from __future__ import annotations

from typing import Any

import pytest

from benchmarks import run as bench_run
from benchmarks._cases import CASES, Case, Scale
from benchmarks._procs import BenchError


class _System:
    def __init__(self, name: str, missing: str | None = None) -> None:
        self.name = name
        self.missing = missing

    def unavailable(self) -> str | None:
        return self.missing


async def test_repeats_take_turns_and_a_failing_system_drops_out(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    order: list[str] = []

    async def fake_run_cell(case: Case, system: Any, scale: Scale) -> dict[str, Any]:
        order.append(system.name)
        if system.name == "c" and order.count("c") == 2:
            raise BenchError("c broke in its second run")
        return {case.primary.metric: float(len(order))}

    monkeypatch.setattr(bench_run, "run_cell", fake_run_cell)
    case = CASES["reqrep"]
    columns: Any = {
        "a": _System("a"),
        "gone": _System("gone", missing="not installed"),
        "b": _System("b"),
        "c": _System("c"),
    }
    got = {
        name: cell async for name, cell, _ in bench_run._cells(case, columns, Scale(1, 60.0, 2), 3)
    }
    # Round by round, not system by system; c is not run again after it failed.
    assert order == ["a", "b", "c", "a", "b", "c", "a", "b"]
    assert got["gone"].status == "skipped"
    assert got["c"].status == "error"
    assert len(got["c"].runs) == 1
    metric = case.primary.metric
    # The median of each system's own runs (a lower p50 is better: the middle value).
    assert got["a"].status == "ok"
    assert got["a"].metrics[metric] == 4.0
    assert [r[metric] for r in got["b"].runs] == [2.0, 5.0, 8.0]
    assert got["b"].metrics[metric] == 5.0
