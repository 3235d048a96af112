"""A durable ledger: orders kept in a stream survive a broker restart, each booked once.

A producer stores orders in the stream ``LEDGER`` (``ledger.orders.>``) with a ``msg_id``
each; a bookkeeper, a durable consumer, books them and acknowledges each. Half-way the
broker stops, taking nothing with it: on restart the bookkeeper resumes where it was, the
producer republishes an order it is unsure of (deduplicated by its ``msg_id``), and at the
end every order is booked exactly once. See ``docs/streams.md``.

::

    python examples/ledger.py                  # a broker in this process, a temporary store
    python examples/ledger.py --store DIR      # keep the store afterwards (a new DIR)

Exits 0 when every order was booked once, 1 with the reason otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path

import msgspec
from models import Order

import asyncipc

ORDERS = 20


async def produce(bus: asyncipc.Bus, first: int, last: int) -> list[asyncipc.PubAck]:
    """Store orders ``first`` to ``last`` (inclusive); every one acknowledged on disk."""
    stream = await bus.stream("LEDGER", subjects=["ledger.orders.>"])
    futures = [
        stream.publish_async(
            f"ledger.orders.{n}",
            msgspec.json.encode(Order(id=n, items=[], total_cents=100 * n)),
            msg_id=f"order-{n}",
        )
        for n in range(first, last + 1)
    ]
    return list(await asyncio.gather(*futures))


async def book(bus: asyncipc.Bus, books: dict[int, int], want: int) -> None:
    """Book orders from the durable consumer until ``books`` holds ``want`` of them."""
    stream = await bus.stream("LEDGER")
    consumer = await stream.consumer("bookkeeper", ack_wait=5.0)
    while len(books) < want:
        batch = await consumer.fetch(5, timeout=2.0)
        if not batch:
            raise RuntimeError(f"the ledger ran dry after {len(books)} orders")
        for msg in batch:
            order = msgspec.json.decode(msg.data, type=Order)
            books[order.id] = books.get(order.id, 0) + 1
            await msg.ack_sync()  # recorded by the broker: a restart cannot give it back


async def run(store: Path) -> int:
    url = f"unix://{store}/ledger.sock"
    books: dict[int, int] = {}
    options = asyncipc.ConnectOptions(reconnect=False)

    async with asyncipc.Broker(store=str(store)) as broker:
        await broker.listen(url)
        async with asyncipc.connect(url, options=options) as bus:
            acks = await produce(bus, 1, ORDERS)
            print(f"stored orders 1-{ORDERS} as seq {acks[0].seq}-{acks[-1].seq}")
            await book(bus, books, ORDERS // 2)
            print(f"booked {len(books)} orders, then the broker stops")

    async with asyncipc.Broker(store=str(store)) as broker:
        await broker.listen(url)
        async with asyncipc.connect(url, options=options) as bus:
            info = await (await bus.stream("LEDGER")).info()
            print(f"restarted: the stream holds {info.messages} orders ({info.storage} store)")
            again = await produce(bus, ORDERS, ORDERS)  # unsure of the last one: send again
            print(f"order {ORDERS} sent again: duplicate={again[0].duplicate}")
            await book(bus, books, ORDERS)
            left = await (await (await bus.stream("LEDGER")).consumer("bookkeeper")).info()

    twice = sorted(n for n, times in books.items() if times != 1)
    missing = sorted(set(range(1, ORDERS + 1)) - set(books))
    print(f"booked {len(books)} orders; pending {left.num_pending}, unacked {left.num_ack_pending}")
    if twice or missing or not again[0].duplicate or left.num_pending or left.num_ack_pending:
        print(f"FAILED: booked twice {twice}, missing {missing}", file=sys.stderr)
        return 1
    print("every order booked exactly once")
    return 0


def main(args: argparse.Namespace) -> int:
    if args.store:
        store = Path(args.store)
        store.mkdir(parents=True, exist_ok=True)
        if (store / "streams" / "LEDGER").exists():
            print(f"{store} already has a ledger: use a new directory", file=sys.stderr)
            return 1
        return asyncio.run(run(store))
    with tempfile.TemporaryDirectory(prefix="asyncipc-ledger-") as tmp:
        return asyncio.run(run(Path(tmp)))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Orders in a durable stream, booked once.")
    parser.add_argument("--store", help="the broker's store directory (default: a temporary one)")
    sys.exit(main(parser.parse_args()))
