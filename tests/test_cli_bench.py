"""``asyncipc bench``: pub/sub and request/reply against a real broker process."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

import asyncipc

from .test_cli import TOKEN, BrokerProc, cli_env, run


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[str]:
    proc = BrokerProc(f"unix://{tmp_path}/b.sock", log=tmp_path / "broker.log")
    try:
        yield proc.urls[0]
    finally:
        proc.stop()


def bench(url: str, *args: str) -> tuple[int, str, str]:
    done = run("bench", *args, "--url", url, env=cli_env())
    return done.returncode, done.stdout, done.stderr


def test_pubsub_counts_every_delivery_to_every_subscriber(broker: str) -> None:
    code, out, err = bench(
        broker, "pubsub", "--pub", "2", "--sub", "3", "--msgs", "3001", "--size", "100", "--json"
    )
    assert code == 0, err
    doc = json.loads(out)
    assert doc["mode"] == "pubsub"
    assert doc["lost"] == 0
    pubs = [s for s in doc["sides"] if s["role"] == "pub"]
    subs = [s for s in doc["sides"] if s["role"] == "sub"]
    assert sorted(s["msgs"] for s in pubs) == [1500, 1501]  # split, none dropped
    assert [s["msgs"] for s in subs] == [3001, 3001, 3001]
    assert doc["aggregate"]["sub"]["msgs"] == 9003
    assert all(s["msgs_per_s"] > 0 for s in doc["sides"])


def test_reqrep_measures_every_request(broker: str) -> None:
    code, out, err = bench(
        broker, "reqrep", "--clients", "2", "--responders", "2", "--msgs", "301", "--json"
    )
    assert code == 0, err
    doc = json.loads(out)
    sides = doc["sides"]
    assert sorted(s["msgs"] for s in sides) == [150, 151]
    latency = doc["aggregate"]["latency"]
    assert 0 < latency["p50_us"] <= latency["p90_us"] <= latency["p99_us"] <= latency["max_us"]


def test_table_and_progress_bar(broker: str) -> None:
    code, out, err = bench(broker, "pubsub", "--msgs", "500", "--progress")
    assert code == 0, err
    assert out.startswith("pubsub on 'bench.test' at unix://")
    assert "sub all" in out
    assert "msgs/s" in out
    assert "100% 500/500" in err  # the bar's last redraw
    code, out, err = bench(broker, "pubsub", "--msgs", "500", "--no-progress")
    assert code == 0, err
    assert "%" not in err


async def test_reqrep_against_an_existing_service(broker: str) -> None:
    async with asyncipc.connect(broker) as bus:

        @bus.handler("pricing.quote")
        async def quote(msg: asyncipc.Message) -> bytes:
            return b"ok"

        await bus.flush()
        code, out, err = await asyncio.to_thread(
            bench,
            broker,
            "reqrep",
            "--no-responder",
            "--subject",
            "pricing.quote",
            "--msgs",
            "50",
            "--json",
        )
        assert code == 0, err
        assert json.loads(out)["aggregate"]["request"]["msgs"] == 50
    # Nobody serves it now: one line naming the problem, exit 1.
    code, out, err = bench(
        broker, "reqrep", "--no-responder", "--subject", "pricing.quote", "--msgs", "5"
    )
    assert code == 1
    assert "no responders" in err.lower()


def test_token_and_bad_arguments(tmp_path: Path) -> None:
    proc = BrokerProc(
        f"unix://{tmp_path}/t.sock", log=tmp_path / "b.log", env=cli_env(ASYNCIPC_TOKEN=TOKEN)
    )
    try:
        url = proc.urls[0]
        done = run("bench", "pubsub", "--msgs", "10", "--url", url, env=cli_env())
        assert done.returncode == 2
        assert "token" in done.stderr
        done = run(
            "bench", "pubsub", "--msgs", "10", "--url", url, env=cli_env(ASYNCIPC_TOKEN=TOKEN)
        )
        assert done.returncode == 0, done.stderr
        done = run("bench", "pubsub", "--pub", "0", "--url", url, env=cli_env(ASYNCIPC_TOKEN=TOKEN))
        assert done.returncode == 2
        assert "--pub must be at least 1" in done.stderr
    finally:
        proc.stop()
