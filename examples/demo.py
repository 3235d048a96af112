"""The demo: a pricing service, three billing workers and an order producer, end to end.

::

    python examples/demo.py               # everything in this process, over memory://
    python examples/demo.py --processes   # a broker and each service in its own process

The producer prices each order by a request to the pricing service, publishes it on
``orders.created``, and the billing workers, a queue group, bill each order once. The demo
prints what flowed, checks that every order was billed exactly once, and exits 0; it exits
1 with the reason on a mismatch, a failed process or a time-out.

The services are the same modules in both modes: only the URL changes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import json
import os
import re
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import billing
import orders
import pricing

import asyncipc

HERE = Path(__file__).resolve().parent
WORKERS = ["billing-1", "billing-2", "billing-3"]
GUARD = 30.0
"""Seconds after which the demo gives up: it normally takes one or two."""


class DemoError(Exception):
    """Something went wrong that the summary cannot show."""


@dataclass
class Outcome:
    """What flowed, as the producer saw it and as each service counted it."""

    url: str
    layout: str
    report: orders.Report
    quotes: int
    billed: dict[str, int]


# --- mode 1: one process, embedded broker ---------------------------------------------------


async def in_process(n: int) -> Outcome:
    url = "memory://demo"  # the embedded broker of this event loop: nothing to start
    # Each service gets its own bus, as it would in its own process.
    async with contextlib.AsyncExitStack() as services:
        bus = await services.enter_async_context(asyncipc.connect(url, name="pricing"))
        quotes = await pricing.serve(bus)
        tallies = {}
        for worker in WORKERS:
            bus = await services.enter_async_context(asyncipc.connect(url, name=worker))
            tallies[worker] = await billing.serve(bus, worker)

        async with asyncipc.connect(url, name="orders") as bus:
            report = await orders.run(bus, orders=n)
    # Leaving the stack closed (drained) the services' buses: their tallies are final.
    billed = {worker: tally.count for worker, tally in tallies.items()}
    return Outcome(url, "all in this process (embedded broker)", report, quotes.count, billed)


# --- mode 2: a broker and each service in its own process -----------------------------------

BROKER_SCRIPT = """
import asyncio, signal, sys
import asyncipc

async def main(url: str) -> None:
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    async with asyncipc.Broker() as broker:  # leaving it drains the clients, removes the socket
        listener = await broker.listen(url)
        print("listening on", listener.url, flush=True)
        await stop.wait()

