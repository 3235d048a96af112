"""The ``memory://``/``asyncio.Queue`` ratio of :mod:`benchmarks.inprocess`, measured to
hold still on a loaded machine.

The in-process section's printed ratio is the best of three short wall-clock runs of each
side: on a shared 2-core machine it moved between 0.16 and 0.98 for the same code. Here the
two sides alternate for ``--rounds`` rounds, each timed in CPU time of this process
(``time.process_time``: time the scheduler gives to others does not count), and the
medians are printed. ``--count N`` instead runs :func:`benchmarks.inprocess.memory_pubsub`
(or ``--case queue``/``batches``) once for ``N`` messages, for instruction counts::

    python -m benchmarks.inprocess_cpu --rounds 25
    valgrind --tool=callgrind python -m benchmarks.inprocess_cpu --count 10000
    valgrind --tool=callgrind python -m benchmarks.inprocess_cpu --count 20000

(the difference of the two totals over 10,000 is the count per message, start-up left out).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Awaitable, Callable

import uvloop

from . import inprocess

CASES: dict[str, Callable[[int], Awaitable[float]]] = {
    "memory": inprocess.memory_pubsub,
    "queue": inprocess.queue_reference,
    "batches": inprocess.memory_batches,
}


async def cpu_rate(case: Callable[[int], Awaitable[float]], n: int) -> float:
    """Messages per CPU second of this process for one run of ``case``."""
    start = time.process_time()
    await case(n)
    return n / (time.process_time() - start)


async def alternated(rounds: int, n: int) -> str:
    """The queue reference and ``memory://`` in turn; their medians and the ratio's."""
    await inprocess.memory_pubsub(1000)
    await inprocess.queue_reference(1000)
    memory, queue, ratios = [], [], []
    for _ in range(rounds):
        q = await cpu_rate(inprocess.queue_reference, n)
        m = await cpu_rate(inprocess.memory_pubsub, n)
        queue.append(q)
        memory.append(m)
        ratios.append(m / q)
    return (
        f"memory:// {statistics.median(memory) / 1e6:.3f} M msg/s, "
        f"asyncio.Queue {statistics.median(queue) / 1e6:.3f} M msg/s (CPU time, medians of "
        f"{rounds}); memory/queue median {statistics.median(ratios):.3f} "
        f"(min {min(ratios):.3f}, max {max(ratios):.3f})"
    )


async def count_once(case: str, n: int) -> None:
    """One short warm-up run, then one of ``n`` messages: for callgrind."""
    await CASES[case](100)
    await CASES[case](n)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=25)
    parser.add_argument("-n", type=int, default=30_000, help="messages a run")
    parser.add_argument("--count", type=int, help="run --case once for this many messages")
    parser.add_argument("--case", choices=sorted(CASES), default="memory")
    args = parser.parse_args()
    if args.count is not None:
        uvloop.run(count_once(args.case, args.count))
    else:
        print(uvloop.run(alternated(args.rounds, args.n)))


if __name__ == "__main__":
    main()
