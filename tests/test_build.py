"""Which build the tests run: the pure-Python sources, or the mypyc-compiled hot modules.

``make test`` runs the suite twice (Makefile, ``pytest`` and ``pytest-accel``): all of it on
the ``.py`` files with ``ASYNCIPC_EXPECT_COMPILED=0``, then a focused part on a compiled copy
with ``ASYNCIPC_EXPECT_COMPILED=1``. The guards below fail when a run is not testing what it
says it is (a compiled copy that fell back to the sources, or ``.so`` files left in place by
``make accel`` shadowing the sources of the pure run). Without the variable (a plain
``pytest``), they only check that the two lists of compiled modules agree.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from importlib import import_module
from pathlib import Path

import pytest

import asyncipc
from asyncipc._build import COMPILABLE, compiled_modules

ROOT = Path(__file__).resolve().parent.parent
EXPECT = os.environ.get("ASYNCIPC_EXPECT_COMPILED")


def _setup_list() -> list[str]:
    tree = ast.parse((ROOT / "setup.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "COMPILED":
            return [str(ast.literal_eval(e)) for e in node.value.elts]  # type: ignore[attr-defined]
    raise AssertionError("setup.py has no COMPILED list")


def test_setup_compiles_what_the_package_checks() -> None:
    paths = [name.replace(".", "/") + ".py" for name in COMPILABLE]
    assert sorted(_setup_list()) == sorted(paths)


@pytest.mark.skipif(EXPECT != "1", reason="only in the compiled run (make pytest-accel)")
def test_the_compiled_run_runs_compiled_modules() -> None:
    for name in COMPILABLE:  # imported: compiled_modules() then asks each where it came from
        import_module(name)
    assert compiled_modules() == list(COMPILABLE)
    assert asyncipc.compiled
    assert Path(asyncipc.__file__).resolve().parent == ROOT / "asyncipc"
    # The brokers the tests start in their own processes import the same copy.
    out = subprocess.run(
        [sys.executable, "-c", "import asyncipc; print(asyncipc.compiled, asyncipc.__file__)"],
        capture_output=True,
        text=True,
        check=True,
        cwd="/",
    ).stdout.split()
    assert out[0] == "True"
    assert Path(out[1]).resolve() == ROOT / "asyncipc" / "__init__.py"


@pytest.mark.skipif(EXPECT != "0", reason="only in the pure run (make pytest)")
def test_the_pure_run_runs_the_sources() -> None:
    assert not asyncipc.compiled, (
        f"compiled modules shadow the sources: {compiled_modules()}; "
        "`make pure` removes what `make accel` built in place"
    )
    assert compiled_modules() == []
