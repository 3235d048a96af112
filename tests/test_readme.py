"""The README's examples, run as a new user would paste them: the Python program as a
file, the shell block as a script, each in a fresh process against real brokers."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
GUARD = 60.0  # seconds: only a guard against a hang, never a measurement


def block(language: str, containing: str) -> str:
    """The one fenced ``language`` block of the README that contains ``containing``."""
    found = [
        text
        for text in re.findall(rf"^```{language}\n(.*?)^```$", README, re.M | re.S)
        if containing in text
    ]
    assert len(found) == 1, f"{len(found)} {language} blocks contain {containing!r}"
    return found[0]


def env(tmp_path: Path) -> dict[str, str]:
    """Our environment without asyncipc's variables, and an ``asyncipc`` command on the PATH
    that runs this interpreter (and so this checkout: PYTHONPATH is kept)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "asyncipc"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m asyncipc "$@"\n')
    shim.chmod(shim.stat().st_mode | stat.S_IXUSR)
    result = {k: v for k, v in os.environ.items() if not k.startswith("ASYNCIPC_")}
    result["PATH"] = f"{bin_dir}{os.pathsep}{result.get('PATH', '')}"
    return result


def test_python_program_runs_and_ends(tmp_path: Path) -> None:
    program = tmp_path / "main.py"
    program.write_text(block("python", "asyncio.run(main())"))
    done = subprocess.run(
        [sys.executable, str(program)],
        capture_output=True,
        text=True,
        env=env(tmp_path),
        cwd=tmp_path,
        timeout=GUARD,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "Price(sku='sku-1', total=19.98)",
        "orders.created b'{\"id\": 7}' {'trace': 'abc'}",
    ]


def test_shell_block_runs_as_a_script(tmp_path: Path) -> None:
    script = block("sh", "asyncipc wait")
    # The one change: a socket of this test's own, not a path other runs may share.
    url = "unix:///tmp/asyncipc-demo.sock"
    assert url in script
    script = script.replace(url, f"unix://{tmp_path}/demo.sock")
    done = subprocess.run(
        ["bash", "-c", script],
        capture_output=True,
        text=True,
        env=env(tmp_path),
        cwd=tmp_path,
        timeout=GUARD,
    )
    assert done.returncode == 0, done.stderr  # the broker's exit status, after its drain
    assert done.stdout.splitlines() == [
        f"listening on unix://{tmp_path}/demo.sock",  # the broker's
        '[orders.created] {"id": 7}',  # the subscriber's
    ]
    assert "asyncipc request: no responders for request on 'pricing.quote'" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "demo.sock").exists()
