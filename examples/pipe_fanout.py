"""Fan CPU work out to child processes over pipes, and gather the answers with requests.

::

    python examples/pipe_fanout.py [--workers 4] [--jobs 40]

The parent runs a broker in its own event loop (no broker process, no socket file) and
starts ``--workers`` copies of this file with ``broker.spawn``: each child is wired to the
broker over a pair of inherited pipes and connects with ``asyncipc.connect("pipe:")``,
while its stdin, stdout and stderr stay its own (the children print to the terminal).
The children serve ``primes.count`` in one queue group, so each request goes to exactly
one of them; the parent sends every job as a request at once and gathers the replies.

When the parent closes its broker, each child sees its end of the pipes close, its bus
breaks (``BrokenLinkError``), and it exits; the parent waits for every child, checks that
each job was answered once and correctly, and exits 0 (1 if not).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import time
from collections import Counter

import asyncipc

SUBJECT = "primes.count"


def count_primes(below: int) -> int:
    """The work: CPU-bound on purpose, which is what processes are for."""
    if below < 3:
        return 0
    sieve = bytearray([1]) * below
    sieve[0] = sieve[1] = 0
    for i in range(2, int(below**0.5) + 1):
        if sieve[i]:
            sieve[i * i :: i] = bytes(len(range(i * i, below, i)))
    return sum(sieve)


async def child() -> None:
    """A worker: serve ``primes.count`` until the parent goes."""
    # The parent leaving is how a worker's day ends here, not worth a warning on stderr.
    logging.getLogger("asyncipc.client").setLevel(logging.ERROR)
    async with asyncipc.connect("pipe:", name=f"primes-{os.getpid()}") as bus:
        jobs = bus.subscribe(SUBJECT, queue="primes")
        await bus.flush()  # the broker has our subscription: now we are ready
        await bus.publish("workers.ready", str(os.getpid()).encode())
        try:
            async for msg in jobs:
                below = int(msg.data)
                answer = {"below": below, "primes": count_primes(below), "pid": os.getpid()}
                await bus.publish(msg.reply_to or "", answer)  # a dict: sent as JSON
        except asyncipc.BrokenLinkError:
            pass  # the parent closed its end of the pipes: our work is done


async def parent(workers: int, jobs: int) -> int:
    async with asyncipc.Broker() as broker:
        url = (await broker.listen("memory://fanout")).url
        async with asyncipc.connect(url) as bus:
            ready = bus.subscribe("workers.ready")
            await bus.flush()
            children = [
                await broker.spawn([sys.executable, __file__, "--child"]) for _ in range(workers)
            ]
            pids = sorted([int((await ready.next_msg(timeout=30)).data) for _ in children])
            print(
                f"pipe fan-out: {workers} workers (pids {', '.join(map(str, pids))}), {jobs} jobs"
            )

            work = [20_000 + 1_000 * i for i in range(jobs)]
            start = time.perf_counter()
            replies = await asyncio.gather(
                *(bus.request(SUBJECT, str(n).encode(), timeout=30, response=dict) for n in work)
            )
            took = time.perf_counter() - start
    # The broker is closed: every child saw its pipes close. Wait for them to exit.
    codes = [await c.wait() for c in children]

    answers = replies
    per_worker = Counter(a["pid"] for a in answers)
    shares = "   ".join(f"pid {pid}: {per_worker[pid]}" for pid in pids)
    print(f"  answered by   {shares}   (queue group 'primes')")
    print(f"  {len(answers)} answers from {len(per_worker)} workers in {took:.2f} s")
    ok = [a["below"] for a in answers] == work and all(
        a["primes"] == count_primes(a["below"]) for a in answers
    )
    if not ok or any(codes):
        print(f"  FAILED: answers correct={ok}, child exit codes={codes}")
        return 1
    print("  every job answered once, correctly; every child exited 0")
    return 0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--jobs", type=int, default=40)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        asyncio.run(child())
        return
    sys.exit(asyncio.run(parent(args.workers, args.jobs)))


if __name__ == "__main__":
    main()
