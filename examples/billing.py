"""A billing worker: bills each ``orders.created`` event and publishes ``orders.billed``.

Workers subscribe in the queue group ``billing``, so however many run, each order goes to
exactly one of them (round robin): start more to bill faster.

Consumes:  ``orders.created``  an ``Order`` (models.py), decoded by the subscription
Publishes: ``orders.billed``   a ``Billed``, encoded by ``publish``

Run one worker per process against a broker (stop with Ctrl-C or SIGTERM: orders already
received are billed first)::

    python examples/billing.py --url unix:///tmp/asyncipc.sock --name billing-1 [--count N]
"""

from __future__ import annotations

import argparse
import asyncio
import os

from _common import Tally, add_url_option, exit_on_errors, stop_on_signals
from models import Billed, Order

import asyncipc


async def serve(bus: asyncipc.Bus, worker: str, *, limit: int | None = None) -> Tally:
    """Bill orders on ``bus`` as worker ``worker`` until the bus is closed; returns once
    the broker knows about the worker. The returned tally counts the orders billed."""
    tally = Tally(limit)

    async def bill(msg: asyncipc.Message) -> None:
        order: Order = msg.body  # type: ignore[attr-defined]  # model=Order decoded it
        billed = Billed(order=order.id, worker=worker, amount_cents=order.total_cents)
        await bus.publish("orders.billed", billed)
        tally.add()

    # model=Order: each message's body is decoded into an Order (one that is not valid is
    # counted in sub.invalid and skipped). callback=: the bus feeds `bill` one message at a
    # time from a task it owns, and on close lets it finish every order already delivered
    # here. (An `async for` loop would work too, but then this code, not the bus, would
    # have to drain it on shutdown.)
    bus.subscribe("orders.created", queue="billing", model=Order, callback=bill)
    await bus.flush()  # the broker has our subscription: orders from now on reach us
    return tally


async def main(args: argparse.Namespace) -> None:
    async with asyncipc.connect(args.url, name=args.name) as bus:
        tally = await serve(bus, args.name, limit=args.count)
        stop_on_signals(tally.stop)
        print(f"{args.name}: ready on {bus.url}", flush=True)
        await tally.stop.wait()
    # Leaving `async with` drained the bus: every order delivered to us was billed.
    print(f"{args.name}: billed {tally.count} orders", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Bill orders.created events (queue group).")
    add_url_option(parser)
    parser.add_argument(
        "--name", default=f"billing-{os.getpid()}", help="worker name (default: %(default)s)"
    )
    parser.add_argument(
        "--count",
        type=int,
        help="stop after billing this many (orders already received are billed too)",
    )
    with exit_on_errors():
        asyncio.run(main(parser.parse_args()))
