"""``asyncipc top``: the broker's live view, frames printed against a real broker process."""

from __future__ import annotations

import asyncio
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

import asyncipc
from asyncipc.cli._top import CLEAR

from .test_cli import CLI, ROOT, TOKEN, BrokerProc, cli_env, run


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[BrokerProc]:
    proc = BrokerProc(
        f"unix://{tmp_path}/b.sock", log=tmp_path / "broker.log", args=["--token", TOKEN]
    )
    yield proc
    proc.stop()


async def test_frames_show_connections_subjects_and_rates(broker: BrokerProc) -> None:
    async with (
        asyncipc.connect(broker.url, token=TOKEN, name="orders-svc") as svc,
        asyncipc.connect(broker.url, token=TOKEN, name="till\x1b[2J") as till,
    ):
        sub = svc.subscribe("orders.>")
        await svc.flush()
        stop = asyncio.Event()

        async def traffic() -> None:
            while not stop.is_set():
                await till.publish("orders.created", b"{}")
                await till.flush()
                while sub.pending:
                    await sub.next_msg(timeout=5)
                await asyncio.sleep(0.005)

        feeding = asyncio.create_task(traffic())
        try:
            args = ("top", "--frames", "2", "--interval", "0.5", "--url", broker.url)
            done = await asyncio.to_thread(run, *args, env=cli_env(ASYNCIPC_TOKEN=TOKEN))
        finally:
            stop.set()
            await feeding
    assert done.returncode == 0, done.stderr
    frames = done.stdout.split("\n\nasyncipc top - ")
    assert len(frames) == 2  # into a pipe: frames one after the other, no screen clearing
    assert CLEAR not in done.stdout
    assert "\x1b" not in done.stdout  # the client's escape is shown escaped, not obeyed
    last = frames[-1]
    assert "orders-svc" in last
    assert "till\\x1b[2J" in last
    assert "CID" in last
    assert "TRANSPORT" in last
    # The second frame has a rate for the subject the till publishes on.
    row = next(line for line in last.splitlines() if line.startswith("orders.created"))
    rate = float(row.split()[1])
    assert rate > 0, row


def test_once_and_errors(broker: BrokerProc, tmp_path: Path) -> None:
    done = run("top", "--once", "--url", broker.url, env=cli_env(ASYNCIPC_TOKEN=TOKEN))
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("asyncipc top - unix://")
    assert "connections 1" in done.stdout  # the top command's own
    done = run("top", "--once", "--url", broker.url, env=cli_env())
    assert done.returncode == 2
    assert "token" in done.stderr
    done = run("top", "--once", "--frames", "2", "--url", broker.url)
    assert done.returncode == 2  # one or the other


def test_ctrl_c_ends_a_live_view(broker: BrokerProc) -> None:
    proc = subprocess.Popen(
        [*CLI, "top", "--interval", "0.2", "--url", broker.url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(ASYNCIPC_TOKEN=TOKEN),
        cwd=ROOT,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().startswith("asyncipc top - ")
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
