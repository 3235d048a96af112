"""The pricing service: answers ``pricing.quote`` requests with the price of an order.

Request:  ``{"id": 7, "items": [{"sku": "sku-1", "qty": 2}]}``
Reply:    ``{"order": 7, "total_cents": 1998, "currency": "EUR"}``

An unknown SKU is the requester's mistake: the handler raises ``asyncipc.ServiceError``
saying so, and the requester gets that text. Any other failure reaches it only as an
internal error; the traceback stays in this service's log.

Run it against a broker (stop with Ctrl-C or SIGTERM: requests already received are
answered first)::

    python examples/pricing.py --url unix:///tmp/asyncipc.sock [--count N]

Several instances share the requests: they serve in the queue group ``pricing``.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from _common import Tally, add_url_option, decode, encode, exit_on_errors, stop_on_signals

import asyncipc

PRICES_CENTS = {"sku-1": 999, "sku-2": 2450, "sku-3": 120, "sku-4": 5000}
CURRENCY = "EUR"


def price(order: dict[str, Any]) -> dict[str, Any]:
    """The quote for an order: pure business logic, no bus in sight."""
    total = 0
    for item in order["items"]:
        sku = item["sku"]
        if sku not in PRICES_CENTS:
            raise ValueError(f"unknown sku {sku!r}")
        total += PRICES_CENTS[sku] * item["qty"]
    return {"order": order["id"], "total_cents": total, "currency": CURRENCY}


async def serve(bus: asyncipc.Bus, *, limit: int | None = None) -> Tally:
    """Answer quote requests on ``bus`` until it is closed; returns once the broker knows
    about the service. The returned tally counts the quotes answered."""
    tally = Tally(limit)

    # The bus runs the handler in a task it owns, one request at a time; the return value
    # is the reply. Closing the bus lets the handler finish what it already holds.
    @bus.handler("pricing.quote", queue="pricing")
    async def quote(msg: asyncipc.Message) -> bytes:
        try:
            reply = encode(price(decode(msg.data)))
        except ValueError as exc:  # bad JSON, an unknown SKU: tell the requester
            raise asyncipc.ServiceError(str(exc)) from exc
        tally.add()
        return reply

    await bus.flush()  # the broker has our subscription: requests from now on reach us
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
