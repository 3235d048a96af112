"""The pricing service: answers ``pricing.quote`` requests with the price of an order.

Request:  an ``Order`` (``{"id": 7, "items": [{"sku": "sku-1", "qty": 2}]}``)
Reply:    a ``Quote``  (``{"order": 7, "total_cents": 1998, "currency": "EUR"}``)

A typed service: asyncipc decodes the request into an ``Order`` and encodes the returned
``Quote`` (models.py), from the handler's annotations. A request that is not a valid order
(a missing field, ``qty`` below 1) never reaches the handler: the requester gets a
``ServiceError`` naming the field. An unknown SKU is the requester's mistake too: the
handler raises ``asyncipc.ServiceError`` saying so. Any other failure reaches it only as an
internal error; the traceback stays in this service's log.

The service answers ``$SRV.PING``/``INFO``/``STATS`` (docs/services.md): while it runs,
``asyncipc services stats pricing`` shows its requests, errors and processing time.

Run it against a broker (stop with Ctrl-C or SIGTERM: requests already received are
answered first)::

    python examples/pricing.py --url unix:///tmp/asyncipc.sock [--count N]

Several instances share the requests: they serve in the queue group ``pricing``.
"""

from __future__ import annotations

import argparse
import asyncio

from _common import Tally, add_url_option, exit_on_errors, stop_on_signals
from models import Order, Quote

import asyncipc

PRICES_CENTS = {"sku-1": 999, "sku-2": 2450, "sku-3": 120, "sku-4": 5000}
CURRENCY = "EUR"


def price(order: Order) -> Quote:
    """The quote for an order: pure business logic, no bus in sight."""
    total = 0
    for item in order.items:
        if item.sku not in PRICES_CENTS:
            raise asyncipc.ServiceError(f"unknown sku {item.sku!r}")
        total += PRICES_CENTS[item.sku] * item.qty
    return Quote(order=order.id, total_cents=total, currency=CURRENCY)


async def serve(bus: asyncipc.Bus, *, limit: int | None = None) -> Tally:
    """Answer quote requests on ``bus`` until it is closed; returns once the broker knows
    about the service. The returned tally counts the quotes answered."""
    tally = Tally(limit)
    service = asyncipc.Service("pricing", version="1.0.0", description="prices orders")

    # The return value is the reply. Up to 64 requests run at once (max_concurrency);
    # closing the bus lets the handler finish what it already holds.
    @service.endpoint("quote", subject="pricing.quote", queue="pricing")
    async def quote(order: Order) -> Quote:
        reply = price(order)
        tally.add()
        return reply

    await service.start(bus)  # the broker has our subscriptions: requests now reach us
    return tally


async def main(args: argparse.Namespace) -> None:
    async with asyncipc.connect(args.url, name="pricing") as bus:
        tally = await serve(bus, limit=args.count)
        stop_on_signals(tally.stop)
        print(f"pricing: ready on {bus.url}", flush=True)
        await tally.stop.wait()
    # Leaving `async with` drained the bus: every request received was answered.
    print(f"pricing: answered {tally.count} quotes", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Answer pricing.quote requests.")
    add_url_option(parser)
    parser.add_argument("--count", type=int, help="stop after answering this many quotes")
    with exit_on_errors():
        asyncio.run(main(parser.parse_args()))