asyncio.run(main(sys.argv[1]))
"""


def broker_command(url: str) -> list[str]:
    """The ``asyncipc broker`` command when this install has it, else the few lines above."""
    if importlib.util.find_spec("asyncipc.__main__") is not None:
        return ["-m", "asyncipc", "broker", "--listen", url]
    return ["-c", BROKER_SCRIPT, url]


class Child:
    """One process of the demo: its stdout is read line by line, its stderr (log lines)
    goes to a file that is shown if it fails."""

    def __init__(self, name: str, proc: asyncio.subprocess.Process, log: Path) -> None:
        self.name = name
        self.proc = proc
        self.log = log

    @classmethod
    async def start(cls, name: str, logdir: str, *args: str) -> Child:
        log = Path(logdir, f"{name}.log")
        with await asyncio.to_thread(log.open, "wb") as stderr:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, *args, stdout=asyncio.subprocess.PIPE, stderr=stderr
            )
        return cls(name, proc, log)

    def failed(self, what: str) -> DemoError:
        tail = self.log.read_text(errors="replace").strip().splitlines()[-10:]
        return DemoError("\n    ".join([f"{self.name} {what}", *tail]))

    async def expect(self, prefix: str) -> str:
        """Read lines until one starts with ``prefix`` (``ready``...) and return it."""
        assert self.proc.stdout is not None
        while line := (await self.proc.stdout.readline()).decode():
            if line.startswith(prefix):
                return line.strip()
        status = await self.proc.wait()
        raise self.failed(f"exited with status {status} before saying {prefix!r}")

    async def finish(self, *, ok: tuple[int, ...] = (0,)) -> str:
        """Wait for the process to end; return its last line of output."""
        assert self.proc.stdout is not None
        out = (await self.proc.stdout.read()).decode().splitlines()
        status = await self.proc.wait()
        if status not in ok:
            raise self.failed(f"exited with status {status}")
        return out[-1] if out else ""

    def terminate(self) -> None:
        if self.proc.returncode is None:
            self.proc.terminate()

    async def kill(self) -> None:
        """Clean-up after a failure: SIGTERM, then SIGKILL if it does not go."""
        if self.proc.returncode is None:
            self.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), 5)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()


def count_in(line: str, pattern: str) -> int:
    match = re.search(pattern, line)
    if match is None:
        raise DemoError(f"unexpected final line: {line!r}")
    return int(match.group(1))


async def with_processes(n: int) -> Outcome:
    tmp = tempfile.mkdtemp(prefix="asyncipc-demo-")
    sock = os.path.join(tmp, "broker.sock")
    url = f"unix://{sock}"
    children: list[Child] = []

    async def spawn(name: str, *args: str) -> Child:
        child = await Child.start(name, tmp, *args)
        children.append(child)
        return child

    try:
        broker = await spawn("broker", *broker_command(url))
        await broker.expect("listening on")
        pricer = await spawn("pricing", str(HERE / "pricing.py"), "--url", url)
        workers = [
            await spawn(w, str(HERE / "billing.py"), "--url", url, "--name", w) for w in WORKERS
        ]
        # They boot in parallel; each says "ready" once the broker knows its subscription.
        for service in [pricer, *workers]:
            await service.expect(f"{service.name}: ready")

        producer = await spawn(
            "orders", str(HERE / "orders.py"), "--url", url, "--orders", str(n), "--json"
        )
        # It exits 1 when its report shows a problem: the summary below tells which.
        line = await producer.finish(ok=(0, 1))
        if not line.startswith("{"):
            raise producer.failed("printed no report")
        report = orders.Report(**json.loads(line))

        # Stop the services: on SIGTERM each drains, prints its tally and exits 0.
        for service in [pricer, *workers]:
            service.terminate()
        quotes = count_in(await pricer.finish(), r"answered (\d+) quotes")
        billed = {w.name: count_in(await w.finish(), r"billed (\d+) orders") for w in workers}
        # Then the broker: it removes its socket.
        broker.terminate()
        await broker.finish()
        if await asyncio.to_thread(os.path.exists, sock):
            raise DemoError(f"the broker left its socket {sock} behind")
        layout = f"broker, pricing, {len(WORKERS)} billing workers, producer: {len(children)}"
        return Outcome(url, layout, report, quotes, billed)
    finally:
        for child in children:
            await child.kill()
        shutil.rmtree(tmp, ignore_errors=True)


# --- the summary ------------------------------------------------------------------------------


def problems(outcome: Outcome, n: int) -> list[str]:
    """Every way the outcome differs from "each of n orders priced and billed once"."""
    report, found = outcome.report, []
    if report.sent != n:
        found.append(f"the producer sent {report.sent} orders, not {n}")
    if outcome.quotes != n:
        found.append(f"the pricing service answered {outcome.quotes} quotes, not {n}")
    if report.missing:
        found.append(f"{len(report.missing)} orders were never billed: {report.missing[:10]}")
    if report.duplicates:
        found.append(f"orders billed more than once: {report.duplicates[:10]}")
    if sum(outcome.billed.values()) != n:
        found.append(f"the workers billed {sum(outcome.billed.values())} orders, not {n}")
    if report.billed != {worker: count for worker, count in outcome.billed.items() if count}:
        found.append(f"billing events {report.billed} disagree with the workers {outcome.billed}")
    if report.billed_cents != report.quoted_cents:
        found.append(f"billed {report.billed_cents} cents for {report.quoted_cents} quoted")
    return found


def summary(outcome: Outcome, elapsed: float) -> str:
    report = outcome.report
    split = "   ".join(f"{w}: {count}" for w, count in outcome.billed.items())
    return "\n".join(
        [
            f"asyncipc demo over {outcome.url}",
            f"  processes          {outcome.layout}",
            f"  orders sent        {report.sent}, each priced by a pricing.quote request",
            f"  quotes answered    {outcome.quotes}",
            f'  billed per worker  {split}   (queue group "billing")',
            f"  billed in total    {sum(outcome.billed.values())} orders, "
            f"{report.billed_cents / 100:,.2f} EUR (quoted {report.quoted_cents / 100:,.2f} EUR)",
            f"  done in {elapsed:.2f} s",
        ]
    )


async def main(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    # SIGTERM stops the demo as Ctrl-C does, by cancelling it, so its processes are stopped.
    main_task = asyncio.current_task()
    assert main_task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main_task.cancel)
    try:
        async with asyncio.timeout(GUARD):
            mode = with_processes if args.processes else in_process
            outcome = await mode(args.orders)
    except TimeoutError:
        print(f"demo FAILED: not done after {GUARD:g} s", file=sys.stderr)
        return 1
    except (DemoError, asyncipc.AsyncIPCError) as exc:
        print(f"demo FAILED: {exc}", file=sys.stderr)
        return 1
    except asyncio.CancelledError:
        print("demo interrupted", file=sys.stderr)
        return 130
    print(summary(outcome, time.perf_counter() - started))
    found = problems(outcome, args.orders)
    for problem in found:
        print(f"demo FAILED: {problem}", file=sys.stderr)
    if found:
        return 1
    print("  every order was billed exactly once")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--processes",
        action="store_true",
        help="run a broker and each service in its own process (default: one process)",
    )
    parser.add_argument("--orders", type=int, default=100, help="how many (default: 100)")
    sys.exit(asyncio.run(main(parser.parse_args())))
