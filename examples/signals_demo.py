"""Signals as messages, signals sent through the broker, and the drain on SIGTERM.

    python examples/signals_demo.py

Starts a broker on a Unix socket in a temporary directory, and a worker process (this
file with ``--worker``) that

* allows local clients of the broker to send it SIGHUP and SIGTERM
  (``ConnectOptions(allow_signals=...)``),
* watches its SIGHUP as messages on ``$sys.signal.HUP`` and "reloads its configuration"
  on each (``signals.watch``),
* serves ``work.slow`` requests, which take half a second each,
* drains and exits 0 on SIGTERM or SIGINT (``signals.run_until_signalled``).

The demo then, as another client of the broker:

1. sends HUP to the worker *by name* through the broker: the worker reloads;
2. asks for SIGUSR2, which the worker did not allow: ``SignalRefused`` says so;
3. sends a slow request and, while the worker holds it, sends TERM through the broker:
   the worker drains, the reply still arrives, the worker exits 0;
4. closes the broker, which removes its socket file.

It prints what happened and exits 0 if everything went as described, else 1.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import tempfile

import asyncipc
from asyncipc import signals

WORKER = "worker"
EVENTS = "worker.events"


# --- the worker process -------------------------------------------------------------------


async def worker(url: str) -> int:
    options = asyncipc.ConnectOptions(name=WORKER, allow_signals=("HUP", "TERM"))
    async with asyncipc.connect(url, options=options) as bus:
        reloads = 0

        async def reload(msg: asyncipc.Message) -> None:
            nonlocal reloads
            reloads += 1  # a real service would re-read its configuration here
            await bus.publish(
                EVENTS, f"reloaded config (SIG{msg.data.decode()} #{reloads})".encode()
            )

        async def slow(msg: asyncipc.Message) -> bytes:
            await bus.publish(EVENTS, b"busy with " + msg.data)
            await asyncio.sleep(0.5)
            return b"done: " + msg.data

        async with signals.watch(bus, signal.SIGHUP):
            bus.subscribe(signals.subject(signal.SIGHUP), callback=reload)
            bus.serve("work.slow", slow)
            await bus.flush()
            await bus.publish(EVENTS, f"ready {bus.server_info['client_id']}".encode())
            # Until SIGTERM/SIGINT: then the bus drains (the request in hand is answered).
            received = await signals.run_until_signalled(bus)
    print(f"worker: {received.name if received else 'broker gone'}, drained", flush=True)
    return 0


# --- the demo -------------------------------------------------------------------------------


def remove_directory(directory: str) -> bool:
    """Remove the demo's directory: True if the broker had removed its socket from it."""
    try:
        os.rmdir(directory)
    except OSError:
        return False
    return True


async def steps(bus: asyncipc.Bus, events: asyncipc.Subscription, pid: int) -> list[str]:
    """Steps 1 to 3, with the worker (``pid``) started; returns what went wrong."""
    problems: list[str] = []
    ready = (await events.next_msg(timeout=30)).data.decode()
    client_id = int(ready.split()[1])
    print(f"  worker             pid {pid}, client {client_id}, allows HUP and TERM")

    # 1. HUP, addressed by the name the worker connected with.
    await signals.send(bus, WORKER, "HUP")
    said = (await events.next_msg(timeout=30)).data.decode()
    print(f"  HUP by name        worker: {said}")
    if not said.startswith("reloaded config (SIGHUP #1)"):
        problems.append(f"the worker did not reload: {said!r}")

    # 2. A signal the worker did not allow.
    try:
        await signals.send(bus, client_id, "USR2")
        problems.append("USR2 was not refused")
    except asyncipc.SignalRefused as exc:
        print(f"  USR2 refused       {exc.reason}: {exc}")

    # 3. TERM while the worker holds a request: the drain answers it.
    asking = asyncio.create_task(bus.request("work.slow", b"job-1", timeout=30))
    said = (await events.next_msg(timeout=30)).data.decode()
    await signals.send(bus, WORKER, signal.SIGTERM)
    reply = await asking
    print(f"  TERM mid-request   {said}; reply {reply.data.decode()!r}")
    if reply.data != b"done: job-1":
        problems.append(f"the drain lost the reply: {reply.data!r}")
    return problems


async def demo() -> int:
    directory = tempfile.mkdtemp(prefix="asyncipc-signals-")
    path = os.path.join(directory, "demo.sock")
    async with asyncipc.Broker() as broker:
        listener = await broker.listen(f"unix://{path}")
        print(f"asyncipc signals demo: broker on {listener.url}")
        async with asyncipc.connect(listener.url, name="demo") as bus:
            events = bus.subscribe(EVENTS)
            await bus.flush()
            proc = await asyncio.create_subprocess_exec(
                sys.executable, __file__, "--worker", listener.url
            )
            try:
                problems = await steps(bus, events, proc.pid)
            except BaseException:
                proc.kill()  # a demo that failed leaves no worker behind
                await proc.wait()
                raise
            code = await proc.wait()  # the TERM of step 3: it drains, then exits
            print(f"  worker exited      {code}")
            if code != 0:
                problems.append(f"the worker exited {code}")
    if remove_directory(directory):
        print("  broker closed      socket removed")
    else:
        problems.append(f"{path} was left behind")
    for problem in problems:
        print(f"PROBLEM: {problem}")
    if not problems:
        print("everything went as described")
    return 1 if problems else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worker", metavar="URL", help="run as the worker, on the broker at URL")
    args = parser.parse_args()
    sys.exit(asyncio.run(worker(args.worker) if args.worker else demo()))
