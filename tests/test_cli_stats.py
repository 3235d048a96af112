"""``asyncipc stats`` (docs/cli.md, docs/monitoring.md): a broker process, clients of
it, and the command in a subprocess of its own, asking over the bus (no HTTP listener)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

import asyncipc
from tests.test_cli import TOKEN, BrokerProc, cli_env, run


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[BrokerProc]:
    """A broker process of its own per test: the tests count its traffic."""
    proc = BrokerProc(
        f"unix://{tmp_path}/b.sock", log=tmp_path / "broker.log", args=["--token", TOKEN]
    )
    yield proc
    proc.stop()


def stats(broker: BrokerProc, *args: str) -> tuple[int, str, str]:
    done = run("stats", *args, "--url", broker.url)
    return done.returncode, done.stdout, done.stderr


@pytest.mark.one_loop("the broker and the command are processes of their own")
async def test_stats_prints_each_table(broker: BrokerProc) -> None:
    async with (
        asyncipc.connect(broker.url, token=TOKEN, name="ledger") as ledger,
        asyncipc.connect(broker.url, token=TOKEN, name="till\x1b[31m") as till,
    ):
        sub = ledger.subscribe("sales.*", queue="books")
        await ledger.flush()
        for _ in range(7):
            await till.publish("sales.new", b"12.50")
        await till.flush()
        for _ in range(7):
            await sub.next_msg(timeout=5)

        code, out, err = stats(broker)  # varz by default
        assert code == 0, err
        assert "connections" in out
        assert "3 now" in out  # ledger, till, and the stats command itself
        assert "messages in     7" in out

        code, out, err = stats(broker, "connz", "--sort", "msgs_from")
        assert code == 0, err
        head, columns, first, *rest = out.splitlines()
        assert head.startswith("3 of 3 connections (sorted by msgs_from)")
        assert columns.split()[:3] == ["CID", "NAME", "TRANSPORT"]
        assert "till\\x1b[31m" in first  # the busiest publisher, its escape made harmless
        assert "\x1b" not in out
        assert any("ledger" in line for line in rest)

        code, out, err = stats(broker, "subsz")
        assert code == 0, err
        [row] = [line for line in out.splitlines() if "sales.*" in line]
        assert row.split()[1:5] == ["ledger", "sales.*", "books", "block"]

        code, out, err = stats(broker, "connz", "--json", "--subs")
        assert code == 0, err
        conns = {c["name"]: c for c in json.loads(out)["connections"]}
        assert conns["ledger"]["subscriptions_list"] == ["sales.*"]
        assert conns["till\x1b[31m"]["in_msgs"] == 7

        code, out, err = stats(broker, "streamz")
        assert code == 0, err
        assert out.startswith("0 streams, 0 consumers")

        code, out, err = stats(broker, "subjectz")
        assert code == 0, err
        assert "counting starts with this look" in out
        await till.publish("sales.new", b"1")
        await till.flush()
        code, out, err = stats(broker, "subjectz", "--json")
        assert code == 0, err
        assert {"subject": "sales.new", "msgs": 1} in [
            {k: s[k] for k in ("subject", "msgs")} for s in json.loads(out)["subjects"]
        ]


def test_stats_errors_name_the_problem(broker: BrokerProc, tmp_path: Path) -> None:
    code, _, err = stats(broker, "connz", "--offset", "-1")
    assert code == 1
    assert "offset must be between 0 and" in err
    done = run("stats", "--url", broker.url, env=cli_env())  # no token
    assert done.returncode == 2
    assert "authentication failed" in done.stderr
    done = run("stats", "--url", f"unix://{tmp_path}/none.sock")
    assert done.returncode == 2
    assert "asyncipc stats:" in done.stderr
