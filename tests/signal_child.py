"""A client process for tests/test_signals.py: ``python tests/signal_child.py URL [options]``.

Connects to the broker at URL and prints ``ready <client_id> <pid>`` once it is
subscribed, then one line per event on stdout:

* ``--watch HUP,USR1``: ``signal HUP`` for each signal this process receives
  (``asyncipc.signals.watch`` and a subscription to ``$sys.signal.>``);
* ``--allow HUP,USR1``: lets other clients have the broker send it those signals;
* ``--serve SUBJECT``: answers requests on SUBJECT; prints ``busy`` when one arrives and
  answers only once this process has received SIGTERM (``--until term``) or once the
  file ``--until PATH`` is gone (the broker's socket: the broker is draining), so that
  the answer can only come from a drain, never before it.

Runs until SIGTERM/SIGINT (``signals.run_until_signalled``: drain, then exit 0) or until
the broker goes away (prints ``broker gone``, exits 0). Prints ``exit`` last.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
from contextlib import nullcontext

import asyncipc
from asyncipc import signals


def names(text: str) -> list[str]:
    return [n for n in text.split(",") if n]


async def wait_until_gone(path: str) -> None:
    while os.path.exists(path):  # noqa: ASYNC110 - a file going away has no event to await
        await asyncio.sleep(0.02)


async def main(args: argparse.Namespace) -> None:
    # reconnect=False: this service ends with its broker ("broker gone"), on purpose.
    options = asyncipc.ConnectOptions(
        name=args.name, allow_signals=tuple(names(args.allow)), reconnect=False
    )
    got_term = asyncio.Event()
    async with asyncipc.connect(args.url, options=options) as bus:
        if args.serve:

            async def slow(msg: asyncipc.Message) -> bytes:
                print("busy", flush=True)
                if args.until == "term":
                    await got_term.wait()
                    return b"answered after SIGTERM"
                await wait_until_gone(args.until)
                return b"answered after the broker began draining"

            bus.serve(args.serve, slow)
        if args.watch:

            async def show(msg: asyncipc.Message) -> None:
                print("signal", msg.data.decode(), flush=True)

            bus.subscribe("$sys.signal.>", callback=show)
        await bus.flush()
        with signals.on_signal(lambda sig: got_term.set(), signal.SIGTERM):
            watching = signals.watch(bus, *names(args.watch)) if args.watch else nullcontext()
            async with watching:
                print("ready", bus.server_info["client_id"], os.getpid(), flush=True)
                received = await signals.run_until_signalled(bus)
        if received is None:
            print("broker gone", flush=True)
    print("exit", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("--name", default="")
    parser.add_argument("--allow", default="")
    parser.add_argument("--watch", default="")
    parser.add_argument("--serve", default="")
    parser.add_argument("--until", default="term")
    asyncio.run(main(parser.parse_args()))
