"""The example services (examples/): the demo in both modes, and each service in process."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest

import asyncipc

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
sys.path.insert(0, str(EXAMPLES))  # the examples import each other as plain modules

import billing  # noqa: E402
import orders  # noqa: E402
import pricing  # noqa: E402


def run_demo(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / "demo.py"), *args],
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert done.returncode == 0, f"demo failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def check_summary(out: str, n: int) -> None:
    assert re.search(rf"orders sent +{n}\b", out), out
    assert re.search(rf"quotes answered +{n}\b", out), out
    split = [int(c) for c in re.findall(r"billing-\d: (\d+)", out)]
    assert len(split) == 3, out
    assert sum(split) == n, out
    assert re.search(rf"billed in total +{n} orders", out), out
    assert "every order was billed exactly once" in out


def test_demo_in_one_process() -> None:
    out = run_demo()
    assert "memory://" in out
    check_summary(out, 100)


def test_demo_with_processes() -> None:
    out = run_demo("--processes", "--orders", "30")
    match = re.search(r"over unix://(\S+)", out)
    assert match, out
    check_summary(out, 30)
    # Every child was stopped and the broker removed its socket and the demo its directory.
    assert not os.path.exists(os.path.dirname(match.group(1)))


def test_ledger_books_every_order_once_across_a_broker_restart(short_tmp: Path) -> None:
    store = short_tmp / "store"  # its socket is there: a path of 107 bytes at most
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / "ledger.py"), "--store", str(store)],
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert done.returncode == 0, f"ledger failed:\n{done.stdout}\n{done.stderr}"
    assert "restarted: the stream holds 20 orders (file store)" in done.stdout
    assert "order 20 sent again: duplicate=True" in done.stdout
    assert "every order booked exactly once" in done.stdout
    assert (store / "streams" / "LEDGER" / "stream.json").exists()  # it was on disk
    # A second run on the same store refuses rather than mix two ledgers.
    again = subprocess.run(
        [sys.executable, str(EXAMPLES / "ledger.py"), "--store", str(store)],
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert again.returncode == 1
    assert "already has a ledger" in again.stderr


@pytest.fixture
async def url() -> AsyncIterator[str]:
    """A private embedded broker for one test, kept alive by this bus."""
    url = f"memory://examples-{os.urandom(4).hex()}"
    async with asyncipc.connect(url):
        yield url


async def test_pricing_answers_a_quote(url: str) -> None:
    async with asyncipc.connect(url) as service, asyncipc.connect(url) as client:
        tally = await pricing.serve(service)
        order = {"id": 7, "items": [{"sku": "sku-1", "qty": 2}, {"sku": "sku-3", "qty": 1}]}
        # A client without the models: a dict in, a dict out, JSON on the wire.
        reply = await client.request("pricing.quote", order, response=dict)
        assert reply == {"order": 7, "total_cents": 2 * 999 + 120, "currency": "EUR"}

        unknown = {"id": 8, "items": [{"sku": "sku-404", "qty": 1}]}
        with pytest.raises(asyncipc.ServiceError, match="unknown sku 'sku-404'"):
            await client.request("pricing.quote", unknown)
        # The service's models validate: the handler never sees a bad order.
        zero = {"id": 9, "items": [{"sku": "sku-1", "qty": 0}]}
        with pytest.raises(asyncipc.ServiceError, match=r"items\[0\]\.qty: Expected `int` >= 1"):
            await client.request("pricing.quote", zero)
    assert tally.count == 1


async def test_billing_workers_bill_each_order_once(url: str) -> None:
    n, workers = 60, ["w1", "w2", "w3"]
    async with asyncipc.connect(url) as events, events.subscribe("orders.billed") as billed:
        async with contextlib.AsyncExitStack() as stack:
            tallies = {}
            for worker in workers:
                bus = await stack.enter_async_context(asyncipc.connect(url))
                tallies[worker] = await billing.serve(bus, worker)
            for i in range(n):
                order = {"id": i, "items": [], "total_cents": i}
                await events.publish("orders.created", order)
            seen = [msgspec.json.decode((await billed.next_msg(timeout=10)).data) for _ in range(n)]
        # The workers' buses are closed (drained): a second billing would have been sent.
        await events.flush()
        assert billed.pending == 0, "an order was billed twice"

    assert sorted(event["order"] for event in seen) == list(range(n))
    assert all(event["amount_cents"] == event["order"] for event in seen)
    per_worker = Counter(event["worker"] for event in seen)
    assert per_worker == {worker: tally.count for worker, tally in tallies.items()}
    assert set(per_worker) == set(workers), "the queue group left a worker idle"


async def test_orders_end_to_end_in_process(url: str) -> None:
    async with (
        asyncipc.connect(url) as pricing_bus,
        asyncipc.connect(url) as billing_bus,
        asyncipc.connect(url) as producer,
    ):
        quotes = await pricing.serve(pricing_bus)
        bills = await billing.serve(billing_bus, "solo")
        report = await orders.run(producer, orders=25)
    assert report.ok, report
    assert report.sent == quotes.count == bills.count == 25
    assert report.billed == {"solo": 25}
    assert report.billed_cents == sum(
        pricing.price(orders.make_order(n)).total_cents for n in range(1, 26)
    )


async def test_orders_reports_what_was_never_billed(url: str) -> None:
    async with asyncipc.connect(url) as pricing_bus, asyncipc.connect(url) as producer:
        await pricing.serve(pricing_bus)  # but no billing worker
        report = await orders.run(producer, orders=3, timeout=0.2)
    assert not report.ok
    assert report.sent == 3
    assert report.missing == [1, 2, 3]


async def test_orders_without_pricing_fails_at_once(url: str) -> None:
    async with asyncipc.connect(url) as producer:
        with pytest.raises(asyncipc.NoResponders):
            await orders.run(producer, orders=1)
