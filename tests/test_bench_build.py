"""``python -m benchmarks.run --build both``: the compiled build's columns beside the pure
ones in one run (benchmarks/README.md, "The compiled build").

The quick path on the smallest case, so that it cannot rot: request/reply (1,000 timed
requests) on asyncipc-unix, its compiled twin, nats-py and the relay, and the in-process
section under both builds. No figure is asserted, only that each column ran the build
its name says (every worker reports ``asyncipc.compiled``). The compiled copy is built
once under ``build/accel`` and reused while the sources are unchanged: about 16 s then.
``make test`` runs ``make pytest-accel`` first, which builds that copy; run alone on a
fresh checkout, or after the sources changed, this pays the build first (111 s in all at
load 5 on 2 cores, the build about a minute of it on a quiet machine).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from asyncipc._build import COMPILABLE
from benchmarks._accel import COMPILED_ENV, compiled_error, setup_compiled

ROOT = Path(__file__).resolve().parent.parent
BUILD_TIME = 240  # seconds for a mypyc build of the hot modules, and the run after it


def _run(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    """``benchmarks.run --quick`` with ``args``: its output and its results file."""
    out = tmp_path / "results.json"
    path = [str(ROOT), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path)}
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--quick", "--json", str(out), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=BUILD_TIME,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done, json.loads(out.read_text())


@pytest.mark.timeout(BUILD_TIME + 10)
def test_both_builds_in_one_table(tmp_path: Path) -> None:
    done, doc = _run(
        tmp_path,
        "--build", "both",
        "--cases", "reqrep,inprocess",
        "--systems", "asyncipc-unix,nats-cb,relay",
    )  # fmt: skip
    compiled = "asyncipc-unix [compiled]"
    assert doc["systems"] == ["asyncipc-unix", compiled, "nats-cb", "relay"]
    assert doc["meta"]["asyncipc_build"] == "both"
    assert Path(doc["meta"]["compiled_copy"]) == ROOT / "build" / "accel"
    results = doc["cases"]["reqrep"]["results"]
    assert {name: cell["status"] for name, cell in results.items()} == dict.fromkeys(
        doc["systems"], "ok"
    )
    builds = {name: cell["metrics"]["asyncipc_build"] for name, cell in results.items()}
    assert builds == {"asyncipc-unix": "pure", compiled: "compiled", "nats-cb": None, "relay": None}
    # Ratios from each build's column: the pure one's, and the compiled one's.
    assert set(doc["cases"]["reqrep"]["ratios"]["p50_us"]) == {compiled, "nats-cb", "relay"}
    assert set(doc["cases"]["reqrep"]["compiled_ratios"]["p50_us"]) == {
        "asyncipc-unix",
        "nats-cb",
        "relay",
    }
    assert doc["inprocess"]["asyncipc_build"] == "pure"
    assert doc["inprocess_compiled"]["asyncipc_build"] == "compiled"
    assert doc["inprocess_compiled"]["memory_vs_queue"] > 0
    # The summary has a row for each build, named.
    summary = done.stdout.split("## Summary")[1]
    assert "| asyncipc-unix            | request/reply 64 B, round trip: p50" in summary
    assert f"| {compiled} | request/reply 64 B, round trip: p50" in summary
    assert (
        "## [compiled] in-process (one process, uvloop, 64 B, best of 5 rounds in turn; routing: 3)"
        in done.stdout
    )


def test_the_compiled_modules_are_read_from_setup_py() -> None:
    assert [p.removesuffix(".py").replace("/", ".") for p in setup_compiled()] == list(COMPILABLE)


def test_a_copy_that_is_not_compiled_is_refused(tmp_path: Path) -> None:
    """The guard every process of the compiled build runs on import (benchmarks/__init__.py):
    a copy without its extension modules exits instead of being measured as compiled."""
    shutil.copytree(ROOT / "asyncipc", tmp_path / "asyncipc", ignore=shutil.ignore_patterns("*.so"))
    shutil.copy(ROOT / "setup.py", tmp_path)
    why = compiled_error(tmp_path)
    assert why is not None
    prefix = f"{COMPILED_ENV}: not compiled in {tmp_path}: "
    assert why.startswith(prefix), why
    wanted = [p.removesuffix(".py").replace("/", ".") for p in setup_compiled()]
    assert why.removeprefix(prefix).split(", ") == sorted(wanted)
