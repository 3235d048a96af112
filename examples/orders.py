"""The order producer: prices each order by request, publishes it, waits until it is billed.

For each order it asks the pricing service (``pricing.quote``, request/reply), then
publishes ``orders.created`` with the quoted total for the billing workers. Meanwhile it
listens on ``orders.billed`` to check that every order was billed exactly once.

Run it against a broker where ``pricing.py`` and ``billing.py`` run::

    python examples/orders.py --url unix:///tmp/asyncipc.sock --orders 100 [--json]

It exits 0 when every order was billed exactly once, 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections import Counter
from dataclasses import asdict, dataclass, field

from _common import add_url_option, exit_on_errors
from models import Billed, Item, Order, Quote

import asyncipc

SKUS = ["sku-1", "sku-2", "sku-3", "sku-4"]


@dataclass
class Report:
    """What the producer sent and what it saw billed."""

    sent: int = 0
    quoted_cents: int = 0
    billed: dict[str, int] = field(default_factory=dict)
    """Orders billed per worker, as announced on ``orders.billed``."""
    billed_cents: int = 0
    duplicates: list[int] = field(default_factory=list)
    """Orders billed more than once."""
    missing: list[int] = field(default_factory=list)
    """Orders not billed before the time-out."""

    @property
    def ok(self) -> bool:
        return not self.duplicates and not self.missing and self.billed_cents == self.quoted_cents


def make_order(n: int) -> Order:
    """Order number ``n``: one to three lines from the price list, the same on every run."""
    lines = 1 + n % 3
    items = [Item(sku=SKUS[(n + k) % len(SKUS)], qty=1 + (n + k) % 3) for k in range(lines)]
    return Order(id=n, items=items)


async def run(bus: asyncipc.Bus, *, orders: int, timeout: float = 10.0) -> Report:
    """Send ``orders`` orders, then wait up to ``timeout`` seconds until all are billed.

    Raises ``asyncipc.NoResponders`` if no pricing service runs.
    """
    report = Report()
    billed_by: Counter[str] = Counter()
    seen: set[int] = set()
    # Subscribe before publishing, and let `async with` confirm it with the broker:
    # no billing event can slip past us.
    async with bus.subscribe("orders.billed", model=Billed) as billed:
        for n in range(1, orders + 1):
            order = make_order(n)
            quote = await bus.request("pricing.quote", order, response=Quote, timeout=5.0)
            order.total_cents = quote.total_cents
            await bus.publish("orders.created", order)
            report.sent += 1
            report.quoted_cents += order.total_cents

        try:
            async with asyncio.timeout(timeout):
                async for msg in billed:
                    event: Billed = msg.body  # type: ignore[attr-defined]
                    if event.order in seen:
                        report.duplicates.append(event.order)
                    seen.add(event.order)
                    billed_by[event.worker] += 1
                    report.billed_cents += event.amount_cents
                    if len(seen) == orders:
                        break
        except TimeoutError:
            pass  # reported below as missing orders
    report.billed = dict(sorted(billed_by.items()))
    report.missing = sorted(set(range(1, orders + 1)) - seen)
    return report


async def main(args: argparse.Namespace) -> int:
    async with asyncipc.connect(args.url, name="orders") as bus:
        report = await run(bus, orders=args.orders, timeout=args.timeout)
    if args.json:
        print(json.dumps(asdict(report)), flush=True)
    else:
        workers = " ".join(f"{name}={count}" for name, count in report.billed.items())
        print(f"orders: sent {report.sent}, quoted {report.quoted_cents / 100:.2f} EUR")
        print(f"orders: billed {sum(report.billed.values())} ({workers})")
        if report.missing:
            print(f"orders: never billed: {report.missing}")
        if report.duplicates:
            print(f"orders: billed more than once: {report.duplicates}")
    return 0 if report.ok else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Send orders, priced and then billed.")
    add_url_option(parser)
    parser.add_argument("--orders", type=int, default=100, help="how many (default: 100)")
    parser.add_argument(
        "--timeout", type=float, default=10.0, help="seconds to wait for billing (default: 10)"
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    with exit_on_errors():
        sys.exit(asyncio.run(main(parser.parse_args())))
